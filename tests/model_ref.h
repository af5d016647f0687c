#pragma once
// An independent, straightforward float64 implementation of the decoder of DESIGN.md sections 1-2
// (no code shared with src/ beyond the config and the parameter layout), used to check the engine.
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/model.h"

namespace skytest {

struct RefOut {
  std::vector<double> logits;      // [B*T, V]
  std::vector<double> drop_rates;  // per layer of an MoE model (0 in its dense layers)
  std::vector<double> aux;         // per layer of an MoE model: Skywork eq. 4 over all B*T tokens
  std::vector<double> zloss;       // per MoE layer: mean over all B*T tokens of logsumexp(raw router logits)^2
};

// B sequences of T tokens (row-major); params in the flat layout of sky::ParamLayout::build(cfg).
// The router statistics, capacity (by-probability policy) and aux loss span all B*T tokens.
RefOut ref_forward(const sky::ModelConfig& cfg, const std::vector<double>& params, const std::vector<int32_t>& tokens,
                   int B, int T, double capacity_factor = 0.0);

// A random model at a larger scale than init, so router, experts and attention all matter:
// matrices N(0, matrix_std) (drawn with noise_seed), norm weights 1 + norm_coef * (the same draw).
sky::Model scaled_model(const sky::ModelConfig& cfg, uint64_t seed, uint64_t noise_seed, double matrix_std,
                        double norm_coef);

double ref_loss(const sky::ModelConfig& cfg, const std::vector<double>& logits, const std::vector<int32_t>& targets);

// The training objective (DESIGN.md section 2): mean CE + sum_l alpha[l] * aux_l + z_coef * sum_l zloss_l
// (alpha may be shorter than the layer count: missing entries are 0). `out` (optional) receives the forward.
double ref_objective(const sky::ModelConfig& cfg, const std::vector<double>& params, const std::vector<int32_t>& inputs,
                     const std::vector<int32_t>& targets, int B, int T, double capacity_factor,
                     const std::vector<double>& alpha, double z_coef, RefOut* out = nullptr);

}  // namespace skytest
