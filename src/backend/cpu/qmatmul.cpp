// Quantized linear layers. The SIMD part is compiled once per x86 target by Highway (this file
// includes itself through foreach_target.h, each pass with that target's function attributes), so
// the build needs no -m flags and the best target is picked at run time.
#include "backend/cpu/qmatmul.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/scratch.h"
#include "backend/cpu/qblock.h"
#include "backend/cpu/qmatmul_bf16.h"

#ifndef SKY_QMATMUL_ONCE
#define SKY_QMATMUL_ONCE
namespace sky {
namespace {
// qblock::Panels::F32: one panel of decoded weight rows per thread.
thread_local AlignedScratch<float> t_f32_panel;
}  // namespace
}  // namespace sky
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/qmatmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/cache_control.h"
#include "hwy/highway.h"

// Per-target code: everything between the two HWY_NAMESPACE lines is compiled once per target.
HWY_BEFORE_NAMESPACE();
namespace sky {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
constexpr size_t kMaxLanes = HWY_LANES(float);

// Weight formats. Load() returns Lanes(d) consecutive weights starting at byte address p (any
// alignment) as f32; `kFold` is a factor the caller applies with the row scale after the dot product.
struct WF32 {
  static constexpr size_t kSize = 4;
  static constexpr float kFold = 1.0f;
  static HWY_INLINE VF Load(DF d, const uint8_t* p) { return hn::LoadU(d, reinterpret_cast<const float*>(p)); }
};

struct WBF16 {
  static constexpr size_t kSize = 2;
  static constexpr float kFold = 1.0f;
  // A bf16 is the high half of an f32.
  static HWY_INLINE VF Load(DF d, const uint8_t* p) {
    const hn::Rebind<uint16_t, DF> d16;
    const hn::Rebind<uint32_t, DF> d32;
    const auto u = hn::PromoteTo(d32, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(p)));
    return hn::BitCast(d, hn::ShiftLeft<16>(u));
  }
};

struct WE4M3 {
  static constexpr size_t kSize = 1;
  // E4M3 (bias 7) has the same 3-bit mantissa alignment as f16's top bits, so its 7 magnitude bits
  // shifted left by 7 form an f16 worth 2^-8 of the value (bias 15), subnormals included; the
  // hardware f16 -> f32 conversion does the rest exactly. The 2^8 goes into the row scale.
  // NaN codes (0x7F / 0xFF) decode to +-480 instead of NaN: quantize_weight never produces them.
  static constexpr float kFold = 256.0f;
  static HWY_INLINE VF Load(DF d, const uint8_t* p) {
    const hn::Rebind<int8_t, DF> d8;
    const hn::Rebind<int16_t, DF> d16;
    const hn::Rebind<hwy::float16_t, DF> dh;
    // Sign-extending puts the sign in bit 15 after the shift; bit 14 (a copy of it) is cleared.
    auto v = hn::ShiftLeft<7>(hn::PromoteTo(d16, hn::LoadU(d8, reinterpret_cast<const int8_t*>(p))));
    v = hn::And(v, hn::Set(d16, int16_t(0xBF80)));
    return hn::PromoteTo(d, hn::BitCast(dh, v));
  }
};

// Register tile: y[n][r] = scale[r] * dot(x row n, w row r) for NR activation rows and R weight
// rows. Each weight vector is decoded once and used for all NR rows; NR * R independent
// accumulators hide the FMA latency. The last I % Lanes elements go through zero-padded copies, so
// nothing is read past the end of a row (weights may end a memory map).
template <class W, int NR, int R>
HWY_NOINLINE void Tile(const uint8_t* w, size_t wstride, int I, const float* x, int ldx, float* y, int ldy,
                       const float* scale, const uint8_t* pf) {
  const DF d;
  const size_t L = hn::Lanes(d);
  // Without the unroll pragmas GCC -O2 keeps these arrays in memory (3x slower).
  VF acc[NR][R];
  HWY_UNROLL(8) for (int n = 0; n < NR; n++)
    HWY_UNROLL(8) for (int r = 0; r < R; r++) acc[n][r] = hn::Zero(d);

  auto step = [&](const uint8_t* wp, size_t ws, const float* xp, size_t xs) HWY_ATTR {
    VF wv[R];
    HWY_UNROLL(8) for (int r = 0; r < R; r++) wv[r] = W::Load(d, wp + r * ws);
    HWY_UNROLL(8) for (int n = 0; n < NR; n++) {
      const VF xv = hn::LoadU(d, xp + n * xs);
      HWY_UNROLL(8) for (int r = 0; r < R; r++) acc[n][r] = hn::MulAdd(xv, wv[r], acc[n][r]);
    }
  };

  // Software prefetch of the next block of rows (`pf`), at the pace this block is consumed: the
  // hardware prefetcher alone restarts at every 4 KiB page and falls behind on short rows.
  const size_t step_bytes = R * L * W::kSize;
  size_t i = 0;
  for (; i + L <= size_t(I); i += L) {
    if (pf) {
      for (size_t b = 0; b < step_bytes; b += 64) hwy::Prefetch(pf + b);
      pf += step_bytes;
    }
    step(w + i * W::kSize, wstride, x + i, ldx);
  }
  if (i < size_t(I)) {
    const size_t rem = I - i;
    HWY_ALIGN float xt[NR * kMaxLanes] = {};
    HWY_ALIGN uint8_t wt[R * kMaxLanes * W::kSize] = {};
    for (int n = 0; n < NR; n++) std::memcpy(xt + n * L, x + n * ldx + i, rem * 4);
    for (int r = 0; r < R; r++) std::memcpy(wt + r * L * W::kSize, w + r * wstride + i * W::kSize, rem * W::kSize);
    step(wt, L * W::kSize, xt, L);
  }
  for (int n = 0; n < NR; n++)
    for (int r = 0; r < R; r++) y[n * ldy + r] = hn::GetLane(hn::SumOfLanes(d, acc[n][r])) * scale[r];
}

// Register tile shape, measured on Zen 4: AVX-512 (32 registers) takes 4 x 4 accumulators, the
// 16-register targets 4 x 3 (16 with the weight and activation vectors would spill).
constexpr int kNR = 4;
constexpr int kR = HWY_TARGET <= HWY_AVX3 ? 4 : 3;

template <class W, int R>
void TileN(const uint8_t* w, size_t wstride, int I, const float* x, int nr, float* y, int O, const float* s,
           const uint8_t* pf) {
  switch (nr) {
    case 1: return Tile<W, 1, R>(w, wstride, I, x, I, y, O, s, pf);
    case 2: return Tile<W, 2, R>(w, wstride, I, x, I, y, O, s, pf);
    case 3: return Tile<W, 3, R>(w, wstride, I, x, I, y, O, s, pf);
    default: return Tile<W, kNR, R>(w, wstride, I, x, I, y, O, s, pf);
  }
}

// Weight rows [o, o + R) times activation rows [n0, n0 + nr), nr <= kNR. `pf`: what to prefetch.
template <class W, int R>
void RowTile(const QWeight& q, const float* x, float* y, int n0, int nr, int o, const uint8_t* pf) {
  const size_t stride = size_t(q.I) * W::kSize;
  const uint8_t* w = static_cast<const uint8_t*>(q.data) + o * stride;
  float s[R];
  for (int r = 0; r < R; r++) s[r] = q.row_scale(o + r) * W::kFold;
  TileN<W, R>(w, stride, q.I, x + size_t(n0) * q.I, nr, y + size_t(n0) * q.O + o, q.O, s, pf);
}

// Blocks of weight rows small enough to stay in L2 (256 KiB): each block is read from memory once,
// by the first group of kNR activation rows (which prefetches ahead), and from L2 for the other
// groups, while each group's activations stay in L1 across the block's register tiles.
template <class W>
void RowsT(const QWeight& q, const float* x, float* y, int N, int o_begin, int o_end) {
  const size_t stride = size_t(q.I) * W::kSize;
  const int block = std::max(kR, int((256 << 10) / std::max<size_t>(stride, 1)) / kR * kR);
  const auto* base = static_cast<const uint8_t*>(q.data);
  for (int b0 = o_begin; b0 < o_end; b0 += block) {
    const int b1 = std::min(o_end, b0 + block);
    for (int n0 = 0; n0 < N; n0 += kNR) {
      const int nr = std::min(kNR, N - n0);
      int o = b0;
      // Prefetch the next tile's rows (first group only, and never past the matrix).
      auto next = [&](int o_next, int rows) { return n0 == 0 && o_next + rows <= q.O ? base + o_next * stride : nullptr; };
      for (; o + kR <= b1; o += kR) RowTile<W, kR>(q, x, y, n0, nr, o, next(o + kR, kR));
      for (; o < b1; o++) RowTile<W, 1>(q, x, y, n0, nr, o, next(o + 1, 1));
    }
  }
}

void QRows(const QWeight& q, const float* x, float* y, int N, int o_begin, int o_end) {
  switch (q.dtype) {
    case DType::F32: return RowsT<WF32>(q, x, y, N, o_begin, o_end);
    case DType::BF16: return RowsT<WBF16>(q, x, y, N, o_begin, o_end);
    case DType::F8_E4M3: return RowsT<WE4M3>(q, x, y, N, o_begin, o_end);
    default: return;  // checked by the caller
  }
}

// Block-quantized rows [o_begin, o_end) through f32 panels (qblock::Panels::F32): P rows at a time
// decoded into a panel that stays in L2 while every group of kNR activation rows passes over it.
void PanelRows(const QWeight& q, const float* x, float* y, int N, int o_begin, int o_end) {
  const int I = q.I, P = std::max(kR, int((192 << 10) / (size_t(I) * 4)) / kR * kR);
  float* panel = t_f32_panel.get(size_t(P) * I);
  const size_t stride = size_t(I) * 4;
  static const float ones[4] = {1, 1, 1, 1};
  for (int p0 = o_begin; p0 < o_end; p0 += P) {
    const int R = std::min(P, o_end - p0);
    qblock::decode_rows(q, p0, p0 + R, panel, size_t(I));
    const auto* w = reinterpret_cast<const uint8_t*>(panel);
    for (int n0 = 0; n0 < N; n0 += kNR) {
      const int nr = std::min(kNR, N - n0);
      const float* xn = x + size_t(n0) * I;
      float* yn = y + size_t(n0) * q.O + p0;
      int r = 0;
      for (; r + kR <= R; r += kR) TileN<WF32, kR>(w + r * stride, stride, I, xn, nr, yn + r, q.O, ones, nullptr);
      for (; r < R; r++) TileN<WF32, 1>(w + r * stride, stride, I, xn, nr, yn + r, q.O, ones, nullptr);
    }
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace sky
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sky {
HWY_EXPORT(QRows);
HWY_EXPORT(PanelRows);
HWY_EXPORT(TargetName);

static void check(const QWeight& w) {
  SKY_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F8_E4M3 ||
                (w.dtype == DType::Blocks && qblock::supported(w.block)),
            "qmatmul: unsupported weight type {}", w.dtype == DType::Blocks ? block_type_name(w.block) : dtype_name(w.dtype));
  SKY_CHECK(w.data || size_t(w.O) * w.I == 0, "qmatmul: weight has no data");
}

static bool g_bf16_dot = true;

void qmatmul_set_bf16_dot(bool on) { g_bf16_dot = on; }

bool qmatmul_uses_bf16_dot(DType weight_dtype) {
  return g_bf16_dot && (weight_dtype == DType::BF16 || weight_dtype == DType::F8_E4M3) && bf16dot::supported();
}

// A 64-byte aligned buffer of bf16 activations, grown on demand and kept per thread.
namespace {
// One per activation layout: natural order (BF16 weights) and the fp8 decoder's lane order.
thread_local AlignedScratch<uint16_t> t_xb[2];

// Activations of one call in the forms its weights need: f32, or bf16 in the weight's layout.
struct Prepared {
  const float* x;
  const uint16_t* xb[2] = {nullptr, nullptr};
  qblock::Acts xq[2];  // int8 blocks for block-quantized weights, per layout (B32, K256)
  int N;
  Prepared(const float* x_, int N_) : x(x_), N(N_) {}
  void add(const QWeight& w) {
    const qblock::Panels panels = w.dtype == DType::Blocks ? qblock::panels(w, N) : qblock::Panels::None;
    if (panels == qblock::Panels::F32) return;  // reads x as it is
    if (w.dtype == DType::Blocks && panels == qblock::Panels::None) {
      const qblock::ActFormat f = qblock::act_format(w);
      qblock::Acts& a = xq[f == qblock::ActFormat::K256];
      if (!a.q) a = qblock::quantize(x, N, w.I, f);
      return;
    }
    if (w.dtype != DType::Blocks && !qmatmul_uses_bf16_dot(w.dtype)) return;
    const int k = w.dtype == DType::F8_E4M3;
    if (xb[k]) return;
    uint16_t* p = t_xb[k].get(size_t(N) * bf16dot::padded(w.I));
    bf16dot::convert_rows(p, x, N, w.I, w.dtype);
    xb[k] = p;
  }
  void run(const QWeight& w, float* y, int o0, int o1) const {
    const qblock::Panels panels = w.dtype == DType::Blocks ? qblock::panels(w, N) : qblock::Panels::None;
    if (panels == qblock::Panels::BF16)
      qblock::rows_bf16(w, xb[0], y, N, o0, o1);
    else if (panels == qblock::Panels::F32)
      HWY_DYNAMIC_DISPATCH(PanelRows)(w, x, y, N, o0, o1);
    else if (w.dtype == DType::Blocks)
      qblock::rows(w, xq[qblock::act_format(w) == qblock::ActFormat::K256], y, o0, o1);
    else if (qmatmul_uses_bf16_dot(w.dtype))
      bf16dot::rows(w, xb[w.dtype == DType::F8_E4M3], y, N, o0, o1);
    else
      HWY_DYNAMIC_DISPATCH(QRows)(w, x, y, N, o0, o1);
  }
};
}  // namespace

void qmatmul_rows_multi(const float* x, int N, const QProduct* ps, int count, int o_begin, int o_end) {
  for (int j = 0; j < count; j++) check(*ps[j].w);
  if (N <= 0 || o_begin >= o_end) return;
  Prepared p(x, N);
  for (int j = 0; j < count; j++) p.add(*ps[j].w);
  for (int j = 0; j < count; j++) p.run(*ps[j].w, ps[j].y, o_begin, o_end);
}

void qmatmul_rows(float* y, const float* x, const QWeight& w, int N, int o_begin, int o_end) {
  const QProduct p{y, &w};
  qmatmul_rows_multi(x, N, &p, 1, o_begin, o_end);
}

void qmatmul_multi(const float* x, int N, const QProduct* ps, int count) {
  const QProduct* const pe = ps + count;
  int64_t rows = 0, work = 0;
  for (const QProduct* pp = ps; pp != pe; pp++) {
    const QProduct& p = *pp;
    check(*p.w);
    SKY_CHECK(p.w->I == ps->w->I, "qmatmul_multi: input sizes differ ({} and {})", p.w->I, ps->w->I);
    rows += p.w->O;
    work += int64_t(p.w->O) * p.w->I * N;
  }
  if (N <= 0 || rows == 0) return;
  Prepared prep(x, N);  // activations converted once, shared by the threads
  for (const QProduct* pp = ps; pp != pe; pp++) prep.add(*pp->w);
  // Split the concatenated output rows (so the weight bytes) evenly; chunk ends are multiples of
  // 12 rows within each matrix so the register tiles (3 or 4 rows) stay full. Tiny products stay
  // on one thread (fork/join costs a few us).
#pragma omp parallel if (work > (1 << 16))
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    int64_t base = 0;
    for (const QProduct* pp = ps; pp != pe; pp++) {
      const QProduct& p = *pp;
      const int O = p.w->O;
      auto snap = [&](int64_t r) { return int(std::clamp<int64_t>((r - base + 6) / 12 * 12, 0, O)); };
      const int o0 = snap(r0), o1 = r1 >= rows ? O : snap(r1);
      if (o0 < o1) prep.run(*p.w, p.y, o0, o1);
      base += O;
    }
  }
}

void qmatmul_multi(const float* x, int N, std::initializer_list<QProduct> products) {
  qmatmul_multi(x, N, products.begin(), int(products.size()));
}

void qmatmul(float* y, const float* x, const QWeight& w, int N) { qmatmul_multi(x, N, {{y, &w}}); }

const char* qmatmul_target() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace sky
#endif  // HWY_ONCE
