#pragma once
namespace sky {
// out[i] = silu(gate[i]) * up[i], silu(x) = x * sigmoid(x)
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, long n);
// Accumulates dgate, dup.
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long n);
}  // namespace sky
