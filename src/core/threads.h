#pragma once
// Threading policy: OpenMP everywhere (OpenBLAS is the OpenMP build and shares the pool). Kernels
// parallelize over their outer loop with `#pragma omp parallel for`; nothing nests.
namespace sky {
void set_threads(int n);  // n <= 0: leave the OpenMP default (OMP_NUM_THREADS or all cores)
int num_threads();
}  // namespace sky
