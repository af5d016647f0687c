#include "moe/aux_loss.h"

#include <cmath>
#include <vector>

namespace sky {

template <class T>
static double logsumexp(const T* z, int E);

std::vector<double> RouterStats::pack() const {
  std::vector<double> v(prob_sum);
  v.insert(v.end(), assign.begin(), assign.end());
  v.push_back(tokens);
  v.push_back(z_sum);
  return v;
}

void RouterStats::unpack(const std::vector<double>& v, int E) {
  prob_sum.assign(v.begin(), v.begin() + E);
  assign.assign(v.begin() + E, v.begin() + 2 * E);
  tokens = v[2 * E];
  z_sum = v[2 * E + 1];
}

template <class T>
RouterStats router_stats(const T* probs, const T* logits, const int32_t* topk_idx, int N, int E, int k) {
  RouterStats s;
  s.prob_sum.assign(E, 0.0);
  s.assign.assign(E, 0.0);
  s.tokens = N;
  for (long i = 0; i < N; i++)
    for (int j = 0; j < E; j++) s.prob_sum[j] += probs[i * E + j];
  for (long a = 0; a < (long)N * k; a++) s.assign[topk_idx[a]] += 1.0;
  if (logits)
    for (long i = 0; i < N; i++) {
      double lse = logsumexp(logits + i * E, E);
      s.z_sum += lse * lse;
    }
  return s;
}

double aux_loss_value(const RouterStats& s, int E, int k, AuxLossType type) {
  if (type == AuxLossType::None || s.tokens == 0) return 0.0;
  double L = 0;
  for (int j = 0; j < E; j++) {
    const double P = s.prob_sum[j] / s.tokens;
    if (type == AuxLossType::Skywork)
      L += (1.0 / E - P) * (1.0 / E - P);
    else
      L += E * (s.assign[j] / (s.tokens * k)) * P;  // f_j counts as a constant
  }
  return L;
}

double z_loss_value(const RouterStats& s) { return s.tokens ? s.z_sum / s.tokens : 0.0; }

template <class T>
void aux_loss_backward_stats(T* dprobs, double dL, const RouterStats& s, int N, int E, int k, AuxLossType type) {
  if (type == AuxLossType::None || s.tokens == 0) return;
  // d(aux)/d(g_ij) depends only on j: Skywork -2 (1/E - P_j) / N, Switch E f_j / N (N global).
  std::vector<double> c(E);
  for (int j = 0; j < E; j++)
    c[j] = type == AuxLossType::Skywork ? -2.0 * (1.0 / E - s.prob_sum[j] / s.tokens) / s.tokens * dL
                                        : E * (s.assign[j] / (s.tokens * k)) / s.tokens * dL;
  for (long i = 0; i < N; i++)
    for (int j = 0; j < E; j++) dprobs[i * E + j] += T(c[j]);
}

template <class T>
double aux_loss_forward(const T* probs, const int32_t* topk_idx, int N, int E, int k, AuxLossType type) {
  if (type == AuxLossType::None || N == 0) return 0.0;
  return aux_loss_value(router_stats<T>(probs, nullptr, topk_idx, N, E, k), E, k, type);
}

template <class T>
void aux_loss_backward(T* dprobs, double dL, const T* probs, const int32_t* topk_idx, int N, int E, int k,
                       AuxLossType type) {
  if (type == AuxLossType::None || N == 0) return;
  aux_loss_backward_stats(dprobs, dL, router_stats<T>(probs, nullptr, topk_idx, N, E, k), N, E, k, type);
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
void z_loss_backward_tokens(T* dlogits, double dL, const T* logits, int N, int E, double tokens) {
  // d(lse^2)/dz_j = 2 lse softmax(z)_j
  for (long i = 0; i < N; i++) {
    const T* z = logits + i * E;
    double lse = logsumexp(z, E);
    for (int j = 0; j < E; j++) dlogits[i * E + j] += T(dL * 2.0 * lse * std::exp(z[j] - lse) / tokens);
  }
}

template <class T>
void z_loss_backward(T* dlogits, double dL, const T* logits, int N, int E) {
  z_loss_backward_tokens(dlogits, dL, logits, N, E, double(N));
}

template double aux_loss_forward<float>(const float*, const int32_t*, int, int, int, AuxLossType);
template double aux_loss_forward<double>(const double*, const int32_t*, int, int, int, AuxLossType);
template void aux_loss_backward<float>(float*, double, const float*, const int32_t*, int, int, int, AuxLossType);
template void aux_loss_backward<double>(double*, double, const double*, const int32_t*, int, int, int,
                                        AuxLossType);
template RouterStats router_stats<float>(const float*, const float*, const int32_t*, int, int, int);
template RouterStats router_stats<double>(const double*, const double*, const int32_t*, int, int, int);
template void aux_loss_backward_stats<float>(float*, double, const RouterStats&, int, int, int, AuxLossType);
template void aux_loss_backward_stats<double>(double*, double, const RouterStats&, int, int, int, AuxLossType);
template void z_loss_backward_tokens<float>(float*, double, const float*, int, int, double);
template void z_loss_backward_tokens<double>(double*, double, const double*, int, int, double);
template double z_loss_forward<float>(const float*, int, int);
template double z_loss_forward<double>(const double*, int, int);
template void z_loss_backward<float>(float*, double, const float*, int, int);
template void z_loss_backward<double>(double*, double, const double*, int, int);

}  // namespace sky
