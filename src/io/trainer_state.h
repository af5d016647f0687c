#pragma once
// trainer_state.json, the part of a checkpoint (io/checkpoint) that says where a run stands. It is
// outside input: these read its fields, each checked, and throw sky::Error naming the field (never
// a JSON exception, never a wrapped or truncated number).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/token_data.h"

namespace sky {

// What a resume restores besides the weights and moments; num_alpha = the model's MoE layers
// (0 for a dense model), num_experts its experts.
struct TrainerState {
  int64_t step = 0;
  DataPosition data;
  std::vector<double> alpha;  // finite, >= 0
  // Auxiliary-loss-free balancing's selection bias (moe/balance.h), [num_alpha][num_experts],
  // finite floats; empty when the checkpoint has none ("select_bias" absent or null).
  std::vector<std::vector<float>> select_bias;
};
TrainerState parse_trainer_state(const nlohmann::json& state, size_t num_alpha, size_t num_experts = 0);
// The run shape a resume adopts for flags not given, from "signature" (absent fields stay unset).
struct RunShape {
  std::optional<int> seq_len, batch_size, grad_accum;  // positive
  std::optional<std::string> data_order;
};
RunShape parse_run_shape(const nlohmann::json& state);

}  // namespace sky
