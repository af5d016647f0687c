#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

using namespace sky;

// Reference: decode every code, then for a value pick the nearest code (ties to even mantissa).
template <class Enc, class Dec>
static void check_small_format(Enc enc, Dec dec, int ncodes, float maxval, bool saturate) {
  std::vector<double> vals;
  std::vector<uint32_t> codes;
  for (int c = 0; c < ncodes / 2; c++) {
    float v = dec(c);
    if (std::isfinite(v)) { vals.push_back(v); codes.push_back(c); }
  }
  // Every code round-trips.
  for (size_t i = 0; i < codes.size(); i++) {
    EXPECT_EQ(enc(float(vals[i])), codes[i]) << vals[i];
    EXPECT_EQ(enc(-float(vals[i])) & ~(ncodes / 2), codes[i]);
  }
  // Midpoints round to the even code; points just off a midpoint round to the nearest.
  for (size_t i = 0; i + 1 < codes.size(); i++) {
    double mid = 0.5 * (vals[i] + vals[i + 1]);
    uint32_t even = (codes[i] % 2 == 0) ? codes[i] : codes[i + 1];
    EXPECT_EQ(enc(float(mid)), even) << "midpoint " << mid;
    EXPECT_EQ(enc(std::nextafter(float(mid), 0.0f)), codes[i]);
    EXPECT_EQ(enc(std::nextafter(float(mid), 1e30f)), codes[i + 1]);
  }
  if (saturate) {
    EXPECT_EQ(dec(enc(1e9f)), maxval);
    EXPECT_EQ(dec(enc(INFINITY)), maxval);
    EXPECT_EQ(dec(enc(-1e9f)), -maxval);
  } else {
    EXPECT_TRUE(std::isinf(dec(enc(1e9f))));
  }
  EXPECT_TRUE(std::isnan(dec(enc(NAN))));
}

TEST(DType, E4M3) {
  check_small_format([](float x) { return uint32_t(f32_to_e4m3(x)); }, [](uint32_t c) { return e4m3_to_f32(c); },
                     256, 448.0f, true);
  EXPECT_EQ(e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(f32_to_e4m3(460.0f), 0x7E);                 // saturates, never NaN
}

TEST(DType, E5M2) {
  check_small_format([](float x) { return uint32_t(f32_to_e5m2(x)); }, [](uint32_t c) { return e5m2_to_f32(c); },
                     256, 57344.0f, false);
  EXPECT_EQ(e5m2_to_f32(0x7B), 57344.0f);
}

TEST(DType, F16) {
  check_small_format([](float x) { return uint32_t(f32_to_f16(x)); }, [](uint32_t c) { return f16_to_f32(c); },
                     65536, 65504.0f, false);
}

TEST(DType, BF16) {
  // bf16 is the top half of an f32: check round-to-nearest-even on random values.
  uint32_t s = 12345;
  for (int i = 0; i < 100000; i++) {
    s = s * 1664525u + 1013904223u;
    float x;
    uint32_t u = s & 0xBFFFFFFF;  // keep exponents modest, avoid NaN/inf
    std::memcpy(&x, &u, 4);
    uint16_t h = f32_to_bf16(x);
    double lo = bf16_to_f32(h);
    double err = std::fabs(lo - x);
    double ulp = std::fabs(double(bf16_to_f32(h + 1)) - lo);
    ASSERT_LE(err, 0.5 * ulp + 1e-45) << x;
  }
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, Names) {
  EXPECT_EQ(dtype_parse("F8_E4M3"), DType::F8_E4M3);
  EXPECT_THROW(dtype_parse("F9"), Error);
  Tensor t = Tensor::zeros(DType::F32, {3, 5});
  for (int i = 0; i < 15; i++) t.f32()[i] = 0.37f * i - 2;
  Tensor b = t.to(DType::BF16).to_f32();
  for (int i = 0; i < 15; i++) EXPECT_NEAR(b.f32()[i], t.f32()[i], 0.01);
  EXPECT_THROW(b.to(DType::BF16).f32(), Error);
}
