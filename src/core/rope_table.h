#pragma once
// Rotary position embedding angles: cos and sin of pos * theta^(-2i/d) for every position and
// i < d/2 (rotate-half / NeoX form over the full head), computed once per model in double.
#include <vector>

namespace sky {

struct RopeTable {
  int head_dim = 0, max_pos = 0;
  std::vector<double> cos, sin;  // [max_pos, head_dim/2], computed in double
  RopeTable() = default;
  RopeTable(int head_dim, int max_pos, double theta);
};

}  // namespace sky
