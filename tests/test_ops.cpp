// Every op: forward vs a naive float64 reference (float and double instantiations), backward in
// double vs central finite differences, and backward accumulating into existing gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/error.h"

#include "core/dtype.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/cross_entropy.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/rmsnorm.h"
#include "backend/cpu/rope.h"
#include "backend/cpu/swiglu.h"
#include "backend/cpu/vmath.h"
#include "hwy/tests/hwy_gtest.h"
#include "ref.h"

using namespace sky;
using namespace skytest;
using Vec = std::vector<double>;

static uint64_t g_seed = 1;
static Vec rnd(size_t n, double scale = 1.0) { return randn(n, g_seed++, scale); }

template <class T>
static std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
// Inputs as the kernel sees them, so the reference starts from the same (rounded) values.
template <class T>
static Vec rounded(const Vec& v) {
  if constexpr (std::is_same_v<T, float>) return to_double(to_float(v));
  else return v;
}
template <class T>
static double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}
static std::vector<int32_t> rand_ints(int n, int hi) {
  Vec r = rnd(n);
  std::vector<int32_t> out(n);
  for (int i = 0; i < n; i++) out[i] = (int32_t)(std::fabs(r[i]) * 1e6) % hi;
  return out;
}
static double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

template <class T>
static void expect_close(const std::vector<T>& got, const Vec& want, double atol, double rtol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  Vec g(got.begin(), got.end());
  EXPECT_LE(max_err_ratio(g.data(), want.data(), g.size(), atol, rtol), 1.0) << what;
}

// Gradient check in double. `loss` evaluates L = sum(forward_out * R) from the current inputs;
// `backward` adds dL/d(input k) into grads[k]. Checks the analytic gradient against central
// differences, then that two more calls on top of a random start give start + 2 * grad.
static void check_grads(const std::function<double()>& loss, std::vector<Vec*> inputs,
                        const std::function<void(std::vector<double*>)>& backward, double rtol = 1e-6) {
  size_t K = inputs.size();
  std::vector<Vec> g(K), acc(K), start(K);
  std::vector<double*> gp(K), ap(K);
  for (size_t k = 0; k < K; k++) {
    g[k].assign(inputs[k]->size(), 0.0);
    start[k] = rnd(inputs[k]->size());
    acc[k] = start[k];
    gp[k] = g[k].data();
    ap[k] = acc[k].data();
  }
  backward(gp);
  backward(ap);
  backward(ap);
  for (size_t k = 0; k < K; k++) {
    Vec num = numeric_grad(loss, inputs[k]->data(), inputs[k]->size());
    EXPECT_LE(max_err_ratio(g[k].data(), num.data(), num.size(), rtol, rtol), 1.0) << "input " << k;
    Vec want(num.size());
    for (size_t i = 0; i < want.size(); i++) want[i] = start[k][i] + 2 * g[k][i];
    EXPECT_LE(max_err_ratio(acc[k].data(), want.data(), want.size(), 1e-12, 1e-12), 1.0) << "accumulate " << k;
  }
}

// ---------------------------------------------------------------- matmul

template <class T>
static void matmul_fwd_case(int N, int I, int O) {
  Vec x = rounded<T>(rnd((size_t)N * I)), w = rounded<T>(rnd((size_t)O * I));
  Vec want((size_t)N * O);
  for (int n = 0; n < N; n++)
    for (int o = 0; o < O; o++) {
      double s = 0;
      for (int i = 0; i < I; i++) s += x[n * I + i] * w[o * I + i];
      want[n * O + o] = s;
    }
  std::vector<T> out((size_t)N * O);
  matmul_forward(out.data(), cast<T>(x).data(), cast<T>(w).data(), N, I, O);
  expect_close(out, want, tol<T>() * std::sqrt(I), tol<T>(), "matmul");
}

TEST(Matmul, Forward) {
  for (auto [N, I, O] : {std::tuple{1, 5, 3}, {3, 13, 7}, {7, 64, 5}, {9, 33, 64}}) {
    matmul_fwd_case<float>(N, I, O);
    matmul_fwd_case<double>(N, I, O);
  }
}

TEST(Matmul, Backward) {
  int N = 3, I = 5, O = 7;
  Vec x = rnd(N * I), w = rnd(O * I), R = rnd(N * O);
  auto loss = [&] {
    Vec out(N * O);
    matmul_forward(out.data(), x.data(), w.data(), N, I, O);
    return dot(out, R);
  };
  check_grads(loss, {&x, &w}, [&](std::vector<double*> g) {
    matmul_backward(g[0], g[1], R.data(), x.data(), w.data(), N, I, O);
  });
  // A null gradient is skipped, the other still computed.
  Vec dx(N * I, 0.0), dx2(N * I, 0.0), dw(O * I, 0.0);
  matmul_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), N, I, O);
  matmul_backward(dx2.data(), (double*)nullptr, R.data(), x.data(), w.data(), N, I, O);
  EXPECT_EQ(dx, dx2);
}

// ---------------------------------------------------------------- swiglu

template <class T>
static void swiglu_fwd_case(long n) {
  Vec g = rounded<T>(rnd(n, 3.0)), u = rounded<T>(rnd(n)), want(n);
  for (long i = 0; i < n; i++) want[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
  std::vector<T> out(n);
  swiglu_forward(out.data(), cast<T>(g).data(), cast<T>(u).data(), n);
  expect_close(out, want, tol<T>(), tol<T>(), "swiglu");
}

TEST(Swiglu, Forward) {
  for (long n : {1L, 7L, 1001L, 70001L}) {  // the last one crosses the OpenMP threshold
    swiglu_fwd_case<float>(n);
    swiglu_fwd_case<double>(n);
  }
}

TEST(Swiglu, Backward) {
  long n = 37;
  Vec g = rnd(n, 3.0), u = rnd(n), R = rnd(n);
  auto loss = [&] {
    Vec out(n);
    swiglu_forward(out.data(), g.data(), u.data(), n);
    return dot(out, R);
  };
  check_grads(loss, {&g, &u}, [&](std::vector<double*> d) {
    swiglu_backward(d[0], d[1], R.data(), g.data(), u.data(), n);
  });
}

// The float backward (vectorized exp) against the float64 one on the same inputs, accumulating
// into non-zero gradients as the model does.
TEST(Swiglu, FloatBackwardMatchesDouble) {
  for (long n : {1L, 19L, 70001L}) {
    Vec g = rounded<float>(rnd(n, 3.0)), u = rounded<float>(rnd(n)), dy = rounded<float>(rnd(n));
    Vec dg = rounded<float>(rnd(n)), du = rounded<float>(rnd(n));
    std::vector<float> dgf = cast<float>(dg), duf = cast<float>(du);
    swiglu_backward(dg.data(), du.data(), dy.data(), g.data(), u.data(), n);
    swiglu_backward(dgf.data(), duf.data(), cast<float>(dy).data(), cast<float>(g).data(), cast<float>(u).data(), n);
    expect_close(dgf, dg, tol<float>(), tol<float>(), "swiglu dgate");
    expect_close(duf, du, tol<float>(), tol<float>(), "swiglu dup");
  }
}

// ---------------------------------------------------------------- embedding

template <class T>
static void embedding_fwd_case(int N, int V, int H) {
  Vec table = rounded<T>(rnd((size_t)V * H));
  auto tok = rand_ints(N, V);
  Vec want((size_t)N * H);
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++) want[n * H + h] = table[tok[n] * H + h];
  std::vector<T> out((size_t)N * H);
  embedding_forward(out.data(), tok.data(), cast<T>(table).data(), N, H);
  EXPECT_EQ(Vec(out.begin(), out.end()), want);  // a copy: exact
}

TEST(Embedding, Forward) {
  for (auto [N, V, H] : {std::tuple{1, 1, 5}, {3, 7, 13}, {7, 11, 64}, {300, 97, 257}}) {
    embedding_fwd_case<float>(N, V, H);
    embedding_fwd_case<double>(N, V, H);
  }
}

TEST(Embedding, Backward) {
  int N = 9, V = 5, H = 6;  // more tokens than rows: ids repeat
  Vec table = rnd(V * H), R = rnd(N * H);
  auto tok = rand_ints(N, V);
  tok[3] = tok[0];
  auto loss = [&] {
    Vec out(N * H);
    embedding_forward(out.data(), tok.data(), table.data(), N, H);
    return dot(out, R);
  };
  check_grads(loss, {&table}, [&](std::vector<double*> d) {
    embedding_backward(d[0], R.data(), tok.data(), N, H);
  });
}

TEST(Embedding, BackwardParallelRepeats) {
  // Large enough to run threaded, all tokens hitting 3 rows.
  int N = 2000, V = 3, H = 67;
  auto tok = rand_ints(N, V);
  Vec R = rnd((size_t)N * H), want((size_t)V * H, 0.0);
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++) want[tok[n] * H + h] += R[n * H + h];
  Vec got((size_t)V * H, 0.0);
  embedding_backward(got.data(), R.data(), tok.data(), N, H);
  EXPECT_LE(max_err_ratio(got.data(), want.data(), got.size(), 1e-12, 1e-12), 1.0);
}

// ---------------------------------------------------------------- rmsnorm

static const double kEps = 1e-5;

template <class T>
static void rmsnorm_fwd_case(int N, int H) {
  Vec x = rounded<T>(rnd((size_t)N * H, 2.0)), w = rounded<T>(rnd(H)), want((size_t)N * H), want_r(N);
  for (int n = 0; n < N; n++) {
    double ss = 0;
    for (int h = 0; h < H; h++) ss += x[n * H + h] * x[n * H + h];
    want_r[n] = 1 / std::sqrt(ss / H + kEps);
    for (int h = 0; h < H; h++) want[n * H + h] = x[n * H + h] * want_r[n] * w[h];
  }
  std::vector<T> out((size_t)N * H), r(N);
  rmsnorm_forward(out.data(), r.data(), cast<T>(x).data(), cast<T>(w).data(), N, H, kEps);
  expect_close(out, want, tol<T>(), tol<T>(), "rmsnorm out");
  expect_close(r, want_r, tol<T>(), tol<T>(), "rmsnorm rstd");
  rmsnorm_forward(out.data(), (T*)nullptr, cast<T>(x).data(), cast<T>(w).data(), N, H, kEps);
  expect_close(out, want, tol<T>(), tol<T>(), "rmsnorm out, no rstd");
}

TEST(RMSNorm, Forward) {
  for (auto [N, H] : {std::pair{1, 5}, {3, 13}, {7, 64}, {130, 300}}) {
    rmsnorm_fwd_case<float>(N, H);
    rmsnorm_fwd_case<double>(N, H);
  }
}

TEST(RMSNorm, Backward) {
  for (auto [N_, H_] : {std::pair{1, 5}, {3, 13}}) {
    const int N = N_, H = H_;  // captured below; clang 14 cannot capture a structured binding
    Vec x = rnd(N * H), w = rnd(H), R = rnd(N * H);
    auto loss = [&] {
      Vec out(N * H);
      rmsnorm_forward(out.data(), (double*)nullptr, x.data(), w.data(), N, H, kEps);
      return dot(out, R);
    };
    Vec r(N), out(N * H);
    rmsnorm_forward(out.data(), r.data(), x.data(), w.data(), N, H, kEps);
    check_grads(loss, {&x, &w}, [&](std::vector<double*> d) {
      rmsnorm_backward(d[0], d[1], R.data(), x.data(), w.data(), r.data(), N, H);
    });
  }
}

TEST(RMSNorm, BackwardLargeMatchesNullDw) {
  // Threaded path (both loops) agrees with itself run with dw = null, and dw with a serial sum.
  int N = 150, H = 300;
  Vec x = rnd(N * H), w = rnd(H), R = rnd(N * H), r(N), out(N * H);
  rmsnorm_forward(out.data(), r.data(), x.data(), w.data(), N, H, kEps);
  Vec dx(N * H, 0.0), dx2(N * H, 0.0), dw(H, 0.0), want_dw(H, 0.0);
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), r.data(), N, H);
  rmsnorm_backward(dx2.data(), (double*)nullptr, R.data(), x.data(), w.data(), r.data(), N, H);
  EXPECT_EQ(dx, dx2);
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++) want_dw[h] += R[n * H + h] * x[n * H + h] * r[n];
  EXPECT_LE(max_err_ratio(dw.data(), want_dw.data(), H, 1e-12, 1e-12), 1.0);
}

// ---------------------------------------------------------------- rope

// Reference rotation, angles from scratch (not the table).
static Vec rope_ref(const Vec& x, const std::vector<int32_t>& pos, int N, int nh, int d, double theta) {
  Vec y = x;
  for (int n = 0; n < N; n++)
    for (int h = 0; h < nh; h++)
      for (int i = 0; i < d / 2; i++) {
        double a = pos[n] / std::pow(theta, 2.0 * i / d);
        size_t o = ((size_t)n * nh + h) * d;
        double x0 = x[o + i], x1 = x[o + i + d / 2];
        y[o + i] = x0 * std::cos(a) - x1 * std::sin(a);
        y[o + i + d / 2] = x1 * std::cos(a) + x0 * std::sin(a);
      }
  return y;
}

template <class T>
static void rope_fwd_case(int N, int nh, int d, int max_pos) {
  double theta = 10000.0;
  RopeTable table(d, max_pos, theta);
  auto pos = rand_ints(N, max_pos);
  pos[0] = max_pos - 1;
  Vec x = rounded<T>(rnd((size_t)N * nh * d));
  std::vector<T> y = cast<T>(x);
  rope_forward(y.data(), pos.data(), N, nh, table);
  // Large angles (pos * 1 rad) lose a little in the reference's own cos/sin; 1e-12 still holds.
  expect_close(y, rope_ref(x, pos, N, nh, d, theta), tol<T>(), tol<T>(), "rope");
}

TEST(RoPE, Forward) {
  for (auto [N, nh, d] : {std::tuple{1, 1, 2}, {3, 5, 6}, {7, 4, 64}, {17, 3, 128}}) {
    rope_fwd_case<float>(N, nh, d, 4096);
    rope_fwd_case<double>(N, nh, d, 4096);
  }
}

TEST(RoPE, Backward) {
  int N = 5, nh = 3, d = 8;
  RopeTable table(d, 64, 500000.0);
  auto pos = rand_ints(N, 64);
  Vec x = rnd(N * nh * d), R = rnd(N * nh * d);
  auto loss = [&] {
    Vec y = x;
    rope_forward(y.data(), pos.data(), N, nh, table);
    return dot(y, R);
  };
  // rope_backward transforms dx in place (no accumulation): dL/dx = rope_backward(R).
  Vec g = R;
  rope_backward(g.data(), pos.data(), N, nh, table);
  Vec num = numeric_grad(loss, x.data(), x.size());
  EXPECT_LE(max_err_ratio(g.data(), num.data(), g.size(), 1e-6, 1e-6), 1.0);
  // And it undoes the forward rotation.
  Vec y = x;
  rope_forward(y.data(), pos.data(), N, nh, table);
  rope_backward(y.data(), pos.data(), N, nh, table);
  EXPECT_LE(max_err_ratio(y.data(), x.data(), x.size(), 1e-12, 1e-12), 1.0);
}

TEST(RoPE, Validation) {
  EXPECT_THROW(RopeTable(7, 16, 10000.0), Error);
  RopeTable table(4, 8, 10000.0);
  std::vector<float> x(4, 1.0f);
  int32_t bad = 8;
  EXPECT_THROW(rope_forward(x.data(), &bad, 1, 1, table), Error);
}

// ---------------------------------------------------------------- attention

struct AttRef {
  Vec out, att;
};
static AttRef attention_ref(const Vec& q, const Vec& k, const Vec& v, int B, int T, int nh, int nkv, int hd) {
  AttRef r{Vec((size_t)B * T * nh * hd), Vec((size_t)B * nh * T * T, 0.0)};
  int C = nh * hd, Ckv = nkv * hd;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < nh; h++) {
      int g = h / (nh / nkv);
      for (int i = 0; i < T; i++) {
        Vec s(i + 1);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) {
          double d = 0;
          for (int c = 0; c < hd; c++) d += q[(b * T + i) * C + h * hd + c] * k[(b * T + j) * Ckv + g * hd + c];
          s[j] = d / std::sqrt((double)hd);
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j <= i; j++) sum += s[j] = std::exp(s[j] - mx);
        for (int j = 0; j <= i; j++) {
          double p = s[j] / sum;
          r.att[((size_t)(b * nh + h) * T + i) * T + j] = p;
          for (int c = 0; c < hd; c++) r.out[(b * T + i) * C + h * hd + c] += p * v[(b * T + j) * Ckv + g * hd + c];
        }
      }
    }
  return r;
}

static const std::tuple<int, int> kHeads[] = {{4, 4}, {6, 2}, {8, 1}};

template <class T>
static void attention_fwd_case(int B, int Tn, int nh, int nkv, int hd) {
  size_t nq = (size_t)B * Tn * nh * hd, nk = (size_t)B * Tn * nkv * hd;
  Vec q = rounded<T>(rnd(nq, 1.5)), k = rounded<T>(rnd(nk, 1.5)), v = rounded<T>(rnd(nk));
  AttRef want = attention_ref(q, k, v, B, Tn, nh, nkv, hd);
  std::vector<T> out(nq), att((size_t)B * nh * Tn * Tn, T(7));  // 7: masked entries must be overwritten
  attention_forward(out.data(), att.data(), cast<T>(q).data(), cast<T>(k).data(), cast<T>(v).data(), B, Tn, nh,
                    nkv, hd);
  expect_close(out, want.out, tol<T>(), tol<T>(), "attention out");
  expect_close(att, want.att, tol<T>(), tol<T>(), "attention probs");
}

TEST(Attention, Forward) {
  for (auto [nh, nkv] : kHeads)
    for (auto [B, Tn, hd] : {std::tuple{1, 1, 4}, {2, 2, 8}, {1, 9, 16}, {2, 17, 64}}) {
      attention_fwd_case<float>(B, Tn, nh, nkv, hd);
      attention_fwd_case<double>(B, Tn, nh, nkv, hd);
    }
}

TEST(Attention, Backward) {
  for (auto [nh_, nkv_] : kHeads) {
    const int nh = nh_, nkv = nkv_;  // captured below; clang 14 cannot capture a structured binding
    int B = 2, Tn = 5, hd = 4;
    size_t nq = (size_t)B * Tn * nh * hd, nk = (size_t)B * Tn * nkv * hd;
    Vec q = rnd(nq), k = rnd(nk), v = rnd(nk), R = rnd(nq), att((size_t)B * nh * Tn * Tn);
    auto loss = [&] {
      Vec out(nq);
      attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, Tn, nh, nkv, hd);
      return dot(out, R);
    };
    check_grads(loss, {&q, &k, &v}, [&](std::vector<double*> d) {
      loss();  // fresh probabilities for the current inputs
      attention_backward(d[0], d[1], d[2], R.data(), q.data(), k.data(), v.data(), att.data(), B, Tn, nh, nkv, hd);
    });
  }
}

TEST(Attention, BadHeads) {
  std::vector<float> x(64);
  EXPECT_THROW(attention_forward(x.data(), x.data(), x.data(), x.data(), x.data(), 1, 1, 6, 4, 4), Error);
}

TEST(Attention, Cached) {
  // hd 12: head sizes that are not a multiple of the vector length take the remainder loops.
  for (int hd : {16, 12})
  for (auto [nh, nkv] : kHeads) {
    int Tn = 17;
    size_t C = (size_t)nh * hd, Ckv = (size_t)nkv * hd;
    Vec q = rnd(Tn * C), k = rnd(Tn * Ckv), v = rnd(Tn * Ckv);
    std::vector<float> qf = cast<float>(q), kf = cast<float>(k), vf = cast<float>(v);
    std::vector<float> want(Tn * C), att((size_t)nh * Tn * Tn);
    attention_forward(want.data(), att.data(), qf.data(), kf.data(), vf.data(), 1, Tn, nh, nkv, hd);
    Vec wantd(want.begin(), want.end());

    // Prefill all at once.
    std::vector<float> out(Tn * C), scratch(Tn);
    attention_cached(out.data(), qf.data(), kf.data(), vf.data(), 0, Tn, nh, nkv, hd, scratch.data());
    expect_close(out, wantd, 1e-5, 1e-5, "prefill");

    // A 5-token prefill, a 4-token chunk, then one token at a time; scratch exactly start + n.
    std::fill(out.begin(), out.end(), 0.0f);
    for (auto [start, n] : {std::pair{0, 5}, {5, 4}}) {
      std::vector<float> s(start + n);
      attention_cached(out.data() + start * C, qf.data() + start * C, kf.data(), vf.data(), start, n, nh, nkv, hd,
                       s.data());
    }
    for (int t = 9; t < Tn; t++) {
      std::vector<float> s(t + 1);
      attention_cached(out.data() + t * C, qf.data() + t * C, kf.data(), vf.data(), t, 1, nh, nkv, hd, s.data());
    }
    expect_close(out, wantd, 1e-5, 1e-5, "incremental");
  }
}

TEST(Attention, CachedLongThreaded) {
  // Long enough to cross the threading threshold; causal prefix only (the cache may hold more).
  int nh = 8, nkv = 2, hd = 64, Tn = 300;
  size_t C = (size_t)nh * hd, Ckv = (size_t)nkv * hd;
  std::vector<float> q = cast<float>(rnd(Tn * C)), k = cast<float>(rnd(Tn * Ckv)), v = cast<float>(rnd(Tn * Ckv));
  std::vector<float> want(Tn * C), att((size_t)nh * Tn * Tn), out(4 * C), s(Tn);
  attention_forward(want.data(), att.data(), q.data(), k.data(), v.data(), 1, Tn, nh, nkv, hd);
  int start = Tn - 4;
  attention_cached(out.data(), q.data() + start * C, k.data(), v.data(), start, 4, nh, nkv, hd, s.data());
  Vec w(want.begin() + start * C, want.end());
  expect_close(out, w, 1e-5, 1e-5, "long");

  // A chunk of several 64-row query blocks after a cached prefix (the blocked prefill path).
  start = 37;
  std::vector<float> chunk((Tn - start) * C), s2(Tn);
  attention_cached(chunk.data(), q.data() + start * C, k.data(), v.data(), start, Tn - start, nh, nkv, hd, s2.data());
  expect_close(chunk, Vec(want.begin() + start * C, want.end()), 1e-5, 1e-5, "long chunk");

  // The last row alone: a decode step over the whole cache.
  std::vector<float> last(C);
  attention_cached(last.data(), q.data() + (Tn - 1) * C, k.data(), v.data(), Tn - 1, 1, nh, nkv, hd, s2.data());
  expect_close(last, Vec(want.begin() + (Tn - 1) * C, want.end()), 1e-5, 1e-5, "long decode");
}

TEST(Attention, CachedBatchEqualsOneSequenceAtATime) {
  // Sequences of different lengths, decode rows and a multi-block chunk in one call.
  int nh = 4, nkv = 2, hd = 32;
  size_t C = (size_t)nh * hd, Ckv = (size_t)nkv * hd;
  const std::vector<std::pair<int, int>> shapes = {{10, 1}, {0, 130}, {200, 1}, {3, 5}};  // (start, n)
  std::vector<std::vector<float>> q, k, v, got, want;
  std::vector<AttnSeq> seqs;
  for (size_t i = 0; i < shapes.size(); i++) {
    auto [start, n] = shapes[i];
    q.push_back(cast<float>(rnd(n * C)));
    k.push_back(cast<float>(rnd((start + n) * Ckv)));
    v.push_back(cast<float>(rnd((start + n) * Ckv)));
    got.emplace_back(n * C);
    want.emplace_back(n * C);
  }
  for (size_t i = 0; i < shapes.size(); i++) {
    seqs.push_back({got[i].data(), q[i].data(), {k[i].data(), v[i].data()}, shapes[i].first, shapes[i].second});
    std::vector<float> s(shapes[i].first + shapes[i].second);
    attention_cached(want[i].data(), q[i].data(), k[i].data(), v[i].data(), shapes[i].first, shapes[i].second, nh,
                     nkv, hd, s.data());
  }
  attention_cached_batch(seqs.data(), int(seqs.size()), nh, nkv, hd);
  for (size_t i = 0; i < shapes.size(); i++) EXPECT_EQ(got[i], want[i]) << "sequence " << i;
}

// A bf16 KV cache gives what an f32 cache holding the same (bf16-rounded) values gives: exactly on
// the decode path (the widening is exact), within float rounding on the blocked prefill path.
TEST(Attention, Bf16CacheMatchesF32CacheOfRoundedValues) {
  int nh = 6, nkv = 2, hd = 20;
  size_t C = (size_t)nh * hd, Ckv = (size_t)nkv * hd;
  const std::vector<std::pair<int, int>> shapes = {{0, 1}, {40, 1}, {0, 70}, {9, 3}};  // (start, n)
  for (auto [start, n] : shapes) {
    std::vector<float> q = cast<float>(rnd(n * C)), k = cast<float>(rnd((start + n) * Ckv)),
                       v = cast<float>(rnd((start + n) * Ckv));
    std::vector<uint16_t> kh(k.size()), vh(v.size());
    for (size_t i = 0; i < k.size(); i++) {
      kh[i] = f32_to_bf16(k[i]);
      vh[i] = f32_to_bf16(v[i]);
      k[i] = bf16_to_f32(kh[i]);
      v[i] = bf16_to_f32(vh[i]);
    }
    std::vector<float> want(n * C), got(n * C);
    AttnSeq f{want.data(), q.data(), {k.data(), v.data()}, start, n};
    AttnSeq b{got.data(), q.data(), {nullptr, nullptr, kh.data(), vh.data()}, start, n};
    attention_cached_batch(&f, 1, nh, nkv, hd);
    attention_cached_batch(&b, 1, nh, nkv, hd);
    if (n == 1)
      EXPECT_EQ(got, want) << "start " << start;
    else
      expect_close(got, Vec(want.begin(), want.end()), 1e-5, 1e-5, "bf16 cache prefill");
  }
}

// ---------------------------------------------------------------- cross entropy

template <class T>
static void ce_fwd_case(int N, int V, double scale) {
  Vec x = rounded<T>(rnd((size_t)N * V, scale)), want(N);
  auto tgt = rand_ints(N, V);
  for (int n = 0; n < N; n++) {
    double mx = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) mx = std::max(mx, x[n * V + v]);
    for (int v = 0; v < V; v++) s += std::exp(x[n * V + v] - mx);
    want[n] = mx + std::log(s) - x[n * V + tgt[n]];
  }
  std::vector<T> loss(N);
  cross_entropy_forward(loss.data(), cast<T>(x).data(), tgt.data(), N, V);
  expect_close(loss, want, tol<T>() * scale, tol<T>(), "cross entropy");
}

TEST(CrossEntropy, Forward) {
  for (auto [N, V] : {std::pair{1, 1}, {1, 3}, {3, 7}, {7, 97}, {9, 1001}, {40, 5003}})
    for (double scale : {1.0, 300.0}) {  // 300: exp would overflow without the max shift
      ce_fwd_case<float>(N, V, scale);
      ce_fwd_case<double>(N, V, scale);
    }
}

TEST(CrossEntropy, Backward) {
  int N = 4, V = 7;
  Vec x = rnd(N * V, 2.0), R = rnd(N);
  auto tgt = rand_ints(N, V);
  auto loss = [&] {
    Vec l(N);
    cross_entropy_forward(l.data(), x.data(), tgt.data(), N, V);
    return dot(l, R);
  };
  check_grads(loss, {&x}, [&](std::vector<double*> d) {
    cross_entropy_backward(d[0], x.data(), tgt.data(), R.data(), N, V);
  });
}

TEST(CrossEntropy, BackwardFloatLarge) {
  // Float, threaded, huge logits: finite and equal to the double reference.
  int N = 20, V = 3001;
  Vec x = rounded<float>(rnd(N * V, 500.0)), R = rnd(N);
  R = rounded<float>(R);
  auto tgt = rand_ints(N, V);
  Vec want(N * V, 0.0);
  cross_entropy_backward(want.data(), x.data(), tgt.data(), R.data(), N, V);
  std::vector<float> got(N * V, 0.0f);
  cross_entropy_backward(got.data(), cast<float>(x).data(), tgt.data(), cast<float>(R).data(), N, V);
  expect_close(got, want, 1e-5, 1e-4, "float ce backward");
}

// ---------------------------------------------------------------- vectorized exp helpers

class VMathTarget : public hwy::TestWithParamTarget {};
HWY_TARGET_INSTANTIATE_TEST_SUITE_P(VMathTarget);

// Highway's exp is within 1 ulp; with the divisions and products a few ulp: 1e-6 relative.
TEST_P(VMathTarget, SiluMulMatchesDouble) {
  for (size_t n : {1, 7, 16, 33, 1000}) {
    std::vector<float> g = cast<float>(rnd(n, 8.0)), u = cast<float>(rnd(n)), out(n);
    g[0] = -100.0f;  // exp(-g) would overflow a naive formula
    if (n > 1) g[1] = 90.0f;
    silu_mul(out.data(), g.data(), u.data(), n);
    for (size_t i = 0; i < n; i++) {
      const double want = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
      EXPECT_NEAR(out[i], want, 1e-6 * std::fabs(want) + 1e-30) << "n=" << n << " i=" << i;
    }
    silu_mul(g.data(), g.data(), u.data(), n);  // in place
    EXPECT_EQ(g, out);
  }
}

TEST_P(VMathTarget, SoftmaxMatchesDouble) {
  for (size_t n : {1, 5, 16, 17, 300}) {
    std::vector<float> s = cast<float>(rnd(n, 5.0));
    for (auto& v : s) v -= 1000.0f;  // all far below zero: the maximum must come from the data
    std::vector<double> want(n);
    double mx = -1e300, sum = 0;
    for (float v : s) mx = std::max(mx, double(v));
    for (size_t i = 0; i < n; i++) sum += want[i] = std::exp(double(s[i]) - mx);
    softmax_inplace(s.data(), n);
    for (size_t i = 0; i < n; i++) EXPECT_NEAR(s[i], want[i] / sum, 1e-6 * want[i] / sum + 1e-9) << "n=" << n;
  }
}
