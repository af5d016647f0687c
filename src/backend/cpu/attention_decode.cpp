// One query row against its sequence's KV cache, every head at once (the decode step). The cache
// is [position][kv head][hd]: walking blocks of positions and, inside, heads reads it once, front
// to back. One BLAS matrix-vector call per head instead read it a head's 64 floats at a time, a row
// (4 KiB and more) apart, and the calls' fixed costs dominated: a quarter of a batch-64 decode step.
#include "backend/cpu/attention_decode.h"

#include <algorithm>
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

// The same for four rows of b, `stride` apart: four independent FMA chains (one dot alone waits on
// the FMA latency at every vector), each summed in the same order as Dot.
template <class K>
HWY_INLINE void Dot4(const float* a, const K* b, size_t stride, int n, float* out) {
  const DF d;
  const int L = int(hn::Lanes(d));
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  int i = 0;
  for (; i + L <= n; i += L) {
    const auto x = hn::LoadU(d, a + i);
    s0 = hn::MulAdd(x, LoadKv(d, b + i), s0);
    s1 = hn::MulAdd(x, LoadKv(d, b + stride + i), s1);
    s2 = hn::MulAdd(x, LoadKv(d, b + 2 * stride + i), s2);
    s3 = hn::MulAdd(x, LoadKv(d, b + 3 * stride + i), s3);
  }
  out[0] = hn::GetLane(hn::SumOfLanes(d, s0));
  out[1] = hn::GetLane(hn::SumOfLanes(d, s1));
  out[2] = hn::GetLane(hn::SumOfLanes(d, s2));
  out[3] = hn::GetLane(hn::SumOfLanes(d, s3));
  for (; i < n; i++)
    for (int r = 0; r < 4; r++) out[r] += a[i] * Scalar(b[r * stride + i]);
}

// y[0, NV lanes) += sum over j in [j0, j1) of p[j] * v[j * stride ...], in NV registers.
template <int NV, class K>
HWY_INLINE void AddWeightedChunk(float* y, const float* p, const K* v, size_t stride, int j0, int j1) {
  const DF d;
  const size_t L = hn::Lanes(d);
  hn::Vec<DF> acc[NV];
  HWY_UNROLL(8) for (int k = 0; k < NV; k++) acc[k] = hn::Zero(d);
  for (int j = j0; j < j1; j++) {
    const auto pj = hn::Set(d, p[j]);
    const K* vj = v + size_t(j) * stride;
    HWY_UNROLL(8) for (int k = 0; k < NV; k++) acc[k] = hn::MulAdd(pj, LoadKv(d, vj + k * L), acc[k]);
  }
  HWY_UNROLL(8) for (int k = 0; k < NV; k++) hn::StoreU(hn::Add(hn::LoadU(d, y + k * L), acc[k]), d, y + k * L);
}

// y[0, n) += sum over j in [j0, j1) of p[j] * v[j * stride + (0, n)]: each chunk of up to 8
// vectors of the head accumulates in registers over the positions (y is touched once per block
// of positions, not once per position), the remainder in scalars.
template <class K>
HWY_INLINE void AddWeighted(float* y, const float* p, const K* v, size_t stride, int j0, int j1, int n) {
  const DF d;
  const int L = int(hn::Lanes(d));
  int i = 0;
  for (; i + 8 * L <= n; i += 8 * L) AddWeightedChunk<8>(y + i, p, v + i, stride, j0, j1);
  if (i + 4 * L <= n) AddWeightedChunk<4>(y + i, p, v + i, stride, j0, j1), i += 4 * L;
  if (i + 2 * L <= n) AddWeightedChunk<2>(y + i, p, v + i, stride, j0, j1), i += 2 * L;
  if (i + L <= n) AddWeightedChunk<1>(y + i, p, v + i, stride, j0, j1), i += L;
  for (; i < n; i++) {
    float r = 0;
    for (int j = j0; j < j1; j++) r += p[j] * Scalar(v[size_t(j) * stride + i]);
    y[i] += r;
  }
}

// Heads [h0, h1) only; each head's result is the same whatever range it is computed in. Positions
// go in blocks of kBlock: a block's keys (then values) of one KV head stay in L1 while the query
// heads of its group pass over them one after another, so the cache is read once from memory.
template <class K>
HWY_INLINE void AttendOneT(float* out, const float* q, const K* kc, const K* vc, int L, int n_heads, int n_kv, int hd,
                           float* scores, int h0, int h1) {
  constexpr int kBlock = 64;
  const int group = n_heads / n_kv, Ckv = n_kv * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  for (int j0 = 0; j0 < L; j0 += kBlock) {
    const int j1 = std::min(L, j0 + kBlock);
    for (int h = h0; h < h1; h++) {
      const K* kh = kc + (h / group) * hd;
      float* s = scores + size_t(h - h0) * L;
      int j = j0;
      for (; j + 4 <= j1; j += 4) {
        Dot4(q + h * hd, kh + size_t(j) * Ckv, size_t(Ckv), hd, s + j);
        for (int r = 0; r < 4; r++) s[j + r] *= scale;
      }
      for (; j < j1; j++) s[j] = Dot(q + h * hd, kh + size_t(j) * Ckv, hd) * scale;
    }
  }
  for (int h = h0; h < h1; h++) softmax_inplace(scores + size_t(h - h0) * L, L);
  for (int i = h0 * hd; i < h1 * hd; i++) out[i] = 0.0f;
  for (int j0 = 0; j0 < L; j0 += kBlock) {
    const int j1 = std::min(L, j0 + kBlock);
    for (int h = h0; h < h1; h++)
      AddWeighted(out + h * hd, scores + size_t(h - h0) * L, vc + (h / group) * hd, size_t(Ckv), j0, j1, hd);
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
