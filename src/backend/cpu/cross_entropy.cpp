#include "backend/cpu/cross_entropy.h"

#include <cmath>
#include <type_traits>

#include "backend/cpu/vmath.h"

namespace sky {

// Row max and sum(exp(x - max)), the stable pieces of logsumexp. The sum is kept in double:
// V is tens of thousands of terms.
template <class T>
static void row_stats(const T* x, int V, T& mx, double& sum) {
  if constexpr (std::is_same_v<T, float>) {  // vectorized exponentials
    mx = max_of(x, V);
    sum = sum_exp(x, V, mx);
  } else {
    mx = x[0];
    for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp((double)(x[v] - mx));
  }
}

template <class T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if ((long)N * V > 32768)
  for (int n = 0; n < N; n++) {
    const T* x = logits + (long)n * V;
    T mx;
    double sum;
    row_stats(x, V, mx, sum);
    losses[n] = (T)(std::log(sum) + (double)(mx - x[targets[n]]));
  }
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const int32_t* targets, const T* dloss, int N, int V) {
#pragma omp parallel for schedule(static) if ((long)N * V > 32768)
  for (int n = 0; n < N; n++) {
    const T* x = logits + (long)n * V;
    T* dx = dlogits + (long)n * V;
    T mx;
    double sum;
    row_stats(x, V, mx, sum);
    T scale = (T)(1.0 / sum) * dloss[n];
    if constexpr (std::is_same_v<T, float>)
      add_scaled_exp(dx, x, V, mx, scale);
    else
      for (int v = 0; v < V; v++) dx[v] += std::exp(x[v] - mx) * scale;
    dx[targets[n]] -= dloss[n];
  }
}

template void cross_entropy_forward<float>(float*, const float*, const int32_t*, int, int);
template void cross_entropy_forward<double>(double*, const double*, const int32_t*, int, int);
template void cross_entropy_backward<float>(float*, const float*, const int32_t*, const float*, int, int);
template void cross_entropy_backward<double>(double*, const double*, const int32_t*, const double*, int, int);

}  // namespace sky
