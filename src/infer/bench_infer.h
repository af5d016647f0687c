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

// Under tensor parallelism (m.tp) this runs on rank 0 while the other ranks follow; the result
// adds the share of each phase's time rank 0 spent in collectives (comm_fraction).
nlohmann::json bench_infer(const InferModel& m, const InferBenchOptions& o);

// Reads every weight byte once, so timed passes do not pay for page faults (mmapped or paged out).
void warm_weights(const InferModel& m);

}  // namespace sky
