#pragma once
// Vectorized float helpers for the inference path (Highway, run-time dispatch like qmatmul): the
// exponentials of SwiGLU and of the attention softmax otherwise run as scalar std::exp calls, a
// tenth of a prefill. exp is Highway's (max error 1 ulp); results stay within a few ulp of libm.
#include <cstddef>

namespace sky {

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]. out may alias gate or up.
void silu_mul(float* out, const float* gate, const float* up, size_t n);

// s[0, n) <- softmax(s[0, n)) in place (n >= 1).
void softmax_inplace(float* s, size_t n);

}  // namespace sky
