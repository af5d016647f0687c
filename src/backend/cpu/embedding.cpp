#include "backend/cpu/embedding.h"

#include <omp.h>

#include <cstring>

namespace sky {

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int H) {
#pragma omp parallel for schedule(static) if ((long)N * H > 65536)
  for (int n = 0; n < N; n++) std::memcpy(out + (long)n * H, table + (long)tokens[n] * H, sizeof(T) * H);
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int N, int H) {
  // Tokens repeat, so rows of dtable are shared between n. Each thread owns a slice of columns
  // instead and walks all n: race-free, and the sum order per entry stays n = 0, 1, ...
#pragma omp parallel if ((long)N * H > 65536)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int h0 = (int)((long)H * t / nt), h1 = (int)((long)H * (t + 1) / nt);
    for (int n = 0; n < N; n++) {
      T* d = dtable + (long)tokens[n] * H;
      const T* g = dout + (long)n * H;
      for (int h = h0; h < h1; h++) d[h] += g[h];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, int, int);
template void embedding_backward<float>(float*, const float*, const int32_t*, int, int);
template void embedding_backward<double>(double*, const double*, const int32_t*, int, int);

}  // namespace sky
