#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "backend/backend.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/moe_layer.h"
#include "ref.h"

using namespace sky;
using skytest::max_err_ratio;
using skytest::numeric_grad;
using skytest::randn;

namespace {

// The router is a backend op; these tests pin its formulas down on the CPU backend (the op harness,
// tests/test_backend_ops.cpp, holds every other backend to the same results).
template <class T>
void router_forward(T* probs, int32_t* idx, T* w, const T* z, int N, const RouterOptions& o) {
  backend("cpu").router(probs, idx, w, z, N, o);
}
template <class T>
void router_backward(T* dz, const T* dprobs, const T* dw, const T* z, const T* probs, const int32_t* idx, int N,
                     const RouterOptions& o) {
  backend("cpu").router_backward(dz, dprobs, dw, z, probs, idx, N, o);
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Tolerances (atol, rtol) per element type.
template <class T>
constexpr double ATOL = std::is_same_v<T, float> ? 2e-5 : 1e-12;
template <class T>
constexpr double RTOL = std::is_same_v<T, float> ? 2e-4 : 1e-10;

// ---- naive float64 references -------------------------------------------------------------------

struct RefRouter {
  std::vector<double> probs, w;  // [N,E], [N,k]
  std::vector<int32_t> idx;      // [N,k]
};

RefRouter ref_router(const std::vector<double>& z, int N, int E, int k, bool norm, double lambda) {
  RefRouter r;
  r.probs.resize(N * E);
  r.w.resize(N * k);
  r.idx.resize(N * k);
  for (int n = 0; n < N; n++) {
    std::vector<double> zt(z.begin() + n * E, z.begin() + (n + 1) * E);
    if (norm) {
      double mu = std::accumulate(zt.begin(), zt.end(), 0.0) / E, var = 0;
      for (double v : zt) var += (v - mu) * (v - mu) / (E - 1);
      for (double& v : zt) v = lambda * (v - mu) / std::sqrt(var);
    }
    double sum = 0;
    for (double v : zt) sum += std::exp(v);
    for (int e = 0; e < E; e++) r.probs[n * E + e] = std::exp(zt[e]) / sum;
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    const double* g = &r.probs[n * E];
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return g[a] > g[b]; });
    double S = 0;
    for (int s = 0; s < k; s++) S += g[order[s]];
    for (int s = 0; s < k; s++) {
      r.idx[n * k + s] = order[s];
      r.w[n * k + s] = g[order[s]] / S;
    }
  }
  return r;
}

int ref_capacity(double cf, int N, int E, int k) { return cf > 0 ? (int)std::ceil(cf * N * k / E - 1e-9) : 0; }

// kept[n*k+s] by sorting each expert's assignments by the policy's priority.
std::vector<uint8_t> ref_kept(const std::vector<int32_t>& idx, const std::vector<double>& probs, int N, int E,
                              int k, double cf, DropPolicy pol) {
  std::vector<uint8_t> kept(N * k, 1);
  int C = ref_capacity(cf, N, E, k);
  if (C == 0) return kept;
  for (int e = 0; e < E; e++) {
    std::vector<int> a;  // assignment ids n*k+s, in token order
    for (int i = 0; i < N * k; i++)
      if (idx[i] == e) a.push_back(i);
    if (pol == DropPolicy::Prob)
      std::stable_sort(a.begin(), a.end(),
                       [&](int x, int y) { return probs[(x / k) * E + e] > probs[(y / k) * E + e]; });
    for (size_t j = C; j < a.size(); j++) kept[a[j]] = 0;
  }
  return kept;
}

struct Weights {  // float64 master copy of one MoE layer
  int H, I, E;
  std::vector<double> router, w1, w3, w2;
  Weights(int H_, int I_, int E_, uint64_t seed) : H(H_), I(I_), E(E_) {
    router = randn(E * H, seed + 1, 1.0);
    w1 = randn(E * I * H, seed + 2, 0.5);
    w3 = randn(E * I * H, seed + 3, 0.5);
    w2 = randn(E * H * I, seed + 4, 0.5);
  }
};

template <class T>
struct TypedWeights {
  std::vector<T> router, w1, w3, w2;
  MoeWeights<T> mw;
  explicit TypedWeights(const Weights& w)
      : router(cast<T>(w.router)), w1(cast<T>(w.w1)), w3(cast<T>(w.w3)), w2(cast<T>(w.w2)) {
    mw = {w.H, w.I, w.E, 0, -1, router.data(), w1.data(), w3.data(), w2.data()};
  }
};

// Dense reference: every expert runs on every token; the gate is the renormalized top-k weight of a
// kept assignment and 0 otherwise.
std::vector<double> ref_moe(const std::vector<double>& x, int N, const Weights& w, const MoeOptions& o) {
  const int H = w.H, I = w.I, E = w.E, k = o.router.top_k;
  std::vector<double> z(N * E, 0.0);
  for (int n = 0; n < N; n++)
    for (int e = 0; e < E; e++)
      for (int h = 0; h < H; h++) z[n * E + e] += x[n * H + h] * w.router[e * H + h];
  RefRouter rr = ref_router(z, N, E, k, o.router.logits_norm, o.router.lambda);
  std::vector<uint8_t> kept = ref_kept(rr.idx, rr.probs, N, E, k, o.capacity_factor, o.policy);
  std::vector<double> out(N * H, 0.0);
  for (int n = 0; n < N; n++)
    for (int e = 0; e < E; e++) {
      double gate = 0;
      for (int s = 0; s < k; s++)
        if (rr.idx[n * k + s] == e && kept[n * k + s]) gate = rr.w[n * k + s];
      std::vector<double> act(I);
      for (int i = 0; i < I; i++) {
        double a = 0, b = 0;
        for (int h = 0; h < H; h++) {
          a += w.w1[(e * I + i) * H + h] * x[n * H + h];
          b += w.w3[(e * I + i) * H + h] * x[n * H + h];
        }
        act[i] = a / (1 + std::exp(-a)) * b;
      }
      for (int h = 0; h < H; h++) {
        double y = 0;
        for (int i = 0; i < I; i++) y += w.w2[(e * H + h) * I + i] * act[i];
        out[n * H + h] += gate * y;
      }
    }
  return out;
}

// ---- 1. router forward --------------------------------------------------------------------------

template <class T>
void check_router_forward(int N, int E, int k, bool norm, double lambda, uint64_t seed) {
  std::vector<double> z = randn(N * E, seed, 2.0);
  RefRouter r = ref_router(z, N, E, k, norm, lambda);
  std::vector<T> zt = cast<T>(z), probs(N * E), w(N * k);
  std::vector<int32_t> idx(N * k);
  RouterOptions o{E, k, norm, lambda};
  router_forward(probs.data(), idx.data(), w.data(), zt.data(), N, o);
  EXPECT_LE(max_err_ratio(probs.data(), r.probs.data(), N * E, ATOL<T>, RTOL<T>), 1.0);
  EXPECT_LE(max_err_ratio(w.data(), r.w.data(), N * k, ATOL<T>, RTOL<T>), 1.0);
  EXPECT_EQ(idx, r.idx);
}

TEST(Router, ForwardMatchesReference) {
  uint64_t seed = 100;
  for (int N : {1, 5, 13})
    for (auto [E, k] : {std::pair{2, 1}, {2, 2}, {4, 2}, {7, 3}, {7, 1}})
      for (bool norm : {false, true}) {
        SCOPED_TRACE(testing::Message() << "N=" << N << " E=" << E << " k=" << k << " norm=" << norm);
        check_router_forward<float>(N, E, k, norm, 1.0, seed++);
        check_router_forward<double>(N, E, k, norm, norm ? 1.7 : 1.0, seed++);
      }
}

template <class T>
void check_router_hand() {
  // z = [1,2,3,4]: mean 2.5, unbiased std sqrt(5/3) = 1.29099..., z~ = [-1.5,-.5,.5,1.5] / std.
  std::vector<T> z = {1, 2, 3, 4}, g(4), w(2);
  std::vector<int32_t> idx(2);
  router_forward(g.data(), idx.data(), w.data(), z.data(), 1, RouterOptions{4, 2, true, 1.0});
  std::vector<double> g_exp = {0.0552739612675151, 0.119928844417658, 0.260211632991966, 0.564585561322862};
  std::vector<double> w_exp = {0.684514405740519, 0.315485594259481};
  EXPECT_LE(max_err_ratio(g.data(), g_exp.data(), 4, 1e-7, 1e-6), 1.0);
  EXPECT_LE(max_err_ratio(w.data(), w_exp.data(), 2, 1e-7, 1e-6), 1.0);
  EXPECT_EQ(idx, (std::vector<int32_t>{3, 2}));
  // lambda = 2 sharpens the distribution.
  router_forward(g.data(), idx.data(), w.data(), z.data(), 1, RouterOptions{4, 2, true, 2.0});
  g_exp = {0.00756418000433428, 0.0356096720053566, 0.167638625680839, 0.789187522309471};
  w_exp = {0.824797194314827, 0.175202805685173};
  EXPECT_LE(max_err_ratio(g.data(), g_exp.data(), 4, 1e-7, 1e-6), 1.0);
  EXPECT_LE(max_err_ratio(w.data(), w_exp.data(), 2, 1e-7, 1e-6), 1.0);
  // Normalization off: plain softmax.
  router_forward(g.data(), idx.data(), w.data(), z.data(), 1, RouterOptions{4, 2, false, 1.0});
  g_exp = {0.032058603280085, 0.0871443187420326, 0.23688281808991, 0.643914259887972};
  EXPECT_LE(max_err_ratio(g.data(), g_exp.data(), 4, 1e-7, 1e-6), 1.0);
  // Ties go to the lower expert index, in order.
  std::vector<T> zt = {1, 1, 0, 1};
  std::vector<int32_t> idx3(3);
  std::vector<T> w3(3);
  router_forward(g.data(), idx3.data(), w3.data(), zt.data(), 1, RouterOptions{4, 3, true, 1.0});
  EXPECT_EQ(idx3, (std::vector<int32_t>{0, 1, 3}));
  EXPECT_NEAR(w3[0], 1.0 / 3, 1e-6);
}

TEST(Router, HandCheckedExample) {
  check_router_hand<float>();
  check_router_hand<double>();
}

// ---- 2. router backward -------------------------------------------------------------------------

void check_router_backward(int N, int E, int k, bool norm, double lambda, bool with_dprobs, uint64_t seed,
                           bool sigmoid = false, bool renormalize = true, double scale = 1.0) {
  std::vector<double> z = randn(N * E, seed, 1.5), Rp = randn(N * E, seed + 1), Rw = randn(N * k, seed + 2);
  RouterOptions o{E, k, norm, lambda, sigmoid, renormalize, scale};
  std::vector<double> probs(N * E), w(N * k);
  std::vector<int32_t> idx(N * k);
  // L = <Rp, probs> + <Rw, topk_w>
  auto loss = [&]() {
    router_forward(probs.data(), idx.data(), w.data(), z.data(), N, o);
    double L = 0;
    for (int i = 0; i < N * E; i++) L += with_dprobs ? Rp[i] * probs[i] : 0.0;
    for (int i = 0; i < N * k; i++) L += Rw[i] * w[i];
    return L;
  };
  loss();
  std::vector<int32_t> idx0 = idx;
  std::vector<double> num = numeric_grad(loss, z.data(), z.size(), 1e-6);
  loss();
  ASSERT_EQ(idx, idx0);
  std::vector<double> dz(N * E, 0.25);  // accumulates on top of 0.25
  router_backward(dz.data(), with_dprobs ? Rp.data() : nullptr, Rw.data(), z.data(), probs.data(), idx.data(), N,
                  o);
  for (double& v : dz) v -= 0.25;
  EXPECT_LE(max_err_ratio(dz.data(), num.data(), dz.size(), 1e-8, 1e-6), 1.0);
}

TEST(Router, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 300;
  for (int N : {1, 5})
    for (auto [E, k] : {std::pair{2, 1}, {4, 2}, {7, 3}, {3, 3}})
      for (bool norm : {false, true})
        for (bool dp : {false, true}) {
          SCOPED_TRACE(testing::Message() << "N=" << N << " E=" << E << " k=" << k << " norm=" << norm
                                          << " dprobs=" << dp);
          check_router_backward(N, E, k, norm, norm ? 1.3 : 1.0, dp, seed++);
        }
}

// Sigmoid scores (DeepSeek-V3), top-k weights left unnormalized (Qwen2-MoE, OLMoE, DeepSeek-V2),
// a routed scaling factor: forward against the formulas, backward against finite differences.
TEST(Router, ScoringRenormalizationAndScalingOptions) {
  const std::vector<double> z = {0.3, -1.2, 2.0, 0.7};
  std::vector<double> g(4), w(2);
  std::vector<int32_t> idx(2);
  router_forward(g.data(), idx.data(), w.data(), z.data(), 1, RouterOptions{4, 2, false, 1.0, true, false, 2.5});
  for (int e = 0; e < 4; e++) EXPECT_NEAR(g[e], 1 / (1 + std::exp(-z[e])), 1e-15);
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(w[0], 2.5 * g[2], 1e-15);
  EXPECT_NEAR(w[1], 2.5 * g[3], 1e-15);
  router_forward(g.data(), idx.data(), w.data(), z.data(), 1, RouterOptions{4, 2, false, 1.0, true, true, 2.5});
  EXPECT_NEAR(w[0], 2.5 * g[2] / (g[2] + g[3]), 1e-15);
  uint64_t seed = 900;
  for (bool sigmoid : {false, true})
    for (bool renorm : {false, true})
      for (bool norm : {false, true})
        for (bool dp : {false, true}) {
          SCOPED_TRACE(testing::Message() << "sigmoid=" << sigmoid << " renorm=" << renorm << " norm=" << norm
                                          << " dprobs=" << dp);
          check_router_backward(3, 6, 2, norm, 1.2, dp, seed++, sigmoid, renorm, 1.7);
        }
}

// A selection bias (auxiliary-loss-free balancing, DeepSeek-V3's e_score_correction_bias) decides
// which experts win but not their weights: on both backends, in float and double, probs are the
// unbiased ones bit for bit and topk_w are the unbiased scores of the experts picked by g + b.
RouterOptions biased(RouterOptions o, const std::vector<float>& b) {
  o.select_bias = b.data();
  return o;
}

template <class T>
void check_selection_bias(const std::string& device) {
  Backend& be = backend(device);
  // Softmax with logit normalization: g = [0.0553, 0.1199, 0.2602, 0.5646] (HandCheckedExample).
  // Unbiased: experts 3, 2. With b = [0.6, 0, 0, 0]: keys [0.655, 0.120, 0.260, 0.565] -> 0, 3.
  const std::vector<T> z = {1, 2, 3, 4};
  const std::vector<float> b = {0.6f, 0, 0, 0};
  const RouterOptions o{4, 2, true, 1.0};
  std::vector<T> g0(4), w0(2), g(4), w(2);
  std::vector<int32_t> i0(2), idx(2);
  be.router(g0.data(), i0.data(), w0.data(), z.data(), 1, o);
  be.router(g.data(), idx.data(), w.data(), z.data(), 1, biased(o, b));
  EXPECT_EQ(i0, (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 3}));  // by biased score: 0.655 before 0.565
  EXPECT_EQ(g, g0);                                // the scores themselves are unbiased
  const double g_0 = 0.0552739612675151, g_3 = 0.564585561322862;
  EXPECT_NEAR(w[0], g_0 / (g_0 + g_3), 1e-6);      // 0.0892: weights from the unbiased scores
  EXPECT_NEAR(w[1], g_3 / (g_0 + g_3), 1e-6);      // 0.9108
  // A bias too small to overtake changes nothing; a zero bias is no bias.
  const std::vector<float> small = {0.1f, 0, 0, 0}, zero(4, 0.0f);
  for (const auto* bb : {&small, &zero}) {
    be.router(g.data(), idx.data(), w.data(), z.data(), 1, biased(o, *bb));
    EXPECT_EQ(idx, i0);
    EXPECT_EQ(w, w0);
  }
  // Sigmoid scores, unnormalized weights, routed scaling 2.5 (DeepSeek-V3's shape): z = [0.3, -1.2,
  // 2.0, 0.7] -> g = [0.574, 0.231, 0.881, 0.668]; b_1 = 1 lifts expert 1 (key 1.231) to the top.
  const std::vector<T> zs = {T(0.3), T(-1.2), T(2.0), T(0.7)};
  const std::vector<float> bs = {0, 1, 0, 0};
  const RouterOptions os{4, 2, false, 1.0, true, false, 2.5};
  be.router(g.data(), idx.data(), w.data(), zs.data(), 1, biased(os, bs));
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(w[0], 2.5 / (1 + std::exp(1.2)), 1e-6);
  EXPECT_NEAR(w[1], 2.5 / (1 + std::exp(-2.0)), 1e-6);
  // Ties of the biased keys go to the lower expert: equal logits, bias equal on experts 1 and 2.
  const std::vector<T> zt = {0, 0, 0, 0};
  const std::vector<float> bt = {0, 0.25f, 0.25f, 0};
  be.router(g.data(), idx.data(), w.data(), zt.data(), 1, biased(RouterOptions{4, 2, false, 1.0}, bt));
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(w[0], 0.5, 1e-7);
}

TEST(Router, SelectionBiasPicksExpertsButLeavesWeights) {
  for (const char* dev : {"cpu", "ref"}) {
    SCOPED_TRACE(dev);
    check_selection_bias<float>(dev);
    check_selection_bias<double>(dev);
  }
}

// ---- 3. dispatch --------------------------------------------------------------------------------

TEST(Dispatch, HandBuiltPolicies) {
  // N=6, E=2, k=1, capacity ceil(1.0*6*1/2) = 3. Expert 0 gets tokens {0,1,2,3,5}, expert 1 {4}.
  std::vector<int32_t> idx = {0, 0, 0, 0, 1, 0};
  std::vector<double> probs = {0.5, 0.5, 0.9, 0.1, 0.6, 0.4, 0.6, 0.4, 0.3, 0.7, 0.8, 0.2};
  Dispatch p = make_dispatch(idx.data(), probs.data(), 6, 2, 1, 1.0, DropPolicy::Prob);
  EXPECT_EQ(p.capacity, 3);
  EXPECT_EQ(p.load, (std::vector<int32_t>{5, 1}));
  // Highest probs: t1 (.9), t5 (.8), then the .6 tie between t2 and t3 goes to the earlier token.
  EXPECT_EQ(p.kept, (std::vector<uint8_t>{0, 1, 1, 0, 1, 1}));
  EXPECT_EQ(p.offsets, (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(p.row_token, (std::vector<int32_t>{1, 2, 5, 4}));
  EXPECT_EQ(p.row_slot, (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(p.slot_row, (std::vector<int32_t>{-1, 0, 1, -1, 3, 2}));
  EXPECT_EQ(p.dropped, 2);
  EXPECT_DOUBLE_EQ(p.drop_rate(), 2.0 / 6);

  Dispatch q = make_dispatch(idx.data(), probs.data(), 6, 2, 1, 1.0, DropPolicy::Position);
  EXPECT_EQ(q.kept, (std::vector<uint8_t>{1, 1, 1, 0, 1, 0}));
  EXPECT_EQ(q.row_token, (std::vector<int32_t>{0, 1, 2, 4}));
  EXPECT_EQ(q.dropped, 2);

  // Dropless: everything kept, rows grouped by expert in token order.
  Dispatch f = make_dispatch(idx.data(), probs.data(), 6, 2, 1, 0.0, DropPolicy::Prob);
  EXPECT_EQ(f.capacity, 0);
  EXPECT_EQ(f.dropped, 0);
  EXPECT_EQ(f.row_token, (std::vector<int32_t>{0, 1, 2, 3, 5, 4}));
  EXPECT_EQ(f.kept, std::vector<uint8_t>(6, 1));
}

TEST(Dispatch, TopKSlotsAndCapacity) {
  // N=3, E=3, k=2. Capacity ceil(0.5*3*2/3) = 1; ceil(1.25*3*2/3) = 3.
  std::vector<int32_t> idx = {2, 0, 0, 2, 2, 1};
  std::vector<float> probs = {0.3f, 0.1f, 0.6f, 0.5f, 0.1f, 0.4f, 0.1f, 0.2f, 0.7f};
  EXPECT_EQ(make_dispatch(idx.data(), probs.data(), 3, 3, 2, 1.25, DropPolicy::Prob).capacity, 3);
  EXPECT_EQ(make_dispatch(idx.data(), probs.data(), 3, 3, 2, 1.0, DropPolicy::Prob).capacity, 2);
  Dispatch d = make_dispatch(idx.data(), probs.data(), 3, 3, 2, 0.5, DropPolicy::Prob);
  EXPECT_EQ(d.capacity, 1);
  EXPECT_EQ(d.load, (std::vector<int32_t>{2, 1, 3}));
  // Expert 0: t0 (.3, slot 1) vs t1 (.5, slot 0) -> t1. Expert 1: t2 (slot 1).
  // Expert 2: t0 .6, t1 .4, t2 .7 -> t2 (slot 0).
  EXPECT_EQ(d.kept, (std::vector<uint8_t>{0, 0, 1, 0, 1, 1}));
  EXPECT_EQ(d.row_token, (std::vector<int32_t>{1, 2, 2}));
  EXPECT_EQ(d.row_slot, (std::vector<int32_t>{0, 1, 0}));
  EXPECT_EQ(d.dropped, 3);
  EXPECT_DOUBLE_EQ(d.drop_rate(), 0.5);
  d = make_dispatch(idx.data(), probs.data(), 3, 3, 2, 0.5, DropPolicy::Position);
  EXPECT_EQ(d.kept, (std::vector<uint8_t>{1, 1, 0, 0, 0, 1}));
}

TEST(Dispatch, RandomMatchesReference) {
  uint64_t seed = 500;
  for (int N : {1, 5, 13, 40})
    for (auto [E, k] : {std::pair{2, 1}, {4, 2}, {7, 3}})
      for (double cf : {0.0, 0.5, 1.0, 1.3})
        for (DropPolicy pol : {DropPolicy::Prob, DropPolicy::Position}) {
          std::vector<double> z = randn(N * E, seed++);
          RefRouter r = ref_router(z, N, E, k, false, 1.0);
          Dispatch d = make_dispatch(r.idx.data(), r.probs.data(), N, E, k, cf, pol);
          std::vector<uint8_t> kept = ref_kept(r.idx, r.probs, N, E, k, cf, pol);
          EXPECT_EQ(d.kept, kept);
          EXPECT_EQ(d.capacity, ref_capacity(cf, N, E, k));
          long nk = std::count(kept.begin(), kept.end(), 1);
          EXPECT_EQ(d.dropped, N * k - nk);
          EXPECT_EQ(d.offsets[E], nk);
          if (cf <= 0) {
            EXPECT_EQ(d.dropped, 0);
          }
          for (int e = 0; e < E; e++) {
            if (cf > 0) {
              EXPECT_LE(d.offsets[e + 1] - d.offsets[e], d.capacity);
            }
            for (int i = d.offsets[e]; i < d.offsets[e + 1]; i++) {
              if (i > d.offsets[e]) {
                EXPECT_LT(d.row_token[i - 1], d.row_token[i]);
              }
              EXPECT_EQ(r.idx[d.row_token[i] * k + d.row_slot[i]], e);
              EXPECT_EQ(d.slot_row[d.row_token[i] * k + d.row_slot[i]], i);
            }
          }
        }
}

// ---- 4/5. moe_forward vs the dense reference ---------------------------------------------------

template <class T>
void check_moe_forward(int N, int H, int I, int E, int k, bool norm, double cf, DropPolicy pol, uint64_t seed) {
  Weights W(H, I, E, seed);
  TypedWeights<T> tw(W);
  std::vector<double> x = randn(N * H, seed + 9);
  std::vector<T> xt = cast<T>(x), out(N * H);
  MoeOptions o;
  o.router = RouterOptions{E, k, norm, 1.0};
  o.capacity_factor = cf;
  o.policy = pol;
  MoeCache<T> c;
  moe_forward(backend(), out.data(), xt.data(), N, tw.mw, o, c);
  std::vector<double> ref = ref_moe(x, N, W, o);
  double atol = std::is_same_v<T, float> ? 1e-4 : 1e-12;
  EXPECT_LE(max_err_ratio(out.data(), ref.data(), ref.size(), atol, 1e-3 * atol), 1.0);
  if (cf > 0 && E * c.disp.capacity < N * k) {
    EXPECT_GT(c.disp.dropped, 0);  // the dropping path really ran
  }

  // Aux, z-loss and entropy from the cached router state.
  std::vector<double> z(N * E), p(N * E);
  for (int i = 0; i < N * E; i++) z[i] = c.logits[i], p[i] = c.probs[i];
  double zl = 0, ent = 0;
  for (int n = 0; n < N; n++) {
    double s = 0;
    for (int e = 0; e < E; e++) s += std::exp(z[n * E + e]), ent -= p[n * E + e] * std::log(p[n * E + e]);
    zl += std::log(s) * std::log(s) / N;
  }
  EXPECT_NEAR(c.z_loss, zl, 1e-5 * (1 + zl));
  EXPECT_NEAR(c.entropy, ent / N, 1e-5);

  // A second call of the same shape reuses every buffer.
  const T* ptrs[] = {c.logits.data(), c.probs.data(), c.xg.data(), c.h1.data(), c.act.data(), c.y.data()};
  const int32_t* rt = c.disp.row_token.data();
  moe_forward(backend(), out.data(), xt.data(), N, tw.mw, o, c);
  const T* ptrs2[] = {c.logits.data(), c.probs.data(), c.xg.data(), c.h1.data(), c.act.data(), c.y.data()};
  for (int i = 0; i < 6; i++) EXPECT_EQ(ptrs[i], ptrs2[i]);
  EXPECT_EQ(rt, c.disp.row_token.data());
}

TEST(Moe, ForwardDroplessMatchesDense) {
  uint64_t seed = 700;
  for (int N : {1, 5, 13})
    for (auto [H, I] : {std::pair{6, 5}, {16, 12}})
      for (auto [E, k] : {std::pair{2, 1}, {4, 2}, {7, 3}, {2, 2}})
        for (bool norm : {false, true}) {
          SCOPED_TRACE(testing::Message() << "N=" << N << " H=" << H << " E=" << E << " k=" << k);
          check_moe_forward<float>(N, H, I, E, k, norm, 0.0, DropPolicy::Prob, seed++ * 10);
          check_moe_forward<double>(N, H, I, E, k, norm, 0.0, DropPolicy::Prob, seed++ * 10);
        }
}

TEST(Moe, ForwardWithDroppingMatchesDense) {
  uint64_t seed = 900;
  for (int N : {5, 13})
    for (auto [E, k] : {std::pair{2, 1}, {4, 2}, {7, 3}})
      for (double cf : {0.5, 1.0})
        for (DropPolicy pol : {DropPolicy::Prob, DropPolicy::Position}) {
          SCOPED_TRACE(testing::Message() << "N=" << N << " E=" << E << " k=" << k << " cf=" << cf);
          check_moe_forward<float>(N, 16, 12, E, k, true, cf, pol, seed++ * 10);
          check_moe_forward<double>(N, 6, 5, E, k, true, cf, pol, seed++ * 10);
        }
}

// ---- 6. aux losses and z-loss -------------------------------------------------------------------

template <class T>
void check_aux_forward(int N, int E, int k, uint64_t seed) {
  RefRouter r = ref_router(randn(N * E, seed), N, E, k, false, 1.0);
  std::vector<T> p = cast<T>(r.probs);
  std::vector<double> P(E, 0.0), f(E, 0.0);
  for (int n = 0; n < N; n++)
    for (int e = 0; e < E; e++) P[e] += r.probs[n * E + e] / N;
  for (int a = 0; a < N * k; a++) f[r.idx[a]] += 1.0 / (N * k);
  double sky = 0, sw = 0;
  for (int e = 0; e < E; e++) sky += (1.0 / E - P[e]) * (1.0 / E - P[e]), sw += E * f[e] * P[e];
  EXPECT_NEAR(aux_loss_forward(p.data(), r.idx.data(), N, E, k, AuxLossType::Skywork), sky, 1e-6 * sky + 1e-12);
  EXPECT_NEAR(aux_loss_forward(p.data(), r.idx.data(), N, E, k, AuxLossType::Switch), sw, 1e-6 * sw);
  EXPECT_EQ(aux_loss_forward(p.data(), r.idx.data(), N, E, k, AuxLossType::None), 0.0);

  std::vector<double> z = randn(N * E, seed + 1, 3.0);
  std::vector<T> zt = cast<T>(z);
  double zl = 0;
  for (int n = 0; n < N; n++) {
    double s = 0;
    for (int e = 0; e < E; e++) s += std::exp(z[n * E + e]);
    zl += std::log(s) * std::log(s) / N;
  }
  EXPECT_NEAR(z_loss_forward(zt.data(), N, E), zl, 1e-6 * zl);
}

TEST(AuxLoss, ForwardMatchesReference) {
  uint64_t seed = 1100;
  for (int N : {1, 5, 13})
    for (auto [E, k] : {std::pair{2, 1}, {4, 2}, {7, 3}}) {
      check_aux_forward<float>(N, E, k, seed++);
      check_aux_forward<double>(N, E, k, seed++);
    }
  // Uniform routing is the minimum: Skywork 0, Switch 1.
  std::vector<double> u(8, 0.25);
  std::vector<int32_t> idx = {0, 1, 2, 3};
  EXPECT_NEAR(aux_loss_forward(u.data(), idx.data(), 2, 4, 2, AuxLossType::Skywork), 0.0, 1e-15);
  EXPECT_NEAR(aux_loss_forward(u.data(), idx.data(), 2, 4, 2, AuxLossType::Switch), 1.0, 1e-15);
}

TEST(AuxLoss, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 1300;
  for (int N : {1, 5, 13})
    for (auto [E_, k_] : {std::pair{2, 1}, {4, 2}, {7, 3}}) {
      const int E = E_, k = k_;  // lambdas below capture these; clang 14 cannot capture a binding
      RefRouter r = ref_router(randn(N * E, seed++), N, E, k, false, 1.0);
      const double dL = 1.7;
      for (AuxLossType t : {AuxLossType::Skywork, AuxLossType::Switch}) {
        std::vector<double> p = r.probs;  // probs are free inputs here, top-k assignments fixed
        auto f = [&]() { return dL * aux_loss_forward(p.data(), r.idx.data(), N, E, k, t); };
        std::vector<double> num = numeric_grad(f, p.data(), p.size());
        std::vector<double> g(N * E, 0.0);
        aux_loss_backward(g.data(), dL, p.data(), r.idx.data(), N, E, k, t);
        EXPECT_LE(max_err_ratio(g.data(), num.data(), g.size(), 1e-8, 1e-6), 1.0);
      }
      std::vector<double> z = randn(N * E, seed++, 2.0);
      auto f = [&]() { return dL * z_loss_forward(z.data(), N, E); };
      std::vector<double> num = numeric_grad(f, z.data(), z.size());
      std::vector<double> g(N * E, 0.0);
      z_loss_backward(g.data(), dL, z.data(), N, E);
      EXPECT_LE(max_err_ratio(g.data(), num.data(), g.size(), 1e-8, 1e-6), 1.0);
    }
}

// ---- 7. full moe_backward -----------------------------------------------------------------------

struct Grads {
  std::vector<double> x, router, w1, w3, w2;
};

// Analytic gradients of L = <out, Rr> + a * aux + b * z_loss in element type T (dx pre-filled with 0.5
// to check accumulation, then subtracted).
template <class T>
Grads analytic(const std::vector<double>& x, int N, const Weights& W, const MoeOptions& o,
               const std::vector<double>& Rr, double a, double b, std::vector<uint8_t>* kept = nullptr) {
  TypedWeights<T> tw(W);
  std::vector<T> xt = cast<T>(x), out(N * W.H), Rt = cast<T>(Rr);
  MoeCache<T> c;
  moe_forward(backend(), out.data(), xt.data(), N, tw.mw, o, c);
  if (kept) *kept = c.disp.kept;
  std::vector<T> dx(x.size(), T(0.5)), gr(W.router.size()), g1(W.w1.size()), g3(W.w3.size()), g2(W.w2.size());
  MoeGrads<T> g{gr.data(), g1.data(), g3.data(), g2.data()};
  moe_backward(backend(), dx.data(), g, Rt.data(), xt.data(), N, tw.mw, o, c, a, b);
  for (T& v : dx) v -= T(0.5);
  auto d = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  return {d(dx), d(gr), d(g1), d(g3), d(g2)};
}

void check_moe_backward(int N, int H, int I, int E, int k, double cf, DropPolicy pol, AuxLossType aux,
                        uint64_t seed) {
  Weights W(H, I, E, seed);
  std::vector<double> x = randn(N * H, seed + 9), Rr = randn(N * H, seed + 10);
  MoeOptions o;
  o.router = RouterOptions{E, k, true, 1.2};
  o.capacity_factor = cf;
  o.policy = pol;
  o.aux = aux;
  const double a = 0.7, b = 0.3;
  std::vector<uint8_t> kept0;
  Grads ga = analytic<double>(x, N, W, o, Rr, a, b, &kept0);
  if (cf > 0) {
    EXPECT_GT(std::count(kept0.begin(), kept0.end(), 0), 0);  // dropping is active
  }

  int flips = 0;
  auto loss = [&]() {
    TypedWeights<double> tw(W);
    std::vector<double> out(N * H);
    MoeCache<double> c;
    moe_forward(backend(), out.data(), x.data(), N, tw.mw, o, c);
    flips += c.disp.kept != kept0;
    double L = a * c.aux_loss + b * c.z_loss;
    for (int i = 0; i < N * H; i++) L += out[i] * Rr[i];
    return L;
  };
  auto check = [&](const char* name, std::vector<double>& p, const std::vector<double>& g) {
    std::vector<double> num = numeric_grad(loss, p.data(), p.size(), 1e-6);
    EXPECT_LE(max_err_ratio(g.data(), num.data(), g.size(), 1e-7, 1e-5), 1.0) << name;
  };
  check("x", x, ga.x);
  check("router", W.router, ga.router);
  check("w1", W.w1, ga.w1);
  check("w3", W.w3, ga.w3);
  check("w2", W.w2, ga.w2);
  EXPECT_EQ(flips, 0) << "a finite-difference step changed the kept set";

  // The float instantiation agrees with the double one.
  Grads gf = analytic<float>(x, N, W, o, Rr, a, b);
  auto close = [](const std::vector<double>& f, const std::vector<double>& d) {
    return max_err_ratio(f.data(), d.data(), f.size(), 2e-4, 2e-3);
  };
  EXPECT_LE(close(gf.x, ga.x), 1.0);
  EXPECT_LE(close(gf.router, ga.router), 1.0);
  EXPECT_LE(close(gf.w1, ga.w1), 1.0);
  EXPECT_LE(close(gf.w3, ga.w3), 1.0);
  EXPECT_LE(close(gf.w2, ga.w2), 1.0);
}

TEST(Moe, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 1500;
  for (AuxLossType aux : {AuxLossType::Skywork, AuxLossType::Switch, AuxLossType::None})
    for (auto [N, E, k] : {std::tuple{13, 4, 2}, {5, 7, 3}, {1, 2, 1}}) {
      for (double cf : {0.0, 0.6})
        for (DropPolicy pol : {DropPolicy::Prob, DropPolicy::Position}) {
          if (cf == 0 && pol == DropPolicy::Position) continue;
          if (cf > 0 && N == 1) continue;  // one token never overflows a capacity of 1
          SCOPED_TRACE(testing::Message() << "aux=" << int(aux) << " N=" << N << " E=" << E << " k=" << k
                                          << " cf=" << cf << " pol=" << int(pol));
          check_moe_backward(N, 6, 5, E, k, cf, pol, aux, seed++ * 10);
        }
    }
}

TEST(Moe, BackwardNullGradsSkipped) {
  const int N = 5, H = 6, I = 5, E = 4, k = 2;
  Weights W(H, I, E, 1700);
  std::vector<double> x = randn(N * H, 1701), Rr = randn(N * H, 1702);
  MoeOptions o;
  o.router = RouterOptions{E, k, true, 1.0};
  o.capacity_factor = 0.8;
  Grads full = analytic<double>(x, N, W, o, Rr, 0.1, 0.1);
  TypedWeights<double> tw(W);
  std::vector<double> out(N * H), gr(E * H, 0.0);
  MoeCache<double> c;
  moe_forward(backend(), out.data(), x.data(), N, tw.mw, o, c);
  MoeGrads<double> g;
  g.router = gr.data();
  moe_backward<double>(backend(), nullptr, g, Rr.data(), x.data(), N, tw.mw, o, c, 0.1, 0.1);
  EXPECT_LE(max_err_ratio(gr.data(), full.router.data(), gr.size(), 1e-14, 1e-12), 1.0);
}

}  // namespace
