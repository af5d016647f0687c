#pragma once
// How training balances the experts' load (`skymoe train --balance`):
//   adaptive-aux  Skywork's auxiliary loss with per-layer adaptive coefficients (moe/adaptive_alpha.h)
//   aux           the same loss with a fixed coefficient
//   aux-free      DeepSeek-V3's auxiliary-loss-free balancing: no balance loss; a per-layer,
//                 per-expert bias b is added to the router's scores for the top-k selection only
//                 (the gate weights stay those of the unbiased scores), and after every step
//                   b_e <- b_e + speed * sign(mean_load - load_e)
//                 from that step's assignments per expert (before capacity dropping), summed over
//                 all micro-batches and data-parallel ranks. Underloaded experts get picked more.
//   none          neither (the unbalanced baseline)
// The bias is the quantity DeepSeek-V3 checkpoints carry as `e_score_correction_bias` (the router
// op's selection bias, Backend::router), so a model that has one can train it the same way.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sky {

enum class Balance { AdaptiveAux, Aux, AuxFree, None };

const char* to_string(Balance b);        // "adaptive-aux", "aux", "aux-free", "none"
Balance parse_balance(const std::string& s);  // throws naming the value and the choices

// The selection bias of every layer, [layer][expert] (float, as DeepSeek-V3 stores it). Layers that
// are dense, or not MoE at all, keep zeros: their loads are all zero.
struct SelectBias {
  double speed = 1e-3;
  std::vector<std::vector<float>> bias;

  SelectBias() = default;
  SelectBias(int layers, int experts, double speed_)
      : speed(speed_), bias(layers, std::vector<float>(experts, 0.0f)) {}

  // One step's loads (global: every rank passes the same numbers and gets the same bias).
  void update(const std::vector<std::vector<int64_t>>& load);
  // max_e b - min_e b of a layer (0 for an empty one).
  double range(size_t layer) const;
};

// Load imbalance of one layer's loads: (max_e load_e - mean load) / mean load ("MaxVio" of the
// auxiliary-loss-free balancing paper); 0 when there is no load.
double max_violation(const std::vector<int64_t>& load);

}  // namespace sky
