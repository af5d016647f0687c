#pragma once
// Rotary position embedding angles: cos and sin of pos * inv_freq[i] for every position and
// i < d/2, computed once per model in double. inv_freq[i] = theta^(-2i/d), or YaRN's blend of it
// with theta^(-2i/d) / factor (DeepSeek-V2/V3). `scale` multiplies cos and sin (YaRN's attention
// factor). The pairs rotated are (i, i + d/2) (rotate-half, NeoX) or, `interleaved`, (2i, 2i + 1)
// (DeepSeek's complex form).
#include <vector>

namespace sky {

struct RopeScaling;

struct RopeTable {
  int head_dim = 0, max_pos = 0;
  bool interleaved = false;
  std::vector<double> cos, sin;  // [max_pos, head_dim/2], computed in double
  RopeTable() = default;
  RopeTable(int head_dim, int max_pos, double theta);
  // YaRN when `scaling` says so (else as above), times its attention factor.
  RopeTable(int head_dim, int max_pos, double theta, const RopeScaling& scaling, bool interleaved);
};

}  // namespace sky
