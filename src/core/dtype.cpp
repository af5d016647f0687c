#include "core/dtype.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace sky {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F8_E4M3: return 1;
    case DType::F8_E5M2: return 1;
    case DType::U32: return 4;
    case DType::I64: return 8;
    case DType::Blocks: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
    case DType::U32: return "U32";
    case DType::I64: return "I64";
    case DType::Blocks: return "BLOCKS";
  }
  return "?";
}

bool dtype_from_name(const std::string& s, DType* out) {
  static const struct { const char* n; DType t; } table[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"F8_E4M3", DType::F8_E4M3}, {"F8_E5M2", DType::F8_E5M2},
      {"U32", DType::U32}, {"I64", DType::I64}};
  for (auto& e : table)
    if (s == e.n) { *out = e.t; return true; }
  return false;
}

DType dtype_parse(const std::string& s) {
  DType t;
  if (!dtype_from_name(s, &t)) fail("unknown dtype '{}' (expected F32, BF16, F16, F8_E4M3 or F8_E5M2)", s);
  return t;
}

bool dtype_is_float(DType t) { return t != DType::U32 && t != DType::I64 && t != DType::Blocks; }

static uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
static float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

uint16_t f32_to_bf16(float x) {
  uint32_t u = bits_of(x);
  if (std::isnan(x)) return uint16_t((u >> 16) | 0x40);  // keep sign, force quiet NaN
  u += 0x7FFF + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

float bf16_to_f32(uint16_t h) { return float_of(uint32_t(h) << 16); }

// Encodes |x| (finite, non-negative) into a small float with `mbits` mantissa bits and exponent
// `bias`, rounding to nearest even. Returns the magnitude code (exponent and mantissa fields); the
// caller handles overflow, since the formats differ there.
static uint32_t encode_magnitude(float a, int mbits, int bias) {
  const int emin = 1 - bias;  // exponent of the smallest normal
  if (a < std::ldexp(1.0f, emin)) {
    // Subnormal range: a multiple of the quantum 2^(emin - mbits); nearbyint rounds to even.
    // A result of 2^mbits is exactly the smallest normal's code, so no special case is needed.
    return uint32_t(std::nearbyint(std::ldexp(a, mbits - emin)));
  }
  uint32_t u = bits_of(a);
  const int shift = 23 - mbits;
  u += (1u << (shift - 1)) - 1 + ((u >> shift) & 1);
  u >>= shift;
  return u - (uint32_t(127 - bias) << mbits);
}

static float decode_small(uint32_t mag, int mbits, int bias) {
  uint32_t e = mag >> mbits, m = mag & ((1u << mbits) - 1);
  if (e == 0) return std::ldexp(float(m), 1 - bias - mbits);
  return std::ldexp(1.0f + float(m) / float(1u << mbits), int(e) - bias);
}

uint16_t f32_to_f16(float x) {
  uint16_t sign = (bits_of(x) >> 16) & 0x8000;
  if (std::isnan(x)) return sign | 0x7E00;
  float a = std::fabs(x);
  if (std::isinf(a)) return sign | 0x7C00;
  uint32_t mag = encode_magnitude(a, 10, 15);
  if (mag >= 0x7C00) mag = 0x7C00;  // overflow rounds to infinity
  return uint16_t(sign | mag);
}

float f16_to_f32(uint16_t h) {
  float s = (h & 0x8000) ? -1.0f : 1.0f;
  uint32_t mag = h & 0x7FFF;
  if ((mag >> 10) == 0x1F) return (mag & 0x3FF) ? NAN : s * INFINITY;
  return s * decode_small(mag, 10, 15);
}

uint8_t f32_to_e4m3(float x) {
  uint8_t sign = (bits_of(x) >> 24) & 0x80;
  if (std::isnan(x)) return sign | 0x7F;
  float a = std::fabs(x);
  if (a >= 448.0f) return sign | 0x7E;  // saturate (includes infinity): E4M3fn has no inf
  uint32_t mag = encode_magnitude(a, 3, 7);
  if (mag > 0x7E) mag = 0x7E;
  return uint8_t(sign | mag);
}

float e4m3_to_f32(uint8_t v) {
  float s = (v & 0x80) ? -1.0f : 1.0f;
  uint32_t mag = v & 0x7F;
  if (mag == 0x7F) return NAN;
  return s * decode_small(mag, 3, 7);
}

uint8_t f32_to_e5m2(float x) {
  uint8_t sign = (bits_of(x) >> 24) & 0x80;
  if (std::isnan(x)) return sign | 0x7E;
  float a = std::fabs(x);
  if (std::isinf(a)) return sign | 0x7C;
  uint32_t mag = encode_magnitude(a, 2, 15);
  if (mag >= 0x7C) mag = 0x7C;  // overflow rounds to infinity, as IEEE does
  return uint8_t(sign | mag);
}

float e5m2_to_f32(uint8_t v) {
  float s = (v & 0x80) ? -1.0f : 1.0f;
  uint32_t mag = v & 0x7F;
  if ((mag >> 2) == 0x1F) return (mag & 3) ? NAN : s * INFINITY;
  return s * decode_small(mag, 2, 15);
}

// `in` may be a memory-mapped safetensors tensor, aligned only to its byte offset in the file: 16-bit
// values are read through memcpy (the same load instruction on x86; a uint16_t* read there would
// be undefined).
static uint16_t load_u16(const void* p, size_t i) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(p) + 2 * i, 2);
  return v;
}

void convert_to_f32(DType src, const void* in, float* out, size_t n) {
  switch (src) {
    case DType::F32: std::memcpy(out, in, n * 4); return;
    case DType::BF16: for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(load_u16(in, i)); return;
    case DType::F16: for (size_t i = 0; i < n; i++) out[i] = f16_to_f32(load_u16(in, i)); return;
    case DType::F8_E4M3: { auto p = (const uint8_t*)in; for (size_t i = 0; i < n; i++) out[i] = e4m3_to_f32(p[i]); return; }
    case DType::F8_E5M2: { auto p = (const uint8_t*)in; for (size_t i = 0; i < n; i++) out[i] = e5m2_to_f32(p[i]); return; }
    default: fail("cannot convert dtype {} to F32", dtype_name(src));
  }
}

void convert_from_f32(DType dst, const float* in, void* out, size_t n) {
  switch (dst) {
    case DType::F32: std::memcpy(out, in, n * 4); return;
    case DType::BF16: { auto p = (uint16_t*)out; for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(in[i]); return; }
    case DType::F16: { auto p = (uint16_t*)out; for (size_t i = 0; i < n; i++) p[i] = f32_to_f16(in[i]); return; }
    case DType::F8_E4M3: { auto p = (uint8_t*)out; for (size_t i = 0; i < n; i++) p[i] = f32_to_e4m3(in[i]); return; }
    case DType::F8_E5M2: { auto p = (uint8_t*)out; for (size_t i = 0; i < n; i++) p[i] = f32_to_e5m2(in[i]); return; }
    default: fail("cannot convert F32 to dtype {}", dtype_name(dst));
  }
}

}  // namespace sky
