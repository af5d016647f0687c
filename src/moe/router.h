#pragma once
// The MoE router after the gate matmul (DESIGN.md section 2): optional gating logit normalization
// (Skywork eq. 6, unbiased std), scores (softmax, or per-expert sigmoid as DeepSeek-V3), top-k,
// top-k weights renormalized (or not: Qwen2-MoE, OLMoE, DeepSeek-V2 leave them as scores) and
// multiplied by a routed scaling factor. Computed in fp32 (or double in tests) whatever the
// weights' dtype.
#include <cstdint>

namespace sky {

struct RouterOptions {
  int num_experts = 0;
  int top_k = 2;
  bool logits_norm = false;
  double lambda = 1.0;       // moe_gate_norm_std
  bool sigmoid = false;      // scores = sigmoid(z~) per expert (else softmax over the experts)
  bool renormalize = true;   // top-k weights = scores / their sum (norm_topk_prob)
  double scale = 1.0;        // routed_scaling_factor, applied to the top-k weights
};

// logits [N, E] -> probs [N, E] = softmax(z~) or sigmoid(z~), topk_idx [N, k] ordered by
// descending score (ties: lower expert index first), topk_w [N, k] = scale * g_j / sum of the
// selected g (scale * g_j without renormalization).
template <class T>
void router_forward(T* probs, int32_t* topk_idx, T* topk_w, const T* logits, int N, const RouterOptions& o);

// Accumulates dlogits from dprobs [N, E] (gradient reaching the softmax probabilities directly,
// e.g. from the aux loss) and dtopk_w [N, k] (gradient of the renormalized weights); either may be null.
// The normalization's mean and std are part of the differentiated graph.
template <class T>
void router_backward(T* dlogits, const T* dprobs, const T* dtopk_w, const T* logits, const T* probs,
                     const int32_t* topk_idx, int N, const RouterOptions& o);

}  // namespace sky
