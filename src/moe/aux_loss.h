#pragma once
// Load-balancing losses of one MoE layer (DESIGN.md section 2).
#include <cstdint>
#include <vector>

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

// A batch's router statistics as sums, so data-parallel ranks sharing a micro-batch can add theirs
// up (one all-reduce of 2E+2 doubles) and every rank computes the global batch's losses.
struct RouterStats {
  std::vector<double> prob_sum;  // [E]: sum_i g_ij
  std::vector<double> assign;    // [E]: top-k assignments to j
  double tokens = 0;             // N
  double z_sum = 0;              // sum_i logsumexp(z_i)^2
  std::vector<double> pack() const;
  void unpack(const std::vector<double>& v, int E);
};

template <class T>
RouterStats router_stats(const T* probs, const T* logits, const int32_t* topk_idx, int N, int E, int k);
double aux_loss_value(const RouterStats& s, int E, int k, AuxLossType type);
double z_loss_value(const RouterStats& s);
// dprobs [N, E] += dL * d(aux)/d(probs) for this rank's N tokens, the means taken over s (global).
template <class T>
void aux_loss_backward_stats(T* dprobs, double dL, const RouterStats& s, int N, int E, int k, AuxLossType type);

// Router z-loss: mean over tokens of logsumexp(z)^2 (raw logits, before normalization).
template <class T>
double z_loss_forward(const T* logits, int N, int E);
template <class T>
void z_loss_backward(T* dlogits, double dL, const T* logits, int N, int E);
// The same with the mean taken over `tokens` (the global batch) instead of N.
template <class T>
void z_loss_backward_tokens(T* dlogits, double dL, const T* logits, int N, int E, double tokens);

}  // namespace sky
