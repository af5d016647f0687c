#pragma once
// Threading policy: OpenMP everywhere (OpenBLAS is the OpenMP build and shares the pool). Kernels
// parallelize over their outer loop with `#pragma omp parallel for`; nothing nests.
#include <cstddef>

namespace sky {
void set_threads(int n);  // n <= 0: leave the OpenMP default (OMP_NUM_THREADS or all cores)
int num_threads();
// p[0, n) = 0 on all threads (gradient buffers are GBs; one core cannot fill memory bandwidth).
void parallel_zero(float* p, size_t n);
}  // namespace sky
