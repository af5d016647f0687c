#pragma once
// Vectorized float helpers (Highway, run-time dispatch like qmatmul) for inference and the float
// training kernels: the exponentials of SwiGLU and of the attention softmax otherwise run as
// scalar std::exp calls, a tenth of a prefill. exp is Highway's (max error 1 ulp); results stay within a few ulp of libm.
#include <cstddef>

namespace sky {

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]. out may alias gate or up.
void silu_mul(float* out, const float* gate, const float* up, size_t n);

// Backward of silu_mul: dup[i] += dout[i] silu(gate[i]); dgate[i] += dout[i] up[i] silu'(gate[i]).
void silu_mul_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t n);

// max of x[0, n) (n >= 1); sum of exp(x[i] - shift) accumulated in double; y[i] += exp(x[i] - shift) * scale.
float max_of(const float* x, size_t n);
double sum_exp(const float* x, size_t n, float shift);
void add_scaled_exp(float* y, const float* x, size_t n, float shift, float scale);

// s[0, n) <- softmax(s[0, n)) in place (n >= 1).
void softmax_inplace(float* s, size_t n);

}  // namespace sky
