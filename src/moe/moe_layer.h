#pragma once
// One MoE FFN layer: router -> dispatch -> experts (SwiGLU, expert(x) = w2(silu(w1 x) * w3 x)) ->
// weighted combine. Dropped assignments contribute nothing (the token keeps its residual path).
#include <cstdint>
#include <functional>
#include <vector>

#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/router.h"

namespace sky {

struct MoeOptions {
  RouterOptions router;
  double capacity_factor = 0.0;  // <= 0: dropless
  DropPolicy policy = DropPolicy::Prob;
  AuxLossType aux = AuxLossType::Skywork;
  // Data parallelism: adds up the router statistics of all ranks sharing the micro-batch (an
  // all-reduce), so aux loss and z-loss are those of the global batch. Empty: this process only.
  std::function<void(double*, size_t)> reduce_stats;
};

template <class T>
struct MoeWeights {
  int H = 0, I = 0, E = 0;
  const T* router = nullptr;  // [E, H]
  const T* w1 = nullptr;      // [E, I, H] gate projections, expert e at w1 + e*I*H
  const T* w3 = nullptr;      // [E, I, H] up projections
  const T* w2 = nullptr;      // [E, H, I] down projections
};

template <class T>
struct MoeGrads {  // accumulated (+=); any may be null to skip
  T* router = nullptr;
  T* w1 = nullptr;
  T* w3 = nullptr;
  T* w2 = nullptr;
};

// What the forward pass saves for backward and reports. Buffers are resized in place, so after the
// first step of a given shape no allocation happens.
template <class T>
struct MoeCache {
  std::vector<T> logits, probs, topk_w;  // [N,E], [N,E], [N,k]
  std::vector<int32_t> topk_idx;         // [N,k]
  Dispatch disp;
  std::vector<T> xg, h1, h3, act, y;     // per routed row: input [R,H], w1 x, w3 x, swiglu [R,I], expert out [R,H]
  RouterStats stats;                     // of the global batch (after reduce_stats)
  double aux_loss = 0.0;                 // of the chosen type (0 when None)
  double z_loss = 0.0;
  double entropy = 0.0;                  // mean router entropy (nats) over tokens
  // Backward scratch (mutable: moe_backward takes the cache const but reuses these buffers across steps).
  mutable std::vector<T> d_rows;                  // [R,H]: gradient of y, then reused for the gradient of xg
  mutable std::vector<T> dact, dh1, dh3;          // [R,I]
  mutable std::vector<T> dtopk_w, dprobs, dlogits;  // [N,k], [N,E], [N,E]
};

// out [N, H] = MoE(x [N, H]) (overwrites out).
template <class T>
void moe_forward(T* out, const T* x, int N, const MoeWeights<T>& w, const MoeOptions& o, MoeCache<T>& cache);

// dx [N, H] += ..., grads += ... for loss = <dout, out> + aux_coef * aux_loss + z_coef * z_loss.
template <class T>
void moe_backward(T* dx, const MoeGrads<T>& g, const T* dout, const T* x, int N, const MoeWeights<T>& w,
                  const MoeOptions& o, const MoeCache<T>& cache, double aux_coef, double z_coef);

}  // namespace sky
