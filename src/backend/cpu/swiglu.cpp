#include "backend/cpu/swiglu.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/vmath.h"

namespace sky {

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, long n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (long i = 0; i < n; i++) {
    T g = gate[i];
    out[i] = g / (T(1) + std::exp(-g)) * up[i];
  }
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (long i = 0; i < n; i++) {
    T g = gate[i];
    T s = T(1) / (T(1) + std::exp(-g));
    T silu = g * s;
    dup[i] += dout[i] * silu;
    dgate[i] += dout[i] * up[i] * s * (T(1) + g * (T(1) - s));
  }
}

// float: the vectorized exponential, in chunks over the threads.
template <>
void swiglu_forward<float>(float* out, const float* gate, const float* up, long n) {
  constexpr long kChunk = 16384;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (long c = 0; c < n; c += kChunk) silu_mul(out + c, gate + c, up + c, std::min(kChunk, n - c));
}

template <>
void swiglu_backward<float>(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n) {
  constexpr long kChunk = 16384;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (long c = 0; c < n; c += kChunk)
    silu_mul_backward(dgate + c, dup + c, dout + c, gate + c, up + c, std::min(kChunk, n - c));
}

template void swiglu_forward<float>(float*, const float*, const float*, long);
template void swiglu_forward<double>(double*, const double*, const double*, long);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*, long);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*, long);

}  // namespace sky
