#pragma once
// Skywork's adaptive auxiliary-loss coefficients (eq. 7-8), one alpha per MoE layer:
//   alpha_hat = min(xi * d, alpha_max);  alpha <- beta * alpha + (1 - beta) * alpha_hat
// where d is that layer's token drop rate of the step. A step's loss uses the alphas from before
// its own update; the update then uses the step's drop rates.
#include <vector>

namespace sky {

struct AdaptiveAlpha {
  bool adaptive = true;
  double xi = 0.2, alpha_max = 0.01, beta = 0.99;
  std::vector<double> alpha;  // per layer

  AdaptiveAlpha() = default;
  AdaptiveAlpha(int layers, double initial, bool adaptive_, double xi_ = 0.2, double alpha_max_ = 0.01,
                double beta_ = 0.99)
      : adaptive(adaptive_), xi(xi_), alpha_max(alpha_max_), beta(beta_), alpha(layers, initial) {}

  void update(const std::vector<double>& drop_rates) {
    if (!adaptive) return;
    for (size_t l = 0; l < alpha.size() && l < drop_rates.size(); l++) {
      double hat = xi * drop_rates[l];
      if (hat > alpha_max) hat = alpha_max;
      alpha[l] = beta * alpha[l] + (1.0 - beta) * hat;
    }
  }
};

}  // namespace sky
