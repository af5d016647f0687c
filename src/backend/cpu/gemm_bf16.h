#pragma once
// Mixed-precision GEMM for training: f32 operands are rounded to bf16 while they are packed, the
// products run on AVX512-BF16 (vdpbf16ps: 32 multiply-adds per instruction, twice the f32 FMA rate)
// and sums stay f32. The interface is cblas_sgemm's, row-major, so `matmul_forward/backward` can
// switch to it under `--precision bf16`. Chosen at run time: callers check supported() first.
#include <cblas.h>

namespace sky::gemm_bf16 {

bool supported();  // this CPU has AVX512-BF16

// C[M, N] = alpha * op(A) op(B) + beta * C, op(A) [M, K], op(B) [K, N]; beta == 0 ignores C's old
// contents (NaN included), as BLAS does. Runs on the OpenMP pool.
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace sky::gemm_bf16
