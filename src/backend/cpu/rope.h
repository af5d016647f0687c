#pragma once
// Rotary position embedding, rotate-half (NeoX) form over the full head: for each head and
// i < d/2, (x_i, x_{i+d/2}) is rotated by angle pos * theta^(-2i/d).
#include <cstdint>
#include <vector>

#include "core/rope_table.h"

namespace sky {



// x [N, n_heads * head_dim] rotated in place; pos[n] is token n's position (< table.max_pos).
template <class T>
void rope_forward(T* x, const int32_t* pos, int N, int n_heads, const RopeTable& table);
// dx rotated back in place (the transpose of the forward rotation).
template <class T>
void rope_backward(T* dx, const int32_t* pos, int N, int n_heads, const RopeTable& table);

}  // namespace sky
