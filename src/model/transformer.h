#pragma once
// The decoder forward pass over a batch (training and eval) and over a KV cache (generation).
// Training forward saves what the backward pass needs in Activations, which are sized once per
// (B, T) and reused.
#include <cstdint>
#include <vector>

#include "model/model.h"
#include "moe/moe_layer.h"

namespace sky {

// Router options from the config plus the training-time choices (capacity, policy, aux type).
MoeOptions moe_options(const ModelConfig& cfg, double capacity_factor = 0.0, DropPolicy policy = DropPolicy::Prob,
                       AuxLossType aux = AuxLossType::Skywork);

struct LayerActs {
  std::vector<float> ln1, rstd1, q, k, v, att, ctx, mid, ln2, rstd2;  // mid: residual after attention
  std::vector<float> h1, h3, act;  // dense FFN
  MoeCache<float> moe;
};

struct Activations {
  int B = 0, T = 0;
  std::vector<int32_t> inputs, targets, pos;
  std::vector<std::vector<float>> resid;  // [L+1][N*H]: residual stream entering each layer, and the final one
  std::vector<LayerActs> layers;
  std::vector<float> lnf, rstdf, logits, losses;
  // Gradient scratch for backward (sized on first use).
  std::vector<float> d_logits, d_lnf, d_x, d_mid, d_ln, d_q, d_k, d_v, d_ctx, d_h1, d_h3, d_act;
  void resize(const ModelConfig& cfg, int B, int T);
};

// Throws naming the position and value when a token id is out of [0, vocab).
void check_tokens(const int32_t* ids, size_t n, int vocab, const char* what);

// Mean next-token cross-entropy over B*T positions (targets may be null: logits only, returns 0).
// Per-layer MoE statistics (drop rate, aux loss, load) are left in acts.layers[l].moe.
double forward(const Model& m, Activations& acts, const int32_t* inputs, const int32_t* targets, int B, int T,
               const MoeOptions& moe);

// Loss terms beyond cross-entropy: total = mean CE + sum_l aux_alpha[l] * aux_l + z_coef * sum_l z_l.
struct LossWeights {
  std::vector<double> aux_alpha;  // per layer (empty: 0)
  double z_coef = 0.0;
};

// Backward of the last forward() (which must have had targets): accumulates d(total loss) * scale
// into `grads` (a flat buffer laid out like the model's params). `scale` folds gradient
// accumulation over micro-batches (1/num_micro_batches).
// `global_tokens` is the token count the loss averages over (data parallelism: the whole
// micro-batch across ranks; 0 = this call's B*T).
void backward(const Model& m, Activations& acts, float* grads, const MoeOptions& moe, const LossWeights& lw,
              double scale = 1.0, double global_tokens = 0);

// KV cache of one sequence.
struct KVCache {
  int max_len = 0, len = 0;
  std::vector<std::vector<float>> k, v;  // [L][max_len * kv_dim]
  void init(const ModelConfig& cfg, int max_len);
};

// Feeds n tokens at positions cache.len.. and appends them to the cache. Writes logits of the last
// token to `last_logits` [V] (and of all n tokens to all_logits [n, V] when non-null).
void forward_cached(const Model& m, KVCache& cache, const int32_t* tokens, int n,
                    float* last_logits, float* all_logits = nullptr);

}  // namespace sky
