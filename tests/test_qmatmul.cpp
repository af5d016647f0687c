// qmatmul against a float64 reference built from the scalar dtype conversions, run once per SIMD
// target that this CPU supports and the library was compiled for (Highway's TestWithParamTarget
// restricts the run-time dispatch to one target per test instance).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "hwy/tests/hwy_gtest.h"
#include "backend/cpu/qmatmul.h"
#include "ref.h"

using namespace sky;
using namespace skytest;

namespace {

uint64_t g_seed = 1000;

struct Case {
  DType dtype;
  bool per_row;
};
const Case kCases[] = {{DType::F32, false}, {DType::BF16, false}, {DType::F8_E4M3, false}, {DType::F8_E4M3, true}};

std::string name(const Case& c) {
  return std::string(dtype_name(c.dtype)) + (c.dtype == DType::F8_E4M3 ? (c.per_row ? "/row" : "/tensor") : "");
}

// The weights as the kernel must see them: the scalar decoding of the stored codes times the scale.
std::vector<double> decoded(const QWeight& q) {
  std::vector<double> w(size_t(q.O) * q.I);
  for (int o = 0; o < q.O; o++)
    for (int i = 0; i < q.I; i++) {
      const size_t k = size_t(o) * q.I + i;
      double v = 0;
      switch (q.dtype) {
        case DType::F32: { float f; std::memcpy(&f, static_cast<const char*>(q.data) + 4 * k, 4); v = f; break; }
        case DType::BF16: { uint16_t h; std::memcpy(&h, static_cast<const char*>(q.data) + 2 * k, 2); v = bf16_to_f32(h); break; }
        default: v = e4m3_to_f32(static_cast<const uint8_t*>(q.data)[k]); break;
      }
      w[k] = v * q.row_scale(o);
    }
  return w;
}

// y must match sum_i x*w within 1e-5 of sum_i |x*w| (f32 accumulation over a few hundred terms).
// Where qmatmul uses bf16 dot products, x is first rounded to bf16 as the kernel does, so the check
// stays as tight; the rounding itself changes each product by at most 2^-9 (checked separately).
void expect_matches_reference(const std::vector<float>& y, const std::vector<float>& x, const QWeight& q, int N,
                              const std::string& what) {
  const std::vector<double> w = decoded(q);
  const bool round_x = qmatmul_uses_bf16_dot(q.dtype);
  double worst = 0;
  for (int n = 0; n < N; n++)
    for (int o = 0; o < q.O; o++) {
      double s = 0, mag = 0;
      for (int i = 0; i < q.I; i++) {
        const float xv = x[size_t(n) * q.I + i];
        const double p = double(round_x ? bf16_to_f32(f32_to_bf16(xv)) : xv) * w[size_t(o) * q.I + i];
        s += p;
        mag += std::fabs(p);
      }
      worst = std::max(worst, std::fabs(y[size_t(n) * q.O + o] - s) / (1e-30 + mag));
    }
  EXPECT_LE(worst, 1e-5) << what;
}

std::vector<float> random_x(int N, int I) {
  std::vector<float> x = to_float(randn(size_t(N) * I, g_seed++));
  for (auto& v : x)
    if (v == 0) v = 0.5f;  // never zero
  return x;
}

QWeight random_weight(int O, int I, const Case& c) {
  std::vector<float> w = to_float(randn(size_t(O) * I, g_seed++, 0.05));
  return quantize_weight(w.data(), O, I, c.dtype, c.per_row);
}

// A copy of q whose data starts `offset` bytes past an aligned address (as in a memory map).
struct Shifted {
  std::vector<uint8_t> bytes;
  QWeight q;
  Shifted(const QWeight& src, int offset) : bytes(src.storage.nbytes() + 64), q(src) {
    uint8_t* p = bytes.data() + (64 - reinterpret_cast<uintptr_t>(bytes.data()) % 64) % 64 + offset;
    std::memcpy(p, src.data, src.storage.nbytes());
    q.data = p;
    q.storage = Tensor();
  }
};

}  // namespace

static void OddShapesMatchReference() {
  for (const Case& c : kCases)
    for (int O : {1, 3, 17, 130})
      for (int I : {1, 7, 16, 33, 257}) {
        const QWeight q = random_weight(O, I, c);
        for (int N : {1, 2, 3, 5, 8, 13, 64, 70}) {
          const std::vector<float> x = random_x(N, I);
          std::vector<float> y(size_t(N) * O, NAN);
          qmatmul(y.data(), x.data(), q, N);
          expect_matches_reference(y, x, q, N, name(c) + " O=" + std::to_string(O) + " I=" + std::to_string(I) +
                                                   " N=" + std::to_string(N));
        }
      }
}

// Rows longer than the kernel's L2 block (256 KiB), so a block holds a single register tile, and
// enough rows for several blocks and for the threads' split.
static void LongRowsMatchReference() {
  for (const Case& c : kCases)
    for (int I : {20000, 70001}) {
      const int O = 29, N = 6;
      const QWeight q = random_weight(O, I, c);
      const std::vector<float> x = random_x(N, I);
      std::vector<float> y(size_t(N) * O, NAN);
      qmatmul(y.data(), x.data(), q, N);
      expect_matches_reference(y, x, q, N, name(c) + " I=" + std::to_string(I));
    }
}

// Every E4M3 code except NaN decodes exactly (subnormals, both zeros, +-448), in the vector body
// and in the tail of a row: row o holds code o at one position, x is one-hot there.
static void EveryE4M3CodeDecodesExactly() {
  std::vector<uint8_t> codes;
  for (int c = 0; c < 256; c++)
    if ((c & 0x7F) != 0x7F) codes.push_back(uint8_t(c));
  const int O = int(codes.size()), I = 37;
  for (int pos : {0, 5, 16, 31, 36}) {
    QWeight q;
    q.dtype = DType::F8_E4M3;
    q.O = O;
    q.I = I;
    q.storage = Tensor::zeros(DType::F8_E4M3, {O, I});
    q.data = q.storage.data;
    for (int o = 0; o < O; o++) q.storage.as<uint8_t>()[size_t(o) * I + pos] = codes[o];
    const float scale = 0.75f;  // exact products
    q.scale = &scale;
    q.scale_count = 1;
    std::vector<float> x(I, 0.0f), y(O);
    x[pos] = 1.0f;
    qmatmul(y.data(), x.data(), q, 1);
    for (int o = 0; o < O; o++) ASSERT_EQ(y[o], e4m3_to_f32(codes[o]) * scale) << "code " << int(codes[o]) << " pos " << pos;
  }
}

static void UnalignedWeightsGiveTheSameResult() {
  for (const Case& c : kCases) {
    const int O = 37, I = 1029, N = 5;
    const QWeight q = random_weight(O, I, c);
    const std::vector<float> x = random_x(N, I);
    std::vector<float> want(size_t(N) * O);
    qmatmul(want.data(), x.data(), q, N);
    expect_matches_reference(want, x, q, N, name(c));
    for (int offset : {1, 2, 3}) {
      Shifted s(q, offset);
      std::vector<float> y(size_t(N) * O, NAN);
      qmatmul(y.data(), x.data(), s.q, N);
      EXPECT_EQ(y, want) << name(c) << " offset " << offset;
    }
  }
}

// qmatmul_rows on a sub-range equals qmatmul there (bit for bit: every output row is one
// accumulation in a fixed order, whatever the tiling), and leaves the other rows alone.
static void RowsMatchesQmatmulOnASubRange() {
  for (const Case& c : kCases) {
    const int O = 130, I = 257;
    const QWeight q = random_weight(O, I, c);
    for (int N : {1, 5, 70}) {
      const std::vector<float> x = random_x(N, I);
      std::vector<float> full(size_t(N) * O);
      qmatmul(full.data(), x.data(), q, N);
      for (auto [b, e] : {std::pair{0, 130}, {5, 6}, {3, 50}, {17, 130}, {1, 128}}) {
        std::vector<float> y(size_t(N) * O, -7.0f);
        qmatmul_rows(y.data(), x.data(), q, N, b, e);
        for (int n = 0; n < N; n++)
          for (int o = 0; o < O; o++) {
            const float got = y[size_t(n) * O + o];
            ASSERT_EQ(got, o >= b && o < e ? full[size_t(n) * O + o] : -7.0f)
                << name(c) << " N=" << N << " range [" << b << ", " << e << ") row " << o;
          }
      }
    }
  }
}

// The Highway kernels, once per SIMD target (bf16 dot products off, so they run for every dtype).
class QMatmulTarget : public hwy::TestWithParamTarget {
 protected:
  void SetUp() override {
    hwy::TestWithParamTarget::SetUp();
    qmatmul_set_bf16_dot(false);
  }
  void TearDown() override {
    qmatmul_set_bf16_dot(true);
    hwy::TestWithParamTarget::TearDown();
  }
};
HWY_TARGET_INSTANTIATE_TEST_SUITE_P(QMatmulTarget);

TEST_P(QMatmulTarget, DispatchesToTheTargetUnderTest) {
  EXPECT_STREQ(qmatmul_target(), hwy::TargetName(GetParam()));
}
TEST_P(QMatmulTarget, OddShapesMatchReference) {
  OddShapesMatchReference();
  EXPECT_STREQ(qmatmul_target(), hwy::TargetName(GetParam()));
}
TEST_P(QMatmulTarget, LongRowsMatchReference) { LongRowsMatchReference(); }
TEST_P(QMatmulTarget, EveryE4M3CodeDecodesExactly) { EveryE4M3CodeDecodesExactly(); }
TEST_P(QMatmulTarget, UnalignedWeightsGiveTheSameResult) { UnalignedWeightsGiveTheSameResult(); }
TEST_P(QMatmulTarget, RowsMatchesQmatmulOnASubRange) { RowsMatchesQmatmulOnASubRange(); }

// The bf16 dot-product path (BF16 and FP8 weights; F32 weights still take the f32 kernels), on
// CPUs with AVX512-BF16 and VBMI.
class QMatmulBf16Dot : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!qmatmul_uses_bf16_dot(DType::F8_E4M3)) GTEST_SKIP() << "this CPU has no AVX512-BF16 + VBMI";
    ASSERT_TRUE(qmatmul_uses_bf16_dot(DType::BF16));
    ASSERT_FALSE(qmatmul_uses_bf16_dot(DType::F32));
  }
};
TEST_F(QMatmulBf16Dot, OddShapesMatchReference) { OddShapesMatchReference(); }
TEST_F(QMatmulBf16Dot, LongRowsMatchReference) { LongRowsMatchReference(); }
TEST_F(QMatmulBf16Dot, EveryE4M3CodeDecodesExactly) { EveryE4M3CodeDecodesExactly(); }
TEST_F(QMatmulBf16Dot, UnalignedWeightsGiveTheSameResult) { UnalignedWeightsGiveTheSameResult(); }
TEST_F(QMatmulBf16Dot, RowsMatchesQmatmulOnASubRange) { RowsMatchesQmatmulOnASubRange(); }

// Against the unrounded activations the error stays within the bf16 rounding bound: 2^-9 of
// sum |x*w| from the activations, plus f32 accumulation.
TEST_F(QMatmulBf16Dot, WithinBf16RoundingOfExactProducts) {
  for (const Case& c : kCases) {
    if (c.dtype == DType::F32) continue;
    const int O = 33, I = 1000, N = 7;
    const QWeight q = random_weight(O, I, c);
    const std::vector<float> x = random_x(N, I);
    std::vector<float> y(size_t(N) * O);
    qmatmul(y.data(), x.data(), q, N);
    const std::vector<double> w = decoded(q);
    for (int n = 0; n < N; n++)
      for (int o = 0; o < O; o++) {
        double s = 0, mag = 0;
        for (int i = 0; i < I; i++) {
          s += double(x[size_t(n) * I + i]) * w[size_t(o) * I + i];
          mag += std::fabs(double(x[size_t(n) * I + i]) * w[size_t(o) * I + i]);
        }
        EXPECT_LE(std::fabs(y[size_t(n) * O + o] - s), (std::ldexp(1.0, -9) + 1e-5) * mag) << name(c);
      }
  }
}

// A row's result does not depend on the rows batched with it (bit for bit), so batched decoding
// gives the same tokens as one-at-a-time decoding.
TEST_F(QMatmulBf16Dot, RowResultsDoNotDependOnTheBatch) {
  // N 5, 7: one wide group (all rows x 2 weight rows); 8: two groups of 4; 11, 13: groups of 4, then a wide one.
  for (int N : {5, 7, 8, 11, 13})
  for (const Case& c : kCases) {
    const int O = 45, I = 300;
    const QWeight q = random_weight(O, I, c);
    const std::vector<float> x = random_x(N, I);
    std::vector<float> all(size_t(N) * O), one(O);
    qmatmul(all.data(), x.data(), q, N);
    for (int n = 0; n < N; n++) {
      qmatmul(one.data(), x.data() + size_t(n) * I, q, 1);
      for (int o = 0; o < O; o++) ASSERT_EQ(all[size_t(n) * O + o], one[o]) << name(c) << " row " << n;
    }
  }
}

// qmatmul_multi (one parallel region, rows split across the matrices) equals one qmatmul per
// matrix, bit for bit, with mixed dtypes and sizes that do not split evenly.
TEST(QMatmul, MultiEqualsSeparateProducts) {
  const int I = 129;
  const QWeight a = random_weight(37, I, kCases[3]), b = random_weight(5, I, kCases[1]), c = random_weight(200, I, kCases[0]);
  for (int N : {1, 3, 9}) {
    const std::vector<float> x = random_x(N, I);
    std::vector<float> ya(size_t(N) * 37, NAN), yb(size_t(N) * 5, NAN), yc(size_t(N) * 200, NAN);
    qmatmul_multi(x.data(), N, {{ya.data(), &a}, {yb.data(), &b}, {yc.data(), &c}});
    for (auto [y, q] : {std::pair{&ya, &a}, {&yb, &b}, {&yc, &c}}) {
      std::vector<float> want(y->size());
      qmatmul(want.data(), x.data(), *q, N);
      EXPECT_EQ(*y, want) << "N=" << N << " O=" << q->O;
    }
  }
}

TEST(QMatmul, QuantizeWeight) {
  const int O = 4, I = 9;
  std::vector<float> w = to_float(randn(size_t(O) * I, 7));
  for (int i = 0; i < I; i++) w[2 * I + i] = 0;  // an all-zero row
  w[5] = -900.0f;                                 // the tensor's max |w|, in row 0

  const QWeight t = quantize_weight(w.data(), O, I, DType::F8_E4M3, false);
  ASSERT_EQ(t.scale_count, 1);
  EXPECT_FLOAT_EQ(t.scale[0], 900.0f / 448);
  EXPECT_EQ(t.storage.as<uint8_t>()[5], 0xFE);  // -448
  EXPECT_EQ(t.bytes(), size_t(O) * I + 4);

  const QWeight r = quantize_weight(w.data(), O, I, DType::F8_E4M3, true);
  ASSERT_EQ(r.scale_count, O);
  EXPECT_EQ(r.scale[2], 1.0f);  // zero row: scale 1, codes 0
  for (int i = 0; i < I; i++) EXPECT_EQ(r.storage.as<uint8_t>()[2 * I + i], 0);
  for (int o = 0; o < O; o++) {
    if (o == 2) continue;
    float m = 0;
    for (int i = 0; i < I; i++) m = std::max(m, std::fabs(w[o * I + i]));
    EXPECT_FLOAT_EQ(r.scale[o], m / 448);
    for (int i = 0; i < I; i++) {
      const float v = w[o * I + i];
      EXPECT_EQ(r.storage.as<uint8_t>()[o * I + i], f32_to_e4m3(v / r.scale[o]));
      EXPECT_NEAR(e4m3_to_f32(r.storage.as<uint8_t>()[o * I + i]) * r.scale[o], v, std::fabs(v) / 16 + r.scale[o] / 512);
    }
  }

  const QWeight b = quantize_weight(w.data(), O, I, DType::BF16, false);
  const QWeight f = quantize_weight(w.data(), O, I, DType::F32, false);
  EXPECT_EQ(b.scale, nullptr);
  EXPECT_EQ(f.scale, nullptr);
  for (int k = 0; k < O * I; k++) {
    EXPECT_EQ(b.storage.as<uint16_t>()[k], f32_to_bf16(w[k]));
    EXPECT_EQ(f.storage.as<float>()[k], w[k]);
  }
  EXPECT_THROW(quantize_weight(w.data(), O, I, DType::F8_E5M2, false), Error);
}

TEST(QMatmul, EmptyAndUnsupported) {
  std::vector<float> w(6, 1.0f), x(3, 1.0f), y(2, 5.0f);
  QWeight q = quantize_weight(w.data(), 2, 3, DType::F32, false);
  qmatmul(y.data(), x.data(), q, 0);
  qmatmul_rows(y.data(), x.data(), q, 1, 1, 1);
  EXPECT_EQ(y[0], 5.0f);
  qmatmul(y.data(), x.data(), q, 1);
  EXPECT_EQ(y[0], 3.0f);
  QWeight empty_i = quantize_weight(w.data(), 2, 0, DType::F8_E4M3, true);
  qmatmul(y.data(), x.data(), empty_i, 1);  // I = 0: y = 0
  EXPECT_EQ(y[1], 0.0f);
  q.dtype = DType::F16;
  EXPECT_THROW(qmatmul(y.data(), x.data(), q, 1), Error);
}

TEST(QMatmul, ReportsTheChosenTarget) {
  std::printf("qmatmul target on this machine: %s; targets tested:", qmatmul_target());
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) std::printf(" %s", hwy::TargetName(t));
  std::printf("\n");
}
