#include "core/block_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace sky {

namespace {

struct Entry {
  uint32_t id;
  BlockTraits t;
};
// ggml's type table (ggml.h's ggml_type numbering, sizes of its block structs).
constexpr Entry kTypes[] = {
    {0, {"f32", 1, 4, true}},          {1, {"f16", 1, 2, true}},         {2, {"q4_0", 32, 18, true}},
    {3, {"q4_1", 32, 20, true}},       {6, {"q5_0", 32, 22, true}},      {7, {"q5_1", 32, 24, true}},
    {8, {"q8_0", 32, 34, true}},       {9, {"q8_1", 32, 36, false}},     {10, {"q2_K", 256, 84, false}},
    {11, {"q3_K", 256, 110, false}},   {12, {"q4_K", 256, 144, true}},   {13, {"q5_K", 256, 176, true}},
    {14, {"q6_K", 256, 210, true}},    {15, {"q8_K", 256, 292, false}},  {16, {"iq2_xxs", 256, 66, false}},
    {17, {"iq2_xs", 256, 74, false}},  {18, {"iq3_xxs", 256, 98, false}}, {19, {"iq1_s", 256, 50, false}},
    {20, {"iq4_nl", 32, 18, false}},   {21, {"iq3_s", 256, 110, false}}, {22, {"iq2_s", 256, 82, false}},
    {23, {"iq4_xs", 256, 136, false}}, {24, {"i8", 1, 1, false}},        {25, {"i16", 1, 2, false}},
    {26, {"i32", 1, 4, false}},        {27, {"i64", 1, 8, false}},       {28, {"f64", 1, 8, false}},
    {29, {"iq1_m", 256, 56, false}},   {30, {"bf16", 1, 2, true}},       {34, {"tq1_0", 256, 54, false}},
    {35, {"tq2_0", 256, 66, false}},   {39, {"mxfp4", 32, 17, false}},   {40, {"nvfp4", 64, 36, false}},
    {41, {"q1_0", 128, 18, false}},
};

inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// The 6-bit scale and min of group j (0..7) of a Q4_K / Q5_K block's 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *mn = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void deq_q4_0(const uint8_t* b, float* y) {
  const float d = h2f(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; j++) {
    y[j] = float((qs[j] & 0xF) - 8) * d;
    y[j + 16] = float((qs[j] >> 4) - 8) * d;
  }
}
void deq_q4_1(const uint8_t* b, float* y) {
  const float d = h2f(b), m = h2f(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; j++) {
    y[j] = float(qs[j] & 0xF) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}
void deq_q5_0(const uint8_t* b, float* y) {
  const float d = h2f(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; j++) {
    const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
    y[j] = float(((qs[j] & 0xF) | h0) - 16) * d;
    y[j + 16] = float(((qs[j] >> 4) | h1) - 16) * d;
  }
}
void deq_q5_1(const uint8_t* b, float* y) {
  const float d = h2f(b), m = h2f(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; j++) {
    const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
    y[j] = float((qs[j] & 0xF) | h0) * d + m;
    y[j + 16] = float((qs[j] >> 4) | h1) * d + m;
  }
}
void deq_q8_0(const uint8_t* b, float* y) {
  const float d = h2f(b);
  for (int j = 0; j < 32; j++) y[j] = float(int8_t(b[2 + j])) * d;
}
void deq_q4_k(const uint8_t* b, float* y) {
  const float d = h2f(b), dmin = h2f(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; l++) *y++ = d1 * float(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; l++) *y++ = d2 * float(q[l] >> 4) - m2;
    q += 32;
  }
}
void deq_q5_k(const uint8_t* b, float* y) {
  const float d = h2f(b), dmin = h2f(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; l++) *y++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; l++) *y++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    ql += 32;
    u1 = uint8_t(u1 << 2);
    u2 = uint8_t(u2 << 2);
  }
}
void deq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = h2f(b + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; l++) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

}  // namespace

const BlockTraits* block_traits(uint32_t type) {
  for (const Entry& e : kTypes)
    if (e.id == type) return &e.t;
  return nullptr;
}

const char* block_type_name(BlockType t) {
  const BlockTraits* b = block_traits(uint32_t(t));
  return b ? b->name : "?";
}

bool block_is_quantized(BlockType t) { return t != BlockType::F32 && t != BlockType::F16 && t != BlockType::BF16; }

void block_dequantize(BlockType t, const void* src, float* dst, int64_t n) {
  const BlockTraits* tr = block_traits(uint32_t(t));
  SKY_CHECK(tr && tr->decodable, "cannot decode tensor type {} ({})", tr ? tr->name : "unknown", uint32_t(t));
  SKY_CHECK(n % tr->block_values == 0, "{}: {} values is not a multiple of the block ({})", tr->name, n,
            tr->block_values);
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t nb = n / tr->block_values, bb = tr->block_bytes, bv = tr->block_values;
  void (*f)(const uint8_t*, float*) = nullptr;
  switch (t) {
    case BlockType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case BlockType::F16: convert_to_f32(DType::F16, src, dst, size_t(n)); return;
    case BlockType::BF16: convert_to_f32(DType::BF16, src, dst, size_t(n)); return;
    case BlockType::Q4_0: f = deq_q4_0; break;
    case BlockType::Q4_1: f = deq_q4_1; break;
    case BlockType::Q5_0: f = deq_q5_0; break;
    case BlockType::Q5_1: f = deq_q5_1; break;
    case BlockType::Q8_0: f = deq_q8_0; break;
    case BlockType::Q4_K: f = deq_q4_k; break;
    case BlockType::Q5_K: f = deq_q5_k; break;
    case BlockType::Q6_K: f = deq_q6_k; break;
    default: fail("cannot decode tensor type {}", tr->name);
  }
  for (int64_t i = 0; i < nb; i++) f(s + i * bb, dst + i * bv);
}

void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  SKY_CHECK(n % kQK == 0, "q8_0: {} values is not a multiple of {}", n, kQK);
  for (int64_t b = 0; b < n / kQK; b++) {
    const float* xb = x + b * kQK;
    uint8_t* ob = out + b * (2 + kQK);
    float amax = 0;
    for (int i = 0; i < kQK; i++) amax = std::max(amax, std::fabs(xb[i]));
    SKY_CHECK(std::isfinite(amax), "q8_0: non-finite value in block {}", b);
    // Quantizing against the f16-rounded scale (ggml's reference uses the unrounded one) keeps
    // every decoded value within d/2; |x/d| can exceed 127 by at most 127 * 2^-11, so it still
    // rounds to 127.
    const uint16_t dh = f32_to_f16(amax / 127.0f);
    const float d = f16_to_f32(dh);
    std::memcpy(ob, &dh, 2);
    for (int i = 0; i < kQK; i++) {
      long q = d > 0 ? std::lround(xb[i] / d) : 0;
      ob[2 + i] = uint8_t(int8_t(std::clamp(q, -127L, 127L)));
    }
  }
}

}  // namespace sky
