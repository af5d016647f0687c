#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sky {

AdamW::AdamW(const ParamLayout& layout, const AdamWOptions& o, size_t begin, size_t end, Backend& be)
    : be_(&be), o_(o), begin_(begin), end_(end ? end : layout.total), m_(end_ - begin_), v_(end_ - begin_) {
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
    be_->adamw(p + r.begin, g + r.begin, m + r.begin, v + r.begin, r.end - r.begin, b1, b2, eps, shrink, step_size,
               inv_sqrt_bc2, grad_scale);
  }
}

double grad_norm(const float* g, size_t n, Backend& be) { return std::sqrt(be.sum_squares(g, n)); }

double clip_grad_norm(float* g, size_t n, double max_norm, Backend& be) {
  double norm = grad_norm(g, n, be);
  scale_for_clip(g, n, norm, max_norm, be);
  return norm;
}

float clip_scale(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? float(coef) : 1.0f;
}

void scale_for_clip(float* g, size_t n, double norm, double max_norm, Backend& be) {
  const float c = clip_scale(norm, max_norm);
  if (c != 1.0f) be.scale(g, n, c);
}

}  // namespace sky
