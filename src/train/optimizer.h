#pragma once
// AdamW in PyTorch's decoupled form over the flat parameter buffer, plus global-norm clipping.
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/params.h"

namespace sky {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(const ParamLayout& layout, const AdamWOptions& o);
  // One update with learning rate lr; `step` counts from 1 (bias correction).
  void update(float* params, const float* grads, double lr, int64_t step);
  FloatBuf& m() { return m_; }
  FloatBuf& v() { return v_; }
  const AdamWOptions& options() const { return o_; }

 private:
  struct Range { size_t begin, end; bool decay; };
  std::vector<Range> ranges_;
  AdamWOptions o_;
  FloatBuf m_, v_;
};

// Global L2 norm of the gradient (computed in double).
double grad_norm(const float* g, size_t n);
// PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1. Returns the norm.
double clip_grad_norm(float* g, size_t n, double max_norm);

}  // namespace sky
