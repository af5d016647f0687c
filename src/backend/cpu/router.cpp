#include "backend/cpu/router.h"

#include <cmath>

#include "core/error.h"

namespace sky {

// Mean and unbiased std of one token's logits. With E == 1 or constant logits std is 0: z~ is then
// taken as 0 (uniform softmax) and no gradient flows through the normalization.
template <class T>
static void logit_stats(const T* z, int E, double& mu, double& sd) {
  mu = 0;
  for (int i = 0; i < E; i++) mu += z[i];
  mu /= E;
  double ss = 0;
  for (int i = 0; i < E; i++) ss += (z[i] - mu) * (z[i] - mu);
  sd = E > 1 ? std::sqrt(ss / (E - 1)) : 0.0;
}

template <class T>
void router_forward(T* probs, int32_t* topk_idx, T* topk_w, const T* logits, int N, const RouterOptions& o,
                    const T* bias) {
  const int E = o.num_experts, k = o.top_k;
  SKY_CHECK(E >= 1 && k >= 1 && k <= E, "router: need 1 <= top_k ({}) <= num_experts ({})", k, E);
  for (int n = 0; n < N; n++) {
    const T* z = logits + (long)n * E;
    T* g = probs + (long)n * E;
    // z~ is written straight into g, then the softmax runs in place.
    if (o.logits_norm) {
      double mu, sd;
      logit_stats(z, E, mu, sd);
      double scale = sd > 0 ? o.lambda / sd : 0.0;
      for (int i = 0; i < E; i++) g[i] = T((z[i] - mu) * scale);
    } else {
      for (int i = 0; i < E; i++) g[i] = z[i];
    }
    if (o.sigmoid) {
      for (int i = 0; i < E; i++) g[i] = T(1.0 / (1.0 + std::exp(-double(g[i]))));
    } else {
      T mx = g[0];
      for (int i = 1; i < E; i++) mx = g[i] > mx ? g[i] : mx;
      double sum = 0;
      for (int i = 0; i < E; i++) {
        g[i] = std::exp(g[i] - mx);
        sum += g[i];
      }
      for (int i = 0; i < E; i++) g[i] = T(g[i] / sum);
    }

    // Top-k by repeated scans (k is tiny). Strict '>' over ascending i sends ties to the lower index.
    // A selection bias moves which experts win, never their weights.
    int32_t* idx = topk_idx + (long)n * k;
    auto key = [&](int i) { return bias ? double(g[i]) + double(bias[i]) : double(g[i]); };
    double S = 0;
    for (int s = 0; s < k; s++) {
      int best = -1;
      double kb = 0;
      for (int i = 0; i < E; i++) {
        bool taken = false;
        for (int t = 0; t < s; t++) taken |= idx[t] == i;
        if (taken) continue;
        const double ki = key(i);
        if (best < 0 || ki > kb) best = i, kb = ki;
      }
      idx[s] = best;
      S += g[best];
    }
    // S >= max g > 0 (sigmoid scores are positive too).
    const double f = o.renormalize ? o.scale / S : o.scale;
    for (int s = 0; s < k; s++) topk_w[(long)n * k + s] = T(g[idx[s]] * f);
  }
}

template <class T>
void router_backward(T* dlogits, const T* dprobs, const T* dtopk_w, const T* logits, const T* probs,
                     const int32_t* topk_idx, int N, const RouterOptions& o) {
  const int E = o.num_experts, k = o.top_k;
  for (int n = 0; n < N; n++) {
    const T* z = logits + (long)n * E;
    const T* g = probs + (long)n * E;
    const int32_t* idx = topk_idx + (long)n * k;
    const T* dp = dprobs ? dprobs + (long)n * E : nullptr;
    const T* dw = dtopk_w ? dtopk_w + (long)n * k : nullptr;
    T* dz = dlogits + (long)n * E;

    // Renormalized, w_s = scale * g_s / S  =>  dL/dg_j (selected) = scale * (dw_j - sum_s dw_s g_s / S) / S;
    // else w_s = scale * g_s  =>  dL/dg_j = scale * dw_j.
    double S = 0, wdw = 0;
    for (int s = 0; s < k; s++) S += g[idx[s]];
    if (dw && o.renormalize)
      for (int s = 0; s < k; s++) wdw += dw[s] * (g[idx[s]] / S);
    const double f = o.renormalize ? o.scale / S : o.scale;
    // Gradient at the scores, recomputed on the fly so no per-token scratch is needed.
    auto dg = [&](int i) {
      double v = dp ? dp[i] : 0.0;
      if (dw)
        for (int s = 0; s < k; s++)
          if (idx[s] == i) v += (dw[s] - wdw) * f;
      return v;
    };
    double c = 0;  // softmax backward: dz~_i = g_i (dg_i - sum_j g_j dg_j)
    if (!o.sigmoid)
      for (int i = 0; i < E; i++) c += g[i] * dg(i);
    // sigmoid backward: dz~_i = g_i (1 - g_i) dg_i
    auto dzt = [&](int i) { return o.sigmoid ? g[i] * (1.0 - g[i]) * dg(i) : g[i] * (dg(i) - c); };
    if (!o.logits_norm) {
      for (int i = 0; i < E; i++) dz[i] += T(dzt(i));
      continue;
    }
    // z~ = lambda * u / sd with u = z - mean(z), sd = sqrt(sum u^2 / (E-1)). With y = u / sd and
    // dy = lambda * dz~:  dz_i = (dy_i - mean(dy) - y_i * sum_j(dy_j y_j) / (E-1)) / sd.
    double mu, sd;
    logit_stats(z, E, mu, sd);
    if (sd == 0) continue;
    double mdy = 0, ydy = 0;
    for (int i = 0; i < E; i++) {
      double dy = o.lambda * dzt(i);
      mdy += dy;
      ydy += dy * (z[i] - mu) / sd;
    }
    mdy /= E;
    for (int i = 0; i < E; i++) {
      double dy = o.lambda * dzt(i);
      double y = (z[i] - mu) / sd;
      dz[i] += T((dy - mdy - y * ydy / (E - 1)) / sd);
    }
  }
}

template void router_forward<float>(float*, int32_t*, float*, const float*, int, const RouterOptions&, const float*);
template void router_forward<double>(double*, int32_t*, double*, const double*, int, const RouterOptions&,
                                     const double*);
template void router_backward<float>(float*, const float*, const float*, const float*, const float*,
                                     const int32_t*, int, const RouterOptions&);
template void router_backward<double>(double*, const double*, const double*, const double*, const double*,
                                      const int32_t*, int, const RouterOptions&);

}  // namespace sky
