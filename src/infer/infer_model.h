#pragma once
// The model as inference sees it: every linear layer a QWeight (f32, bf16 or fp8 with scales), used
// straight from the memory-mapped safetensors when the stored dtype is the one asked for. Router,
// norms and embeddings stay f32; the LM head stays at bf16 or better.
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "model/shard.h"
#include "backend/backend.h"
#include "core/rope_table.h"
#include "core/weight.h"

namespace sky {

class TpGroup;

struct InferLayer {
  std::vector<float> attn_norm, ffn_norm;
  QWeight wq, wk, wv, wo;
  std::vector<float> bq, bk, bv, q_norm, k_norm;  // empty when the family has none
  QWeight sh_gate, sh_up, sh_down, sh_router;     // shared expert (sh_router: its [1, H] gate, f32)
  std::vector<float> router;        // [E, H] f32
  std::vector<QWeight> w1, w3, w2;  // per expert (global id); empty for experts another rank holds
  QWeight gate, up, down;           // dense FFN
  // Multi-head latent attention (wq: q_proj without q_lora_rank; wk, wv empty): kv_b_proj is held
  // absorbed per head as the engine runs it (decoder.h LayerWeights::uk/uv), in the linears' dtype.
  QWeight wq_a, wq_b, wkv_a;
  std::vector<float> q_a_norm, kv_a_norm;
  std::vector<QWeight> uk, uv;
  std::vector<float> router_bias;   // DeepSeek-V3's selection bias [E] (empty: none)
};

struct InferLoadOptions {
  std::string dtype = "auto";  // auto (as stored) | f32 | bf16 | fp8
  bool per_row = true;         // fp8 converted on load: per-row (else per-tensor) scales
  // The LM head: auto keeps it as stored, except that converting to fp8 stops at bf16 (Skywork's
  // FP8 layout keeps the head in higher precision) | f32 | bf16 | fp8 (a quarter of a decode
  // step's bytes on bench-moe: faster, slightly less exact).
  std::string lm_head = "auto";
  std::string kv_dtype = "f32";  // KV cache: f32 | bf16 (half the memory and attention's reads)
};

struct InferModel {
  // What this process runs. Under tensor parallelism (infer/tp.h) a rank is a model with fewer
  // heads and kv heads and a narrower FFN / expert width whose outputs are summed over the ranks,
  // so cfg holds this rank's counts (and batch_forward and the KV cache need no other change);
  // full_cfg is the whole model.
  ModelConfig cfg, full_cfg;
  Shard shard;                  // the slice held (everything in one process)
  std::shared_ptr<TpGroup> tp;  // the tensor-parallel group; null in one process
  std::string weight_dtype;  // what the linear layers hold: f32, bf16, fp8 or mixed
  std::vector<float> embed, final_norm;
  QWeight lm_head;  // only on the rank that computes logits (shard.head)
  std::vector<InferLayer> layers;
  RopeTable rope;
  bool mmapped = false;  // true when some weights are views into the files
  bool kv_bf16 = false;  // sequences' KV caches in bf16 (InferLoadOptions::kv_dtype)
  Backend* be = &backend();  // where batch_forward computes (--device)

  // `shard` (default: all) picks the slice to load: row blocks stay views into the map, column
  // blocks (o_proj, w2, down_proj) are copied, only this rank's part.
  static InferModel load(const std::string& dir, const InferLoadOptions& o = {}, const Shard* shard = nullptr);
  // From a training model (tests, benchmarks), whole or a shard: converts each linear layer to `dtype`.
  // head: the LM head's dtype; by default dtype, except bf16 for fp8 (as InferLoadOptions::lm_head auto).
  static InferModel from_model(const Model& m, DType dtype, bool per_row = true, std::optional<DType> head = {});
  bool holds_expert(int e) const { return e >= shard.experts.begin && e < shard.experts.end(); }

  // Weight bytes one decoded token reads: attention, router, top-k experts of every layer, LM head
  // (dense models: the whole FFN). The embedding row is negligible and not counted.
  double decode_weight_bytes_per_token() const;
  double total_weight_bytes() const;
};

}  // namespace sky
