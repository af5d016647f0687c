#pragma once
namespace sky {
// out[n, :] = in[n, :] * rstd[n] * w,  rstd[n] = 1 / sqrt(mean(in[n, :]^2) + eps). rstd is saved
// for the backward pass (may be null when not needed).
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* in, const T* w, int N, int H, double eps);
// Accumulates din and dw (dw may be null).
template <class T>
void rmsnorm_backward(T* din, T* dw, const T* dout, const T* in, const T* w, const T* rstd, int N, int H);
}  // namespace sky
