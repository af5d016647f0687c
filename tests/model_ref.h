#pragma once
// An independent, straightforward float64 implementation of the decoder of DESIGN.md sections 1-2
// (no code shared with src/ beyond the config and the parameter layout), used to check the engine.
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace skytest {

// Logits [T, V] of one sequence; params in the flat layout of sky::ParamLayout::build(cfg).
// capacity_factor > 0 applies dropping with the by-probability policy over the T tokens.
std::vector<double> ref_logits(const sky::ModelConfig& cfg, const std::vector<double>& params,
                               const std::vector<int32_t>& tokens, double capacity_factor = 0.0,
                               std::vector<double>* drop_rates = nullptr);

double ref_loss(const sky::ModelConfig& cfg, const std::vector<double>& logits, const std::vector<int32_t>& targets);

}  // namespace skytest
