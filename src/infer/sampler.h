#pragma once
// Next-token sampling from logits: greedy (temperature 0), or temperature + top-k + top-p with a
// seeded generator so runs are reproducible.
#include <cstdint>

#include "core/rng.h"

namespace sky {

struct SamplerOptions {
  double temperature = 0.0;  // 0 = greedy
  int top_k = 0;             // 0 = off
  double top_p = 1.0;        // 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& o);
  // logits [V] may be modified (scaled in place).
  int32_t sample(float* logits, int V);

 private:
  SamplerOptions o_;
  Rng rng_;
};

void validate_sampler(const SamplerOptions& o);  // throws naming the bad value

}  // namespace sky
