#include "backend/cpu/qmatmul_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/dtype.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"

// Every function that touches AVX-512 registers carries this target (lambdas included, or GCC
// refuses to inline them); none runs unless supported() said yes.
#define SKY_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,avx512bf16")))

namespace sky::bf16dot {

bool supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

namespace {

// bf16 encoding of each E4M3 magnitude code (7 bits), split into high and low bytes for the two
// vpermi2b lookups (a 128-entry byte table is two registers). Every E4M3 value, subnormals
// included, is a normal bf16, so the lookup is exact and needs no rescaling. The NaN code decodes
// to 480, as in the f32 kernels.
struct Fp8Tables {
  alignas(64) uint8_t hi[128], lo[128];
  Fp8Tables() {
    for (int m = 0; m < 128; m++) {
      const uint16_t b = m == 0x7F ? f32_to_bf16(480.0f) : f32_to_bf16(e4m3_to_f32(uint8_t(m)));
      hi[m] = uint8_t(b >> 8);
      lo[m] = uint8_t(b);
    }
  }
};
const Fp8Tables kTables;

// unpacklo/hi_epi8 interleave within 128-bit lanes, so decoded vector 0 holds codes
// {0-7, 16-23, 32-39, 48-55} of a 64-block and vector 1 the others. Activations for fp8 weights are
// stored in that order (convert_rows), which costs nothing per weight.
int fp8_lane_source(int j) { return (j % 32) / 8 * 16 + (j / 32) * 8 + j % 8; }

struct Fp8Decoder {
  __m512i thi0, thi1, tlo0, tlo1, sign;
  SKY_BF16 Fp8Decoder()
      : thi0(_mm512_load_si512(kTables.hi)), thi1(_mm512_load_si512(kTables.hi + 64)),
        tlo0(_mm512_load_si512(kTables.lo)), tlo1(_mm512_load_si512(kTables.lo + 64)),
        sign(_mm512_set1_epi8(char(0x80))) {}
  // 64 codes -> two vectors of 32 bf16. vpermi2b ignores the index's top bit (the sign).
  SKY_BF16 inline void decode(__m512i c, __m512i& w0, __m512i& w1) const {
    __m512i hi = _mm512_permutex2var_epi8(thi0, c, thi1);
    const __m512i lo = _mm512_permutex2var_epi8(tlo0, c, tlo1);
    hi = _mm512_ternarylogic_epi32(hi, c, sign, 0xF8);  // hi | (c & 0x80)
    w0 = _mm512_unpacklo_epi8(lo, hi);
    w1 = _mm512_unpackhi_epi8(lo, hi);
  }
};

// Register tile: y[n][r] = scale[r] * dot(xb row n, w row r) for NR activation rows and R weight
// rows, 64 weights per step; each decoded weight vector serves all NR rows. Each (n, r) sum runs in
// the same order whatever NR and R are, so a row's result does not depend on the batch around it
// (batched decoding gives the same tokens as one-at-a-time). The last partial block uses masked
// loads, which never fault on the masked-off bytes (weights may end a memory map).
template <bool kFp8, int NR, int R>
SKY_BF16 __attribute__((noinline)) void tile(const uint8_t* w, size_t wstride, int I, const uint16_t* xb, size_t ldx,
                                             float* y, size_t ldy, const float* scale, const uint8_t* pf) {
  const Fp8Decoder dec;
  constexpr size_t kBlockBytes = kFp8 ? 64 : 128;
  __m512 acc[NR][R];
#pragma GCC unroll 8
  for (int n = 0; n < NR; n++)
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[n][r] = _mm512_setzero_ps();

  // kTail: the last, partial block, through masked loads (plain loads elsewhere: cheaper).
  auto step = [&](auto tail, size_t blk, __mmask64 m) SKY_BF16 {
    constexpr bool kTail = decltype(tail)::value;
    __m512i w0[R], w1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const uint8_t* p = w + r * wstride + blk * kBlockBytes;
      if constexpr (kFp8) {
        dec.decode(kTail ? _mm512_maskz_loadu_epi8(m, p) : _mm512_loadu_si512(p), w0[r], w1[r]);
      } else {
        w0[r] = kTail ? _mm512_maskz_loadu_epi16(__mmask32(m), p) : _mm512_loadu_si512(p);
        w1[r] = kTail ? _mm512_maskz_loadu_epi16(__mmask32(m >> 32), p + 64) : _mm512_loadu_si512(p + 64);
      }
    }
#pragma GCC unroll 8
    for (int n = 0; n < NR; n++) {
      const uint16_t* xp = xb + n * ldx + blk * 64;
      const __m512bh x0 = (__m512bh)_mm512_load_si512(xp), x1 = (__m512bh)_mm512_load_si512(xp + 32);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        acc[n][r] = _mm512_dpbf16_ps(acc[n][r], x0, (__m512bh)w0[r]);
        acc[n][r] = _mm512_dpbf16_ps(acc[n][r], x1, (__m512bh)w1[r]);
      }
    }
  };

  // Software prefetch of the next tile's rows (`pf`, contiguous) at the pace this tile is consumed:
  // the hardware prefetcher restarts at every 4 KiB page and falls behind on short rows.
  const size_t full = size_t(I) / 64, rem = size_t(I) % 64;
  for (size_t b = 0; b < full; b++) {
    if (pf) {
      for (size_t k = 0; k < R * kBlockBytes; k += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + k), _MM_HINT_T0);
      pf += R * kBlockBytes;
    }
    step(std::false_type(), b, 0);
  }
  if (rem) step(std::true_type(), full, (__mmask64(1) << rem) - 1);
#pragma GCC unroll 8
  for (int n = 0; n < NR; n++)
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) y[n * ldy + r] = _mm512_reduce_add_ps(acc[n][r]) * scale[r];
}

// Tile shapes: 4 activation rows x 4 weight rows (16 accumulators; 8 decoded weight vectors and 5
// table registers fit AVX-512's 32), or, for a last group of 5 to 7 activation rows, all of them x
// 2 weight rows: one pass over the weights instead of a full group plus a partial one (with top-2
// of 16 experts, a batch of 64 gives each expert about 8 rows). Measured (bench_qmatmul, fp8
// expert weights): 5 rows 262 -> 328-339 GFLOP/s, 7 rows 304 -> 320-335; 8 rows stay two 4-row
// groups (339, against 273 as one 8 x 2 tile: twice the activation loads per product).
constexpr int kNR = 4, kR = 4, kWideNR = 7, kWideR = 2;

template <bool kFp8, int R>
void tile_n(int nr, const uint8_t* w, size_t wstride, int I, const uint16_t* xb, size_t ldx, float* y, size_t ldy,
            const float* s, const uint8_t* pf) {
  switch (nr) {
    case 1: return tile<kFp8, 1, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
    case 2: return tile<kFp8, 2, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
    case 3: return tile<kFp8, 3, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
    case 4: return tile<kFp8, 4, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
  }
  if constexpr (R <= kWideR) {
    switch (nr) {
      case 5: return tile<kFp8, 5, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
      case 6: return tile<kFp8, 6, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
      case 7: return tile<kFp8, 7, R>(w, wstride, I, xb, ldx, y, ldy, s, pf);
    }
  }
}

// Weight rows [o_begin, o_end) at base + o * stride (I values each, `scale(o)` their factors) times
// N activation rows; y[n * ldy + o]. Blocks of weight rows small enough to stay in L2: each block
// is read from memory once, by the first group of activation rows (which prefetches ahead, never
// past row o_limit), and from L2 by the other groups.
template <bool kFp8, class Scale>
void rows_t(const uint8_t* base, size_t stride, int I, int o_limit, Scale scale, const uint16_t* xb, float* y,
            size_t ldy, int N, int o_begin, int o_end) {
  const size_t ldx = padded(I);
  const int block = std::max(kR, int((256 << 10) / std::max<size_t>(stride, 1)) / kR * kR);
  for (int b0 = o_begin; b0 < o_end; b0 += block) {
    const int b1 = std::min(o_end, b0 + block);
    for (int n0 = 0; n0 < N;) {
      const int left = N - n0, nr = left > kNR && left <= kWideNR ? left : std::min(kNR, left);
      auto run = [&](auto rows_c, int o) {
        constexpr int R = decltype(rows_c)::value;
        float s[R];
        for (int r = 0; r < R; r++) s[r] = scale(o + r);
        const uint8_t* next = n0 == 0 && o + 2 * R <= o_limit ? base + (o + R) * stride : nullptr;
        tile_n<kFp8, R>(nr, base + o * stride, stride, I, xb + n0 * ldx, ldx, y + size_t(n0) * ldy + o, ldy, s, next);
      };
      int o = b0;
      if (nr <= kNR)
        for (; o + kR <= b1; o += kR) run(std::integral_constant<int, kR>(), o);
      else
        for (; o + kWideR <= b1; o += kWideR) run(std::integral_constant<int, kWideR>(), o);
      for (; o < b1; o++) run(std::integral_constant<int, 1>(), o);
      n0 += nr;
    }
  }
}

SKY_BF16 void convert_rows_impl(uint16_t* xb, const float* x, int N, int I, bool fp8_order) {
  alignas(64) uint16_t idx[64];
  for (int j = 0; j < 64; j++) idx[j] = uint16_t(fp8_order ? fp8_lane_source(j) : j);
  const __m512i idx0 = _mm512_load_si512(idx), idx1 = _mm512_load_si512(idx + 32);
  const size_t ldx = padded(I);
  for (int n = 0; n < N; n++) {
    const float* xr = x + size_t(n) * I;
    uint16_t* out = xb + n * ldx;
    for (int i = 0; i < I; i += 64) {
      __m512 f[4];
      for (int k = 0; k < 4; k++) {
        const int left = std::clamp(I - (i + 16 * k), 0, 16);
        f[k] = _mm512_maskz_loadu_ps(__mmask16((1u << left) - 1), xr + i + 16 * k);
      }
      // cvtne2ps2bf16(a, b) puts b in the low half: natural order is [f0 f1], [f2 f3].
      const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(f[1], f[0]), hi = (__m512i)_mm512_cvtne2ps_pbh(f[3], f[2]);
      _mm512_store_si512(out + i, _mm512_permutex2var_epi16(lo, idx0, hi));
      _mm512_store_si512(out + i + 32, _mm512_permutex2var_epi16(lo, idx1, hi));
    }
  }
}

}  // namespace

void convert_rows(uint16_t* xb, const float* x, int N, int I, DType wdtype) {
  convert_rows_impl(xb, x, N, I, wdtype == DType::F8_E4M3);
}

void rows(const QWeight& w, const uint16_t* xb, float* y, int N, int o_begin, int o_end) {
  const auto* base = static_cast<const uint8_t*>(w.data);
  auto scale = [&](int o) { return w.row_scale(o); };
  if (w.dtype == DType::F8_E4M3)
    rows_t<true>(base, size_t(w.I), w.I, w.O, scale, xb, y, size_t(w.O), N, o_begin, o_end);
  else
    rows_t<false>(base, size_t(w.I) * 2, w.I, w.O, scale, xb, y, size_t(w.O), N, o_begin, o_end);
}

void panel(const uint16_t* wb, int R, int I, const uint16_t* xb, float* y, size_t ldy, int N) {
  rows_t<false>(reinterpret_cast<const uint8_t*>(wb), size_t(padded(I)) * 2, I, R, [](int) { return 1.0f; }, xb, y,
                ldy, N, 0, R);
}

}  // namespace sky::bf16dot
