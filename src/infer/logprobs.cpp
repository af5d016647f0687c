#include "infer/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace sky {

TokenLogprob score_token(const float* logits, int V, int32_t token, int k) {
  SKY_CHECK(token >= 0 && token < V, "score_token: token {} is outside the vocabulary [0, {})", token, V);
  double mx = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < V; i++) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int i = 0; i < V; i++) sum += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(sum);

  TokenLogprob t;
  t.token = token;
  t.logprob = double(logits[token]) - lse;
  // The k best by insertion into a short sorted list: k <= 20, and most logits lose to the
  // current k-th at the first comparison, so this is one pass over the row.
  k = std::clamp(k, 0, V);
  std::vector<int32_t> best;
  best.reserve(size_t(k) + 1);
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  for (int32_t i = 0; i < V && k > 0; i++) {
    if (int(best.size()) == k && !before(i, best.back())) continue;
    best.insert(std::upper_bound(best.begin(), best.end(), i, before), i);
    if (int(best.size()) > k) best.pop_back();
  }
  t.top.reserve(best.size());
  for (int32_t i : best) t.top.push_back({i, double(logits[i]) - lse});
  return t;
}

}  // namespace sky
