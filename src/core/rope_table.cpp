#include "core/rope_table.h"

#include <cmath>

#include "core/error.h"

namespace sky {

RopeTable::RopeTable(int head_dim_, int max_pos_, double theta) : head_dim(head_dim_), max_pos(max_pos_) {
  SKY_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even and positive, got {}", head_dim);
  SKY_CHECK(max_pos >= 0, "rope: max_pos must be >= 0, got {}", max_pos);
  int half = head_dim / 2;
  cos.resize((size_t)max_pos * half);
  sin.resize((size_t)max_pos * half);
  for (int i = 0; i < half; i++) {
    double inv_freq = std::pow(theta, -2.0 * i / head_dim);
    for (int p = 0; p < max_pos; p++) {
      double a = p * inv_freq;
      cos[(size_t)p * half + i] = std::cos(a);
      sin[(size_t)p * half + i] = std::sin(a);
    }
  }
}

}  // namespace sky
