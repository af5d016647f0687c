#pragma once
// Load-balancing losses of one MoE layer (DESIGN.md section 2).
#include <cstdint>

namespace sky {

enum class AuxLossType { None, Skywork, Switch };

// Skywork (eq. 4): sum_j (1/E - (1/N) sum_i g_ij)^2.
// Switch/GShard:   E * sum_j f_j * P_j, f_j = (top-k assignments to j) / (N*k) (not differentiated),
//                  P_j = (1/N) sum_i g_ij. Both equal their minimum when routing is uniform.
template <class T>
double aux_loss_forward(const T* probs, const int32_t* topk_idx, int N, int E, int k, AuxLossType type);
// dprobs [N, E] += dL * d(aux)/d(probs)
template <class T>
void aux_loss_backward(T* dprobs, double dL, const T* probs, const int32_t* topk_idx, int N, int E, int k,
                       AuxLossType type);

// Router z-loss: mean over tokens of logsumexp(z)^2 (raw logits, before normalization).
template <class T>
double z_loss_forward(const T* logits, int N, int E);
template <class T>
void z_loss_backward(T* dlogits, double dL, const T* logits, int N, int E);

}  // namespace sky
