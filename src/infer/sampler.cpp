#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace sky {

void validate_sampler(const SamplerOptions& o) {
  SKY_CHECK(std::isfinite(o.temperature) && o.temperature >= 0, "temperature must be >= 0, got {}", o.temperature);
  SKY_CHECK(o.top_k >= 0, "top-k must be >= 0, got {}", o.top_k);
  SKY_CHECK(o.top_p > 0 && o.top_p <= 1, "top-p must be in (0, 1], got {}", o.top_p);
}

Sampler::Sampler(const SamplerOptions& o) : o_(o), rng_(o.seed) { validate_sampler(o); }

int32_t Sampler::sample(float* logits, int V) {
  if (o_.temperature <= 0) return int32_t(std::max_element(logits, logits + V) - logits);
  // Candidates sorted by logit; keep top-k, then the smallest prefix with mass >= top-p.
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  int keep = (o_.top_k > 0 && o_.top_k < V) ? o_.top_k : V;
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  idx.resize(keep);
  std::vector<double> p(keep);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < keep; i++) sum += p[i] = std::exp((logits[idx[i]] - mx) / o_.temperature);
  int cut = keep;
  if (o_.top_p < 1.0) {
    double acc = 0;
    for (int i = 0; i < keep; i++) {
      acc += p[i] / sum;
      if (acc >= o_.top_p) { cut = i + 1; break; }
    }
  }
  double total = 0;
  for (int i = 0; i < cut; i++) total += p[i];
  double r = rng_.uniform() * total;
  for (int i = 0; i < cut; i++) {
    r -= p[i];
    if (r < 0) return idx[i];
  }
  return idx[cut - 1];
}

}  // namespace sky
