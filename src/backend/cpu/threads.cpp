#include "backend/cpu/threads.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

namespace sky {
void set_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}
int num_threads() { return omp_get_max_threads(); }

void parallel_zero(float* p, size_t n) {
  constexpr size_t kChunk = size_t(1) << 20;
#pragma omp parallel for schedule(static) if (n > kChunk)
  for (size_t c = 0; c < n; c += kChunk) std::memset(p + c, 0, sizeof(float) * std::min(kChunk, n - c));
}
}  // namespace sky
