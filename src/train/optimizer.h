#pragma once
// AdamW in PyTorch's decoupled form over the flat parameter buffer, plus global-norm clipping.
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "model/params.h"

namespace sky {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  // Owns the moments of parameters [begin, end) of the flat buffer (end 0 = all): ZeRO-1 gives each
  // data-parallel rank one shard.
  AdamW(const ParamLayout& layout, const AdamWOptions& o, size_t begin = 0, size_t end = 0,
        Backend& be = backend());
  // One update of the owned range with learning rate lr; params and grads are the full flat
  // buffers (only the owned range is read or written). `step` counts from 1 (bias correction).
  // grad_scale multiplies each gradient as it is read (clipping, without a separate pass).
  void update(float* params, const float* grads, double lr, int64_t step, float grad_scale = 1.0f);
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  FloatBuf& m() { return m_; }
  FloatBuf& v() { return v_; }
  const AdamWOptions& options() const { return o_; }

 private:
  struct Range { size_t begin, end; bool decay; };
  Backend* be_;
  std::vector<Range> ranges_;
  AdamWOptions o_;
  size_t begin_, end_;
  FloatBuf m_, v_;  // indexed from begin_
};

// Global L2 norm of the gradient (computed in double).
double grad_norm(const float* g, size_t n, Backend& be = backend());
// PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1. Returns the norm.
double clip_grad_norm(float* g, size_t n, double max_norm, Backend& be = backend());
// The scaling half of clip_grad_norm, given the (possibly global) norm.
void scale_for_clip(float* g, size_t n, double norm, double max_norm, Backend& be = backend());
// The factor scale_for_clip multiplies by (1 when no clipping is needed).
float clip_scale(double norm, double max_norm);

}  // namespace sky
