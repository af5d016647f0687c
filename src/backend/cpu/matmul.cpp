#include "backend/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

#include "core/error.h"
#include "backend/cpu/blas.h"
#include "backend/cpu/gemm_bf16.h"

namespace sky {

namespace {
std::atomic<MatmulPrecision> g_precision{MatmulPrecision::F32};

// C = op(A) op(B) in blocks of C (128 columns; 256 rows too when there are few column blocks), each
// one single-threaded BLAS call (BLAS runs serially inside a parallel region), taken by the team
// one at a time. The blocks depend on the shape only, so the sums do not depend on the team: training
// gives the same bits on one thread or two, and the step governor may switch between them. A
// thread that another process delays holds up one block, not half of every product.
void team_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc) {
  if (omp_in_parallel()) return gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);  // a thread's share
  constexpr int kCols = 128, kRows = 256;
  const int nc = (N + kCols - 1) / kCols, rows = nc >= 8 ? M : kRows, nr = (M + rows - 1) / rows;
  // BLAS itself stays on one thread below 2^18 multiply-adds.
  if (nr * nc <= 1 && double(M) * N * K <= 262144) return gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#pragma omp parallel for schedule(dynamic, 1)
  for (int b = 0; b < nr * nc; b++) {
    const int m0 = b / nc * rows, n0 = b % nc * kCols, m = std::min(rows, M - m0), n = std::min(kCols, N - n0);
    const float* Ab = ta == CblasNoTrans ? A + size_t(m0) * lda : A + m0;
    const float* Bb = tb == CblasNoTrans ? B + n0 : B + size_t(n0) * ldb;
    gemm(ta, tb, m, n, K, alpha, Ab, lda, Bb, ldb, beta, C + size_t(m0) * ldc + n0, ldc);
  }
}

}  // namespace

// One entry point for both precisions, so the forward and backward read alike.
void train_gemm(bool exact, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float* A,
            int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (!exact && g_precision.load(std::memory_order_relaxed) == MatmulPrecision::BF16)
    gemm_bf16::gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    team_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void train_gemm(bool, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha, const double* A,
            int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

bool matmul_bf16_supported() { return gemm_bf16::supported(); }

void set_matmul_precision(MatmulPrecision p) {
  SKY_CHECK(p != MatmulPrecision::BF16 || gemm_bf16::supported(),
            "--precision bf16 needs a CPU with AVX512-BF16 (this one has none); use --precision f32");
  g_precision = p;
}

MatmulPrecision matmul_precision() { return g_precision; }


template <class T>
void matmul_forward(T* out, const T* in, const T* w, int N, int I, int O, bool exact) {
  if (N == 0 || O == 0) return;
  train_gemm(exact, CblasNoTrans, CblasTrans, N, O, I, T(1), in, I, w, I, T(0), out, O);
}

template <class T>
void matmul_backward(T* din, T* dw, const T* dout, const T* in, const T* w, int N, int I, int O, bool exact) {
  if (N == 0) return;
  if (din) train_gemm(exact, CblasNoTrans, CblasNoTrans, N, I, O, T(1), dout, O, w, I, T(1), din, I);
  if (dw) train_gemm(exact, CblasTrans, CblasNoTrans, O, I, N, T(1), dout, O, in, I, T(1), dw, I);
}

template void matmul_forward<float>(float*, const float*, const float*, int, int, int, bool);
template void matmul_forward<double>(double*, const double*, const double*, int, int, int, bool);
template void matmul_backward<float>(float*, float*, const float*, const float*, const float*, int, int, int, bool);
template void matmul_backward<double>(double*, double*, const double*, const double*, const double*, int, int, int,
                                      bool);

}  // namespace sky
