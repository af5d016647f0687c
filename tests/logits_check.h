#pragma once
// What the engine-vs-reference tests share: a relative RMS difference, every position's logits of
// one prompt through the engine, and a fixed prompt.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "infer/infer_model.h"

namespace skytest {

// sqrt(sum (a-b)^2 / sum b^2), or the absolute RMS when b is all zeros.
double rel_rms(const float* a, const float* b, size_t n);
inline double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  return rel_rms(a.data(), b.data(), a.size());
}

// Every position's logits [T, V] of one prompt, prefilled through the engine's KV cache.
std::vector<float> engine_logits(const sky::InferModel& im, const std::vector<int32_t>& ids);

// T ids spread over a vocabulary of V: (7i + 3) mod V.
std::vector<int32_t> prompt(int V, int T = 12);

}  // namespace skytest
