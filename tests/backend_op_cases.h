#pragma once
// The op table of the backend harness: one entry per op of backend/backend.h (a double overload is
// an entry of its own), each with the small, odd shapes tests/test_backend_ops.cpp compares every
// backend against "ref" at, the larger shapes bench/bench_backend_ops.cpp times, and a function
// that draws the op's inputs from a seed and leaves it ready to run on any backend. The same seed
// gives the same inputs, so two backends see identical data.
// Header-only and free of test libraries: the benchmark (linked with skymoe_lib alone) includes it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/rope_table.h"
#include "model/config.h"
#include "core/weight.h"

namespace skyops {

// Every size an op may take; a case reads the ones it names and leaves the rest 0.
struct Dims {
  int N = 0, R = 0, H = 0, I = 0, O = 0, k = 0, E = 0, V = 0;
  int B = 0, T = 0, heads = 0, kv = 0, hd = 0;
  std::string w = "";    // weight or KV cache type: f32, bf16, fp8-row, fp8-tensor
  std::string opt = "";  // a case's variant (e.g. which gradient is null)

  std::string str() const {
    std::string s;
    auto put = [&](const char* k, int v) {
      if (v) s += fmt::format("{}{}={}", s.empty() ? "" : " ", k, v);
    };
    put("N", N), put("R", R), put("H", H), put("I", I), put("O", O), put("k", k), put("E", E), put("V", V);
    put("B", B), put("T", T), put("heads", heads), put("kv", kv), put("hd", hd);
    if (!w.empty()) s += " " + w;
    if (!opt.empty()) s += " " + opt;
    return s;
  }
};

// One op at one shape with its inputs drawn. Owns every buffer; run() may be called repeatedly
// (the benchmark does; accumulating and in-place ops then keep accumulating, which costs the same).
struct Prepared {
  struct Out {
    std::string name;
    const float* f = nullptr;
    const double* d = nullptr;
    size_t n = 0;
  };
  std::function<void(sky::Backend&)> run;
  std::vector<Out> outs;        // what run() writes, compared between backends
  double rtol = 1e-4;           // |a - b| <= rtol (|b| + rms(b)), b from ref
  double flops = 0, bytes = 0;  // per run, for GFLOP/s and GB/s (0: not quoted)

  std::mt19937_64 rng;
  std::vector<std::shared_ptr<void>> keep;

  template <class X>
  X* own(X x) {
    auto s = std::make_shared<X>(std::move(x));
    keep.push_back(s);
    return s.get();
  }
  template <class T>
  T* zeros(size_t n) {
    return own(std::vector<T>(n))->data();
  }
  // Fresh normal values; also the initial contents of outputs, so "writes" and "accumulates" are
  // both checked (a backend that adds where it should write, or skips an element, disagrees).
  template <class T>
  T* rnd(size_t n, double scale = 1.0) {
    T* p = zeros<T>(n);
    std::normal_distribution<double> d(0.0, scale);
    for (size_t i = 0; i < n; i++) p[i] = T(d(rng));
    return p;
  }
  int32_t* ints(size_t n, int hi) {  // uniform in [0, hi)
    int32_t* p = zeros<int32_t>(n);
    for (size_t i = 0; i < n; i++) p[i] = int32_t(rng() % uint64_t(hi));
    return p;
  }
  void out(const std::string& name, const float* p, size_t n) { outs.push_back({name, p, nullptr, n}); }
  void out(const std::string& name, const double* p, size_t n) { outs.push_back({name, nullptr, p, n}); }
};

struct OpCase {
  const char* op;               // the Backend method it calls
  bool f64;                     // its double overload
  std::vector<Dims> shapes;     // compared with ref by the test
  std::vector<Dims> bench;      // timed by the benchmark
  std::vector<Dims> bench_ref;  // ref's (plain loops: smaller); empty: the same as bench
  std::function<void(Prepared&, const Dims&)> make;
};

inline std::unique_ptr<Prepared> prepare(const OpCase& c, const Dims& d, uint64_t seed) {
  auto p = std::make_unique<Prepared>();
  p->rng.seed(seed * 0x9E3779B97F4A7C15ull + 1);
  c.make(*p, d);
  return p;
}

namespace detail {

using sky::Backend;
template <class T>
inline constexpr double kRtol = std::is_same_v<T, double> ? 1e-12 : 1e-4;

// Quantized weights: the CPU may run them through bf16 dot products (activations rounded to bf16),
// so they agree with ref to about 1e-3 of the output's size, not to f32 rounding.
inline double weight_rtol(const std::string& kind) { return kind == "f32" ? 1e-4 : 1e-2; }

// A linear weight [O, I] of the given kind, scaled like an initialized layer (outputs O(1)).
inline const sky::QWeight* weight(Prepared& p, const std::string& kind, int O, int I) {
  const float* w = p.rnd<float>(size_t(O) * I, 1 / std::sqrt(double(I)));
  const sky::DType t = kind == "f32" ? sky::DType::F32 : kind == "bf16" ? sky::DType::BF16 : sky::DType::F8_E4M3;
  return p.own(sky::quantize_weight(w, O, I, t, kind == "fp8-row"));
}

// MoE routing of N tokens x k slots onto R = N k expert rows: each row used once (combine_backward
// writes dy rows, so two slots sharing one would race), about a fifth of the slots dropped (-1).
inline const int32_t* routing(Prepared& p, int N, int k) {
  int32_t* sel = p.zeros<int32_t>(size_t(N) * k);
  std::iota(sel, sel + size_t(N) * k, 0);
  std::shuffle(sel, sel + size_t(N) * k, p.rng);
  for (size_t i = 0; i < size_t(N) * k; i++)
    if (p.rng() % 5 == 0) sel[i] = -1;
  return sel;
}

template <class T>
void gather_rows(Prepared& p, const Dims& d) {
  const T* in = p.rnd<T>(size_t(d.N) * d.H);
  const int32_t* rows = p.ints(d.R, d.N);
  T* out = p.rnd<T>(size_t(d.R) * d.H);
  p.run = [=](Backend& b) { b.gather_rows(out, in, rows, d.R, d.H); };
  p.out("out", out, size_t(d.R) * d.H);
  p.rtol = kRtol<T>, p.bytes = 2.0 * d.R * d.H * sizeof(T);
}

template <class T>
void combine(Prepared& p, const Dims& d) {
  const size_t R = size_t(d.N) * d.k;
  const int32_t* sel = routing(p, d.N, d.k);
  const T *y = p.rnd<T>(R * d.H), *w = p.rnd<T>(R);
  T* out = p.rnd<T>(size_t(d.N) * d.H);
  p.run = [=](Backend& b) { b.combine(out, y, sel, w, d.N, d.k, d.H); };
  p.out("out", out, size_t(d.N) * d.H);
  p.rtol = kRtol<T>, p.flops = 2.0 * R * d.H, p.bytes = (R + d.N) * double(d.H) * sizeof(T);
}

template <class T>
void combine_backward(Prepared& p, const Dims& d) {
  const size_t R = size_t(d.N) * d.k;
  const int32_t* sel = routing(p, d.N, d.k);
  const T *y = p.rnd<T>(R * d.H), *w = p.rnd<T>(R), *dout = p.rnd<T>(size_t(d.N) * d.H);
  T *dy = p.rnd<T>(R * d.H), *dw = p.rnd<T>(R);
  p.run = [=](Backend& b) { b.combine_backward(dy, dw, dout, y, sel, w, d.N, d.k, d.H); };
  p.out("dy", dy, R * d.H), p.out("dw", dw, R);
  p.rtol = kRtol<T>, p.flops = 3.0 * R * d.H, p.bytes = (2 * R + d.N) * double(d.H) * sizeof(T);
}

template <class T>
void unpermute_add(Prepared& p, const Dims& d) {
  const size_t R = size_t(d.N) * d.k;
  const int32_t* sel = routing(p, d.N, d.k);
  const T* drows = p.rnd<T>(R * d.H);
  T* dx = p.rnd<T>(size_t(d.N) * d.H);
  p.run = [=](Backend& b) { b.unpermute_add(dx, drows, sel, d.N, d.k, d.H); };
  p.out("dx", dx, size_t(d.N) * d.H);
  p.rtol = kRtol<T>, p.bytes = (R + 2.0 * d.N) * d.H * sizeof(T);
}

// Router options from a case's variant: lnorm (logit normalization, lambda 1.3), sigmoid scores,
// no-renorm, scaled (routed scaling factor 2.5), groups (4 groups, the best 2 by max score: DeepSeek-V2),
// noaux (4 groups, the best 2 by their top-2 sum: V3), bias (a selection bias, drawn by the case).
inline sky::RouterOptions router_options(const Dims& d) {
  auto has = [&](const char* f) { return d.opt.find(f) != std::string::npos; };
  sky::RouterOptions o;
  o.num_experts = d.E;
  o.top_k = d.k;
  o.logits_norm = has("lnorm");
  o.lambda = o.logits_norm ? 1.3 : 1.0;
  o.sigmoid = has("sigmoid");
  o.renormalize = !has("no-renorm");
  o.scale = has("scaled") ? 2.5 : 1.0;
  if (has("groups") || has("noaux")) o.n_group = 4, o.topk_group = 2, o.group_top2_sum = has("noaux");
  return o;
}

inline void draw_select_bias(Prepared& p, const Dims& d, sky::RouterOptions& o) {
  if (d.opt.find("bias") != std::string::npos) o.select_bias = p.rnd<float>(d.E, 0.3);
}

template <class T>
void router(Prepared& p, const Dims& d) {
  sky::RouterOptions o = router_options(d);
  draw_select_bias(p, d, o);
  const size_t NE = size_t(d.N) * d.E, Nk = size_t(d.N) * d.k;
  const T* logits = p.rnd<T>(NE, 2.0);
  T *probs = p.rnd<T>(NE), *w = p.rnd<T>(Nk), *idx_t = p.rnd<T>(Nk);
  int32_t* idx = p.zeros<int32_t>(Nk);
  p.run = [=](Backend& b) {
    b.router(probs, idx, w, logits, d.N, o);
    for (size_t i = 0; i < Nk; i++) idx_t[i] = T(idx[i]);  // compared as values: a different pick differs by >= 1
  };
  p.out("probs", probs, NE), p.out("topk_w", w, Nk), p.out("topk_idx", idx_t, Nk);
  p.rtol = kRtol<T>, p.flops = 8.0 * NE;
}

template <class T>
void router_backward(Prepared& p, const Dims& d) {
  sky::RouterOptions o = router_options(d);
  draw_select_bias(p, d, o);
  const size_t NE = size_t(d.N) * d.E, Nk = size_t(d.N) * d.k;
  const T* logits = p.rnd<T>(NE, 2.0);
  T *probs = p.zeros<T>(NE), *w = p.zeros<T>(Nk);
  int32_t* idx = p.zeros<int32_t>(Nk);
  sky::backend("ref").router(probs, idx, w, logits, d.N, o);  // the forward the gradient belongs to
  const T* dprobs = d.opt.find("no-dprobs") != std::string::npos ? nullptr : p.rnd<T>(NE);
  const T* dw = d.opt.find("no-dw") != std::string::npos ? nullptr : p.rnd<T>(Nk);
  T* dlogits = p.rnd<T>(NE);
  p.run = [=](Backend& b) { b.router_backward(dlogits, dprobs, dw, logits, probs, idx, d.N, o); };
  p.out("dlogits", dlogits, NE);
  p.rtol = kRtol<T>, p.flops = 12.0 * NE;
}

template <class T>
void matmul(Prepared& p, const Dims& d) {
  const T *x = p.rnd<T>(size_t(d.N) * d.I), *w = p.rnd<T>(size_t(d.O) * d.I, 1 / std::sqrt(double(d.I)));
  T* y = p.rnd<T>(size_t(d.N) * d.O);
  const bool exact = d.opt == "exact";
  p.run = [=](Backend& b) { b.matmul(y, x, w, d.N, d.I, d.O, exact); };
  p.out("y", y, size_t(d.N) * d.O);
  p.rtol = kRtol<T>, p.flops = 2.0 * d.N * d.I * d.O;
}

template <class T>
void matmul_backward(Prepared& p, const Dims& d) {
  const T *x = p.rnd<T>(size_t(d.N) * d.I), *w = p.rnd<T>(size_t(d.O) * d.I, 1 / std::sqrt(double(d.I)));
  const T* dy = p.rnd<T>(size_t(d.N) * d.O);
  T* dx = d.opt == "dw-only" ? nullptr : p.rnd<T>(size_t(d.N) * d.I);
  T* dw = d.opt == "dx-only" ? nullptr : p.rnd<T>(size_t(d.O) * d.I);
  p.run = [=](Backend& b) { b.matmul_backward(dx, dw, dy, x, w, d.N, d.I, d.O); };
  if (dx) p.out("dx", dx, size_t(d.N) * d.I);
  if (dw) p.out("dw", dw, size_t(d.O) * d.I);
  p.rtol = kRtol<T>, p.flops = 2.0 * d.N * d.I * d.O * ((dx != nullptr) + (dw != nullptr));
}

inline void linear(Prepared& p, const Dims& d) {
  const sky::QWeight* w = weight(p, d.w, d.O, d.I);
  const float* x = p.rnd<float>(size_t(d.N) * d.I);
  float* y = p.rnd<float>(size_t(d.N) * d.O);
  p.run = [=](Backend& b) { b.linear(y, x, *w, d.N); };
  p.out("y", y, size_t(d.N) * d.O);
  p.rtol = weight_rtol(d.w), p.flops = 2.0 * d.N * d.I * d.O, p.bytes = double(w->bytes());
}

// Three products of one x, shaped like the q, k and v projections of GQA.
inline void linear_multi(Prepared& p, const Dims& d) {
  const float* x = p.rnd<float>(size_t(d.N) * d.I);
  const int widths[3] = {d.O, std::max(1, d.O / 4), std::max(1, d.O / 4)};
  auto* outs = p.zeros<sky::LinearOut>(3);
  for (int j = 0; j < 3; j++) {
    outs[j] = {p.rnd<float>(size_t(d.N) * widths[j]), weight(p, d.w, widths[j], d.I)};
    p.out(fmt::format("y{}", j), outs[j].y, size_t(d.N) * widths[j]);
    p.flops += 2.0 * d.N * d.I * widths[j], p.bytes += double(outs[j].w->bytes());
  }
  p.run = [=](Backend& b) { b.linear_multi(x, d.N, outs, 3); };
  p.rtol = weight_rtol(d.w);
}

// R rows spread at random over E experts, expert 1 always without rows and without weights.
inline void grouped_swiglu(Prepared& p, const Dims& d) {
  std::vector<int> count(d.E, 0);
  for (int r = 0; r < d.R; r++) {
    int e = int(p.rng() % uint64_t(d.E));
    count[e == 1 ? 0 : e]++;
  }
  int32_t* offsets = p.zeros<int32_t>(d.E + 1);
  for (int e = 0; e < d.E; e++) offsets[e + 1] = offsets[e] + count[e];
  auto *w1 = p.zeros<const sky::QWeight*>(d.E), *w3 = p.zeros<const sky::QWeight*>(d.E),
       *w2 = p.zeros<const sky::QWeight*>(d.E);
  for (int e = 0; e < d.E; e++)
    if (count[e]) {
      w1[e] = weight(p, d.w, d.I, d.H), w3[e] = weight(p, d.w, d.I, d.H), w2[e] = weight(p, d.w, d.H, d.I);
      p.bytes += double(w1[e]->bytes() + w3[e]->bytes() + w2[e]->bytes());
    }
  const float* xg = p.rnd<float>(size_t(d.R) * d.H);
  float *y = p.rnd<float>(size_t(d.R) * d.H), *h1 = p.rnd<float>(size_t(d.R) * d.I),
        *h3 = p.rnd<float>(size_t(d.R) * d.I);
  p.run = [=](Backend& b) { b.grouped_swiglu(y, h1, h3, xg, offsets, d.E, w1, w3, w2, d.H, d.I); };
  p.out("y", y, size_t(d.R) * d.H), p.out("h1", h1, size_t(d.R) * d.I);  // h3 is scratch
  // Two quantized products in a row (h1 feeds the second, rounded to bf16 again): twice the margin.
  p.rtol = 2 * weight_rtol(d.w), p.flops = 6.0 * d.R * d.H * d.I;
}

constexpr double kEps = 1e-6;

inline void rmsnorm(Prepared& p, const Dims& d) {
  const float* in = p.rnd<float>(size_t(d.N) * d.H);
  float* w = p.rnd<float>(d.H, 0.1);
  for (int h = 0; h < d.H; h++) w[h] += 1;
  float* out = p.rnd<float>(size_t(d.N) * d.H);
  float* rstd = d.opt == "no-rstd" ? nullptr : p.rnd<float>(d.N);
  p.run = [=](Backend& b) { b.rmsnorm(out, rstd, in, w, d.N, d.H, kEps); };
  p.out("out", out, size_t(d.N) * d.H);
  if (rstd) p.out("rstd", rstd, d.N);
  p.bytes = 8.0 * d.N * d.H;
}

inline void rmsnorm_backward(Prepared& p, const Dims& d) {
  const float *in = p.rnd<float>(size_t(d.N) * d.H), *dout = p.rnd<float>(size_t(d.N) * d.H);
  float* w = p.rnd<float>(d.H, 0.1);
  for (int h = 0; h < d.H; h++) w[h] += 1;
  float* rstd = p.zeros<float>(d.N);  // an input here: the forward's, from ref for every backend
  sky::backend("ref").rmsnorm(p.zeros<float>(size_t(d.N) * d.H), rstd, in, w, d.N, d.H, kEps);
  float* din = p.rnd<float>(size_t(d.N) * d.H);
  float* dw = d.opt == "no-dw" ? nullptr : p.rnd<float>(d.H);
  p.run = [=](Backend& b) { b.rmsnorm_backward(din, dw, dout, in, w, rstd, d.N, d.H); };
  p.out("din", din, size_t(d.N) * d.H);
  if (dw) p.out("dw", dw, d.H);
  p.bytes = 12.0 * d.N * d.H;
}

// T: the table's max_pos (positions are drawn below it). Variants: interleaved pairs (DeepSeek),
// yarn (DeepSeek-V2's YaRN frequencies, factor 4 over a quarter of T, scaled cos/sin).
template <bool Backward>
void rope(Prepared& p, const Dims& d) {
  sky::RopeScaling y;
  if (d.opt.find("yarn") != std::string::npos)
    y.yarn = true, y.factor = 4, y.original_max_position = std::max(d.T / 4, 1), y.mscale = 1, y.mscale_all_dim = 0;
  const sky::RopeTable* t =
      p.own(sky::RopeTable(d.hd, d.T, 10000.0, y, d.opt.find("interleaved") != std::string::npos));
  const int32_t* pos = p.ints(d.N, d.T);
  const size_t n = size_t(d.N) * d.heads * d.hd;
  float* x = p.rnd<float>(n);
  if constexpr (Backward)
    p.run = [=](Backend& b) { b.rope_backward(x, pos, d.N, d.heads, *t); };
  else
    p.run = [=](Backend& b) { b.rope(x, pos, d.N, d.heads, *t); };
  p.out("x", x, n);
  p.bytes = 8.0 * n;
}

template <class T>
void swiglu(Prepared& p, const Dims& d) {
  T *gate = p.rnd<T>(d.N), *up = p.rnd<T>(d.N);
  T* out = d.opt == "in-place" ? gate : p.rnd<T>(d.N);
  p.run = [=](Backend& b) { b.swiglu(out, gate, up, d.N); };
  p.out("out", out, d.N);
  p.rtol = kRtol<T>, p.bytes = 3.0 * d.N * sizeof(T);
}

template <class T>
void swiglu_backward(Prepared& p, const Dims& d) {
  const T *dout = p.rnd<T>(d.N), *gate = p.rnd<T>(d.N), *up = p.rnd<T>(d.N);
  T *dgate = p.rnd<T>(d.N), *dup = p.rnd<T>(d.N);
  p.run = [=](Backend& b) { b.swiglu_backward(dgate, dup, dout, gate, up, d.N); };
  p.out("dgate", dgate, d.N), p.out("dup", dup, d.N);
  p.rtol = kRtol<T>, p.bytes = 7.0 * d.N * sizeof(T);
}

// Tokens repeat (N may exceed V), so the backward sums rows into shared table rows.
inline void embedding(Prepared& p, const Dims& d) {
  const float* table = p.rnd<float>(size_t(d.V) * d.H);
  const int32_t* tokens = p.ints(d.N, d.V);
  float* out = p.rnd<float>(size_t(d.N) * d.H);
  p.run = [=](Backend& b) { b.embedding(out, tokens, table, d.N, d.H); };
  p.out("out", out, size_t(d.N) * d.H);
  p.bytes = 8.0 * d.N * d.H;
}

inline void embedding_backward(Prepared& p, const Dims& d) {
  const float* dout = p.rnd<float>(size_t(d.N) * d.H);
  const int32_t* tokens = p.ints(d.N, d.V);
  float* dtable = p.rnd<float>(size_t(d.V) * d.H);
  p.run = [=](Backend& b) { b.embedding_backward(dtable, dout, tokens, d.N, d.H); };
  p.out("dtable", dtable, size_t(d.V) * d.H);
  p.bytes = 12.0 * d.N * d.H;
}

inline void attention(Prepared& p, const Dims& d) {
  const size_t nq = size_t(d.B) * d.T * d.heads * d.hd, nk = size_t(d.B) * d.T * d.kv * d.hd;
  const size_t na = size_t(d.B) * d.heads * d.T * d.T;
  const float *q = p.rnd<float>(nq), *k = p.rnd<float>(nk), *v = p.rnd<float>(nk);
  float *out = p.rnd<float>(nq), *att = p.rnd<float>(na);
  p.run = [=](Backend& b) { b.attention(out, att, q, k, v, d.B, d.T, d.heads, d.kv, d.hd); };
  p.out("out", out, nq), p.out("att", att, na);
  p.flops = 2.0 * d.B * d.heads * d.T * (d.T + 1.0) * d.hd;  // two causal products
}

inline void attention_backward(Prepared& p, const Dims& d) {
  const size_t nq = size_t(d.B) * d.T * d.heads * d.hd, nk = size_t(d.B) * d.T * d.kv * d.hd;
  const float *q = p.rnd<float>(nq), *k = p.rnd<float>(nk), *v = p.rnd<float>(nk), *dout = p.rnd<float>(nq);
  float* att = p.zeros<float>(size_t(d.B) * d.heads * d.T * d.T);  // the forward's, from ref
  sky::backend("ref").attention(p.zeros<float>(nq), att, q, k, v, d.B, d.T, d.heads, d.kv, d.hd);
  float *dq = p.rnd<float>(nq), *dk = p.rnd<float>(nk), *dv = p.rnd<float>(nk);
  p.run = [=](Backend& b) { b.attention_backward(dq, dk, dv, dout, q, k, v, att, d.B, d.T, d.heads, d.kv, d.hd); };
  p.out("dq", dq, nq), p.out("dk", dk, nk), p.out("dv", dv, nk);
  p.flops = 4.0 * d.B * d.heads * d.T * (d.T + 1.0) * d.hd;  // four causal products
}

// N sequences over caches of up to T positions: by default a mix of decode rows (n = 1) and
// prefill chunks behind a prefix; opt "decode" (every sequence one row at T - 1) or "prefill"
// (every sequence T rows from 0). w: the cache type, f32 or bf16.
inline void attention_kv(Prepared& p, const Dims& d) {
  const int C = d.heads * d.hd, Ckv = d.kv * d.hd;
  auto* seqs = p.zeros<sky::AttnSeq>(d.N);
  for (int c = 0; c < d.N; c++) {
    sky::AttnSeq& a = seqs[c];
    a.start = d.opt == "decode" ? d.T - 1 : d.opt == "prefill" ? 0 : int(p.rng() % uint64_t(d.T));
    a.n = d.opt == "decode" ? 1 : d.opt == "prefill" ? d.T : c % 2 == 0 ? 1 : 1 + int(p.rng() % uint64_t(d.T));
    const size_t L = size_t(a.start) + a.n;
    float *k = p.rnd<float>(L * Ckv), *v = p.rnd<float>(L * Ckv);
    if (d.w == "bf16") {
      uint16_t *kh = p.zeros<uint16_t>(L * Ckv), *vh = p.zeros<uint16_t>(L * Ckv);
      for (size_t i = 0; i < L * Ckv; i++) kh[i] = sky::f32_to_bf16(k[i]), vh[i] = sky::f32_to_bf16(v[i]);
      a.kv.kh = kh, a.kv.vh = vh;
    } else {
      a.kv.k = k, a.kv.v = v;
    }
    a.q = p.rnd<float>(size_t(a.n) * C);
    a.out = p.rnd<float>(size_t(a.n) * C);
    p.out(fmt::format("out{}", c), a.out, size_t(a.n) * C);
    p.flops += 4.0 * C * (double(a.n) * a.start + a.n * (a.n + 1.0) / 2);
  }
  p.run = [=](Backend& b) { b.attention_kv(seqs, d.N, d.heads, d.kv, d.hd); };
}

inline void cross_entropy(Prepared& p, const Dims& d) {
  const float* logits = p.rnd<float>(size_t(d.N) * d.V, 3.0);
  const int32_t* targets = p.ints(d.N, d.V);
  float* losses = p.rnd<float>(d.N);
  p.run = [=](Backend& b) { b.cross_entropy(losses, logits, targets, d.N, d.V); };
  p.out("losses", losses, d.N);
  p.bytes = 4.0 * d.N * d.V;
}

inline void cross_entropy_backward(Prepared& p, const Dims& d) {
  const float* logits = p.rnd<float>(size_t(d.N) * d.V, 3.0);
  const int32_t* targets = p.ints(d.N, d.V);
  const float* dloss = p.rnd<float>(d.N);
  float* dlogits = p.rnd<float>(size_t(d.N) * d.V);
  p.run = [=](Backend& b) { b.cross_entropy_backward(dlogits, logits, targets, dloss, d.N, d.V); };
  p.out("dlogits", dlogits, size_t(d.N) * d.V);
  p.bytes = 12.0 * d.N * d.V;
}

// Step 10 of a run with weight decay; v kept away from 0 so the update is not all epsilon.
inline void adamw(Prepared& p, const Dims& d) {
  float *w = p.rnd<float>(d.N), *m = p.rnd<float>(d.N, 0.1), *v = p.rnd<float>(d.N);
  const float* g = p.rnd<float>(d.N);
  for (int i = 0; i < d.N; i++) v[i] = 0.01f * (std::fabs(v[i]) + 0.1f) * (std::fabs(v[i]) + 0.1f);
  const float inv_sqrt_bc2 = float(1 / std::sqrt(1 - std::pow(0.95, 10)));
  p.run = [=](Backend& b) { b.adamw(w, g, m, v, d.N, 0.9f, 0.95f, 1e-8f, 1 - 1e-4f, 1e-3f, inv_sqrt_bc2, 0.5f); };
  p.out("p", w, d.N), p.out("m", m, d.N), p.out("v", v, d.N);
  p.bytes = 28.0 * d.N;
}

// Every shape once per weight kind.
inline std::vector<Dims> kinds(std::vector<Dims> base,
                               std::vector<std::string> ws = {"f32", "bf16", "fp8-row", "fp8-tensor"}) {
  std::vector<Dims> out;
  for (const auto& w : ws)
    for (Dims d : base) {
      d.w = w;
      out.push_back(d);
    }
  return out;
}

inline std::vector<Dims> with(std::vector<Dims> v, Dims extra) {
  v.push_back(std::move(extra));
  return v;
}

}  // namespace detail

// The table. Test shapes: small and odd (tails of every SIMD width), plus one past the CPU's
// threading threshold where it has one (65536 elements; 32768 for rmsnorm and cross_entropy).
// Bench shapes: a 512-token batch of a model with H = 1024, I = 2816, 16 heads (4 KV) of 64,
// T = 256, top-2 routing; ref's are cut where its plain loops would take seconds.
inline const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = [] {
    using namespace detail;
    const std::vector<Dims> flat = {{.N = 1}, {.N = 17}, {.N = 1000}, {.N = 70001}}, flat_bench = {{.N = 512 * 2816}};
    const std::vector<Dims> gather = {{.N = 5, .R = 3, .H = 5}, {.N = 17, .R = 40, .H = 33},
                                      {.N = 300, .R = 700, .H = 130}};
    const std::vector<Dims> moe = {{.N = 1, .H = 5, .k = 1}, {.N = 3, .H = 24, .k = 2}, {.N = 17, .H = 33, .k = 4},
                                   {.N = 600, .H = 130, .k = 2}};
    const std::vector<Dims> moe_bench = {{.N = 512, .H = 1024, .k = 2}};
    const std::vector<Dims> mm = {{.N = 1, .I = 5, .O = 3}, {.N = 3, .I = 24, .O = 17}, {.N = 17, .I = 33, .O = 40}};
    const std::vector<Dims> mm_bench = {{.N = 512, .I = 1024, .O = 2816}}, mm_ref = {{.N = 16, .I = 1024, .O = 2816}};
    const std::vector<Dims> lin = {{.N = 1, .I = 33, .O = 17}, {.N = 3, .I = 64, .O = 40}, {.N = 17, .I = 24, .O = 5}};
    const std::vector<Dims> lin_bench = {{.N = 1, .I = 1024, .O = 2816}, {.N = 512, .I = 1024, .O = 2816}};
    const std::vector<Dims> lin_ref = {{.N = 1, .I = 1024, .O = 2816}, {.N = 16, .I = 1024, .O = 2816}};
    const std::vector<Dims> qkv = {{.N = 1, .I = 33, .O = 24}, {.N = 5, .I = 64, .O = 17}};
    const std::vector<Dims> qkv_bench = {{.N = 1, .I = 1024, .O = 1024}, {.N = 512, .I = 1024, .O = 1024}};
    const std::vector<Dims> qkv_ref = {{.N = 1, .I = 1024, .O = 1024}, {.N = 16, .I = 1024, .O = 1024}};
    const std::vector<Dims> experts = {{.R = 13, .H = 24, .I = 40, .E = 4}, {.R = 1, .H = 33, .I = 17, .E = 3},
                                       {.R = 40, .H = 64, .I = 96, .E = 5}};
    const std::vector<Dims> norm = {{.N = 1, .H = 5}, {.N = 3, .H = 24}, {.N = 17, .H = 33}, {.N = 600, .H = 64}};
    const std::vector<Dims> norm_bench = {{.N = 512, .H = 1024}};
    const std::vector<Dims> rot = {{.N = 1, .T = 4, .heads = 1, .hd = 2},
                                   {.N = 3, .T = 13, .heads = 4, .hd = 8},
                                   {.N = 17, .T = 40, .heads = 3, .hd = 24},
                                   {.N = 300, .T = 512, .heads = 4, .hd = 64},
                                   {.N = 5, .T = 13, .heads = 3, .hd = 8, .opt = "interleaved"},
                                   {.N = 300, .T = 512, .heads = 4, .hd = 64, .opt = "interleaved yarn"},
                                   {.N = 17, .T = 64, .heads = 1, .hd = 16, .opt = "yarn"}};
    const std::vector<Dims> rot_bench = {{.N = 512, .T = 4096, .heads = 16, .hd = 64}};
    const std::vector<Dims> emb = {{.N = 1, .H = 5, .V = 37}, {.N = 17, .H = 24, .V = 37}, {.N = 100, .H = 33, .V = 37},
                                   {.N = 2100, .H = 33, .V = 37}};
    const std::vector<Dims> emb_bench = {{.N = 512, .H = 1024, .V = 8192}};
    const std::vector<Dims> att = {{.B = 1, .T = 1, .heads = 1, .kv = 1, .hd = 4},
                                   {.B = 2, .T = 5, .heads = 4, .kv = 2, .hd = 8},
                                   {.B = 3, .T = 13, .heads = 6, .kv = 2, .hd = 12},
                                   {.B = 2, .T = 13, .heads = 3, .kv = 1, .hd = 5},
                                   {.B = 1, .T = 7, .heads = 4, .kv = 4, .hd = 16}};
    const std::vector<Dims> att_bench = {{.B = 2, .T = 256, .heads = 16, .kv = 4, .hd = 64}};
    const std::vector<Dims> att_ref = {{.B = 1, .T = 64, .heads = 16, .kv = 4, .hd = 64}};
    const std::vector<Dims> kv = {{.N = 1, .T = 1, .heads = 1, .kv = 1, .hd = 4},
                                  {.N = 4, .T = 13, .heads = 4, .kv = 2, .hd = 8},
                                  {.N = 3, .T = 70, .heads = 6, .kv = 2, .hd = 16}};  // n up to 70: past a 64-row block
    const std::vector<Dims> kv_bench = {{.N = 32, .T = 1024, .heads = 16, .kv = 4, .hd = 64, .opt = "decode"},
                                        {.N = 2, .T = 256, .heads = 16, .kv = 4, .hd = 64, .opt = "prefill"}};
    const std::vector<Dims> kv_ref = {{.N = 4, .T = 256, .heads = 16, .kv = 4, .hd = 64, .opt = "decode"},
                                      {.N = 1, .T = 64, .heads = 16, .kv = 4, .hd = 64, .opt = "prefill"}};
    const std::vector<Dims> ce = {{.N = 1, .V = 37}, {.N = 17, .V = 37}, {.N = 5, .V = 1000}, {.N = 40, .V = 1000}};
    const std::vector<Dims> ce_bench = {{.N = 512, .V = 32000}}, ce_ref = {{.N = 16, .V = 32000}};
    const std::vector<std::string> served = {"bf16", "fp8-row"};  // the weight types inference runs
    const std::vector<Dims> route = {{.N = 1, .k = 2, .E = 4},
                                     {.N = 17, .k = 2, .E = 5, .opt = "lnorm"},
                                     {.N = 13, .k = 2, .E = 16, .opt = "lnorm scaled"},
                                     {.N = 9, .k = 8, .E = 64, .opt = "sigmoid no-renorm scaled"},
                                     {.N = 5, .k = 3, .E = 7, .opt = "sigmoid lnorm"},
                                     {.N = 3, .k = 1, .E = 1, .opt = "lnorm"},
                                     {.N = 7, .k = 2, .E = 8, .opt = "bias"},
                                     {.N = 13, .k = 3, .E = 16, .opt = "groups"},
                                     {.N = 9, .k = 4, .E = 16, .opt = "sigmoid noaux bias scaled"},
                                     {.N = 11, .k = 6, .E = 64, .opt = "sigmoid noaux bias no-renorm"},
                                     {.N = 23, .k = 2, .E = 8, .opt = "lnorm bias"},
                                     {.N = 7, .k = 4, .E = 16, .opt = "sigmoid no-renorm scaled bias"}};
    const std::vector<Dims> route_bench = {{.N = 512, .k = 2, .E = 16, .opt = "lnorm"},
                                           {.N = 512, .k = 8, .E = 128, .opt = "no-renorm"}};
    const std::vector<Dims> route_back =
        with(with(route, {.N = 11, .k = 2, .E = 6, .opt = "lnorm no-dprobs"}), {.N = 11, .k = 3, .E = 6, .opt = "no-dw"});

    return std::vector<OpCase>{
        {"zero", false, flat, flat_bench, {}, [](Prepared& p, const Dims& d) {
           float* x = p.rnd<float>(d.N);
           p.run = [=](Backend& b) { b.zero(x, d.N); };
           p.out("x", x, d.N), p.bytes = 4.0 * d.N;
         }},
        {"add", false, flat, flat_bench, {}, [](Prepared& p, const Dims& d) {
           float *y = p.rnd<float>(d.N), *x = p.rnd<float>(d.N);
           p.run = [=](Backend& b) { b.add(y, x, d.N); };
           p.out("y", y, d.N), p.bytes = 12.0 * d.N;
         }},
        {"add_bias", false, norm, norm_bench, {}, [](Prepared& p, const Dims& d) {
           float *y = p.rnd<float>(size_t(d.N) * d.H), *b = p.rnd<float>(d.H);
           p.run = [=](Backend& be) { be.add_bias(y, b, d.N, d.H); };
           p.out("y", y, size_t(d.N) * d.H), p.bytes = 8.0 * d.N * d.H;
         }},
        {"bias_backward", false, norm, norm_bench, {}, [](Prepared& p, const Dims& d) {
           float *db = p.rnd<float>(d.H), *dy = p.rnd<float>(size_t(d.N) * d.H);
           p.run = [=](Backend& be) { be.bias_backward(db, dy, d.N, d.H); };
           p.out("db", db, d.H), p.bytes = 4.0 * d.N * d.H;
         }},
        {"gated_add", false, norm, norm_bench, {}, [](Prepared& p, const Dims& d) {
           float *y = p.rnd<float>(size_t(d.N) * d.H), *x = p.rnd<float>(size_t(d.N) * d.H);
           const float* g = p.rnd<float>(d.N, 3.0);
           p.run = [=](Backend& be) { be.gated_add(y, x, g, d.N, d.H); };
           p.out("y", y, size_t(d.N) * d.H), p.bytes = 12.0 * d.N * d.H;
         }},
        {"gated_add_backward", false, norm, norm_bench, {}, [](Prepared& p, const Dims& d) {
           const float *dy = p.rnd<float>(size_t(d.N) * d.H), *x = p.rnd<float>(size_t(d.N) * d.H);
           const float* g = p.rnd<float>(d.N, 3.0);
           float *dx = p.rnd<float>(size_t(d.N) * d.H), *dg = p.rnd<float>(d.N);
           p.run = [=](Backend& be) { be.gated_add_backward(dx, dg, dy, x, g, d.N, d.H); };
           p.out("dx", dx, size_t(d.N) * d.H), p.out("dg", dg, d.N), p.bytes = 12.0 * d.N * d.H;
         }},
        {"scale", false, flat, flat_bench, {}, [](Prepared& p, const Dims& d) {
           float* x = p.rnd<float>(d.N);
           p.run = [=](Backend& b) { b.scale(x, d.N, 0.37f); };
           p.out("x", x, d.N), p.bytes = 8.0 * d.N;
         }},
        {"sum_squares", false, flat, flat_bench, {}, [](Prepared& p, const Dims& d) {
           const float* x = p.rnd<float>(d.N);
           double* s = p.zeros<double>(1);
           p.run = [=](Backend& b) { *s = b.sum_squares(x, d.N); };
           p.out("sum", s, 1), p.bytes = 4.0 * d.N;
           p.rtol = 1e-9;  // both sum in double
         }},
        {"copy_cols", false,
         {{.N = 1, .H = 1, .I = 3, .O = 2}, {.N = 17, .H = 5, .I = 9, .O = 7, .opt = "acc"},
          {.N = 3000, .H = 24, .I = 40, .O = 30}, {.N = 3000, .H = 24, .I = 24, .O = 30, .opt = "acc"}},
         {{.N = 512 * 16, .H = 128, .I = 192, .O = 128}}, {}, [](Prepared& p, const Dims& d) {
           const float* src = p.rnd<float>(size_t(d.N) * d.I);
           float* dst = p.rnd<float>(size_t(d.N) * d.O);
           const bool acc = d.opt == "acc";
           p.run = [=](Backend& b) { b.copy_cols(dst, d.O, src, d.I, d.N, d.H, acc); };
           p.out("dst", dst, size_t(d.N) * d.O), p.bytes = 12.0 * d.N * d.H;
         }},
        {"gather_rows", false, gather, {{.N = 512, .R = 1024, .H = 1024}}, {}, gather_rows<float>},
        {"gather_rows", true, gather, {{.N = 512, .R = 1024, .H = 1024}}, {}, gather_rows<double>},
        {"combine", false, moe, moe_bench, {}, combine<float>},
        {"combine", true, moe, moe_bench, {}, combine<double>},
        {"combine_backward", false, moe, moe_bench, {}, combine_backward<float>},
        {"combine_backward", true, moe, moe_bench, {}, combine_backward<double>},
        {"unpermute_add", false, moe, moe_bench, {}, unpermute_add<float>},
        {"unpermute_add", true, moe, moe_bench, {}, unpermute_add<double>},
        {"router", false, route, route_bench, {}, router<float>},
        {"router", true, route, route_bench, {}, router<double>},
        {"router_backward", false, route_back, route_bench, {}, router_backward<float>},
        {"router_backward", true, route_back, route_bench, {}, router_backward<double>},
        {"matmul", false, with(mm, {.N = 17, .I = 33, .O = 5, .opt = "exact"}), mm_bench, mm_ref, matmul<float>},
        {"matmul", true, mm, mm_bench, mm_ref, matmul<double>},
        {"matmul_backward", false,
         with(with(mm, {.N = 3, .I = 24, .O = 17, .opt = "dx-only"}), {.N = 3, .I = 24, .O = 17, .opt = "dw-only"}),
         mm_bench, mm_ref, matmul_backward<float>},
        {"matmul_backward", true, mm, mm_bench, mm_ref, matmul_backward<double>},
        {"linear", false, kinds(lin), kinds(lin_bench), kinds(lin_ref), linear},
        {"linear_multi", false, kinds(qkv), kinds(qkv_bench, served), kinds(qkv_ref, served), linear_multi},
        {"grouped_swiglu", false, kinds(experts), kinds({{.R = 1024, .H = 1024, .I = 704, .E = 8}}, served),
         kinds({{.R = 16, .H = 1024, .I = 704, .E = 8}}, served), grouped_swiglu},
        {"rmsnorm", false, with(norm, {.N = 17, .H = 33, .opt = "no-rstd"}), norm_bench, {}, rmsnorm},
        {"rmsnorm_backward", false, with(norm, {.N = 17, .H = 33, .opt = "no-dw"}), norm_bench, {}, rmsnorm_backward},
        {"rope", false, rot, rot_bench, {}, rope<false>},
        {"rope_backward", false, rot, rot_bench, {}, rope<true>},
        {"swiglu", false, with(flat, {.N = 1000, .opt = "in-place"}), flat_bench, {}, swiglu<float>},
        {"swiglu", true, with(flat, {.N = 1000, .opt = "in-place"}), flat_bench, {}, swiglu<double>},
        {"swiglu_backward", false, flat, flat_bench, {}, swiglu_backward<float>},
        {"swiglu_backward", true, flat, flat_bench, {}, swiglu_backward<double>},
        {"embedding", false, emb, emb_bench, {}, embedding},
        {"embedding_backward", false, emb, emb_bench, {}, embedding_backward},
        {"attention", false, att, att_bench, att_ref, attention},
        {"attention_backward", false, att, att_bench, att_ref, attention_backward},
        {"attention_kv", false, kinds(kv, {"f32", "bf16"}), kinds(kv_bench, {"bf16"}), kinds(kv_ref, {"bf16"}),
         attention_kv},
        {"cross_entropy", false, ce, ce_bench, ce_ref, cross_entropy},
        {"cross_entropy_backward", false, ce, ce_bench, ce_ref, cross_entropy_backward},
        {"adamw", false, flat, {{.N = 1 << 22}}, {}, adamw},
    };
  }();
  return cases;
}

}  // namespace skyops
