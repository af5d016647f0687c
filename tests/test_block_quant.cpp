// The block encoders (core/block_quant: block_quantize) for Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
// Q6_K. What a file holds is block_dequantize(block_quantize(x)) (the decoders are checked
// bit-exact against gguf-py in test_gguf_model.cpp), so every test measures that:
//  - each value lies within its group's stored step / 2 plus the scale-rounding term, a bound
//    computed here from the stored scales read with this file's own reading of the layouts (the
//    f16 d/dmin, the 6-bit packed scale/min pairs, Q6_K's int8 scales);
//  - the RMS error is no worse than a plain min/max round-to-nearest written here in double with
//    the same stored-scale constraints;
//  - all-zero, constant, negative-only, huge and tiny blocks; NaN/Inf and overflow are errors
//    naming the type and the value.
// Inputs are fresh per run (the seed is printed with any failure).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/block_quant.h"
#include "core/error.h"

using sky::BlockType;

namespace sky {
void PrintTo(BlockType t, std::ostream* os) { *os << block_type_name(t); }  // test names and failures
}  // namespace sky

namespace {

const BlockType kTypes[] = {BlockType::Q4_0, BlockType::Q5_0, BlockType::Q5_1, BlockType::Q8_0,
                            BlockType::Q4_K, BlockType::Q5_K, BlockType::Q6_K};

uint64_t fresh_seed() {
  static const uint64_t s = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
  return s;
}

double half(const uint8_t* p) {  // IEEE binary16, read without the engine's converter
  const unsigned h = unsigned(p[0]) | unsigned(p[1]) << 8;
  const int e = (h >> 10) & 31, m = h & 1023;
  const double v = e == 0 ? std::ldexp(m, -24) : e == 31 ? INFINITY : std::ldexp(1024 + m, e - 25);
  return h & 0x8000 ? -v : v;
}
// Half an f16 ulp at v: the most rounding a value to f16 can have moved it.
double f16_err(double v) { return std::max(std::fabs(v) * std::ldexp(1.0, -11), std::ldexp(1.0, -25)); }

// The guaranteed bound on |x - x^| for value i of a block, from its stored scales. A group whose
// pre-rounding grid (step s, offset o) covers every value within s/2 keeps, for the same code q, an
// error of at most s'/2 + (|q|max + 1/2) |s' - s| + |o' - o| on the stored grid (s', o'); the encoder
// picks the nearest stored code, which is no worse. |s' - s| and |o' - o| come from rounding s to
// f16 (32-value types) or to 6 / 8 bits against an f16 d (K types).
double value_bound(BlockType t, const uint8_t* b, int i) {
  switch (t) {
    case BlockType::Q4_0: case BlockType::Q5_0: case BlockType::Q8_0: {
      const double d = half(b), qmax = t == BlockType::Q4_0 ? 8 : t == BlockType::Q5_0 ? 16 : 127;
      return std::fabs(d) / 2 + (qmax + 0.5) * f16_err(d);
    }
    case BlockType::Q5_1: {
      const double d = half(b), m = half(b + 2);
      return d / 2 + 31.5 * f16_err(d) + f16_err(m);
    }
    case BlockType::Q4_K: case BlockType::Q5_K: {
      const double d = half(b), dmin = half(b + 2), nmax = t == BlockType::Q4_K ? 15 : 31;
      const int j = i / 32;  // 6-bit scale of group j: bytes 0-3 (j < 4) or byte j + 4's low nibble + 2 top bits
      const uint8_t* s = b + 4;
      const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
      return d * sc / 2 + (nmax + 0.5) * (d / 2 + 63 * f16_err(d)) + dmin / 2 + 63 * f16_err(dmin);
    }
    case BlockType::Q6_K: {
      const double d = half(b + 208);
      const int sc = int8_t(b[192 + i / 16]);
      return std::fabs(d * sc) / 2 + 32.5 * (std::fabs(d) / 2 + 127 * f16_err(d));
    }
    default: return 0;
  }
}

struct Result {
  std::vector<float> y;  // decoded
  double max_ratio = 0;  // max |x - y| / bound
  double rms = 0;
};

Result roundtrip(BlockType t, const std::vector<float>& x) {
  const int64_t n = int64_t(x.size()), bv = sky::block_values(t), bb = sky::block_bytes(t);
  std::vector<uint8_t> q(size_t(n / bv * bb));
  sky::block_quantize(t, x.data(), n, q.data());
  Result r;
  r.y.resize(x.size());
  sky::block_dequantize(t, q.data(), r.y.data(), n);
  double se = 0;
  for (int64_t i = 0; i < n; i++) {
    const double e = std::fabs(double(x[i]) - r.y[i]);
    const double bound = value_bound(t, q.data() + (i / bv) * bb, int(i % bv)) * (1 + 1e-6) + 1e-30;
    r.max_ratio = std::max(r.max_ratio, e / bound);
    se += e * e;
  }
  r.rms = std::sqrt(se / double(n));
  return r;
}

// ---- A plain reference round-to-nearest, in double ----

double f16_round(double v) {  // nearest binary16 (ties to even), finite range assumed
  if (v == 0) return 0;
  int e;
  std::frexp(v, &e);                       // |v| in [2^(e-1), 2^e)
  const int q = std::max(e - 11, -24);     // ulp exponent: 10 fraction bits, subnormals at 2^-24
  return std::nearbyint(std::ldexp(v, -q)) * std::ldexp(1.0, q);
}

// Reconstruction of one block by min/max round-to-nearest with the format's stored-scale rules:
// 32-value types store their step (and Q5_1 its min) in f16; K types store 6-bit (Q6_K: 8-bit)
// group scales against d = max step / 63 (127), both rounded.
std::vector<double> reference_block(BlockType t, const float* x) {
  const int n = int(sky::block_values(t));
  std::vector<double> y(static_cast<size_t>(n));
  auto signed_step = [](const float* v, int m, int neg, int pos) {
    double lo = 0, hi = 0;
    for (int i = 0; i < m; i++) lo = std::min(lo, double(v[i])), hi = std::max(hi, double(v[i]));
    const double sp = std::max(-lo / neg, hi / pos), sn = std::max(-lo / pos, hi / neg);
    return sp <= sn ? sp : -sn;
  };
  auto put_signed = [&](int at, int m, double s, int neg, int pos) {
    for (int i = 0; i < m; i++) {
      const double q = s == 0 ? 0 : std::clamp(std::nearbyint(x[at + i] / s), double(-neg), double(pos));
      y[size_t(at + i)] = s * q;
    }
  };
  switch (t) {
    case BlockType::Q4_0: put_signed(0, 32, f16_round(signed_step(x, 32, 8, 7)), 8, 7); break;
    case BlockType::Q5_0: put_signed(0, 32, f16_round(signed_step(x, 32, 16, 15)), 16, 15); break;
    case BlockType::Q8_0: put_signed(0, 32, f16_round(signed_step(x, 32, 127, 127)), 127, 127); break;
    case BlockType::Q5_1: {
      double lo = x[0], hi = x[0];
      for (int i = 0; i < 32; i++) lo = std::min(lo, double(x[i])), hi = std::max(hi, double(x[i]));
      const double d = f16_round((hi - lo) / 31), m = f16_round(lo);
      for (int i = 0; i < 32; i++) y[size_t(i)] = m + d * (d == 0 ? 0 : std::clamp(std::nearbyint((x[i] - m) / d), 0.0, 31.0));
      break;
    }
    case BlockType::Q4_K: case BlockType::Q5_K: {
      const double nmax = t == BlockType::Q4_K ? 15 : 31;
      double s[8], mn[8], smax = 0, mmax = 0;
      for (int j = 0; j < 8; j++) {
        double lo = 0, hi = x[32 * j];
        for (int i = 0; i < 32; i++) lo = std::min(lo, double(x[32 * j + i])), hi = std::max(hi, double(x[32 * j + i]));
        s[j] = (hi - lo) / nmax, mn[j] = -lo;
        smax = std::max(smax, s[j]), mmax = std::max(mmax, mn[j]);
      }
      const double d = f16_round(smax / 63), dm = f16_round(mmax / 63);
      for (int j = 0; j < 8; j++) {
        const double sq = d == 0 ? 0 : d * std::min(63.0, std::nearbyint(s[j] / d));
        const double mq = dm == 0 ? 0 : dm * std::min(63.0, std::nearbyint(mn[j] / dm));
        for (int i = 0; i < 32; i++) {
          const double q = sq == 0 ? 0 : std::clamp(std::nearbyint((x[32 * j + i] + mq) / sq), 0.0, nmax);
          y[size_t(32 * j + i)] = sq * q - mq;
        }
      }
      break;
    }
    case BlockType::Q6_K: {
      double s[16], smax = 0;
      for (int j = 0; j < 16; j++) s[j] = signed_step(x + 16 * j, 16, 32, 31), smax = std::max(smax, std::fabs(s[j]));
      const double d = f16_round(smax / 127);
      for (int j = 0; j < 16; j++) put_signed(16 * j, 16, d == 0 ? 0 : d * std::clamp(std::nearbyint(s[j] / d), -127.0, 127.0), 32, 31);
      break;
    }
    default: break;
  }
  return y;
}

double reference_rms(BlockType t, const std::vector<float>& x) {
  const size_t bv = size_t(sky::block_values(t));
  double se = 0;
  for (size_t b = 0; b < x.size() / bv; b++) {
    std::vector<double> y = reference_block(t, x.data() + b * bv);
    for (size_t i = 0; i < bv; i++) se += (x[b * bv + i] - y[i]) * (x[b * bv + i] - y[i]);
  }
  return std::sqrt(se / double(x.size()));
}

// Weight-like inputs: Gaussian rows with a per-row scale, and heavy-tailed (Student-t, 3 dof) ones.
std::vector<float> weights(size_t n, std::mt19937_64& g, bool heavy) {
  std::normal_distribution<double> nd(0, 1);
  std::student_t_distribution<double> td(3);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; i++) {
    const double row_scale = 0.01 * (1 + (i / 512) % 7);
    x[i] = float(row_scale * (heavy ? td(g) : nd(g)));
  }
  return x;
}

void expect_error(BlockType t, const std::vector<float>& x, const std::vector<std::string>& needles) {
  std::vector<uint8_t> q(size_t(int64_t(x.size()) / sky::block_values(t) * sky::block_bytes(t)) + 1);
  try {
    sky::block_quantize(t, x.data(), int64_t(x.size()), q.data());
    ADD_FAILURE() << sky::block_type_name(t) << ": no error";
  } catch (const sky::Error& e) {
    for (auto& s : needles) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
  }
}

class Encode : public testing::TestWithParam<BlockType> {};

TEST_P(Encode, WithinBoundAndNoWorseThanPlainRtn) {
  const BlockType t = GetParam();
  SCOPED_TRACE(testing::Message() << sky::block_type_name(t) << " seed " << fresh_seed());
  std::mt19937_64 g(fresh_seed() + uint64_t(t));
  for (bool heavy : {false, true}) {
    const size_t n = size_t(sky::block_values(t)) * (257 + (g() % 64));  // an odd number of blocks
    const std::vector<float> x = weights(n, g, heavy);
    const Result r = roundtrip(t, x);
    EXPECT_LE(r.max_ratio, 1.0) << (heavy ? "heavy-tailed" : "gaussian");
    const double ref = reference_rms(t, x);
    double xs = 0;
    for (float v : x) xs += double(v) * v;
    xs = std::sqrt(xs / double(n));
    // Round-to-nearest with the refinement never raises a group's error before its scales are
    // stored; over a few hundred blocks the stored result is no worse than the plain one either.
    EXPECT_LE(r.rms, ref * 1.0001) << (heavy ? "heavy-tailed" : "gaussian");
    std::printf("  %-5s %-12s relative RMS error %.5f (plain min/max RTN %.5f)\n", sky::block_type_name(t),
                heavy ? "heavy-tailed" : "gaussian", r.rms / xs, ref / xs);
  }
}

TEST_P(Encode, EdgeBlocks) {
  const BlockType t = GetParam();
  const size_t bv = size_t(sky::block_values(t));
  SCOPED_TRACE(testing::Message() << sky::block_type_name(t) << " seed " << fresh_seed());
  std::mt19937_64 g(fresh_seed() ^ (uint64_t(t) << 40));
  std::uniform_real_distribution<double> u(-1, 1);

  // All zeros decode to exact zeros.
  Result r = roundtrip(t, std::vector<float>(3 * bv, 0.0f));
  for (float y : r.y) ASSERT_EQ(y, 0.0f);
  for (double c : {0.37, -2.5, 1e-3, -7e3}) {  // constant blocks: within the bound
    r = roundtrip(t, std::vector<float>(2 * bv, float(c)));
    EXPECT_LE(r.max_ratio, 1.0) << "constant " << c;
    EXPECT_NEAR(r.y[bv / 2], c, std::fabs(c) * 0.07) << "constant " << c;
  }
  std::vector<float> x(5 * bv);
  for (auto& v : x) v = float(-1 - 4 * std::fabs(u(g)));  // negative only
  EXPECT_LE(roundtrip(t, x).max_ratio, 1.0) << "negative-only";
  for (auto& v : x) v = float(1 + 4 * std::fabs(u(g)));  // positive only
  EXPECT_LE(roundtrip(t, x).max_ratio, 1.0) << "positive-only";
  for (double scale : {3e4, 1e-6, 1e-9}) {  // huge (near the f16 scale range) and tiny (subnormal scales)
    for (auto& v : x) v = float(scale * u(g));
    r = roundtrip(t, x);
    EXPECT_LE(r.max_ratio, 1.0) << "scale " << scale;
  }
  // One outlier among small values: the bound still holds for every value.
  for (auto& v : x) v = float(1e-3 * u(g));
  x[bv + 3] = 40.0f;
  EXPECT_LE(roundtrip(t, x).max_ratio, 1.0) << "outlier";
  x[bv + 3] = 0;

  // Non-finite input and values beyond the f16 scales are errors naming the type and value.
  const std::string name = sky::block_type_name(t);
  x[2 * bv + 5] = NAN;
  expect_error(t, x, {name, "not finite", std::to_string(2 * bv + 5)});
  x[2 * bv + 5] = -INFINITY;
  expect_error(t, x, {name, "-inf"});
  x[2 * bv + 5] = 3e9f;
  expect_error(t, x, {name, "too large", "block 2"});
  expect_error(t, std::vector<float>(bv + 1, 1.0f), {name, "not a multiple"});
}

std::string type_name(const testing::TestParamInfo<BlockType>& i) { return sky::block_type_name(i.param); }
INSTANTIATE_TEST_SUITE_P(Types, Encode, testing::ValuesIn(kTypes), type_name);

TEST(Encode, RefusesUnsupportedTypes) {
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> q(1024);
  for (BlockType t : {BlockType::Q4_1, BlockType::Q2_K, BlockType::IQ4_XS}) {
    EXPECT_FALSE(sky::block_can_encode(t));
    try {
      sky::block_quantize(t, x.data(), 256, q.data());
      ADD_FAILURE() << "no error";
    } catch (const sky::Error& e) {
      EXPECT_NE(std::string(e.what()).find(sky::block_type_name(t)), std::string::npos) << e.what();
    }
  }
}

}  // namespace
