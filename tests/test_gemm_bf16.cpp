// The bf16 training GEMM against a float64 reference that rounds the operands to bf16 the same way:
// what is left is f32 summation error, so the tolerance is tight and a packing or indexing slip
// (wrong pair, wrong panel, edge masks) cannot hide inside bf16's own rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "backend/cpu/gemm_bf16.h"
#include "ref.h"

using namespace skytest;

namespace {

double r16(float x) { return sky::bf16_to_f32(sky::f32_to_bf16(x)); }

struct Case {
  bool ta, tb;
  int M, N, K;
  float alpha, beta;
};

void check(const Case& c, uint64_t seed) {
  const int lda = (c.ta ? c.M : c.K) + 3, ldb = (c.tb ? c.K : c.N) + 1, ldc = c.N + 5;
  const auto A = to_float(randn(size_t(c.ta ? c.K : c.M) * lda, seed));
  const auto B = to_float(randn(size_t(c.tb ? c.N : c.K) * ldb, seed + 1));
  auto C = to_float(randn(size_t(c.M) * ldc, seed + 2));
  std::vector<double> ref(C.size()), bound(C.size());
  for (int i = 0; i < c.M; i++)
    for (int j = 0; j < ldc; j++) {
      const size_t at = size_t(i) * ldc + j;
      if (j >= c.N) { ref[at] = C[at]; continue; }  // outside the product: must stay untouched
      double s = 0, sa = 0;
      for (int k = 0; k < c.K; k++) {
        const double a = r16(c.ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]);
        const double b = r16(c.tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
        s += a * b;
        sa += std::fabs(a * b);
      }
      ref[at] = c.alpha * s + (c.beta == 0 ? 0.0 : c.beta * C[at]);
      bound[at] = 1e-6 * (std::fabs(c.alpha) * sa + std::fabs(c.beta * C[at])) + 1e-7;
    }
  sky::gemm_bf16::gemm(c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, c.M, c.N, c.K, c.alpha,
                       A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
  double worst = 0;
  for (size_t at = 0; at < C.size(); at++)
    worst = std::max(worst, std::fabs(C[at] - ref[at]) / (bound[at] + (at % ldc >= size_t(c.N) ? 1e-30 : 0)));
  EXPECT_LE(worst, 1.0) << "ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K
                        << " alpha=" << c.alpha << " beta=" << c.beta;
}

class GemmBf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!sky::gemm_bf16::supported()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  }
};

TEST_F(GemmBf16, EveryTransposeOnOddShapesMatchesReference) {
  uint64_t seed = 100;
  // Shapes straddle the tile (12 x 32), the M block (96) and the K block (256, odd K included).
  const int shapes[][3] = {{1, 1, 1},    {5, 7, 3},     {12, 32, 2},   {13, 33, 17},
                           {97, 65, 257}, {40, 300, 513}, {200, 31, 600}, {3, 129, 1000}};
  for (auto& s : shapes)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) check({bool(ta), bool(tb), s[0], s[1], s[2], 1.0f, 0.0f}, seed += 3);
}

TEST_F(GemmBf16, AlphaAndBetaScaleAsBlasDoes) {
  check({false, true, 37, 70, 300, 0.5f, 1.0f}, 7);
  check({true, false, 37, 70, 300, -2.0f, 0.25f}, 8);
  check({false, false, 100, 45, 9, 1.0f, 1.0f}, 9);
}

TEST_F(GemmBf16, BetaZeroOverwritesNanAndNanInputsStayNan) {
  const int M = 3, N = 4, K = 5;
  std::vector<float> A = to_float(randn(M * K, 1)), B = to_float(randn(K * N, 2));
  std::vector<float> C(M * N, std::numeric_limits<float>::quiet_NaN());
  sky::gemm_bf16::gemm(CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  for (float v : C) EXPECT_TRUE(std::isfinite(v));
  A[0] = std::numeric_limits<float>::quiet_NaN();  // row 0 of the product turns NaN, the rest does not
  sky::gemm_bf16::gemm(CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  for (int j = 0; j < N; j++) EXPECT_TRUE(std::isnan(C[j]));
  for (int j = N; j < M * N; j++) EXPECT_TRUE(std::isfinite(C[j]));
}

}  // namespace
