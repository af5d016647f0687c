#pragma once
// `skymoe bench infer`: prefill, batch-1 decode and batched decode throughput of the inference
// engine, with the weight bytes a decoded token reads and a same-run memory bandwidth probe.
#include <nlohmann/json.hpp>
#include <vector>

#include "infer/infer_model.h"

namespace sky {

struct InferBenchOptions {
  int prompt = 512;        // prefill length
  int decode = 128;        // batch-1 decode tokens
  std::vector<int> batches = {1, 4, 16, 64};
  int batch_steps = 16;    // decode steps per batched measurement
  int reps = 3;            // prefill repetitions (median)
  bool quiet = false;
};

nlohmann::json bench_infer(const InferModel& m, const InferBenchOptions& o);

}  // namespace sky
