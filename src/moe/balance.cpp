#include "moe/balance.h"

#include <algorithm>

#include "core/error.h"

namespace sky {

const char* to_string(Balance b) {
  switch (b) {
    case Balance::AdaptiveAux: return "adaptive-aux";
    case Balance::Aux: return "aux";
    case Balance::AuxFree: return "aux-free";
    case Balance::None: return "none";
  }
  return "?";
}

Balance parse_balance(const std::string& s) {
  for (Balance b : {Balance::AdaptiveAux, Balance::Aux, Balance::AuxFree, Balance::None})
    if (s == to_string(b)) return b;
  fail("--balance: '{}' is not one of adaptive-aux, aux, aux-free, none", s);
}

void SelectBias::update(const std::vector<std::vector<int64_t>>& load) {
  for (size_t l = 0; l < bias.size() && l < load.size(); l++) {
    std::vector<float>& b = bias[l];
    const std::vector<int64_t>& n = load[l];
    if (n.size() != b.size() || n.empty()) continue;
    double sum = 0;
    for (int64_t v : n) sum += double(v);
    if (sum == 0) continue;  // a dense layer, or no tokens
    const double mean = sum / double(n.size());
    for (size_t e = 0; e < b.size(); e++) {
      const double v = double(n[e]);
      const double sign = v < mean ? 1.0 : v > mean ? -1.0 : 0.0;
      b[e] = float(double(b[e]) + speed * sign);
    }
  }
}

double SelectBias::range(size_t layer) const {
  if (layer >= bias.size() || bias[layer].empty()) return 0.0;
  const auto [lo, hi] = std::minmax_element(bias[layer].begin(), bias[layer].end());
  return double(*hi) - double(*lo);
}

double max_violation(const std::vector<int64_t>& load) {
  if (load.empty()) return 0.0;
  double sum = 0, mx = 0;
  for (int64_t v : load) {
    sum += double(v);
    mx = std::max(mx, double(v));
  }
  if (sum <= 0) return 0.0;
  const double mean = sum / double(load.size());
  return (mx - mean) / mean;
}

}  // namespace sky
