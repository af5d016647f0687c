#pragma once
// Training checkpoints. A checkpoint is a directory that is also a loadable HF model directory:
//   config.json, model.safetensors          the weights (f32)
//   optimizer.safetensors                   AdamW moments m, v (flat, f32)
//   trainer_state.json                      step, data position, RNG, per-layer alpha or selection
//                                           bias (--balance), options
// It is written under a temporary name and renamed into place, and OUT/latest (a one-line file
// naming the newest checkpoint) is replaced atomically afterwards, so a killed run never leaves a
// half-written latest checkpoint.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/token_data.h"
#include "io/trainer_state.h"
#include "model/model.h"

namespace sky {

struct CheckpointData {
  const Model* model = nullptr;
  const float* adam_m = nullptr;
  const float* adam_v = nullptr;
  nlohmann::json state;  // step, data position, rng, alpha, ...
};

// Writes OUT/step-NNNNNNNN and points OUT/latest at it; removes older step-* directories beyond
// `keep` (0 = keep all). Returns the checkpoint's path.
std::string save_checkpoint(const std::string& out_dir, int64_t step, const CheckpointData& data, int keep);

// Resolves a --resume argument: a checkpoint directory, or a run directory holding `latest`.
std::string resolve_checkpoint(const std::string& path);

// Loads a checkpoint's optimizer moments into m, v (sizes checked against `total`) and returns the
// trainer state (a JSON object). The weights load through Model::load(dir).
nlohmann::json load_checkpoint_state(const std::string& dir, float* adam_m, float* adam_v, size_t total);

}  // namespace sky
