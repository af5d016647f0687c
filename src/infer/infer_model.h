#pragma once
// The model as inference sees it: every linear layer a QWeight (f32, bf16 or fp8 with scales), used
// straight from the memory-mapped safetensors when the stored dtype is the one asked for. Router,
// norms and embeddings stay f32; the LM head stays at bf16 or better.
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "ops/qmatmul.h"
#include "ops/rope.h"

namespace sky {

struct InferLayer {
  std::vector<float> attn_norm, ffn_norm;
  QWeight wq, wk, wv, wo;
  std::vector<float> router;        // [E, H] f32
  std::vector<QWeight> w1, w3, w2;  // per expert
  QWeight gate, up, down;           // dense FFN
};

struct InferLoadOptions {
  std::string dtype = "auto";  // auto (as stored) | f32 | bf16 | fp8
  bool per_row = true;         // fp8 converted on load: per-row (else per-tensor) scales
};

struct InferModel {
  ModelConfig cfg;
  std::string weight_dtype;  // what the linear layers hold: f32, bf16, fp8 or mixed
  std::vector<float> embed, final_norm;
  QWeight lm_head;
  std::vector<InferLayer> layers;
  RopeTable rope;
  bool mmapped = false;  // true when some weights are views into the files

  static InferModel load(const std::string& dir, const InferLoadOptions& o = {});
  // From a training model (tests, benchmarks): converts each linear layer to `dtype`.
  static InferModel from_model(const Model& m, DType dtype, bool per_row = true);

  // Weight bytes one decoded token reads: attention, router, top-k experts of every layer, LM head
  // (dense models: the whole FFN). The embedding row is negligible and not counted.
  double decode_weight_bytes_per_token() const;
  double total_weight_bytes() const;
};

}  // namespace sky
