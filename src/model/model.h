#pragma once
// A model = config + flat f32 parameters. Loading converts whatever dtype the checkpoint holds
// (F32/BF16/F16, FP8 with weight_scale) to f32; saving writes an HF-layout directory.
#include <optional>
#include <string>

#include "core/tensor.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/params.h"
#include "backend/backend.h"
#include "core/rope_table.h"

namespace sky {

struct Model {
  ModelConfig cfg;
  Shard shard;  // the part of the model held (the whole model unless parallel)
  ParamLayout layout;
  FloatBuf params;
  ParamView<float> w;  // named views into params
  RopeTable rope;      // cos/sin for positions [0, max_position_embeddings)
  Backend* be = &backend();  // where forward/backward compute (--device)
  // The decoder's view of each held layer: f32 handles over `params` (rebuilt by bind()).
  std::vector<LayerWeights> layer_weights;
  QWeight lm_head;  // over w.lm_head (the embedding when tied); empty without the head

  LayerShape layer_shape() const;  // this shard's sizes

  Model() = default;
  Model(const Model&) = delete;  // views point into params
  Model& operator=(const Model&) = delete;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  // Llama-style init: N(0, 0.02) matrices, output projections (o_proj, w2/down_proj) scaled by
  // 1/sqrt(2L), norms 1. Deterministic for a seed whatever the thread count.
  // Parameters allocated (uninitialized) for a shard of cfg.
  static Model allocate(const ModelConfig& cfg, const Shard& shard);
  // A shard gets exactly the values the whole model would have in its blocks.
  static Model random(const ModelConfig& cfg, uint64_t seed);
  static Model random(const ModelConfig& cfg, uint64_t seed, const Shard& shard);
  // config.json + safetensors (single, sharded) from an HF-layout directory; a shard reads only
  // the tensors (and blocks of them) it holds.
  static Model load(const std::string& dir);
  static Model load(const std::string& dir, const Shard& shard);
  static Model load(const std::string& dir, const std::optional<Shard>& shard);
  // Writes config.json and the weights (as `dtype`) into dir; shards above max_shard_bytes.
  // Only a whole model can be saved.
  void save(const std::string& dir, DType dtype = DType::F32, size_t max_shard_bytes = size_t(2) << 30) const;

  void bind();  // recompute `w`, the handles (after params moved) and the RoPE table

 private:
  std::vector<QWeight> handles_;  // the matrices layer_weights point at
};

// Loads tensors named by `layout` from an HF directory into `out` (f32), checking names, shapes
// and dtypes; dequantizes FP8 weights with a `.weight_scale` beside them (per-tensor or per-row).
void load_params(const std::string& dir, const ParamLayout& layout, float* out);

}  // namespace sky
