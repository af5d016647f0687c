#include "core/rope_table.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/config.h"

namespace sky {

static void fill(RopeTable& t, const std::vector<double>& inv_freq, double scale) {
  const int half = t.head_dim / 2;
  t.cos.resize((size_t)t.max_pos * half);
  t.sin.resize((size_t)t.max_pos * half);
  for (int i = 0; i < half; i++)
    for (int p = 0; p < t.max_pos; p++) {
      double a = p * inv_freq[i];
      t.cos[(size_t)p * half + i] = scale * std::cos(a);
      t.sin[(size_t)p * half + i] = scale * std::sin(a);
    }
}

static void check(int head_dim, int max_pos) {
  SKY_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even and positive, got {}", head_dim);
  SKY_CHECK(max_pos >= 0, "rope: max_pos must be >= 0, got {}", max_pos);
}

RopeTable::RopeTable(int head_dim_, int max_pos_, double theta) : head_dim(head_dim_), max_pos(max_pos_) {
  check(head_dim, max_pos);
  std::vector<double> inv(head_dim / 2);
  for (int i = 0; i < head_dim / 2; i++) inv[i] = std::pow(theta, -2.0 * i / head_dim);
  fill(*this, inv, 1.0);
}

// YaRN (arXiv 2309.00071) as transformers computes it (_compute_yarn_parameters): frequencies
// below the correction range are interpolated (divided by factor), above it kept, a linear ramp
// between; the correction range is where a dimension makes beta_fast .. beta_slow rotations over
// the original context.
RopeTable::RopeTable(int head_dim_, int max_pos_, double theta, const RopeScaling& y, bool inter)
    : head_dim(head_dim_), max_pos(max_pos_), interleaved(inter) {
  check(head_dim, max_pos);
  const int d = head_dim, half = d / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; i++) inv[i] = std::pow(theta, -2.0 * i / d);
  if (!y.yarn) {
    fill(*this, inv, 1.0);
    return;
  }
  const double orig = y.original_max_position > 0 ? y.original_max_position : max_pos;
  auto corr_dim = [&](double rot) { return d * std::log(orig / (rot * 2 * M_PI)) / (2 * std::log(theta)); };
  double lo = corr_dim(y.beta_fast), hi = corr_dim(y.beta_slow);
  if (y.truncate) lo = std::floor(lo), hi = std::ceil(hi);
  lo = std::max(lo, 0.0);
  hi = std::min(hi, double(d - 1));
  if (lo == hi) hi += 0.001;
  for (int i = 0; i < half; i++) {
    const double ramp = std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
    const double extra = 1 - ramp;  // weight of the unscaled frequency
    inv[i] = inv[i] / y.factor * (1 - extra) + inv[i] * extra;
  }
  fill(*this, inv, y.rope_factor());
}

}  // namespace sky
