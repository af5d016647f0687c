#pragma once
// y = x W^T for a linear layer with HF-layout weight W [O, I].
namespace sky {

// out[N, O] = in[N, I] * w[O, I]^T  (overwrites out)
template <class T>
void matmul_forward(T* out, const T* in, const T* w, int N, int I, int O);
// din[N, I] += dout * w ; dw[O, I] += dout^T * in. Either gradient pointer may be null (skipped).
template <class T>
void matmul_backward(T* din, T* dw, const T* dout, const T* in, const T* w, int N, int I, int O);

}  // namespace sky
