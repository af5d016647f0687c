// One query row against its sequence's KV cache, every head at once (the decode step). The cache
// is [position][kv head][hd]: walking positions and, inside, heads reads it once, front to back.
// One BLAS matrix-vector call per head instead read it a head's 64 floats at a time, a row (4 KiB
// and more) apart, and the calls' fixed costs dominated: a quarter of a batch-64 decode step.
#include "backend/cpu/attention_decode.h"

#include <cmath>
#include <cstdint>

#include "core/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/attention_decode.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "backend/cpu/vmath.h"

HWY_BEFORE_NAMESPACE();
namespace sky {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// A vector of cache values as f32: f32 loads, or bf16 widened (bf16 is the top half of an f32).
HWY_INLINE hn::Vec<DF> LoadKv(DF d, const float* p) { return hn::LoadU(d, p); }
HWY_INLINE hn::Vec<DF> LoadKv(DF d, const uint16_t* p) {
  const hn::Rebind<uint16_t, DF> du16;
  const hn::RebindToUnsigned<DF> du32;
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, p))));
}
HWY_INLINE float Scalar(float x) { return x; }
HWY_INLINE float Scalar(uint16_t x) { return bf16_to_f32(x); }

// sum_d a[d] b[d]: full vectors, then the remainder (head sizes are not always a multiple of the
// vector length: tests use 4).
template <class K>
HWY_INLINE float Dot(const float* a, const K* b, int n) {
  const DF d;
  const int L = int(hn::Lanes(d));
  auto s = hn::Zero(d);
  int i = 0;
  for (; i + L <= n; i += L) s = hn::MulAdd(hn::LoadU(d, a + i), LoadKv(d, b + i), s);
  float r = hn::GetLane(hn::SumOfLanes(d, s));
  for (; i < n; i++) r += a[i] * Scalar(b[i]);
  return r;
}

// y[0, n) += p x[0, n)
template <class K>
HWY_INLINE void Axpy(float* y, float p, const K* x, int n) {
  const DF d;
  const int L = int(hn::Lanes(d));
  const auto vp = hn::Set(d, p);
  int i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::MulAdd(vp, LoadKv(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  for (; i < n; i++) y[i] += p * Scalar(x[i]);
}

// Heads [h0, h1) only; each head's result is the same whatever range it is computed in.
template <class K>
HWY_INLINE void AttendOneT(float* out, const float* q, const K* kc, const K* vc, int L, int n_heads, int n_kv, int hd,
                           float* scores, int h0, int h1) {
  const int group = n_heads / n_kv, Ckv = n_kv * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  for (int j = 0; j < L; j++) {
    const K* kr = kc + size_t(j) * Ckv;
    for (int h = h0; h < h1; h++)
      scores[size_t(h - h0) * L + j] = Dot(q + h * hd, kr + (h / group) * hd, hd) * scale;
  }
  for (int h = h0; h < h1; h++) softmax_inplace(scores + size_t(h - h0) * L, L);
  for (int i = h0 * hd; i < h1 * hd; i++) out[i] = 0.0f;
  for (int j = 0; j < L; j++) {
    const K* vr = vc + size_t(j) * Ckv;
    for (int h = h0; h < h1; h++) Axpy(out + h * hd, scores[size_t(h - h0) * L + j], vr + (h / group) * hd, hd);
  }
}

void AttendOne(float* out, const float* q, const KvView& kv, int L, int n_heads, int n_kv, int hd, float* scores,
               int h0, int h1) {
  if (kv.kh)
    AttendOneT(out, q, kv.kh, kv.vh, L, n_heads, n_kv, hd, scores, h0, h1);
  else
    AttendOneT(out, q, kv.k, kv.v, L, n_heads, n_kv, hd, scores, h0, h1);
}

}  // namespace HWY_NAMESPACE
}  // namespace sky
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sky {
HWY_EXPORT(AttendOne);

void attend_one(float* out, const float* q, const KvView& kv, int L, int n_heads, int n_kv, int hd, float* scores,
                int h0, int h1) {
  HWY_DYNAMIC_DISPATCH(AttendOne)(out, q, kv, L, n_heads, n_kv, hd, scores, h0, h1);
}
}  // namespace sky
#endif  // HWY_ONCE
