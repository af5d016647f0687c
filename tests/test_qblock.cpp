// The block-quantized linear kernels (backend/cpu/qblock.*) against float64 references, under every
// target this CPU runs (scalar, AVX2, AVX512-VNNI): random blocks of each type with extreme scales,
// odd row counts, batches of 1..7 rows, an all-zero activation block.
//  - against the activations the kernel quantized (x^ = d q): exact integer sums, so only f32
//    rounding of the scales and the final sums (1e-5 of sum |w x^|);
//  - against the exact f32 activations: within the int8 rounding, sum over blocks of
//    (d / 2) * sum |w|, plus the same f32 slack (blocks of 32 activations, or of 256 where the K
//    types' kernels read K256 activations).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/qblock.h"
#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_bf16.h"
#include "core/block_quant.h"
#include "core/dtype.h"
#include "core/weight.h"

using namespace sky;

namespace {

const BlockType kTypes[] = {BlockType::Q8_0, BlockType::Q4_0, BlockType::Q4_1, BlockType::Q5_0, BlockType::Q5_1,
                            BlockType::Q4_K, BlockType::Q5_K, BlockType::Q6_K, BlockType::Q2_K, BlockType::Q3_K};

// Byte offsets of each type's f16 scales in its block.
std::vector<int> scale_offsets(BlockType t) {
  switch (t) {
    case BlockType::Q4_1: case BlockType::Q5_1: case BlockType::Q4_K: case BlockType::Q5_K: return {0, 2};
    case BlockType::Q6_K: return {208};
    case BlockType::Q2_K: return {80, 82};
    case BlockType::Q3_K: return {108};
    default: return {0};
  }
}

// Random blocks; scales mostly ordinary, some extreme (f16 max, subnormal, zero, negative).
std::vector<uint8_t> random_blocks(BlockType t, int O, int I, std::mt19937& rng) {
  const int64_t bb = block_bytes(t), nb = int64_t(O) * I / block_values(t);
  std::vector<uint8_t> w(size_t(nb * bb));
  for (auto& b : w) b = uint8_t(rng());
  std::normal_distribution<float> nd(0, 1);
  const float extreme[] = {65504.0f, -65504.0f, 5.96e-8f, 0.0f, -1.0f, 1e-3f, 3e4f};
  for (int64_t k = 0; k < nb; k++)
    for (int off : scale_offsets(t)) {
      const float v = k % 11 == 5 ? extreme[(k / 11) % 7] : nd(rng) * 0.02f;
      const uint16_t h = f32_to_f16(v);
      std::memcpy(&w[size_t(k * bb + off)], &h, 2);
    }
  return w;
}

// Rows [5, 30) computed on their own equal the same rows of the whole product y (threads split the
// rows this way).
void expect_row_range_matches(const QWeight& w, const std::vector<float>& x, const std::vector<float>& y, int N) {
  std::vector<float> y2(size_t(N) * w.O, NAN);
  qmatmul_rows(y2.data(), x.data(), w, N, 5, 30);
  for (int n = 0; n < N; n++)
    for (int o = 5; o < 30; o++) ASSERT_EQ(y2[size_t(n) * w.O + o], y[size_t(n) * w.O + o]) << block_type_name(w.block);
}

class QBlock : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(qblock::set_target(GetParam()));
    qblock::set_panel_min_rows(1 << 30);  // the int8 kernels at every N
  }
  void TearDown() override {
    qblock::set_target("");
    qblock::set_panel_min_rows(0);
  }
};

TEST_P(QBlock, MatchesFloat64Reference) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0, 1);
  // Rows of whole runs of 8 blocks of 32 (the 512-bit kernels' unit) and, for the types with
  // blocks of 32, rows that end in a partial run (11 blocks).
  for (BlockType t : kTypes)
  for (int I : {512, block_values(t) == 256 ? 768 : 352}) {
    const int O = 37;
    const std::vector<uint8_t> bytes = random_blocks(t, O, I, rng);
    const QWeight w = block_weight(t, bytes.data(), nullptr, O, I);
    std::vector<float> wf(size_t(O) * I);
    for (int o = 0; o < O; o++) dequantize_row(w, o, wf.data() + size_t(o) * I);
    for (int N : {1, 3, 4, 7}) {
      std::vector<float> x(size_t(N) * I);
      for (size_t i = 0; i < x.size(); i++) x[i] = nd(rng) * (i % 97 == 0 ? 30.0f : 1.0f);
      for (int i = 32; i < 64; i++) x[i] = 0;  // an all-zero block (scale 0)
      std::vector<float> y(size_t(N) * O, NAN);
      qmatmul(y.data(), x.data(), w, N);  // quantizes on this thread ...
      const qblock::Acts a = qblock::quantize(x.data(), N, I, qblock::act_format(w));  // ... exactly as here
      const int bv = a.block();  // values per activation scale: 32, or 256 for the K types' K256 layout
      for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
          double exact = 0, hat = 0, mag_hat = 0, bound = 0;
          for (int b = 0; b < I / bv; b++) {
            const size_t k = size_t(n) * (I / bv) + b;
            double wabs = 0;
            for (int i = b * bv; i < b * bv + bv; i++) {
              const double wv = wf[size_t(o) * I + i], xv = x[size_t(n) * I + i];
              const double xh = double(a.d[k]) * a.q[size_t(n) * I + i];
              exact += wv * xv;
              hat += wv * xh;
              mag_hat += std::fabs(wv * xh);
              wabs += std::fabs(wv);
            }
            bound += double(a.d[k]) / 2 * wabs;
          }
          const double got = y[size_t(n) * O + o];
          ASSERT_TRUE(std::isfinite(got)) << block_type_name(t);
          ASSERT_LE(std::fabs(got - hat), 1e-5 * mag_hat + 1e-30)
              << block_type_name(t) << " N=" << N << " n=" << n << " o=" << o << " got " << got << " want " << hat;
          ASSERT_LE(std::fabs(got - exact), bound * 1.0001 + 1e-5 * mag_hat + 1e-30)
              << block_type_name(t) << " I=" << I << " N=" << N << " n=" << n << " o=" << o;
        }
      expect_row_range_matches(w, x, y, N);
    }
  }
}

// Batched calls through panels of decoded rows: bf16 (CPUs with AVX512-BF16): each target's
// decoder, then bf16 rounding of weights and activations (8 significant bits: relative 2^-8 each)
// and f32 sums, so within (2^-7 + 2^-16 + 1e-5) * sum |w x| of the float64 sum; f32 (the AVX2
// target): exact weights and activations, f32 sums, within 1e-5 * sum |w x|. Panels of 8 decoded
// rows and of L2 size end at odd places (O = 37, 203: two L2 panels), rows end in a half block of
// 64 (I = 160, 352), and N covers every activation tile shape (1-4 rows, 5-7 rows together, groups
// of 4 and a remainder).
TEST_P(QBlock, PanelsMatchFloat64Reference) {
  qblock::set_panel_min_rows(1);
  int ran = 0;
  std::mt19937 rng(4321);
  std::normal_distribution<float> nd(0, 1);
  for (BlockType t : kTypes) {
    const bool k = block_values(t) == 256;
    for (auto [O, I] : {std::pair{37, k ? 768 : 160}, std::pair{203, k ? 512 : 352}}) {
      const std::vector<uint8_t> bytes = random_blocks(t, O, I, rng);
      const QWeight w = block_weight(t, bytes.data(), nullptr, O, I);
      const qblock::Panels panels = qblock::panels(w, 1);
      if (panels == qblock::Panels::None) continue;
      const double rel = panels == qblock::Panels::BF16 ? 1.0 / 128 + 1.0 / 65536 + 1e-5 : 1e-5;
      ran++;
      std::vector<float> wf(size_t(O) * I);
      for (int o = 0; o < O; o++) dequantize_row(w, o, wf.data() + size_t(o) * I);
      for (int N : {1, 2, 5, 7, 13}) {
        std::vector<float> x(size_t(N) * I);
        for (size_t i = 0; i < x.size(); i++) x[i] = nd(rng) * (i % 97 == 0 ? 30.0f : 1.0f);
        std::vector<float> y(size_t(N) * O, NAN);
        qmatmul(y.data(), x.data(), w, N);
        for (int n = 0; n < N; n++)
          for (int o = 0; o < O; o++) {
            double exact = 0, mag = 0;
            for (int i = 0; i < I; i++) {
              const double p = double(wf[size_t(o) * I + i]) * x[size_t(n) * I + i];
              exact += p;
              mag += std::fabs(p);
            }
            const double got = y[size_t(n) * O + o];
            ASSERT_TRUE(std::isfinite(got)) << block_type_name(t);
            ASSERT_LE(std::fabs(got - exact), rel * mag + 1e-30)
                << block_type_name(t) << " O=" << O << " N=" << N << " n=" << n << " o=" << o;
          }
        expect_row_range_matches(w, x, y, N);
      }
    }
  }
  if (!ran) GTEST_SKIP() << "no panels under target " << GetParam() << " on this CPU";
}

// Each target's activation quantizer against the definition: d = max|x| / 127 per block, codes
// round(x / d) (ties to even) in [-127, 127], and the codes' sums (per 32 for B32, per 16 for
// K256, and d times the sum per 32 in both), on rows with huge, tiny, zero and tied values.
TEST_P(QBlock, QuantizeMatchesDefinition) {
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0, 1);
  const int N = 3, I = 768;
  std::vector<float> x(size_t(N) * I);
  for (size_t i = 0; i < x.size(); i++) x[i] = nd(rng) * (i % 53 == 0 ? 1e4f : i % 61 == 0 ? 1e-30f : 1.0f);
  for (int i = 256; i < 512; i++) x[i] = 0;  // an all-zero block of 256
  for (int i = 512; i < 544; i++) x[i] = float(i % 5) - 2.0f + 0.5f;  // ties: max 2.5, so x / d = +-127 and halves
  for (qblock::ActFormat f : {qblock::ActFormat::B32, qblock::ActFormat::K256}) {
    const qblock::Acts a = qblock::quantize(x.data(), N, I, f);
    const int bv = a.block();
    ASSERT_EQ(bv, f == qblock::ActFormat::K256 ? 256 : 32);
    for (int k = 0; k < N * I / bv; k++) {
      float amax = 0;
      for (int i = 0; i < bv; i++) amax = std::max(amax, std::fabs(x[size_t(k) * bv + i]));
      const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
      ASSERT_EQ(a.d[k], d) << "block " << k;
      int32_t sum = 0, sum16 = 0;
      for (int i = 0; i < bv; i++) {
        const size_t at = size_t(k) * bv + i;
        const int want = std::clamp(int(std::nearbyint(x[at] * inv)), -127, 127);
        ASSERT_EQ(a.q[at], want) << "value " << at;
        sum += want;
        sum16 += want;
        if (f == qblock::ActFormat::K256 && i % 16 == 15) {
          ASSERT_EQ(a.bs[size_t(k) * 16 + i / 16], sum16) << "block " << k << " sixteen " << i / 16;
          sum16 = 0;
        }
        if (i % 32 == 31) {  // d times the sum of each 32 codes, in both layouts
          ASSERT_EQ(a.ds[size_t(k) * (bv / 32) + i / 32], d * float(sum)) << "block " << k << " group " << i / 32;
          if (f == qblock::ActFormat::B32) {
            ASSERT_EQ(a.s[k], sum);
          }
          sum = 0;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, QBlock, testing::ValuesIn(qblock::targets()),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

// The reference backend decodes block weights exactly and sums in double.
TEST(QBlockRef, RefBackendLinearIsExact) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0, 1);
  for (BlockType t : kTypes) {
    const int O = 9, I = 256, N = 2;
    const std::vector<uint8_t> bytes = random_blocks(t, O, I, rng);
    const QWeight w = block_weight(t, bytes.data(), nullptr, O, I);
    std::vector<float> x(size_t(N) * I), y(size_t(N) * O), row(I);
    for (auto& v : x) v = nd(rng);
    backend("ref").linear(y.data(), x.data(), w, N);
    for (int n = 0; n < N; n++)
      for (int o = 0; o < O; o++) {
        dequantize_row(w, o, row.data());
        double s = 0;
        for (int i = 0; i < I; i++) s += double(row[i]) * x[size_t(n) * I + i];
        EXPECT_EQ(y[size_t(n) * O + o], float(s)) << block_type_name(t);
      }
  }
}

TEST(QBlockRef, TargetsListed) {
  const auto ts = qblock::targets();
  ASSERT_FALSE(ts.empty());
  EXPECT_EQ(ts.back(), "scalar");
  EXPECT_FALSE(qblock::set_target("no-such-target"));
  std::printf("qblock targets on this CPU:");
  for (auto& t : ts) std::printf(" %s", t.c_str());
  std::printf(" (in use: %s)\n", qblock::target());
}

}  // namespace
