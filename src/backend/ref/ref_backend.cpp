// The reference backend: each op of the seam written as the plainest loop that states its
// contract (backend.h), single-threaded, with every sum, dot product, softmax and norm in double.
// It is the yardstick tests/test_backend_ops.cpp holds other backends to, so it must stay obviously
// right: no threads, no vector libraries, no blocking, no shared helpers with the CPU kernels
// (a bug there must not hide by being in both). Results are rounded to the buffer type once, at
// the end; an accumulating op adds its double sum to the stored value and rounds once.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "backend/backend.h"
#include "backend/typed_ops.h"
#include "core/dtype.h"
#include "core/error.h"

namespace sky {
namespace {

double silu(double g) { return g / (1 + std::exp(-g)); }

// ---- MoE data movement and the f32 / f64 training matmuls (one template serves both overloads)

// Permute, combine and unpermute, once for float and double (backend/typed_ops.h).
struct MoeOps {
  template <class T>
  static void gather_rows(T* out, const T* in, const int32_t* rows, long R, int H) {
    for (long r = 0; r < R; r++)
      for (int h = 0; h < H; h++) out[r * H + h] = in[long(rows[r]) * H + h];
  }

  template <class T>
  static void combine(T* out, const T* y, const int32_t* sel, const T* w, long N, int k, int H) {
    for (long n = 0; n < N; n++)
      for (int h = 0; h < H; h++) {
        double s = 0;
        for (int j = 0; j < k; j++)
          if (sel[n * k + j] >= 0) s += double(w[n * k + j]) * y[long(sel[n * k + j]) * H + h];
        out[n * H + h] = T(s);
      }
  }

  template <class T>
  static void combine_backward(T* dy, T* dw, const T* dout, const T* y, const int32_t* sel, const T* w, long N,
                               int k, int H) {
    for (long n = 0; n < N; n++)
      for (int j = 0; j < k; j++) {
        const long i = sel[n * k + j];
        double dot = 0;
        if (i >= 0)
          for (int h = 0; h < H; h++) {
            dot += double(dout[n * H + h]) * y[i * H + h];
            dy[i * H + h] = T(double(w[n * k + j]) * dout[n * H + h]);
          }
        dw[n * k + j] = T(dot);
      }
  }

  template <class T>
  static void unpermute_add(T* dx, const T* drows, const int32_t* sel, long N, int k, int H) {
    for (long n = 0; n < N; n++)
      for (int h = 0; h < H; h++) {
        double s = dx[n * H + h];
        for (int j = 0; j < k; j++)
          if (sel[n * k + j] >= 0) s += drows[long(sel[n * k + j]) * H + h];
        dx[n * H + h] = T(s);
      }
  }

  // The router in double throughout: scores recomputed from the logits, top-k by a stable sort,
  // the normalization's backward through its explicit Jacobian (E x E per token).
  static std::vector<double> scores(const double* zt, int E, const RouterOptions& o) {
    std::vector<double> g(E);
    if (o.sigmoid) {
      for (int e = 0; e < E; e++) g[e] = 1 / (1 + std::exp(-zt[e]));
      return g;
    }
    const double mx = *std::max_element(zt, zt + E);
    double sum = 0;
    for (int e = 0; e < E; e++) sum += g[e] = std::exp(zt[e] - mx);
    for (double& v : g) v /= sum;
    return g;
  }
  // z~ = lambda (z - mean) / std (unbiased), 0 when the std is 0; else z~ = z.
  template <class T>
  static std::vector<double> normalized(const T* z, int E, const RouterOptions& o, double* mean = nullptr,
                                        double* sd = nullptr) {
    std::vector<double> zt(z, z + E);
    double mu = 0, ss = 0;
    for (double v : zt) mu += v / E;
    for (double v : zt) ss += (v - mu) * (v - mu);
    const double dev = E > 1 ? std::sqrt(ss / (E - 1)) : 0.0;
    if (mean) *mean = mu, *sd = dev;
    if (o.logits_norm)
      for (double& v : zt) v = dev > 0 ? o.lambda * (v - mu) / dev : 0.0;
    return zt;
  }
  template <class T>
  static void router(T* probs, int32_t* idx, T* w, const T* logits, int N, const RouterOptions& o) {
    const int E = o.num_experts, k = o.top_k;
    SKY_CHECK(E >= 1 && k >= 1 && k <= E, "router: need 1 <= top_k ({}) <= num_experts ({})", k, E);
    const int G = o.n_group > 1 && o.topk_group < o.n_group ? o.n_group : 1;
    SKY_CHECK(G == 1 || (E % G == 0 && o.topk_group >= 1 && k <= o.topk_group * (E / G)),
              "router: {} experts in {} groups, top-{} groups cannot pick {}", E, G, o.topk_group, k);
    for (long n = 0; n < N; n++) {
      const std::vector<double> g = scores(normalized(logits + n * E, E, o).data(), E, o);
      for (int e = 0; e < E; e++) probs[n * E + e] = T(g[e]);
      // Choice scores (selection only), the groups' scores, the best groups, then the best experts
      // of those groups.
      std::vector<double> c(g);
      if (o.select_bias)
        for (int e = 0; e < E; e++) c[e] += o.select_bias[e];
      std::vector<int> order;
      if (G == 1) {
        order.resize(E);
        std::iota(order.begin(), order.end(), 0);
      } else {
        const int gs = E / G;
        std::vector<double> gscore(G);
        for (int q = 0; q < G; q++) {
          std::vector<double> m(c.begin() + q * gs, c.begin() + (q + 1) * gs);
          std::sort(m.rbegin(), m.rend());
          gscore[q] = o.group_top2_sum ? m[0] + m[1] : m[0];
        }
        std::vector<int> groups(G);
        std::iota(groups.begin(), groups.end(), 0);
        std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return gscore[a] > gscore[b]; });
        std::sort(groups.begin(), groups.begin() + o.topk_group);
        for (int t = 0; t < o.topk_group; t++)
          for (int e = groups[t] * gs; e < (groups[t] + 1) * gs; e++) order.push_back(e);
      }
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return c[a] > c[b]; });
      double S = 0;
      for (int s = 0; s < k; s++) S += g[order[s]];
      for (int s = 0; s < k; s++) {
        idx[n * k + s] = order[s];
        w[n * k + s] = T(o.scale * g[order[s]] / (o.renormalize ? S : 1.0));
      }
    }
  }
  template <class T>
  static void router_backward(T* dlogits, const T* dprobs, const T* dw, const T* logits, const T*, const int32_t* idx,
                              int N, const RouterOptions& o) {
    const int E = o.num_experts, k = o.top_k;
    for (long n = 0; n < N; n++) {
      double mu, sd;
      const std::vector<double> zt = normalized(logits + n * E, E, o, &mu, &sd);
      const std::vector<double> g = scores(zt.data(), E, o);
      // d loss / d score
      std::vector<double> dg(E, 0.0);
      if (dprobs)
        for (int e = 0; e < E; e++) dg[e] = dprobs[n * E + e];
      if (dw) {
        double S = 0;
        for (int s = 0; s < k; s++) S += g[idx[n * k + s]];
        for (int s = 0; s < k; s++) {  // w_s = scale g_{j_s} / S: d w_s / d g_i = scale (delta_{i j_s} / S - g_{j_s} / S^2)
          const int j = idx[n * k + s];
          const double d = dw[n * k + s] * o.scale;
          if (!o.renormalize) {
            dg[j] += d;
            continue;
          }
          dg[j] += d / S;
          for (int t = 0; t < k; t++) dg[idx[n * k + t]] -= d * g[j] / (S * S);
        }
      }
      // d loss / d z~: softmax J_ij = g_i (delta_ij - g_j); sigmoid g_i (1 - g_i) on the diagonal.
      std::vector<double> dzt(E, 0.0);
      for (int j = 0; j < E; j++)
        for (int i = 0; i < E; i++)
          dzt[j] += o.sigmoid ? (i == j ? dg[i] * g[i] * (1 - g[i]) : 0.0) : dg[i] * g[i] * ((i == j) - g[j]);
      // d loss / d z: d z~_i / d z_j = lambda ((delta_ij - 1/E) / sd - (z_i - mu)(z_j - mu) / ((E - 1) sd^3)).
      for (int j = 0; j < E; j++) {
        double d = 0;
        if (!o.logits_norm) {
          d = dzt[j];
        } else if (sd > 0) {
          const double uj = logits[n * E + j] - mu;
          for (int i = 0; i < E; i++) {
            const double ui = logits[n * E + i] - mu;
            d += dzt[i] * o.lambda * (((i == j) - 1.0 / E) / sd - ui * uj / ((E - 1) * sd * sd * sd));
          }
        }
        dlogits[n * E + j] = T(dlogits[n * E + j] + d);
      }
    }
  }
};

template <class T>
void matmul_t(T* y, const T* x, const T* w, int N, int I, int O) {
  for (long n = 0; n < N; n++)
    for (long o = 0; o < O; o++) {
      double s = 0;
      for (long i = 0; i < I; i++) s += double(x[n * I + i]) * w[o * I + i];
      y[n * O + o] = T(s);
    }
}

template <class T>
void matmul_backward_t(T* dx, T* dw, const T* dy, const T* x, const T* w, int N, int I, int O) {
  if (dx)
    for (long n = 0; n < N; n++)
      for (long i = 0; i < I; i++) {
        double s = dx[n * I + i];
        for (long o = 0; o < O; o++) s += double(dy[n * O + o]) * w[o * I + i];
        dx[n * I + i] = T(s);
      }
  if (dw)
    for (long o = 0; o < O; o++)
      for (long i = 0; i < I; i++) {
        double s = dw[o * I + i];
        for (long n = 0; n < N; n++) s += double(dy[n * O + o]) * x[n * I + i];
        dw[o * I + i] = T(s);
      }
}

template <class T>
void swiglu_t(T* out, const T* gate, const T* up, long n) {
  for (long i = 0; i < n; i++) out[i] = T(silu(gate[i]) * up[i]);  // reads gate[i] first: out may alias gate
}

template <class T>
void swiglu_backward_t(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long n) {
  for (long i = 0; i < n; i++) {
    const double g = gate[i], s = 1 / (1 + std::exp(-g));
    dup[i] = T(dup[i] + double(dout[i]) * g * s);
    dgate[i] = T(dgate[i] + double(dout[i]) * up[i] * s * (1 + g * (1 - s)));  // d silu/dg = s (1 + g (1 - s))
  }
}

// ---- inference linears: the weight decoded exactly (every f32, bf16 and e4m3 value is an f32),
// the row's scale applied to the double sum.

void linear_t(float* y, const float* x, const QWeight& w, int N) {
  SKY_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F8_E4M3 || w.dtype == DType::Blocks,
            "ref linear: unsupported weight dtype {}", dtype_name(w.dtype));
  const long O = w.O, I = w.I;
  std::vector<float> wf(size_t(O) * I);
  if (w.dtype == DType::Blocks) {  // decoded exactly, scales inside: the row scale below is 1
    for (long o = 0; o < O; o++) dequantize_row(w, int(o), wf.data() + o * I);
  } else {
    convert_to_f32(w.dtype, w.data, wf.data(), wf.size());
  }
  for (long n = 0; n < N; n++)
    for (long o = 0; o < O; o++) {
      double s = 0;
      for (long i = 0; i < I; i++) s += double(x[n * I + i]) * wf[o * I + i];
      y[n * O + o] = float(s * w.row_scale(int(o)));
    }
}

double kv_at(const float* f, const uint16_t* h, long pos, int width, int c) {
  return f ? double(f[pos * width + c]) : double(bf16_to_f32(h[pos * width + c]));
}

class RefBackend final : public TypedOps<MoeOps> {
 public:
  const char* name() const override { return "ref"; }
  std::string describe() const override { return "ref (plain loops, double accumulation)"; }

  void set_threads(int) override {}
  int num_threads() const override { return 1; }
  void set_matmul_precision(MatmulPrecision p) override {
    SKY_CHECK(p == MatmulPrecision::F32,
              "--precision bf16: the ref backend computes in f32/f64 only (use --precision f32 or --device cpu)");
  }
  MatmulPrecision matmul_precision() const override { return MatmulPrecision::F32; }
  double memory_bandwidth_gbs(size_t bytes, int reps) override {
    std::vector<uint64_t> buf(std::max<size_t>(bytes / 8, 1), 1);
    volatile uint64_t sink = 0;  // keeps the summing pass from being optimized away
    double best = 0;
    for (int r = 0; r < std::max(reps, 1); r++) {
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t s = 0;
      for (uint64_t v : buf) s += v;
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      sink = sink + s;
      best = std::max(best, buf.size() * 8.0 / 1e9 / std::max(sec, 1e-9));
    }
    return best;
  }

  void zero(float* p, size_t n) override { std::fill(p, p + n, 0.0f); }
  void copy_cols(float* dst, long ld_dst, const float* src, long ld_src, long N, int W, bool accumulate) override {
    for (long n = 0; n < N; n++)
      for (int i = 0; i < W; i++) dst[n * ld_dst + i] = accumulate ? dst[n * ld_dst + i] + src[n * ld_src + i] : src[n * ld_src + i];
  }
  // One f32 add or multiply is correctly rounded already: a double detour would give the same bits.
  void add(float* y, const float* x, size_t n) override {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
  }
  void scale(float* p, size_t n, float s) override {
    for (size_t i = 0; i < n; i++) p[i] *= s;
  }
  void add_bias(float* y, const float* b, int N, int D) override {
    for (int n = 0; n < N; n++)
      for (int i = 0; i < D; i++) y[size_t(n) * D + i] = float(double(y[size_t(n) * D + i]) + b[i]);
  }
  void bias_backward(float* db, const float* dy, int N, int D) override {
    for (int i = 0; i < D; i++) {
      double s = db[i];
      for (int n = 0; n < N; n++) s += dy[size_t(n) * D + i];
      db[i] = float(s);
    }
  }
  void gated_add(float* y, const float* x, const float* g, int N, int H) override {
    for (int n = 0; n < N; n++) {
      const double s = 1.0 / (1.0 + std::exp(-double(g[n])));
      for (int i = 0; i < H; i++) y[size_t(n) * H + i] = float(y[size_t(n) * H + i] + s * x[size_t(n) * H + i]);
    }
  }
  void gated_add_backward(float* dx, float* dg, const float* dy, const float* x, const float* g, int N,
                          int H) override {
    for (int n = 0; n < N; n++) {
      const double s = 1.0 / (1.0 + std::exp(-double(g[n])));
      double dot = 0;
      for (int i = 0; i < H; i++) {
        dot += double(dy[size_t(n) * H + i]) * x[size_t(n) * H + i];
        dx[size_t(n) * H + i] = float(s * dy[size_t(n) * H + i]);
      }
      dg[n] = float(dot * s * (1 - s));
    }
  }
  double sum_squares(const float* p, size_t n) override {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += double(p[i]) * p[i];
    return s;
  }

  // `exact` changes nothing here: every product is already full precision.
  void matmul(float* y, const float* x, const float* w, int N, int I, int O, bool) override {
    matmul_t(y, x, w, N, I, O);
  }
  void matmul(double* y, const double* x, const double* w, int N, int I, int O, bool) override {
    matmul_t(y, x, w, N, I, O);
  }
  void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N, int I, int O,
                       bool) override {
    matmul_backward_t(dx, dw, dy, x, w, N, I, O);
  }
  void matmul_backward(double* dx, double* dw, const double* dy, const double* x, const double* w, int N, int I, int O,
                       bool) override {
    matmul_backward_t(dx, dw, dy, x, w, N, I, O);
  }
  void linear(float* y, const float* x, const QWeight& w, int N) override { linear_t(y, x, w, N); }
  void linear_multi(const float* x, int N, const LinearOut* outs, int count) override {
    for (int j = 0; j < count; j++) linear_t(outs[j].y, x, *outs[j].w, N);
  }
  void grouped_swiglu(float* y, float* h1, float* h3, const float* xg, const int32_t* offsets, int E,
                      const QWeight* const* w1, const QWeight* const* w3, const QWeight* const* w2, int H,
                      int I) override {
    for (int e = 0; e < E; e++) {
      const long r0 = offsets[e], n = offsets[e + 1] - r0;
      if (n <= 0) continue;  // its weights may be null
      linear_t(h1 + r0 * I, xg + r0 * H, *w1[e], int(n));
      linear_t(h3 + r0 * I, xg + r0 * H, *w3[e], int(n));
      swiglu_t(h1 + r0 * I, h1 + r0 * I, h3 + r0 * I, n * I);
      linear_t(y + r0 * H, h1 + r0 * I, *w2[e], int(n));
    }
  }

  void rmsnorm(float* out, float* rstd, const float* in, const float* w, int N, int H, double eps) override {
    for (long n = 0; n < N; n++) {
      const float* x = in + n * H;
      double ss = 0;
      for (int h = 0; h < H; h++) ss += double(x[h]) * x[h];
      const double r = 1 / std::sqrt(ss / H + eps);
      for (int h = 0; h < H; h++) out[n * H + h] = float(x[h] * r * w[h]);
      if (rstd) rstd[n] = float(r);
    }
  }
  // With r the saved rstd and g = dout * w: din = r (g - x r^2 mean(g x)), dw = sum_n dout x r.
  void rmsnorm_backward(float* din, float* dw, const float* dout, const float* in, const float* w, const float* rstd,
                        int N, int H) override {
    for (long n = 0; n < N; n++) {
      const float *x = in + n * H, *d = dout + n * H;
      const double r = rstd[n];
      double gx = 0;
      for (int h = 0; h < H; h++) gx += double(d[h]) * w[h] * x[h];
      for (int h = 0; h < H; h++)
        din[n * H + h] = float(din[n * H + h] + r * (double(d[h]) * w[h] - x[h] * r * r * gx / H));
    }
    if (dw)
      for (int h = 0; h < H; h++) {
        double s = dw[h];
        for (long n = 0; n < N; n++) s += double(dout[n * H + h]) * in[n * H + h] * rstd[n];
        dw[h] = float(s);
      }
  }

  void rope(float* x, const int32_t* pos, int N, int heads, const RopeTable& t) override {
    rotate(x, pos, N, heads, t, +1);
  }
  // The rotation's transpose is the rotation by the opposite angle.
  void rope_backward(float* dx, const int32_t* pos, int N, int heads, const RopeTable& t) override {
    rotate(dx, pos, N, heads, t, -1);
  }

  void swiglu(float* out, const float* gate, const float* up, long n) override { swiglu_t(out, gate, up, n); }
  void swiglu(double* out, const double* gate, const double* up, long n) override { swiglu_t(out, gate, up, n); }
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       long n) override {
    swiglu_backward_t(dgate, dup, dout, gate, up, n);
  }
  void swiglu_backward(double* dgate, double* dup, const double* dout, const double* gate, const double* up,
                       long n) override {
    swiglu_backward_t(dgate, dup, dout, gate, up, n);
  }

  void embedding(float* out, const int32_t* tokens, const float* table, int N, int H) override {
    for (long n = 0; n < N; n++)
      for (int h = 0; h < H; h++) out[n * H + h] = table[long(tokens[n]) * H + h];
  }
  // A token may repeat: each table row gets the double sum of all its rows of dout at once.
  void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N, int H) override {
    for (long n = 0; n < N; n++) {
      if (std::find(tokens, tokens + n, tokens[n]) != tokens + n) continue;  // row already done
      float* d = dtable + long(tokens[n]) * H;
      for (int h = 0; h < H; h++) {
        double s = d[h];
        for (long m = n; m < N; m++)
          if (tokens[m] == tokens[n]) s += dout[m * H + h];
        d[h] = float(s);
      }
    }
  }

  void attention(float* out, float* att, const float* q, const float* k, const float* v, int B, int T, int heads,
                 int kv, int hd) override {
    check_heads(heads, kv);
    const long C = long(heads) * hd, Ckv = long(kv) * hd;
    const double sc = 1 / std::sqrt(double(hd));
    std::vector<double> p(T);
    for (long b = 0; b < B; b++)
      for (int h = 0; h < heads; h++) {
        const long qo = b * T * C + h * hd, ko = b * T * Ckv + (h / (heads / kv)) * hd;
        float* P = att + (b * heads + h) * long(T) * T;
        for (long i = 0; i < T; i++) {
          for (long j = 0; j <= i; j++) {
            double s = 0;
            for (int d = 0; d < hd; d++) s += double(q[qo + i * C + d]) * k[ko + j * Ckv + d];
            p[j] = s * sc;
          }
          softmax(p.data(), int(i + 1));
          for (long j = 0; j < T; j++) P[i * T + j] = j <= i ? float(p[j]) : 0.0f;
          for (int d = 0; d < hd; d++) {
            double s = 0;
            for (long j = 0; j <= i; j++) s += p[j] * v[ko + j * Ckv + d];
            out[qo + i * C + d] = float(s);
          }
        }
      }
  }
  // From the saved probabilities P: dV += P^T dO, dS = P (dO V^T - rowsum(P dO V^T)),
  // dQ += scale dS K, dK += scale dS^T Q. The query heads of a group all add into one dK/dV
  // slice, so the gradients are summed in double buffers and added once.
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* att, int B, int T, int heads, int kv, int hd) override {
    check_heads(heads, kv);
    const long C = long(heads) * hd, Ckv = long(kv) * hd;
    const double sc = 1 / std::sqrt(double(hd));
    std::vector<double> gq(size_t(B) * T * C, 0.0), gk(size_t(B) * T * Ckv, 0.0), gv(gk.size(), 0.0), ds(T);
    for (long b = 0; b < B; b++)
      for (int h = 0; h < heads; h++) {
        const long qo = b * T * C + h * hd, ko = b * T * Ckv + (h / (heads / kv)) * hd;
        const float* P = att + (b * heads + h) * long(T) * T;
        for (long i = 0; i < T; i++) {
          double rowsum = 0;
          for (long j = 0; j <= i; j++) {
            double dp = 0;
            for (int d = 0; d < hd; d++) dp += double(dout[qo + i * C + d]) * v[ko + j * Ckv + d];
            ds[j] = dp;
            rowsum += P[i * T + j] * dp;
          }
          for (long j = 0; j <= i; j++) {
            const double pij = P[i * T + j], dsij = pij * (ds[j] - rowsum) * sc;
            for (int d = 0; d < hd; d++) {
              gv[ko + j * Ckv + d] += pij * dout[qo + i * C + d];
              gq[qo + i * C + d] += dsij * k[ko + j * Ckv + d];
              gk[ko + j * Ckv + d] += dsij * q[qo + i * C + d];
            }
          }
        }
      }
    for (size_t i = 0; i < gq.size(); i++) dq[i] = float(dq[i] + gq[i]);
    for (size_t i = 0; i < gk.size(); i++) {
      dk[i] = float(dk[i] + gk[i]);
      dv[i] = float(dv[i] + gv[i]);
    }
  }
  void attention_kv(const AttnSeq* seqs, int count, int heads, int kv, int hd) override {
    check_heads(heads, kv);
    const int C = heads * hd, Ckv = kv * hd;
    const double sc = 1 / std::sqrt(double(hd));
    for (int c = 0; c < count; c++) {
      const AttnSeq& a = seqs[c];
      std::vector<double> p(size_t(a.start) + a.n);
      for (long i = 0; i < a.n; i++)
        for (int h = 0; h < heads; h++) {
          const int c0 = (h / (heads / kv)) * hd;  // this head's columns in the cache
          const long L = a.start + i + 1;
          for (long j = 0; j < L; j++) {
            double s = 0;
            for (int d = 0; d < hd; d++) s += double(a.q[i * C + h * hd + d]) * kv_at(a.kv.k, a.kv.kh, j, Ckv, c0 + d);
            p[j] = s * sc;
          }
          softmax(p.data(), int(L));
          for (int d = 0; d < hd; d++) {
            double s = 0;
            for (long j = 0; j < L; j++) s += p[j] * kv_at(a.kv.v, a.kv.vh, j, Ckv, c0 + d);
            a.out[i * C + h * hd + d] = float(s);
          }
        }
    }
  }

  void cross_entropy(float* losses, const float* logits, const int32_t* targets, int N, int V) override {
    for (long n = 0; n < N; n++) {
      const float* x = logits + n * V;
      losses[n] = float(logsumexp(x, V) - x[targets[n]]);
    }
  }
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, const float* dloss, int N,
                              int V) override {
    for (long n = 0; n < N; n++) {
      const float* x = logits + n * V;
      const double lse = logsumexp(x, V);
      for (int v = 0; v < V; v++) {
        const double p = std::exp(x[v] - lse) - (v == targets[n] ? 1.0 : 0.0);
        dlogits[n * V + v] = float(dlogits[n * V + v] + double(dloss[n]) * p);
      }
    }
  }
  void adamw(float* p, const float* g, float* m, float* v, size_t n, float b1, float b2, float eps, float shrink,
             float step_size, float inv_sqrt_bc2, float grad_scale) override {
    for (size_t i = 0; i < n; i++) {
      const double gi = double(g[i]) * grad_scale;
      const double mi = double(b1) * m[i] + (1.0 - b1) * gi;
      const double vi = double(b2) * v[i] + (1.0 - b2) * gi * gi;
      m[i] = float(mi);
      v[i] = float(vi);
      p[i] = float(double(p[i]) * shrink - double(step_size) * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps));
    }
  }

 private:
  static void check_heads(int heads, int kv) {
    SKY_CHECK(kv > 0 && heads % kv == 0, "attention: {} query heads do not split into {} kv heads", heads, kv);
  }
  // In place over p[0, n), max-subtracted so large scores cannot overflow.
  static void softmax(double* p, int n) {
    const double mx = *std::max_element(p, p + n);
    double sum = 0;
    for (int j = 0; j < n; j++) {
      p[j] = std::exp(p[j] - mx);
      sum += p[j];
    }
    for (int j = 0; j < n; j++) p[j] /= sum;
  }
  static double logsumexp(const float* x, int V) {
    const double mx = *std::max_element(x, x + V);
    double sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp(x[v] - mx);
    return mx + std::log(sum);
  }
  static void rotate(float* x, const int32_t* pos, int N, int heads, const RopeTable& t, int sign) {
    for (int n = 0; n < N; n++)  // all before any write: a bad position leaves x untouched
      SKY_CHECK(pos[n] >= 0 && pos[n] < t.max_pos, "rope: position {} outside [0, {})", pos[n], t.max_pos);
    const int half = t.head_dim / 2;
    for (long n = 0; n < N; n++)
      for (long h = 0; h < heads; h++) {
        float* xh = x + (n * heads + h) * t.head_dim;
        for (int i = 0; i < half; i++) {
          // The pair rotated by angle i: (i, i + half), or (2i, 2i + 1) interleaved. With scaled
          // cos and sin (YaRN) the transpose is still the same table with -sin.
          const int a = t.interleaved ? 2 * i : i, b = t.interleaved ? 2 * i + 1 : i + half;
          const double c = t.cos[size_t(pos[n]) * half + i], s = sign * t.sin[size_t(pos[n]) * half + i];
          const double x0 = xh[a], x1 = xh[b];
          xh[a] = float(x0 * c - x1 * s);
          xh[b] = float(x1 * c + x0 * s);
        }
      }
  }
};

}  // namespace

Backend& ref_backend_instance() {
  static RefBackend b;
  return b;
}

}  // namespace sky
