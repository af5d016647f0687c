#include "moe/moe_layer.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "dist/communicator.h"
#include "backend/backend.h"

namespace sky {

namespace {

// Token rows [begin, end) of share `i` of `count` over N tokens.
void share_rows(int N, const MoeParallel& p, int& begin, int& end) {
  const long q = N / p.share_count, r = N % p.share_count, i = p.share_index;
  begin = int(i * q + std::min(i, r));
  end = begin + int(q + (i < r ? 1 : 0));
}

// Picks the routed rows this rank handles and, with an exchange, agrees with the other ranks on how
// many rows of each held expert arrive from each of them.
template <class T>
void select_rows(MoeCache<T>& c, int N, const MoeWeights<T>& w, const MoeParallel& p) {
  const Dispatch& d = c.disp;
  const int E = w.E, held = w.held();
  const long R = d.offsets[E];
  int tb, te;
  share_rows(N, p, tb, te);
  c.sel.clear();
  c.sel_of_row.assign(R, -1);
  for (int e = 0; e < E; e++) {
    const bool mine = e >= w.e_begin && e < w.e_begin + held;
    if (!p.exchange && !mine) continue;  // another rank of the partial group computes it
    for (long r = d.offsets[e]; r < d.offsets[e + 1]; r++) {
      if (d.row_token[r] < tb || d.row_token[r] >= te) continue;
      c.sel_of_row[r] = int32_t(c.sel.size());
      c.sel.push_back(int32_t(r));
    }
  }
  c.held_offsets.assign(held + 1, 0);
  if (!p.exchange) {
    for (size_t i = 0; i < c.sel.size(); i++) {
      int e = 0;
      while (c.sel[i] >= d.offsets[e + 1]) e++;
      c.held_offsets[e - w.e_begin + 1]++;
    }
    for (int j = 0; j < held; j++) c.held_offsets[j + 1] += c.held_offsets[j];
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    Communicator& g = *p.exchange;
    const int P = g.size();
    // Rows per expert among the selected rows, sent to every rank (E floats each: counts are small).
    std::vector<float> cnt(E, 0.0f), all(size_t(P) * E);
    for (int32_t r : c.sel) {
      int e = 0;
      while (r >= d.offsets[e + 1]) e++;
      cnt[e] += 1;
    }
    std::vector<float> rep(size_t(P) * E);
    for (int q = 0; q < P; q++) std::memcpy(&rep[size_t(q) * E], cnt.data(), E * sizeof(float));
    g.all_to_all_v(rep.data(), std::vector<size_t>(P, E), all.data(), std::vector<size_t>(P, E));
    c.send_counts.assign(P, 0);
    for (int e = 0; e < E; e++) c.send_counts[p.owner[e]] += size_t(cnt[e]) * w.H;
    c.recv_counts.assign(P, 0);
    std::vector<long> src_begin(P + 1, 0);  // first received row from each source
    for (int q = 0; q < P; q++) {
      long rows = 0;
      for (int j = 0; j < held; j++) rows += long(all[size_t(q) * E + w.e_begin + j]);
      c.recv_counts[q] = size_t(rows) * w.H;
      src_begin[q + 1] = src_begin[q] + rows;
    }
    // Received rows come source-major, expert-minor; compute wants them expert-major.
    c.perm.clear();
    for (int j = 0; j < held; j++) {
      for (int q = 0; q < P; q++) {
        long before = 0;  // rows of earlier held experts from source q
        for (int i = 0; i < j; i++) before += long(all[size_t(q) * E + w.e_begin + i]);
        const long n = long(all[size_t(q) * E + w.e_begin + j]);
        for (long i = 0; i < n; i++) c.perm.push_back(int32_t(src_begin[q] + before + i));
      }
      c.held_offsets[j + 1] = int32_t(c.perm.size());
    }
  } else {
    fail("moe: expert exchange is only implemented in float");
  }
}

// Sends H-wide rows to their experts' owners (forward: selected rows -> expert-major computed rows)
// or back (reverse: computed rows -> selected rows).
template <class T>
void exchange_rows(const MoeCache<T>& c, const MoeParallel& p, int H, const T* in, T* out, bool reverse) {
  if constexpr (std::is_same_v<T, float>) {
    const long Rr = long(c.perm.size());
    std::vector<float> buf(size_t(Rr) * H);  // received rows in source-major order
    if (!reverse) {
      p.exchange->all_to_all_v(in, c.send_counts, buf.data(), c.recv_counts);
      for (long i = 0; i < Rr; i++) std::memcpy(out + i * H, &buf[size_t(c.perm[i]) * H], H * sizeof(float));
    } else {
      for (long i = 0; i < Rr; i++) std::memcpy(&buf[size_t(c.perm[i]) * H], in + i * H, H * sizeof(float));
      p.exchange->all_to_all_v(buf.data(), c.recv_counts, out, c.send_counts);
    }
  } else {
    fail("moe: expert exchange is only implemented in float");
  }
}

template <class T>
void reduce_partial(const MoeParallel& p, T* data, size_t n) {
  if (p.partial) p.partial->all_reduce_sum(data, n);
}

// Router statistics of the layer (of the global batch after reduce_stats), aux loss, z-loss, entropy.
template <class T>
void finish_stats(MoeCache<T>& c, int N, int E, int k, const MoeOptions& o) {
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

}  // namespace

template <class T>
void moe_forward(Backend& be, T* out, const T* x, int N, const MoeWeights<T>& w, const MoeOptions& o,
                 MoeCache<T>& c) {
  const int H = w.H, I = w.I, E = w.E, k = o.router.top_k, held = w.held();
  const MoeParallel& par = o.par;
  SKY_CHECK(o.router.num_experts == E, "moe: router has {} experts, weights have {}", o.router.num_experts, E);
  c.logits.resize((long)N * E);
  c.probs.resize((long)N * E);
  c.topk_idx.resize((long)N * k);
  c.topk_w.resize((long)N * k);
  be.matmul(c.logits.data(), x, w.router, N, H, E, /*exact=*/true);
  be.router(c.probs.data(), c.topk_idx.data(), c.topk_w.data(), c.logits.data(), N, o.router, w.select_bias);
  make_dispatch_into(c.disp, c.topk_idx.data(), c.probs.data(), N, E, k, o.capacity_factor, o.policy);
  const Dispatch& d = c.disp;
  select_rows(c, N, w, par);

  const long S = long(c.sel.size()), Rr = c.held_offsets[held];
  c.xg.resize(S * H);
  c.y.resize(S * H);
  // Token of each selected row (the permute), and the selected row of each (token, slot) (the combine).
  c.sel_token.resize(S);
  for (long i = 0; i < S; i++) c.sel_token[i] = d.row_token[c.sel[i]];
  c.slot_sel.resize((long)N * k);
  for (long i = 0; i < (long)N * k; i++) c.slot_sel[i] = d.slot_row[i] < 0 ? -1 : c.sel_of_row[d.slot_row[i]];
  be.gather_rows(c.xg.data(), x, c.sel_token.data(), S, H);
  const T* xr = c.xg.data();
  T* yr = c.y.data();
  if (par.exchange) {
    c.xr.resize(Rr * H);
    c.yr.resize(Rr * H);
    exchange_rows(c, par, H, c.xg.data(), c.xr.data(), false);
    xr = c.xr.data();
    yr = c.yr.data();
  }
  c.h1.resize(Rr * I);
  c.h3.resize(Rr * I);
  bool typed = false;
  if constexpr (std::is_same_v<T, float>) {
    if (w.q1) {  // typed weights (inference): one grouped call over the held experts' rows
      be.grouped_swiglu(yr, c.h1.data(), c.h3.data(), xr, c.held_offsets.data(), held, w.q1, w.q3, w.q2, H, I);
      typed = true;
    }
  }
  if (!typed) {
    c.act.resize(Rr * I);
    // Each held expert's rows are contiguous, so one GEMM per expert; the SwiGLU runs over all rows.
    for (int j = 0; j < held; j++) {
      long b = c.held_offsets[j], cnt = c.held_offsets[j + 1] - b;
      if (cnt == 0) continue;
      be.matmul(&c.h1[b * I], xr + b * H, w.w1 + (long)j * I * H, cnt, H, I);
      be.matmul(&c.h3[b * I], xr + b * H, w.w3 + (long)j * I * H, cnt, H, I);
    }
    be.swiglu(c.act.data(), c.h1.data(), c.h3.data(), Rr * I);
    for (int j = 0; j < held; j++) {
      long b = c.held_offsets[j], cnt = c.held_offsets[j + 1] - b;
      if (cnt == 0) continue;
      be.matmul(yr + b * H, &c.act[b * I], w.w2 + (long)j * H * I, cnt, I, H);
    }
  }
  if (par.exchange) exchange_rows(c, par, H, c.yr.data(), c.y.data(), true);

  // Dropped slots and experts another rank of the partial group computes contribute nothing (the
  // other weights are not renormalized).
  be.combine(out, c.y.data(), c.slot_sel.data(), c.topk_w.data(), N, k, H);
  reduce_partial(par, out, size_t(N) * H);
  finish_stats(c, N, E, k, o);
}


template <class T>
void moe_backward(Backend& be, T* dx, const MoeGrads<T>& g, const T* dout, const T* x, int N, const MoeWeights<T>& w,
                  const MoeOptions& o, const MoeCache<T>& c, double aux_coef, double z_coef) {
  const int H = w.H, I = w.I, E = w.E, k = o.router.top_k, held = w.held();
  const MoeParallel& par = o.par;
  const long S = long(c.sel.size()), Rr = c.held_offsets[held];

  // Combine backward: dy_row = w * dout[n], dw = <dout[n], y_row> (0 for dropped slots).
  c.dtopk_w.resize((long)N * k);
  c.d_rows.resize(S * H);
  T* dy = c.d_rows.data();
  be.combine_backward(dy, c.dtopk_w.data(), dout, c.y.data(), c.slot_sel.data(), c.topk_w.data(), N, k, H);
  reduce_partial(par, c.dtopk_w.data(), c.dtopk_w.size());  // every rank holds part of each output
  T* dyr = dy;
  if (par.exchange) {
    c.d_recv.resize(Rr * H);
    exchange_rows(c, par, H, dy, c.d_recv.data(), false);
    dyr = c.d_recv.data();
  }
  const T* xr = par.exchange ? c.xr.data() : c.xg.data();

  // Experts backward: w2, SwiGLU, then w1 and w3.
  c.dact.assign(Rr * I, T(0));
  for (int j = 0; j < held; j++) {
    long b = c.held_offsets[j], cnt = c.held_offsets[j + 1] - b;
    if (cnt == 0) continue;
    be.matmul_backward(&c.dact[b * I], g.w2 ? g.w2 + (long)j * H * I : nullptr, dyr + b * H, &c.act[b * I],
                    w.w2 + (long)j * H * I, cnt, I, H);
  }
  c.dh1.assign(Rr * I, T(0));
  c.dh3.assign(Rr * I, T(0));
  be.swiglu_backward(c.dh1.data(), c.dh3.data(), c.dact.data(), c.h1.data(), c.h3.data(), Rr * I);
  // The gradient of the computed rows' inputs reuses their output-gradient buffer (dead now).
  T* dxr = dx ? dyr : nullptr;
  if (dxr) std::memset(dxr, 0, sizeof(T) * Rr * H);
  for (int j = 0; j < held; j++) {
    long b = c.held_offsets[j], cnt = c.held_offsets[j + 1] - b;
    if (cnt == 0) continue;
    const long off = (long)j * I * H;
    be.matmul_backward(dxr ? dxr + b * H : nullptr, g.w1 ? g.w1 + off : nullptr, &c.dh1[b * I], xr + b * H,
                    w.w1 + off, cnt, H, I);
    be.matmul_backward(dxr ? dxr + b * H : nullptr, g.w3 ? g.w3 + off : nullptr, &c.dh3[b * I], xr + b * H,
                    w.w3 + off, cnt, H, I);
  }
  if (dx) {
    T* dxg = dy;
    if (par.exchange) exchange_rows(c, par, H, dxr, dxg, true);
    // With a partial group each rank adds its rows into a zeroed buffer that is then summed, so the
    // router's (replicated) contribution below is counted once.
    T* acc = dx;
    if (par.partial) {
      c.d_sum.assign(size_t(N) * H, T(0));
      acc = c.d_sum.data();
    }
    be.unpermute_add(acc, dxg, c.slot_sel.data(), N, k, H);
    if (par.partial) {
      reduce_partial(par, acc, size_t(N) * H);
      for (long i = 0; i < (long)N * H; i++) dx[i] += acc[i];
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
  be.router_backward(c.dlogits.data(), dprobs, c.dtopk_w.data(), c.logits.data(), c.probs.data(), c.topk_idx.data(),
                  N, o.router);
  if (z_coef != 0) z_loss_backward_tokens(c.dlogits.data(), z_coef, c.logits.data(), N, E, c.stats.tokens);
  be.matmul_backward(dx, g.router, c.dlogits.data(), x, w.router, N, H, E, /*exact=*/true);
}

template void moe_forward<float>(Backend&, float*, const float*, int, const MoeWeights<float>&, const MoeOptions&,
                                 MoeCache<float>&);
template void moe_forward<double>(Backend&, double*, const double*, int, const MoeWeights<double>&, const MoeOptions&,
                                  MoeCache<double>&);
template void moe_backward<float>(Backend&, float*, const MoeGrads<float>&, const float*, const float*, int,
                                  const MoeWeights<float>&, const MoeOptions&, const MoeCache<float>&, double,
                                  double);
template void moe_backward<double>(Backend&, double*, const MoeGrads<double>&, const double*, const double*, int,
                                   const MoeWeights<double>&, const MoeOptions&, const MoeCache<double>&, double,
                                   double);

}  // namespace sky
