#include "backend/cpu/vmath.h"

#include <algorithm>
#include <cmath>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/vmath.cpp"
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

// Sigmoid from exp(-|g|) <= 1, so exp never overflows: 1/(1+e) for g >= 0, e/(1+e) below.
HWY_INLINE VF Sigmoid(DF d, VF g) {
  const VF one = hn::Set(d, 1.0f);
  const VF e = hn::CallExp(d, hn::Neg(hn::Abs(g)));
  const VF r = hn::Div(one, hn::Add(one, e));
  return hn::IfThenElse(hn::Ge(g, hn::Zero(d)), r, hn::Mul(e, r));
}

void SiluMul(float* out, const float* gate, const float* up, size_t n) {
  const DF d;
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    const VF g = LoadPart(d, gate + i, c), u = LoadPart(d, up + i, c);
    StorePart(d, hn::Mul(hn::Mul(g, Sigmoid(d, g)), u), out + i, c);
  });
}

// d silu(g) u: dup += dout silu(g); dgate += dout u s (1 + g (1 - s)), s = sigmoid(g).
void SiluMulBackward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n) {
  const DF d;
  const VF one = hn::Set(d, 1.0f);
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    const VF g = LoadPart(d, gate + i, c), u = LoadPart(d, up + i, c), dy = LoadPart(d, dout + i, c);
    const VF s = Sigmoid(d, g);
    StorePart(d, hn::MulAdd(dy, hn::Mul(g, s), LoadPart(d, dup + i, c)), dup + i, c);
    const VF dsilu = hn::Mul(s, hn::MulAdd(g, hn::Sub(one, s), one));
    StorePart(d, hn::MulAdd(hn::Mul(dy, u), dsilu, LoadPart(d, dgate + i, c)), dgate + i, c);
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

float MaxOf(const float* x, size_t n) {
  const DF d;
  VF mx = hn::Set(d, x[0]);
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    if (c == hn::Lanes(d)) mx = hn::Max(mx, hn::LoadU(d, x + i));
    else for (size_t j = 0; j < c; j++) mx = hn::Max(mx, hn::Set(d, x[i + j]));
  });
  return hn::GetLane(hn::MaxOfLanes(d, mx));
}

// Float exponentials, double sums (a vocabulary row is tens of thousands of terms): each vector's
// 16 terms are added in float, the running total in double.
double SumExp(const float* x, size_t n, float shift) {
  const DF d;
  const VF s = hn::Set(d, shift);
  double sum = 0;
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    VF e = hn::CallExp(d, hn::Sub(LoadPart(d, x + i, c), s));
    if (c != hn::Lanes(d)) e = hn::IfThenElseZero(hn::FirstN(d, c), e);
    sum += hn::GetLane(hn::SumOfLanes(d, e));
  });
  return sum;
}

void AddScaledExp(float* y, const float* x, size_t n, float shift, float scale) {
  const DF d;
  const VF s = hn::Set(d, shift), k = hn::Set(d, scale);
  for_vectors(n, [&](size_t i, size_t c) HWY_ATTR {
    const VF e = hn::CallExp(d, hn::Sub(LoadPart(d, x + i, c), s));
    StorePart(d, hn::MulAdd(e, k, LoadPart(d, y + i, c)), y + i, c);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace sky
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sky {
HWY_EXPORT(SiluMul);
HWY_EXPORT(Softmax);
HWY_EXPORT(SiluMulBackward);
HWY_EXPORT(MaxOf);
HWY_EXPORT(SumExp);
HWY_EXPORT(AddScaledExp);

float max_of(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(MaxOf)(x, n); }
double sum_exp(const float* x, size_t n, float shift) { return n ? HWY_DYNAMIC_DISPATCH(SumExp)(x, n, shift) : 0.0; }
void add_scaled_exp(float* y, const float* x, size_t n, float shift, float scale) {
  if (n) HWY_DYNAMIC_DISPATCH(AddScaledExp)(y, x, n, shift, scale);
}

void silu_mul_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMulBackward)(dgate, dup, dout, gate, up, n);
}

void silu_mul(float* out, const float* gate, const float* up, size_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMul)(out, gate, up, n);
}

void softmax_inplace(float* s, size_t n) {
  if (n > 0) HWY_DYNAMIC_DISPATCH(Softmax)(s, n);
}

}  // namespace sky
#endif  // HWY_ONCE
