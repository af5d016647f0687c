#include "backend/cpu/rmsnorm.h"

#include <omp.h>

#include <cmath>

namespace sky {

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* in, const T* w, int N, int H, double eps) {
#pragma omp parallel for schedule(static) if ((long)N * H > 32768)
  for (int n = 0; n < N; n++) {
    const T* x = in + (long)n * H;
    T* o = out + (long)n * H;
    double ss = 0;  // double even for float: H can be thousands of squares
    for (int h = 0; h < H; h++) ss += (double)x[h] * x[h];
    T r = (T)(1.0 / std::sqrt(ss / H + eps));
    for (int h = 0; h < H; h++) o[h] = x[h] * r * w[h];
    if (rstd) rstd[n] = r;
  }
}

template <class T>
void rmsnorm_backward(T* din, T* dw, const T* dout, const T* in, const T* w, const T* rstd, int N, int H) {
  // With xh = x * r and g = dout * w:  din = r * (g - xh * mean(g * xh)),  dw = sum_n dout * xh.
#pragma omp parallel for schedule(static) if ((long)N * H > 32768)
  for (int n = 0; n < N; n++) {
    const T* x = in + (long)n * H;
    const T* d = dout + (long)n * H;
    T* dx = din + (long)n * H;
    T r = rstd[n];
    double dot = 0;
    for (int h = 0; h < H; h++) dot += (double)d[h] * w[h] * x[h];
    T c = (T)(dot / H) * r * r;  // mean(g * xh) / r, folded with the r of xh = x * r
    for (int h = 0; h < H; h++) dx[h] += r * (d[h] * w[h] - x[h] * c);
  }
  if (!dw) return;
  // dw sums over rows, so split columns between threads instead of rows.
#pragma omp parallel if ((long)N * H > 32768)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int h0 = (int)((long)H * t / nt), h1 = (int)((long)H * (t + 1) / nt);
    for (int n = 0; n < N; n++) {
      const T* x = in + (long)n * H;
      const T* d = dout + (long)n * H;
      T r = rstd[n];
      for (int h = h0; h < h1; h++) dw[h] += d[h] * x[h] * r;
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int, int, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int,
                                      int);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*,
                                       const double*, int, int);

}  // namespace sky
