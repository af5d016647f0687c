#pragma once
// The router's forward and backward (contracts: Backend::router in backend/backend.h). Per token,
// a few passes over its E logits; the MoE block calls it once for all tokens of a layer.
#include <cstdint>

#include "backend/backend.h"

namespace sky {

template <class T>
void router_forward(T* probs, int32_t* topk_idx, T* topk_w, const T* logits, int N, const RouterOptions& o,
                    const T* select_bias = nullptr);
template <class T>
void router_backward(T* dlogits, const T* dprobs, const T* dtopk_w, const T* logits, const T* probs,
                     const int32_t* topk_idx, int N, const RouterOptions& o);

}  // namespace sky
