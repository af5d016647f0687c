#include "moe/moe_layer.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/matmul.h"
#include "ops/swiglu.h"

namespace sky {

template <class T>
void moe_forward(T* out, const T* x, int N, const MoeWeights<T>& w, const MoeOptions& o, MoeCache<T>& c) {
  const int H = w.H, I = w.I, E = w.E, k = o.router.top_k;
  SKY_CHECK(o.router.num_experts == E, "moe: router has {} experts, weights have {}", o.router.num_experts, E);
  c.logits.resize((long)N * E);
  c.probs.resize((long)N * E);
  c.topk_idx.resize((long)N * k);
  c.topk_w.resize((long)N * k);
  matmul_forward(c.logits.data(), x, w.router, N, H, E);
  router_forward(c.probs.data(), c.topk_idx.data(), c.topk_w.data(), c.logits.data(), N, o.router);
  make_dispatch_into(c.disp, c.topk_idx.data(), c.probs.data(), N, E, k, o.capacity_factor, o.policy);
  const Dispatch& d = c.disp;

  const long R = d.offsets[E];
  c.xg.resize(R * H);
  c.h1.resize(R * I);
  c.h3.resize(R * I);
  c.act.resize(R * I);
  c.y.resize(R * H);
#pragma omp parallel for schedule(static) if (R * H > 65536)
  for (long r = 0; r < R; r++) std::memcpy(&c.xg[r * H], x + (long)d.row_token[r] * H, sizeof(T) * H);

  // Each expert's rows are contiguous, so one GEMM per expert; the SwiGLU runs over all rows at once.
  for (int e = 0; e < E; e++) {
    long b = d.offsets[e], cnt = d.offsets[e + 1] - b;
    if (cnt == 0) continue;
    matmul_forward(&c.h1[b * I], &c.xg[b * H], w.w1 + (long)e * I * H, cnt, H, I);
    matmul_forward(&c.h3[b * I], &c.xg[b * H], w.w3 + (long)e * I * H, cnt, H, I);
  }
  swiglu_forward(c.act.data(), c.h1.data(), c.h3.data(), R * I);
  for (int e = 0; e < E; e++) {
    long b = d.offsets[e], cnt = d.offsets[e + 1] - b;
    if (cnt == 0) continue;
    matmul_forward(&c.y[b * H], &c.act[b * I], w.w2 + (long)e * H * I, cnt, I, H);
  }

  // Combine per token (slot_row) rather than scatter per row: no write conflicts, fixed summation order.
#pragma omp parallel for schedule(static) if ((long)N * H > 65536)
  for (long n = 0; n < N; n++) {
    T* on = out + n * H;
    for (int h = 0; h < H; h++) on[h] = T(0);
    for (int s = 0; s < k; s++) {
      long r = d.slot_row[n * k + s];
      if (r < 0) continue;  // dropped: contributes nothing, the other weights are not renormalized
      T wt = c.topk_w[n * k + s];
      for (int h = 0; h < H; h++) on[h] += wt * c.y[r * H + h];
    }
  }

  c.stats = router_stats(c.probs.data(), c.logits.data(), c.topk_idx.data(), N, E, k);
  if (o.reduce_stats) {
    std::vector<double> v = c.stats.pack();
    o.reduce_stats(v.data(), v.size());
    c.stats.unpack(v, E);
  }
  c.aux_loss = aux_loss_value(c.stats, E, k, o.aux);
  c.z_loss = z_loss_value(c.stats);
  double ent = 0;
  for (long i = 0; i < (long)N * E; i++)
    if (c.probs[i] > 0) ent -= c.probs[i] * std::log((double)c.probs[i]);
  c.entropy = N ? ent / N : 0.0;
}

template <class T>
void moe_backward(T* dx, const MoeGrads<T>& g, const T* dout, const T* x, int N, const MoeWeights<T>& w,
                  const MoeOptions& o, const MoeCache<T>& c, double aux_coef, double z_coef) {
  const int H = w.H, I = w.I, E = w.E, k = o.router.top_k;
  const Dispatch& d = c.disp;
  const long R = d.offsets[E];

  // Combine backward: dy_row = w * dout[n], dw = <dout[n], y_row> (0 for dropped slots).
  c.dtopk_w.assign((long)N * k, T(0));
  c.d_rows.resize(R * H);
  T* dy = c.d_rows.data();
#pragma omp parallel for schedule(static) if ((long)N * H > 65536)
  for (long n = 0; n < N; n++) {
    const T* dn = dout + n * H;
    for (int s = 0; s < k; s++) {
      long r = d.slot_row[n * k + s];
      if (r < 0) continue;
      T wt = c.topk_w[n * k + s];
      double dot = 0;
      for (int h = 0; h < H; h++) {
        dot += dn[h] * c.y[r * H + h];
        dy[r * H + h] = wt * dn[h];
      }
      c.dtopk_w[n * k + s] = T(dot);
    }
  }

  // Experts backward: w2, SwiGLU, then w1 and w3.
  c.dact.assign(R * I, T(0));
  for (int e = 0; e < E; e++) {
    long b = d.offsets[e], cnt = d.offsets[e + 1] - b;
    if (cnt == 0) continue;
    matmul_backward(&c.dact[b * I], g.w2 ? g.w2 + (long)e * H * I : nullptr, dy + b * H, &c.act[b * I],
                    w.w2 + (long)e * H * I, cnt, I, H);
  }
  c.dh1.assign(R * I, T(0));
  c.dh3.assign(R * I, T(0));
  swiglu_backward(c.dh1.data(), c.dh3.data(), c.dact.data(), c.h1.data(), c.h3.data(), R * I);
  // dy is dead now; its rows take the gradient of xg.
  T* dxg = dx ? c.d_rows.data() : nullptr;
  if (dxg) std::memset(dxg, 0, sizeof(T) * R * H);
  for (int e = 0; e < E; e++) {
    long b = d.offsets[e], cnt = d.offsets[e + 1] - b;
    if (cnt == 0) continue;
    const long off = (long)e * I * H;
    matmul_backward(dxg ? dxg + b * H : nullptr, g.w1 ? g.w1 + off : nullptr, &c.dh1[b * I], &c.xg[b * H],
                    w.w1 + off, cnt, H, I);
    matmul_backward(dxg ? dxg + b * H : nullptr, g.w3 ? g.w3 + off : nullptr, &c.dh3[b * I], &c.xg[b * H],
                    w.w3 + off, cnt, H, I);
  }
  if (dx) {
#pragma omp parallel for schedule(static) if ((long)N * H > 65536)
    for (long n = 0; n < N; n++)
      for (int s = 0; s < k; s++) {
        long r = d.slot_row[n * k + s];
        if (r < 0) continue;
        for (int h = 0; h < H; h++) dx[n * H + h] += dxg[r * H + h];
      }
  }

  // Router: aux loss -> dprobs, renormalized weights -> dtopk_w, both through the router; z-loss on
  // the raw logits; then the gate matmul.
  const T* dprobs = nullptr;
  if (o.aux != AuxLossType::None && aux_coef != 0) {
    c.dprobs.assign((long)N * E, T(0));
    aux_loss_backward_stats(c.dprobs.data(), aux_coef, c.stats, N, E, k, o.aux);
    dprobs = c.dprobs.data();
  }
  c.dlogits.assign((long)N * E, T(0));
  router_backward(c.dlogits.data(), dprobs, c.dtopk_w.data(), c.logits.data(), c.probs.data(), c.topk_idx.data(),
                  N, o.router);
  if (z_coef != 0) z_loss_backward_tokens(c.dlogits.data(), z_coef, c.logits.data(), N, E, c.stats.tokens);
  matmul_backward(dx, g.router, c.dlogits.data(), x, w.router, N, H, E);
}

template void moe_forward<float>(float*, const float*, int, const MoeWeights<float>&, const MoeOptions&,
                                 MoeCache<float>&);
template void moe_forward<double>(double*, const double*, int, const MoeWeights<double>&, const MoeOptions&,
                                  MoeCache<double>&);
template void moe_backward<float>(float*, const MoeGrads<float>&, const float*, const float*, int,
                                  const MoeWeights<float>&, const MoeOptions&, const MoeCache<float>&, double,
                                  double);
template void moe_backward<double>(double*, const MoeGrads<double>&, const double*, const double*, int,
                                   const MoeWeights<double>&, const MoeOptions&, const MoeCache<double>&, double,
                                   double);

}  // namespace sky
