#include "ops/matmul.h"

#include "ops/blas.h"

namespace sky {

template <class T>
void matmul_forward(T* out, const T* in, const T* w, int N, int I, int O) {
  if (N == 0 || O == 0) return;
  gemm(CblasNoTrans, CblasTrans, N, O, I, T(1), in, I, w, I, T(0), out, O);
}

template <class T>
void matmul_backward(T* din, T* dw, const T* dout, const T* in, const T* w, int N, int I, int O) {
  if (N == 0) return;
  if (din) gemm(CblasNoTrans, CblasNoTrans, N, I, O, T(1), dout, O, w, I, T(1), din, I);
  if (dw) gemm(CblasTrans, CblasNoTrans, O, I, N, T(1), dout, O, in, I, T(1), dw, I);
}

template void matmul_forward<float>(float*, const float*, const float*, int, int, int);
template void matmul_forward<double>(double*, const double*, const double*, int, int, int);
template void matmul_backward<float>(float*, float*, const float*, const float*, const float*, int, int, int);
template void matmul_backward<double>(double*, double*, const double*, const double*, const double*, int, int, int);

}  // namespace sky
