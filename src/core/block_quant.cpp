#include "core/block_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"

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
    {8, {"q8_0", 32, 34, true}},       {9, {"q8_1", 32, 36, false}},     {10, {"q2_K", 256, 84, true}},
    {11, {"q3_K", 256, 110, true}},   {12, {"q4_K", 256, 144, true}},   {13, {"q5_K", 256, 176, true}},
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

// Q2_K and Q3_K: 16 groups of 16. Both walk each half of 128 values as four 2-bit planes of its 32
// bytes of qs (shift 0, 2, 4, 6), each plane two groups (bytes 0-15, 16-31).
void deq_q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;  // low nibble: scale, high nibble: min
  const uint8_t* q = b + 16;
  const float d = h2f(b + 80), dmin = h2f(b + 82);
  for (int n = 0, is = 0; n < 256; n += 128, q += 32)
    for (int shift = 0; shift < 8; shift += 2)
      for (int half = 0; half < 2; half++, is++) {
        const float dl = d * float(sc[is] & 0xF), ml = dmin * float(sc[is] >> 4);
        for (int l = 0; l < 16; l++) *y++ = dl * float((q[16 * half + l] >> shift) & 3) - ml;
      }
}
// The 16 6-bit scales of a Q3_K block (12 bytes at p), before their -32: low nibbles of bytes
// 0-7 (groups 0-7) and high nibbles (8-15), the top two bits of group g in bits 2(g/4)..+1 of byte
// 8 + g % 4.
void q3_k_scales(const uint8_t* p, int scales[16]) {
  for (int g = 0; g < 16; g++) scales[g] = ((p[g % 8] >> (4 * (g / 8))) & 0xF) | (((p[8 + g % 4] >> (2 * (g / 4))) & 3) << 4);
}
void deq_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  int scales[16];
  q3_k_scales(b + 96, scales);
  const float d = h2f(b + 108);
  uint8_t m = 1;
  for (int n = 0, is = 0; n < 256; n += 128, q += 32)
    for (int shift = 0; shift < 8; shift += 2, m = uint8_t(m << 1))
      for (int half = 0; half < 2; half++, is++) {
        const float dl = d * float(scales[is] - 32);
        for (int l = 16 * half; l < 16 * half + 16; l++)
          *y++ = dl * float(((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      }
}

// ---- Encoding ----

inline void put_h(uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); }

// A group's grid: x ~= s q + o for integer codes q in [qmin, qmax].
struct Grid {
  double s = 0, o = 0;
};

// How a type places its grid: symmetric types have no offset (o = 0) and a signed step, so the
// value of largest magnitude can sit on the longer side of [qmin, qmax] (Q4_0's -8, Q6_K's -32);
// Q5_1 stores a free offset; the K types subtract a non-negative min, so their offset is <= 0.
enum class Offset { None, Free, NonPositive };

inline int code(double x, const Grid& g, int qmin, int qmax) {
  if (g.s == 0) return std::clamp(0, qmin, qmax);
  return int(std::clamp<long>(std::lround((x - g.o) / g.s), qmin, qmax));
}

double sse(const float* x, int n, const Grid& g, int qmin, int qmax) {
  double e = 0;
  for (int i = 0; i < n; i++) {
    const double r = g.s * code(x[i], g, qmin, qmax) + g.o - x[i];
    e += r * r;
  }
  return e;
}

// The smallest grid that covers the group's min and max, then up to four least-squares
// refinements: with the codes fixed, the step (and offset) minimizing the squared error has a
// closed form; re-rounding against it can only lower the error further. A refinement is kept only
// if it lowers the error and leaves every value within half a step of the grid (no clipping), so
// the per-value bound of plain round-to-nearest still holds.
Grid fit_group(const float* x, int n, int qmin, int qmax, Offset kind) {
  double lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = std::min<double>(lo, x[i]), hi = std::max<double>(hi, x[i]);
  Grid g;
  if (kind == Offset::None) {
    // Positive s covers [qmin s, qmax s]; negative s = -t covers [-qmax t, -qmin t].
    const double pos = std::max({0.0, lo / qmin, hi / qmax}), neg = std::max({0.0, lo / -qmax, hi / -qmin});
    g.s = pos <= neg ? pos : -neg;
  } else {
    if (kind == Offset::NonPositive) lo = std::min(lo, 0.0);
    g.s = (hi - lo) / qmax;
    g.o = lo;
  }
  if (g.s == 0) return g;  // constant group (or zeros): exact as it is
  double err = sse(x, n, g, qmin, qmax);
  for (int it = 0; it < 4 && err > 0; it++) {
    double a = 0, b = 0, c = 0, e = 0;  // sums of q^2, q, q x, x
    for (int i = 0; i < n; i++) {
      const double q = code(x[i], g, qmin, qmax);
      a += q * q, b += q, c += q * x[i], e += x[i];
    }
    Grid r;
    if (kind == Offset::None) {
      if (a == 0) break;
      r.s = c / a;
    } else {
      const double det = n * a - b * b;
      if (det <= 0) break;
      r.s = (n * c - b * e) / det;
      r.o = (e - b * r.s) / n;
      if (kind == Offset::NonPositive && r.o > 0) {
        r.o = 0;
        r.s = a > 0 ? c / a : 0;
      }
    }
    if (!(r.s * g.s > 0)) break;  // a sign flip or zero step: keep what we have
    bool covers = true;
    for (int i = 0; i < n && covers; i++) {
      const double u = (x[i] - r.o) / r.s;
      covers = u >= qmin - 0.5 && u <= qmax + 0.5;
    }
    const double re = covers ? sse(x, n, r, qmin, qmax) : err;
    if (re >= err) break;
    g = r;
    err = re;
  }
  return g;
}

// f16 of a block scale; a value too large for f16 is an error naming the block.
uint16_t scale_f16(double v, const char* type, int64_t block, float amax) {
  const uint16_t h = f32_to_f16(float(v));
  SKY_CHECK(std::isfinite(f16_to_f32(h)),
            "{}: block {} holds a value of magnitude {}, too large for the format's f16 scale ({} needed)", type, block,
            amax, v);
  return h;
}

void check_finite(const float* x, int n, const char* type, int64_t block) {
  for (int i = 0; i < n; i++)
    SKY_CHECK(std::isfinite(x[i]), "{}: value {} at index {} (block {}) is not finite", type, x[i],
              block * n + i, block);
}

float abs_max(const float* x, int n) {
  float m = 0;
  for (int i = 0; i < n; i++) m = std::max(m, std::fabs(x[i]));
  return m;
}

// Q4_0 and Q5_0: one signed f16 step per 32 values, codes offset by 8 / 16.
void enc_q4_0(const float* x, uint8_t* b, int64_t blk) {
  check_finite(x, 32, "q4_0", blk);
  const Grid g = fit_group(x, 32, -8, 7, Offset::None);
  const uint16_t dh = scale_f16(g.s, "q4_0", blk, abs_max(x, 32));
  put_h(b, dh);
  const Grid st{f16_to_f32(dh), 0};
  for (int j = 0; j < 16; j++)
    b[2 + j] = uint8_t((code(x[j], st, -8, 7) + 8) | ((code(x[j + 16], st, -8, 7) + 8) << 4));
}
// The fifth bits of Q5_0/Q5_1: bit j of qh for value j.
void put_q5(const int* q, uint8_t* qh_at, uint8_t* qs) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; j++) {
    qs[j] = uint8_t((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    qh |= uint32_t(q[j] >> 4) << j | uint32_t(q[j + 16] >> 4) << (j + 16);
  }
  std::memcpy(qh_at, &qh, 4);
}
void enc_q5_0(const float* x, uint8_t* b, int64_t blk) {
  check_finite(x, 32, "q5_0", blk);
  const Grid g = fit_group(x, 32, -16, 15, Offset::None);
  const uint16_t dh = scale_f16(g.s, "q5_0", blk, abs_max(x, 32));
  put_h(b, dh);
  const Grid st{f16_to_f32(dh), 0};
  int q[32];
  for (int j = 0; j < 32; j++) q[j] = code(x[j], st, -16, 15) + 16;
  put_q5(q, b + 2, b + 6);
}
void enc_q5_1(const float* x, uint8_t* b, int64_t blk) {
  check_finite(x, 32, "q5_1", blk);
  const Grid g = fit_group(x, 32, 0, 31, Offset::Free);
  const float amax = abs_max(x, 32);
  const uint16_t dh = scale_f16(g.s, "q5_1", blk, amax), mh = scale_f16(g.o, "q5_1", blk, amax);
  put_h(b, dh);
  put_h(b + 2, mh);
  const Grid st{f16_to_f32(dh), f16_to_f32(mh)};
  int q[32];
  for (int j = 0; j < 32; j++) q[j] = code(x[j], st, 0, 31);
  put_q5(q, b + 4, b + 8);
}

// Q4_K and Q5_K: 8 groups of 32 with 6-bit scales and mins against the block's f16 d and dmin;
// codes (4 or 5 bits) against the stored d*sc and dmin*mn, written into q[256].
void enc_k_scales(const float* x, int nmax, uint8_t* b, int q[256], const char* type, int64_t blk) {
  check_finite(x, 256, type, blk);
  Grid g[8];
  double smax = 0, mmax = 0;
  for (int j = 0; j < 8; j++) {
    g[j] = fit_group(x + 32 * j, 32, 0, nmax, Offset::NonPositive);
    smax = std::max(smax, g[j].s);
    mmax = std::max(mmax, -g[j].o);
  }
  const float amax = abs_max(x, 256);
  const uint16_t dh = scale_f16(smax / 63, type, blk, amax), mh = scale_f16(mmax / 63, type, blk, amax);
  put_h(b, dh);
  put_h(b + 2, mh);
  const float d = f16_to_f32(dh), dmin = f16_to_f32(mh);
  uint8_t sc[8], mn[8];
  for (int j = 0; j < 8; j++) {
    sc[j] = uint8_t(d > 0 ? std::clamp<long>(std::lround(g[j].s / d), 0, 63) : 0);
    mn[j] = uint8_t(dmin > 0 ? std::clamp<long>(std::lround(-g[j].o / dmin), 0, 63) : 0);
    // The stored grid, as the decoder forms it: x = (d sc) q - (dmin mn).
    const Grid st{d * float(sc[j]), -double(dmin * float(mn[j]))};
    for (int l = 0; l < 32; l++) q[32 * j + l] = code(x[32 * j + l], st, 0, nmax);
  }
  // The 12 scale bytes (scale_min_k4's packing): bytes 0-3 hold sc[0..3] and the top two bits of
  // sc[4..7]; bytes 4-7 the same for the mins; bytes 8-11 the low nibbles of sc[4..7] and mn[4..7].
  uint8_t* s = b + 4;
  for (int j = 0; j < 4; j++) {
    s[j] = uint8_t(sc[j] | (sc[j + 4] >> 4) << 6);
    s[j + 4] = uint8_t(mn[j] | (mn[j + 4] >> 4) << 6);
    s[j + 8] = uint8_t((sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4);
  }
}
// Each 64 values share 32 bytes of nibbles: low nibble the first 32, high nibble the next 32.
void put_k_nibbles(const int q[256], uint8_t* qs) {
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) qs[32 * c + l] = uint8_t((q[64 * c + l] & 0xF) | (q[64 * c + 32 + l] & 0xF) << 4);
}
void enc_q4_k(const float* x, uint8_t* b, int64_t blk) {
  int q[256];
  enc_k_scales(x, 15, b, q, "q4_K", blk);
  put_k_nibbles(q, b + 16);
}
void enc_q5_k(const float* x, uint8_t* b, int64_t blk) {
  int q[256];
  enc_k_scales(x, 31, b, q, "q5_K", blk);
  // Fifth bits: value 64c + l in bit 2c of qh[l], value 64c + 32 + l in bit 2c + 1.
  uint8_t* qh = b + 16;
  std::memset(qh, 0, 32);
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) qh[l] |= uint8_t((q[64 * c + l] >> 4) << (2 * c) | (q[64 * c + 32 + l] >> 4) << (2 * c + 1));
  put_k_nibbles(q, b + 48);
}

// Q6_K: 16 groups of 16 with signed 8-bit scales against an f16 d; 6-bit codes offset by 32.
void enc_q6_k(const float* x, uint8_t* b, int64_t blk) {
  check_finite(x, 256, "q6_K", blk);
  Grid g[16];
  double smax = 0;
  for (int j = 0; j < 16; j++) {
    g[j] = fit_group(x + 16 * j, 16, -32, 31, Offset::None);
    smax = std::max(smax, std::fabs(g[j].s));
  }
  const uint16_t dh = scale_f16(smax / 127, "q6_K", blk, abs_max(x, 256));
  const float d = f16_to_f32(dh);
  int8_t* sc = reinterpret_cast<int8_t*>(b + 192);
  uint8_t q[256];
  for (int j = 0; j < 16; j++) {
    sc[j] = int8_t(d > 0 ? std::clamp<long>(std::lround(g[j].s / d), -127, 127) : 0);
    const Grid st{d * float(sc[j]), 0};
    for (int l = 0; l < 16; l++) q[16 * j + l] = uint8_t(code(x[16 * j + l], st, -32, 31) + 32);
  }
  put_h(b + 208, dh);
  // Each half of 128 values: ql[64] of nibbles (values l and l+64 share ql[l], l+32 and l+96 share
  // ql[l+32]) and qh[32] holding the top two bits of l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7.
  for (int h = 0; h < 2; h++) {
    const uint8_t* y = q + 128 * h;
    uint8_t* ql = b + 64 * h;
    uint8_t* qh = b + 128 + 32 * h;
    for (int l = 0; l < 32; l++) {
      ql[l] = uint8_t((y[l] & 0xF) | (y[l + 64] & 0xF) << 4);
      ql[l + 32] = uint8_t((y[l + 32] & 0xF) | (y[l + 96] & 0xF) << 4);
      qh[l] = uint8_t(y[l] >> 4 | (y[l + 32] >> 4) << 2 | (y[l + 64] >> 4) << 4 | (y[l + 96] >> 4) << 6);
    }
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
    case BlockType::Q2_K: f = deq_q2_k; break;
    case BlockType::Q3_K: f = deq_q3_k; break;
    default: fail("cannot decode tensor type {}", tr->name);
  }
  for (int64_t i = 0; i < nb; i++) f(s + i * bb, dst + i * bv);
}

void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  SKY_CHECK(n % kQK == 0, "q8_0: {} values is not a multiple of {}", n, kQK);
  for (int64_t b = 0; b < n / kQK; b++) {
    const float* xb = x + b * kQK;
    uint8_t* ob = out + b * (2 + kQK);
    check_finite(xb, kQK, "q8_0", b);
    const float amax = abs_max(xb, kQK);
    // Quantizing against the f16-rounded scale (ggml's reference uses the unrounded one) keeps
    // every decoded value within d/2; |x/d| can exceed 127 by at most 127 * 2^-11, so it still
    // rounds to 127.
    const uint16_t dh = scale_f16(amax / 127.0f, "q8_0", b, amax);
    const float d = f16_to_f32(dh);
    std::memcpy(ob, &dh, 2);
    for (int i = 0; i < kQK; i++) {
      long q = d > 0 ? std::lround(xb[i] / d) : 0;
      ob[2 + i] = uint8_t(int8_t(std::clamp(q, -127L, 127L)));
    }
  }
}

bool block_can_encode(BlockType t) {
  switch (t) {
    case BlockType::F32: case BlockType::F16: case BlockType::Q4_0: case BlockType::Q5_0: case BlockType::Q5_1:
    case BlockType::Q8_0: case BlockType::Q4_K: case BlockType::Q5_K: case BlockType::Q6_K:
      return true;
    default:
      return false;
  }
}

void block_quantize(BlockType t, const float* x, int64_t n, uint8_t* out) {
  const BlockTraits* tr = block_traits(uint32_t(t));
  SKY_CHECK(tr && block_can_encode(t), "cannot encode tensor type {} ({})", tr ? tr->name : "unknown", uint32_t(t));
  SKY_CHECK(n % tr->block_values == 0, "{}: {} values is not a multiple of the block ({})", tr->name, n,
            tr->block_values);
  void (*f)(const float*, uint8_t*, int64_t) = nullptr;
  switch (t) {
    case BlockType::F32: std::memcpy(out, x, size_t(n) * 4); return;
    case BlockType::F16: convert_from_f32(DType::F16, x, out, size_t(n)); return;
    case BlockType::Q8_0: quantize_q8_0(x, n, out); return;
    case BlockType::Q4_0: f = enc_q4_0; break;
    case BlockType::Q5_0: f = enc_q5_0; break;
    case BlockType::Q5_1: f = enc_q5_1; break;
    case BlockType::Q4_K: f = enc_q4_k; break;
    case BlockType::Q5_K: f = enc_q5_k; break;
    case BlockType::Q6_K: f = enc_q6_k; break;
    default: break;
  }
  const int64_t nb = n / tr->block_values, bv = tr->block_values, bb = tr->block_bytes;
  // Blocks are independent: chunks of them encode on all threads (an expert stack is large).
  constexpr int64_t kChunk = 256;
  parallel_for(size_t((nb + kChunk - 1) / kChunk), [&](size_t c) {
    for (int64_t i = int64_t(c) * kChunk; i < std::min(nb, int64_t(c + 1) * kChunk); i++) f(x + i * bv, out + i * bb, i);
  });
}

}  // namespace sky
