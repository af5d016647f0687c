#pragma once
// Training and eval over a batch of B sequences of T tokens: embedding, the decoder layers
// (model/decoder.h, the same layer the engine runs), final norm, logits, cross-entropy, and the
// backward of all of it. Forward saves what backward needs in Activations, reused across steps.
//
// The batch functions run whatever shard of the model `m` holds (model/shard.h): a pipeline stage
// without the embedding starts from acts.resid[0] filled by the caller, one without the LM head
// stops at the last residual and its backward starts from a gradient the caller gives; a
// tensor-parallel shard adds up its partial sums over `tp` after attention and the dense FFN.
#include <cstdint>
#include <vector>

#include "model/decoder.h"
#include "model/model.h"
#include "moe/moe_layer.h"

namespace sky {

class Communicator;

// The router as the config describes it (scoring, logit normalization, renormalization, scaling).
RouterOptions router_options(const ModelConfig& cfg);
// Router options from the config plus the training-time choices (capacity, policy, aux type).
MoeOptions moe_options(const ModelConfig& cfg, double capacity_factor = 0.0, DropPolicy policy = DropPolicy::Prob,
                       AuxLossType aux = AuxLossType::Skywork);

// What a forward pass reports about one MoE layer (kept even when its activations are not).
struct MoeLayerStats {
  int64_t dropped = 0;     // assignments dropped by the capacity limit (this rank's tokens)
  double entropy = 0;      // mean router entropy over this rank's tokens
  double aux_loss = 0, z_loss = 0;  // of the global micro-batch
  std::vector<int32_t> load;        // [E]: assignments per expert before dropping (this rank's tokens)
};

struct Activations {
  int B = 0, T = 0;
  // Layers (local index) whose activations are not kept: forward runs them in `scratch`, backward
  // runs their forward again first (activation recomputation). Set before the first forward.
  std::vector<char> recompute;
  LayerActs* scratch = nullptr;
  std::vector<int32_t> inputs, targets, pos;
  std::vector<std::vector<float>> resid;  // [L+1][N*H]: residual stream entering each layer, and the final one
  std::vector<LayerActs> layers;
  std::vector<MoeLayerStats> moe_stats;  // [local layer], MoE models only
  std::vector<float> lnf, rstdf, logits, losses;
  // Gradient scratch for backward (sized on first use); d_x: of the residual stream at the current depth.
  std::vector<float> d_logits, d_lnf, d_x;
  LayerGradScratch grad;
  void resize(const Model& m, int B, int T);
  LayerActs& layer(int l) { return l < int(recompute.size()) && recompute[l] ? *scratch : layers[l]; }
};

// Throws naming the position and value when a token id is out of [0, vocab).
void check_tokens(const int32_t* ids, size_t n, int vocab, const char* what);

// Mean next-token cross-entropy over B*T positions (targets may be null: logits only, returns 0).
// Per-layer MoE statistics (drop rate, aux loss, load) are left in acts.layers[l].moe.
double forward(const Model& m, Activations& acts, const int32_t* inputs, const int32_t* targets, int B, int T,
               const MoeOptions& moe, Communicator* tp = nullptr);

// Loss terms beyond cross-entropy: total = mean CE + sum_l aux_alpha[l] * aux_l + z_coef * sum_l z_l.
struct LossWeights {
  std::vector<double> aux_alpha;  // per layer (empty: 0)
  double z_coef = 0.0;
};

// Backward of the last forward() (which must have had targets): accumulates d(total loss) * scale
// into `grads` (a flat buffer laid out like the model's params). `scale` folds gradient
// accumulation over micro-batches (1/num_micro_batches).
// `global_tokens` is the token count the loss averages over (data parallelism: the whole
// micro-batch across ranks; 0 = this call's B*T). `lw.aux_alpha` is indexed by global layer.
// Without the LM head, d_top [B*T, H] is the gradient of the shard's output; without the
// embedding, the gradient of acts.resid[0] is left in acts.d_x.
void backward(const Model& m, Activations& acts, float* grads, const MoeOptions& moe, const LossWeights& lw,
              double scale = 1.0, double global_tokens = 0, Communicator* tp = nullptr,
              const float* d_top = nullptr);

}  // namespace sky
