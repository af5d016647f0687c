#pragma once
#include <cstdint>
namespace sky {
// out[N, H] = table[tokens[n], :]. Token ids are validated by the caller.
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int H);
// dtable[tokens[n], :] += dout[n, :]
template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int N, int H);
}  // namespace sky
