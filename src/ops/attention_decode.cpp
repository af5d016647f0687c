// One query row against its sequence's KV cache, every head at once (the decode step). The cache
// is [position][kv head][hd]: walking positions and, inside, heads reads it once, front to back.
// One BLAS matrix-vector call per head instead read it a head's 64 floats at a time, a row (4 KiB
// and more) apart, and the calls' fixed costs dominated: a quarter of a batch-64 decode step.
#include "ops/attention_decode.h"

#include <cmath>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/attention_decode.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "ops/vmath.h"

HWY_BEFORE_NAMESPACE();
namespace sky {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// sum_d a[d] b[d]: full vectors, then the remainder (head sizes are not always a multiple of the
// vector length: tests use 4).
HWY_INLINE float Dot(const float* a, const float* b, int n) {
  const hn::ScalableTag<float> d;
  const int L = int(hn::Lanes(d));
  auto s = hn::Zero(d);
  int i = 0;
  for (; i + L <= n; i += L) s = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s);
  float r = hn::GetLane(hn::SumOfLanes(d, s));
  for (; i < n; i++) r += a[i] * b[i];
  return r;
}

// y[0, n) += p x[0, n)
HWY_INLINE void Axpy(float* y, float p, const float* x, int n) {
  const hn::ScalableTag<float> d;
  const int L = int(hn::Lanes(d));
  const auto vp = hn::Set(d, p);
  int i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::MulAdd(vp, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  for (; i < n; i++) y[i] += p * x[i];
}

void AttendOne(float* out, const float* q, const float* kc, const float* vc, int L, int n_heads, int n_kv, int hd,
               float* scores) {
  const int group = n_heads / n_kv, Ckv = n_kv * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  for (int j = 0; j < L; j++) {
    const float* kr = kc + size_t(j) * Ckv;
    for (int h = 0; h < n_heads; h++) scores[size_t(h) * L + j] = Dot(q + h * hd, kr + (h / group) * hd, hd) * scale;
  }
  for (int h = 0; h < n_heads; h++) softmax_inplace(scores + size_t(h) * L, L);
  for (int i = 0; i < n_heads * hd; i++) out[i] = 0.0f;
  for (int j = 0; j < L; j++) {
    const float* vr = vc + size_t(j) * Ckv;
    for (int h = 0; h < n_heads; h++) Axpy(out + h * hd, scores[size_t(h) * L + j], vr + (h / group) * hd, hd);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sky
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sky {
HWY_EXPORT(AttendOne);

void attend_one(float* out, const float* q, const float* kcache, const float* vcache, int L, int n_heads, int n_kv,
                int hd, float* scores) {
  HWY_DYNAMIC_DISPATCH(AttendOne)(out, q, kcache, vcache, L, n_heads, n_kv, hd, scores);
}
}  // namespace sky
#endif  // HWY_ONCE
