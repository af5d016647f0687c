#include "moe/aux_loss.h"

#include <cmath>
#include <vector>

namespace sky {

// Mean router probability per expert, P_j = (1/N) sum_i g_ij (E doubles: a negligible allocation).
template <class T>
static std::vector<double> mean_probs(const T* probs, int N, int E) {
  std::vector<double> P(E, 0.0);
  for (long i = 0; i < N; i++)
    for (int j = 0; j < E; j++) P[j] += probs[i * E + j];
  for (int j = 0; j < E; j++) P[j] /= N;
  return P;
}

// f_j = (top-k assignments to j) / (N*k).
static std::vector<double> assign_frac(const int32_t* topk_idx, int N, int E, int k) {
  std::vector<double> f(E, 0.0);
  for (long a = 0; a < (long)N * k; a++) f[topk_idx[a]] += 1.0;
  for (int j = 0; j < E; j++) f[j] /= (double)N * k;
  return f;
}

template <class T>
double aux_loss_forward(const T* probs, const int32_t* topk_idx, int N, int E, int k, AuxLossType type) {
  if (type == AuxLossType::None || N == 0) return 0.0;
  std::vector<double> P = mean_probs(probs, N, E);
  double L = 0;
  if (type == AuxLossType::Skywork) {
    for (int j = 0; j < E; j++) L += (1.0 / E - P[j]) * (1.0 / E - P[j]);
  } else {
    std::vector<double> f = assign_frac(topk_idx, N, E, k);
    for (int j = 0; j < E; j++) L += f[j] * P[j];
    L *= E;
  }
  return L;
}

template <class T>
void aux_loss_backward(T* dprobs, double dL, const T* probs, const int32_t* topk_idx, int N, int E, int k,
                       AuxLossType type) {
  if (type == AuxLossType::None || N == 0) return;
  // d(aux)/d(g_ij) depends only on j: Skywork -2 (1/E - P_j) / N, Switch E f_j / N.
  std::vector<double> c;
  if (type == AuxLossType::Skywork) {
    c = mean_probs(probs, N, E);
    for (int j = 0; j < E; j++) c[j] = -2.0 * (1.0 / E - c[j]) / N * dL;
  } else {
    c = assign_frac(topk_idx, N, E, k);
    for (int j = 0; j < E; j++) c[j] = E * c[j] / N * dL;
  }
  for (long i = 0; i < N; i++)
    for (int j = 0; j < E; j++) dprobs[i * E + j] += T(c[j]);
}

template <class T>
static double logsumexp(const T* z, int E) {
  double mx = z[0];
  for (int j = 1; j < E; j++) mx = z[j] > mx ? z[j] : mx;
  double s = 0;
  for (int j = 0; j < E; j++) s += std::exp(z[j] - mx);
  return mx + std::log(s);
}

template <class T>
double z_loss_forward(const T* logits, int N, int E) {
  if (N == 0) return 0.0;
  double L = 0;
  for (long i = 0; i < N; i++) {
    double lse = logsumexp(logits + i * E, E);
    L += lse * lse;
  }
  return L / N;
}

template <class T>
void z_loss_backward(T* dlogits, double dL, const T* logits, int N, int E) {
  // d(lse^2)/dz_j = 2 lse softmax(z)_j
  for (long i = 0; i < N; i++) {
    const T* z = logits + i * E;
    double lse = logsumexp(z, E);
    for (int j = 0; j < E; j++) dlogits[i * E + j] += T(dL * 2.0 * lse * std::exp(z[j] - lse) / N);
  }
}

template double aux_loss_forward<float>(const float*, const int32_t*, int, int, int, AuxLossType);
template double aux_loss_forward<double>(const double*, const int32_t*, int, int, int, AuxLossType);
template void aux_loss_backward<float>(float*, double, const float*, const int32_t*, int, int, int, AuxLossType);
template void aux_loss_backward<double>(double*, double, const double*, const int32_t*, int, int, int,
                                        AuxLossType);
template double z_loss_forward<float>(const float*, int, int);
template double z_loss_forward<double>(const double*, int, int);
template void z_loss_backward<float>(float*, double, const float*, int, int);
template void z_loss_backward<double>(double*, double, const double*, int, int);

}  // namespace sky
