#pragma once
// Rotary position embedding, rotate-half (NeoX) form over the full head: for each head and
// i < d/2, (x_i, x_{i+d/2}) is rotated by angle pos * theta^(-2i/d).
#include <cstdint>
#include <vector>

namespace sky {

struct RopeTable {
  int head_dim = 0, max_pos = 0;
  std::vector<double> cos, sin;  // [max_pos, head_dim/2], computed in double
  RopeTable() = default;
  RopeTable(int head_dim, int max_pos, double theta);
};

// x [N, n_heads * head_dim] rotated in place; pos[n] is token n's position (< table.max_pos).
template <class T>
void rope_forward(T* x, const int32_t* pos, int N, int n_heads, const RopeTable& table);
// dx rotated back in place (the transpose of the forward rotation).
template <class T>
void rope_backward(T* dx, const int32_t* pos, int N, int n_heads, const RopeTable& table);

}  // namespace sky
