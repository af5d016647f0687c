#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sky {

AdamW::AdamW(const ParamLayout& layout, const AdamWOptions& o, size_t begin, size_t end)
    : o_(o), begin_(begin), end_(end ? end : layout.total), m_(end_ - begin_), v_(end_ - begin_) {
  for (auto& s : layout.specs) {
    // Clip each spec to the owned range; adjacent specs with the same decay flag merge.
    size_t b = std::max(begin_, s.offset), e = std::min(end_, s.offset + s.numel());
    if (b >= e) continue;
    if (!ranges_.empty() && ranges_.back().decay == s.decay && ranges_.back().end == b)
      ranges_.back().end = e;
    else
      ranges_.push_back({b, e, s.decay});
  }
}

void AdamW::update(float* p, const float* g, double lr, int64_t step, float grad_scale) {
  const double bc1 = 1.0 - std::pow(o_.beta1, double(step)), bc2 = 1.0 - std::pow(o_.beta2, double(step));
  const float b1 = float(o_.beta1), b2 = float(o_.beta2), eps = float(o_.eps);
  const float step_size = float(lr / bc1), inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  float* m = m_.data() - begin_;  // so m[i] is parameter i's moment
  float* v = v_.data() - begin_;
  for (const Range& r : ranges_) {
    const float shrink = r.decay ? float(1.0 - lr * o_.weight_decay) : 1.0f;
    // One pass over p, g, m, v: the update is bound by memory traffic. (This file is built with
    // -fno-math-errno so the square root vectorizes.)
#pragma omp parallel for simd schedule(static)
    for (size_t i = r.begin; i < r.end; i++) {
      float gi = g[i] * grad_scale;
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      p[i] = p[i] * shrink - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

double grad_norm(const float* g, size_t n) {
  // Fixed blocks summed in a fixed order, not an OpenMP reduction: libgomp combines reduction
  // partials in thread-arrival order, so with 3+ threads the norm (and the clip coefficient) could
  // differ in the last bit from run to run, breaking bit-for-bit resume.
  constexpr size_t kBlock = size_t(1) << 14;
  const size_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(nb, 0.0);
#pragma omp parallel for schedule(static) if (nb > 1)
  for (size_t b = 0; b < nb; b++) {
    double s = 0;
    for (size_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); i++) s += double(g[i]) * g[i];
    part[b] = s;
  }
  double s = 0;
  for (double p : part) s += p;
  return std::sqrt(s);
}

double clip_grad_norm(float* g, size_t n, double max_norm) {
  double norm = grad_norm(g, n);
  scale_for_clip(g, n, norm, max_norm);
  return norm;
}

float clip_scale(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? float(coef) : 1.0f;
}

void scale_for_clip(float* g, size_t n, double norm, double max_norm) {
  const float c = clip_scale(norm, max_norm);
  if (c == 1.0f) return;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) g[i] *= c;
}

}  // namespace sky
