// The CPU backend: the seam's ops over the kernels of this folder (OpenMP, OpenBLAS, Highway,
// AVX512-BF16). What the model used to do inline with OpenMP (permute, combine, grouped experts,
// the AdamW pass) lives here now.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "backend/backend.h"
#include "backend/typed_ops.h"
#include "backend/cpu/adamw.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/cross_entropy.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/membw.h"
#include "backend/cpu/qmatmul.h"
#include "backend/cpu/rmsnorm.h"
#include "backend/cpu/rope.h"
#include "backend/cpu/router.h"
#include "backend/cpu/step_governor.h"
#include "backend/cpu/swiglu.h"
#include "backend/cpu/threads.h"
#include "backend/cpu/vmath.h"

namespace sky {

namespace {

// Splits the concatenation of the active experts' output rows [0, A * O) across the team by
// estimated cost and runs this thread's share as run(j, o0, o1). A row of expert j costs
// row_cost(tokens_j), at least kStreamRows: streaming a weight row takes about as long as
// multiplying it with that many tokens, so small batches split by bytes and large ones (prefill)
// by flops; an even split of rows would leave one thread waiting whenever routing is uneven.
// Shares end on multiples of 4 rows so register tiles stay full.
constexpr int kStreamRows = 6;
// The kernels run tokens in groups of 4 (a partial group costs a full one), so 5 tokens cost 8.
int row_cost(int n) { return std::max((n + 3) / 4 * 4, kStreamRows); }
template <class F>
void split_rows(const std::vector<int>& tokens, int O, F&& run) {
  const int nt = omp_get_num_threads(), t = omp_get_thread_num();
  int64_t total = 0;
  for (int n : tokens) total += int64_t(row_cost(n)) * O;
  const int64_t lo = total * t / nt, hi = total * (t + 1) / nt;
  int64_t base = 0;
  for (size_t j = 0; j < tokens.size(); j++) {
    const int64_t c = row_cost(tokens[j]);
    // First row at or after cost position v (the same function for both ends: no gaps, no overlap).
    auto row = [&](int64_t v) {
      return int(std::min<int64_t>(O, (std::clamp<int64_t>((v - base + c - 1) / c, 0, O) + 3) / 4 * 4));
    };
    const int o0 = row(lo), o1 = t == nt - 1 ? O : row(hi);
    if (o0 < o1) run(int(j), o0, o1);
    base += c * O;
  }
}

// Permute, combine and unpermute, once for float and double (backend/typed_ops.h).
struct MoeOps {
  template <class T>
  static void router(T* probs, int32_t* idx, T* w, const T* logits, int N, const RouterOptions& o) {
    router_forward(probs, idx, w, logits, N, o);
  }
  template <class T>
  static void router_backward(T* dlogits, const T* dprobs, const T* dw, const T* logits, const T* probs,
                              const int32_t* idx, int N, const RouterOptions& o) {
    sky::router_backward(dlogits, dprobs, dw, logits, probs, idx, N, o);
  }
  template <class T>
  static void gather_rows(T* out, const T* in, const int32_t* rows, long R, int H) {
#pragma omp parallel for schedule(static) if (R * H > 65536)
    for (long r = 0; r < R; r++) std::memcpy(out + r * H, in + long(rows[r]) * H, sizeof(T) * H);
  }

  // Per token rather than scatter per row: no write conflicts, a fixed summation order.
  template <class T>
  static void combine(T* out, const T* y, const int32_t* sel, const T* w, long N, int k, int H) {
#pragma omp parallel for schedule(static) if (N * H > 65536)
    for (long n = 0; n < N; n++) {
      T* o = out + n * H;
      std::fill(o, o + H, T(0));
      for (int s = 0; s < k; s++) {
        const long i = sel[n * k + s];
        if (i < 0) continue;
        const T wt = w[n * k + s];
        const T* yr = y + i * H;
        for (int h = 0; h < H; h++) o[h] += wt * yr[h];
      }
    }
  }

  template <class T>
  static void combine_backward(T* dy, T* dw, const T* dout, const T* y, const int32_t* sel, const T* w, long N,
                               int k, int H) {
#pragma omp parallel for schedule(static) if (N * H > 65536)
    for (long n = 0; n < N; n++) {
      const T* dn = dout + n * H;
      for (int s = 0; s < k; s++) {
        const long i = sel[n * k + s];
        if (i < 0) {
          dw[n * k + s] = T(0);
          continue;
        }
        const T wt = w[n * k + s];
        double dot = 0;
        for (int h = 0; h < H; h++) {
          dot += dn[h] * y[i * H + h];
          dy[i * H + h] = wt * dn[h];
        }
        dw[n * k + s] = T(dot);
      }
    }
  }

  template <class T>
  static void unpermute_add(T* dx, const T* drows, const int32_t* sel, long N, int k, int H) {
#pragma omp parallel for schedule(static) if (N * H > 65536)
    for (long n = 0; n < N; n++)
      for (int s = 0; s < k; s++) {
        const long i = sel[n * k + s];
        if (i < 0) continue;
        for (int h = 0; h < H; h++) dx[n * H + h] += drows[i * H + h];
      }
  }
};

class CpuBackend final : public TypedOps<MoeOps> {
 public:
  const char* name() const override { return "cpu"; }
  std::string describe() const override {
    return fmt::format("cpu ({}{}, {} threads)", qmatmul_target(), matmul_bf16_supported() ? ", AVX512-BF16" : "",
                       sky::num_threads());
  }
  void set_threads(int n) override {
    sky::set_threads(n);
    team_ = sky::num_threads();
  }
  // The team is set per calling thread (OpenMP's ICV): the engine thread's steps set their own.
  void step_begin(int rows) override {
    if (team_ == 0) team_ = sky::num_threads();
    // The bf16 GEMM's team-independence is untested on CPUs without AVX512-BF16: it keeps the full team.
    const bool fixed = fixed_team_ || sky::matmul_precision() == MatmulPrecision::BF16;
    step_threads_ = fixed ? team_ : governor_.begin(rows, team_);
    omp_set_num_threads(step_threads_);
    step_t0_ = std::chrono::steady_clock::now();
  }
  void step_end() override {
    governor_.end(std::chrono::duration<double>(std::chrono::steady_clock::now() - step_t0_).count());
    omp_set_num_threads(team_);
  }
  int num_threads() const override { return sky::num_threads(); }
  void set_matmul_precision(MatmulPrecision p) override { sky::set_matmul_precision(p); }
  MatmulPrecision matmul_precision() const override { return sky::matmul_precision(); }
  double memory_bandwidth_gbs(size_t bytes, int reps) override { return read_bandwidth_gbs(bytes, reps); }

  void zero(float* p, size_t n) override { parallel_zero(p, n); }
  void add(float* y, const float* x, size_t n) override {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
  }
  void scale(float* p, size_t n, float s) override {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) p[i] *= s;
  }
  void copy_cols(float* dst, long ld_dst, const float* src, long ld_src, long N, int W, bool accumulate) override {
#pragma omp parallel for schedule(static) if (N * W > 65536)
    for (long n = 0; n < N; n++) {
      float* d = dst + n * ld_dst;
      const float* x = src + n * ld_src;
      if (accumulate)
        for (int i = 0; i < W; i++) d[i] += x[i];
      else
        std::memcpy(d, x, sizeof(float) * W);
    }
  }
  void add_bias(float* y, const float* b, int N, int D) override {
#pragma omp parallel for schedule(static) if (size_t(N) * D > 65536)
    for (int n = 0; n < N; n++)
      for (int i = 0; i < D; i++) y[size_t(n) * D + i] += b[i];
  }
  void bias_backward(float* db, const float* dy, int N, int D) override {
    // Row order fixed per column: the same bits on any thread count.
#pragma omp parallel for schedule(static) if (size_t(N) * D > 65536)
    for (int i = 0; i < D; i++) {
      float s = 0;
      for (int n = 0; n < N; n++) s += dy[size_t(n) * D + i];
      db[i] += s;
    }
  }
  void gated_add(float* y, const float* x, const float* g, int N, int H) override {
#pragma omp parallel for schedule(static) if (size_t(N) * H > 65536)
    for (int n = 0; n < N; n++) {
      const float s = 1.0f / (1.0f + std::exp(-g[n]));
      for (int i = 0; i < H; i++) y[size_t(n) * H + i] += s * x[size_t(n) * H + i];
    }
  }
  void gated_add_backward(float* dx, float* dg, const float* dy, const float* x, const float* g, int N,
                          int H) override {
#pragma omp parallel for schedule(static) if (size_t(N) * H > 65536)
    for (int n = 0; n < N; n++) {
      const float s = 1.0f / (1.0f + std::exp(-g[n]));
      const float* r = dy + size_t(n) * H;
      double dot = 0;
      for (int i = 0; i < H; i++) {
        dot += double(r[i]) * x[size_t(n) * H + i];
        dx[size_t(n) * H + i] = s * r[i];
      }
      dg[n] = float(dot * s * (1 - s));
    }
  }
  double sum_squares(const float* g, size_t n) override {
    // Fixed blocks summed in a fixed order, not an OpenMP reduction: libgomp combines reduction
    // partials in thread-arrival order, so with 3+ threads the sum could differ in the last bit
    // from run to run (and with it the clip coefficient, breaking bit-for-bit resume).
    constexpr size_t kBlock = size_t(1) << 14;
    const size_t nb = (n + kBlock - 1) / kBlock;
    std::vector<double> part(nb, 0.0);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (size_t b = 0; b < nb; b++) {
      double s = 0;
      for (size_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); i++) s += double(g[i]) * g[i];
      part[b] = s;
    }
    double s = 0;
    for (double p : part) s += p;
    return s;
  }

  void matmul(float* y, const float* x, const float* w, int N, int I, int O, bool exact) override {
    // A few rows (the router while decoding) stream the weights through f32 dot products: the GEMM
    // would first pack all of w, ~3% of a decoded token's time. Not under bf16 training precision,
    // whose inexact products the GEMM defines.
    if (N < kGemmRows && (exact || sky::matmul_precision() != MatmulPrecision::BF16))
      return qmatmul(y, x, f32_view(w, O, I), N);
    matmul_forward(y, x, w, N, I, O, exact);
  }
  void matmul(double* y, const double* x, const double* w, int N, int I, int O, bool exact) override {
    matmul_forward(y, x, w, N, I, O, exact);
  }
  void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N, int I, int O,
                       bool exact) override {
    sky::matmul_backward(dx, dw, dy, x, w, N, I, O, exact);
  }
  void matmul_backward(double* dx, double* dw, const double* dy, const double* x, const double* w, int N, int I,
                       int O, bool exact) override {
    sky::matmul_backward(dx, dw, dy, x, w, N, I, O, exact);
  }
  // F32 weights over many rows (training batches, long prefills) are a GEMM: the training matmul, at
  // its precision. The streaming kernels win where the weight bytes dominate (decode).
  static constexpr int kGemmRows = 64;
  static bool as_gemm(const QWeight& w, int N) {
    return w.dtype == DType::F32 && (N >= kGemmRows || sky::matmul_precision() == MatmulPrecision::BF16);
  }
  void linear(float* y, const float* x, const QWeight& w, int N) override {
    if (as_gemm(w, N))
      matmul_forward(y, x, static_cast<const float*>(w.data), N, w.I, w.O);
    else
      qmatmul(y, x, w, N);
  }
  void linear_multi(const float* x, int N, const LinearOut* outs, int count) override {
    bool gemm = true;
    for (int j = 0; j < count; j++) gemm = gemm && as_gemm(*outs[j].w, N);
    if (!gemm) return qmatmul_multi(x, N, outs, count);
    for (int j = 0; j < count; j++) linear(outs[j].y, x, *outs[j].w, N);
  }
  void grouped_swiglu(float* y, float* h1, float* h3, const float* xg, const int32_t* offsets, int E,
                      const QWeight* const* w1, const QWeight* const* w3, const QWeight* const* w2, int H,
                      int I) override {
    std::vector<int> active, tokens;  // experts with routed rows, and their row counts
    for (int e = 0; e < E; e++)
      if (offsets[e + 1] > offsets[e]) {
        active.push_back(e);
        tokens.push_back(offsets[e + 1] - offsets[e]);
      }
#pragma omp parallel
    {
      // Gate and up projections, then SwiGLU on the same (rows, columns) this thread produced.
      split_rows(tokens, I, [&](int j, int o0, int o1) {
        const int e = active[j], r0 = offsets[e], n = offsets[e + 1] - r0;
        const float* x = xg + size_t(r0) * H;
        float* a = h1 + size_t(r0) * I;
        float* b = h3 + size_t(r0) * I;
        const QProduct gate_up[] = {{a, w1[e]}, {b, w3[e]}};
        qmatmul_rows_multi(x, n, gate_up, 2, o0, o1);
        for (int r = 0; r < n; r++)
          silu_mul(a + size_t(r) * I + o0, a + size_t(r) * I + o0, b + size_t(r) * I + o0, o1 - o0);
      });
#pragma omp barrier
      split_rows(tokens, H, [&](int j, int o0, int o1) {
        const int e = active[j], r0 = offsets[e], n = offsets[e + 1] - r0;
        qmatmul_rows(y + size_t(r0) * H, h1 + size_t(r0) * I, *w2[e], n, o0, o1);
      });
    }
  }

  void rmsnorm(float* out, float* rstd, const float* in, const float* w, int N, int H, double eps) override {
    rmsnorm_forward(out, rstd, in, w, N, H, eps);
  }
  void rmsnorm_backward(float* din, float* dw, const float* dout, const float* in, const float* w, const float* rstd,
                        int N, int H) override {
    sky::rmsnorm_backward(din, dw, dout, in, w, rstd, N, H);
  }
  void rope(float* x, const int32_t* pos, int N, int heads, const RopeTable& t) override {
    rope_forward(x, pos, N, heads, t);
  }
  void rope_backward(float* dx, const int32_t* pos, int N, int heads, const RopeTable& t) override {
    sky::rope_backward(dx, pos, N, heads, t);
  }
  void swiglu(float* out, const float* gate, const float* up, long n) override { swiglu_forward(out, gate, up, n); }
  void swiglu(double* out, const double* gate, const double* up, long n) override {
    swiglu_forward(out, gate, up, n);
  }
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       long n) override {
    sky::swiglu_backward(dgate, dup, dout, gate, up, n);
  }
  void swiglu_backward(double* dgate, double* dup, const double* dout, const double* gate, const double* up,
                       long n) override {
    sky::swiglu_backward(dgate, dup, dout, gate, up, n);
  }
  void embedding(float* out, const int32_t* tokens, const float* table, int N, int H) override {
    embedding_forward(out, tokens, table, N, H);
  }
  void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N, int H) override {
    sky::embedding_backward(dtable, dout, tokens, N, H);
  }

  void attention(float* out, float* att, const float* q, const float* k, const float* v, int B, int T, int heads,
                 int kv, int hd) override {
    attention_forward(out, att, q, k, v, B, T, heads, kv, hd);
  }
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* att, int B, int T, int heads, int kv, int hd) override {
    sky::attention_backward(dq, dk, dv, dout, q, k, v, att, B, T, heads, kv, hd);
  }
  void attention_kv(const AttnSeq* seqs, int count, int heads, int kv, int hd) override {
    attention_cached_batch(seqs, count, heads, kv, hd);
  }

  void cross_entropy(float* losses, const float* logits, const int32_t* targets, int N, int V) override {
    cross_entropy_forward(losses, logits, targets, N, V);
  }
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, const float* dloss, int N,
                              int V) override {
    sky::cross_entropy_backward(dlogits, logits, targets, dloss, N, V);
  }
  void adamw(float* p, const float* g, float* m, float* v, size_t n, float b1, float b2, float eps, float shrink,
             float step_size, float inv_sqrt_bc2, float grad_scale) override {
    adamw_update(p, g, m, v, n, b1, b2, eps, shrink, step_size, inv_sqrt_bc2, grad_scale);
  }

 private:
  int team_ = 0;  // the configured team (set_threads), 0 until known
  // SKYMOE_FIXED_TEAM=1: every step on the full team (benchmarks of the kernels alone).
  const bool fixed_team_ = [] {
    const char* v = std::getenv("SKYMOE_FIXED_TEAM");
    return v && *v && *v != '0';
  }();
  StepGovernor governor_;
  int step_threads_ = 1;
  std::chrono::steady_clock::time_point step_t0_;
};

}  // namespace

Backend& cpu_backend_instance() {
  static CpuBackend b;
  return b;
}

}  // namespace sky
