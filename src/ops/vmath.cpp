#include "ops/vmath.h"

#include <algorithm>
#include <cmath>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/vmath.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace sky {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Runs f on full vectors of [0, n) and on one zero-padded vector for the rest: f(i, count) loads
// with load(p + i) and stores with store(v, p + i); the tail copies go through small buffers.
template <class F>
HWY_INLINE void for_vectors(size_t n, F&& f) {
  const DF d;
  const size_t L = hn::Lanes(d);
  size_t i = 0;
  for (; i + L <= n; i += L) f(i, L);
  if (i < n) f(i, n - i);
}

HWY_INLINE VF LoadPart(DF d, const float* p, size_t count) {
  if (count == hn::Lanes(d)) return hn::LoadU(d, p);
  HWY_ALIGN float t[HWY_LANES(float)] = {};
  std::copy(p, p + count, t);
  return hn::Load(d, t);
}
HWY_INLINE void StorePart(DF d, VF v, float* p, size_t count) {
  if (count == hn::Lanes(d)) return hn::StoreU(v, d, p);
  HWY_ALIGN float t[HWY_LANES(float)];
  hn::Store(v, d, t);
  std::copy(t, t + count, p);
}

void SiluMul(float* out, const float* gate, const float* up, size_t n) {
  const DF d;
  const VF one = hn::Set(d, 1.0f);
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    const VF g = LoadPart(d, gate + i, c), u = LoadPart(d, up + i, c);
    // sigmoid from exp(-|g|) <= 1, so exp never overflows: 1/(1+e) for g >= 0, e/(1+e) below.
    const VF e = hn::CallExp(d, hn::Neg(hn::Abs(g)));
    const VF r = hn::Div(one, hn::Add(one, e));
    const VF s = hn::IfThenElse(hn::Ge(g, hn::Zero(d)), r, hn::Mul(e, r));
    StorePart(d, hn::Mul(hn::Mul(g, s), u), out + i, c);
  });
}

void Softmax(float* s, size_t n) {
  const DF d;
  VF mx = hn::Set(d, s[0]);
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    // Padding lanes repeat s[0], which leaves the maximum alone.
    VF v = hn::Set(d, s[0]);
    if (c == hn::Lanes(d)) v = hn::LoadU(d, s + i);
    else {
      HWY_ALIGN float t[HWY_LANES(float)];
      hn::Store(v, d, t);
      std::copy(s + i, s + i + c, t);
      v = hn::Load(d, t);
    }
    mx = hn::Max(mx, v);
  });
  const VF m = hn::Set(d, hn::GetLane(hn::MaxOfLanes(d, mx)));
  VF sum = hn::Zero(d);
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    VF e = hn::CallExp(d, hn::Sub(LoadPart(d, s + i, c), m));
    if (c != hn::Lanes(d)) e = hn::IfThenElseZero(hn::FirstN(d, c), e);  // padding adds nothing
    sum = hn::Add(sum, e);
    StorePart(d, e, s + i, c);
  });
  const VF inv = hn::Set(d, 1.0f / hn::GetLane(hn::SumOfLanes(d, sum)));
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR { StorePart(d, hn::Mul(LoadPart(d, s + i, c), inv), s + i, c); });
}

}  // namespace HWY_NAMESPACE
}  // namespace sky
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sky {
HWY_EXPORT(SiluMul);
HWY_EXPORT(Softmax);

void silu_mul(float* out, const float* gate, const float* up, size_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMul)(out, gate, up, n);
}

void softmax_inplace(float* s, size_t n) {
  if (n > 0) HWY_DYNAMIC_DISPATCH(Softmax)(s, n);
}

}  // namespace sky
#endif  // HWY_ONCE
