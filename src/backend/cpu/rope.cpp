#include "backend/cpu/rope.h"

#include <cmath>

#include "core/error.h"

namespace sky {


// sign = +1 rotates by +angle (forward), -1 by -angle (the transpose, for backward).
template <class T>
static void rope_rotate(T* x, const int32_t* pos, int N, int n_heads, const RopeTable& table, int sign) {
  // Checked up front: an exception cannot leave an OpenMP region.
  for (int n = 0; n < N; n++)
    SKY_CHECK(pos[n] >= 0 && pos[n] < table.max_pos, "rope: position {} outside [0, {})", pos[n], table.max_pos);
  int d = table.head_dim, half = d / 2;
#pragma omp parallel for schedule(static) if ((long)N * n_heads * d > 65536)
  for (int n = 0; n < N; n++) {
    const double* c = table.cos.data() + (size_t)pos[n] * half;
    const double* s = table.sin.data() + (size_t)pos[n] * half;
    for (int h = 0; h < n_heads; h++) {
      T* xh = x + ((long)n * n_heads + h) * d;
      if (table.interleaved) {  // pairs (2i, 2i + 1): DeepSeek's complex form
        for (int i = 0; i < half; i++) {
          T ci = (T)c[i], si = (T)(sign * s[i]);
          T x0 = xh[2 * i], x1 = xh[2 * i + 1];
          xh[2 * i] = x0 * ci - x1 * si;
          xh[2 * i + 1] = x1 * ci + x0 * si;
        }
        continue;
      }
      for (int i = 0; i < half; i++) {
        T ci = (T)c[i], si = (T)(sign * s[i]);
        T x0 = xh[i], x1 = xh[i + half];
        xh[i] = x0 * ci - x1 * si;
        xh[i + half] = x1 * ci + x0 * si;
      }
    }
  }
}

template <class T>
void rope_forward(T* x, const int32_t* pos, int N, int n_heads, const RopeTable& table) {
  rope_rotate(x, pos, N, n_heads, table, +1);
}

template <class T>
void rope_backward(T* dx, const int32_t* pos, int N, int n_heads, const RopeTable& table) {
  rope_rotate(dx, pos, N, n_heads, table, -1);
}

template void rope_forward<float>(float*, const int32_t*, int, int, const RopeTable&);
template void rope_forward<double>(double*, const int32_t*, int, int, const RopeTable&);
template void rope_backward<float>(float*, const int32_t*, int, int, const RopeTable&);
template void rope_backward<double>(double*, const int32_t*, int, int, const RopeTable&);

}  // namespace sky
