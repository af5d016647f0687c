#pragma once
// One rank's part of a training micro-step under a process mesh (dist/mesh.h): its rows of the
// global batch, split into micro-batches that flow through the pipeline stages in 1F1B order
// (warm-up forwards, then one forward and one backward alternately, then the remaining backwards),
// so a stage keeps at most PP - stage micro-batches of activations. With one process this is just
// forward and backward over the micro-batches.
#include <cstdint>
#include <vector>

#include "dist/mesh.h"
#include "model/transformer.h"

namespace sky {

// Sums over this rank's micro-batches, per local layer where per layer.
struct StageStats {
  double ce_sum = 0;  // cross-entropy times tokens (last stage only)
  std::vector<double> dropped, entropy_sum, aux, z;
  std::vector<std::vector<double>> load;  // [layer][expert]
  void reset(int layers, int experts);
};

class Pipeline {
 public:
  // rows: sequences this rank gets per micro-step; S: sequence length.
  Pipeline(const Model& m, const Mesh& mesh, int rows, int S);
  // Forward and backward of one micro-step; gradients (times `scale`) accumulate into grads.
  // global_tokens: tokens one micro-batch averages its loss over (across data-parallel ranks).
  void step(const int32_t* in, const int32_t* tgt, float* grads, const MoeOptions& moe, const LossWeights& lw,
            double scale, double global_tokens, StageStats& st);
  // Forward only over `rows` sequences (evaluation): cross-entropy sum on the last stage, else 0.
  double eval(const int32_t* in, const int32_t* tgt, int rows, const MoeOptions& moe);
  int microbatch_rows() const { return rows_ / mesh_.microbatches; }

 private:
  void forward_one(int i, const int32_t* in, const int32_t* tgt, const MoeOptions& moe, StageStats& st);
  void backward_one(int i, float* grads, const MoeOptions& moe, const LossWeights& lw, double scale, double tokens);
  const Model& m_;
  const Mesh& mesh_;
  int rows_, S_;
  std::vector<Activations> acts_;  // in-flight micro-batches
  Activations eval_acts_;
  LayerActs scratch_;              // recomputed layers run here
  std::vector<float> d_top_;
};

}  // namespace sky
