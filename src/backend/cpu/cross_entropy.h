#pragma once
#include <cstdint>
namespace sky {
// losses[n] = logsumexp(logits[n, :]) - logits[n, targets[n]]. Targets are validated by the caller.
template <class T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int N, int V);
// dlogits[n, :] += dloss[n] * (softmax(logits[n, :]) - onehot(targets[n]))
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const int32_t* targets, const T* dloss, int N, int V);
}  // namespace sky
