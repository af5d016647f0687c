#pragma once
// y = x W^T for a linear layer with HF-layout weight W [O, I].
#include <cblas.h>

#include "backend/backend.h"

#include <string>

namespace sky {

// Precision of the float GEMMs of training (forward and backward): F32 runs OpenBLAS sgemm; BF16
// rounds both operands to bf16 and sums in f32 (mixed precision: weights, gradients and optimizer
// state stay f32). Process-wide; set once before training. Double instantiations ignore it.
bool matmul_bf16_supported();              // this CPU can run the BF16 path (AVX512-BF16)
void set_matmul_precision(MatmulPrecision p);  // BF16 on a CPU without it: error
MatmulPrecision matmul_precision();

// cblas_?gemm (row-major) under the training precision; exact or double: plain BLAS.
void train_gemm(bool exact, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float* A,
                int lda, const float* B, int ldb, float beta, float* C, int ldc);
void train_gemm(bool exact, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha,
                const double* A, int lda, const double* B, int ldb, double beta, double* C, int ldc);

// out[N, O] = in[N, I] * w[O, I]^T  (overwrites out). exact: always f32, whatever the precision
// (the router: its logits decide top-k, and Skywork keeps it in higher precision).
template <class T>
void matmul_forward(T* out, const T* in, const T* w, int N, int I, int O, bool exact = false);
// din[N, I] += dout * w ; dw[O, I] += dout^T * in. Either gradient pointer may be null (skipped).
template <class T>
void matmul_backward(T* din, T* dw, const T* dout, const T* in, const T* w, int N, int I, int O, bool exact = false);

}  // namespace sky
