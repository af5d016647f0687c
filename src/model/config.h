#pragma once
// One config type for dense Llama / Skywork-13B, Skywork-MoE and Mixtral, read from and written to
// Hugging Face config.json. DESIGN.md section 1. The FFN of each layer is described by data: dense
// or MoE (ffn_kind), with a dense width beside the experts' width, so models that mix dense and MoE
// layers (DeepSeek's first_k_dense_replace, Qwen2-MoE's decoder_sparse_step / mlp_only_layers,
// Skywork's moe_expert_interval and num_experts list) are one config, not a special case.
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace sky {

enum class FfnKind : uint8_t { Dense, Moe };
// RMSNorm of q and k after their projections, before RoPE: Qwen3-MoE normalizes each head
// (weights [head_dim]), OLMoE the whole projection (weights [q_dim] and [kv_dim]).
enum class QkNorm : uint8_t { None, PerHead, Whole };

// RoPE frequency scaling (HF `rope_scaling`): none, or YaRN as DeepSeek-V2/V3 configure it.
struct RopeScaling {
  bool yarn = false;
  double factor = 1.0;
  int original_max_position = 0;  // original_max_position_embeddings (0: max_position_embeddings)
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0, mscale_all_dim = 0.0;
  double attention_factor = 0.0;  // multiplies cos and sin; 0: derived from factor and the mscales
  bool truncate = true;
  // The factor on cos and sin (transformers' attention_factor).
  double rope_factor() const;
  // The extra factor on the attention logits: DeepSeek's mscale(factor, mscale_all_dim)^2 (1 without).
  double softmax_factor() const;
};

struct ModelConfig {
  // llama | skywork | skywork_moe | mixtral | qwen2_moe | qwen3_moe | olmoe | granitemoe |
  // granitemoeshared | deepseek_v2 | deepseek_v3
  std::string model_type = "skywork_moe";
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;           // hidden_size / num_heads unless the config says (Qwen3); MLA: qk_nope + qk_rope
  bool qkv_bias = false;      // q/k/v projections have biases (Qwen2-MoE)
  QkNorm qk_norm = QkNorm::None;
  // Multi-head latent attention (DeepSeek-V2/V3), on when kv_lora_rank > 0: q = q_b(norm(q_a(x)))
  // (or q_proj(x) without q_lora_rank); kv_a(x) = [c_kv (kv_lora_rank) | k_pe (qk_rope_dim)], keys
  // and values per head from kv_b(norm(c_kv)); RoPE on the qk_rope_dim dims only, k_pe shared by
  // every head. head_dim is then qk_nope_dim + qk_rope_dim (the q/k head), v_head_dim the values'.
  int q_lora_rank = 0, kv_lora_rank = 0, qk_nope_dim = 0, qk_rope_dim = 0, v_head_dim = 0;
  bool rope_interleave = false;  // RoPE rotates pairs (2i, 2i+1) (DeepSeek), not (i, i + d/2)
  RopeScaling rope_scaling;
  int intermediate_size = 0;      // dense FFN width (HF intermediate_size)
  int moe_intermediate_size = 0;  // each expert's width (Skywork/Mixtral: their intermediate_size)
  int num_experts = 0;            // experts of every MoE layer; 0 = dense model
  // Shared expert: a SwiGLU FFN of this width every token of an MoE layer goes through beside the
  // routed experts (Qwen2-MoE's shared_expert_intermediate_size, DeepSeek's n_shared_experts x
  // moe_intermediate_size); 0 = none. Qwen2-MoE scales its output by sigmoid(x . w) per token.
  int shared_expert_size = 0;
  bool shared_expert_gate = false;
  int top_k = 2;
  // Which layers are MoE (when num_experts > 0): layer l is MoE unless l < first_dense_layers,
  // (l + 1) % moe_layer_step != 0, or l is listed in dense_layers.
  int first_dense_layers = 0;     // DeepSeek first_k_dense_replace
  int moe_layer_freq = 1;         // DeepSeek moe_layer_freq: layer l is MoE only when l % freq == 0
  int moe_layer_step = 1;         // Qwen2-MoE decoder_sparse_step, Skywork moe_expert_interval
  std::vector<int> dense_layers;  // Qwen2-MoE mlp_only_layers (and Skywork's count-1 slots)
  bool tie_word_embeddings = false;  // the LM head is the embedding matrix
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 4096;
  bool logits_norm = false;    // gating logit normalization (Skywork eq. 6)
  double gate_norm_std = 1.0;  // lambda
  bool router_sigmoid = false;         // scoring_func "sigmoid" (DeepSeek-V3); else softmax
  bool norm_topk_prob = true;          // renormalize the top-k weights (Skywork, Mixtral: always)
  double routed_scaling_factor = 1.0;  // multiplies the top-k weights (DeepSeek)
  // DeepSeek's expert selection (topk_method): "greedy" (top-k of all), "group_limited_greedy"
  // (V2: the topk_group of n_group groups with the best max score, then top-k within them) or
  // "noaux_tc" (V3: groups ranked by the sum of their two best biased scores).
  std::string topk_method = "greedy";
  int n_group = 1, topk_group = 1;
  // DeepSeek-V3's e_score_correction_bias [E] per MoE layer: added to the scores for selection
  // only (mlp.gate.e_score_correction_bias; a buffer, not trained by backprop).
  bool router_bias = false;
  int bos_token_id = 1;
  int eos_token_id = 2;
  // Granite-MoE's multipliers (1 and the usual attention scale elsewhere): the embeddings are
  // multiplied by embedding_multiplier, each branch's output (attention, FFN/MoE) by
  // residual_multiplier before its residual add, the attention scores by attention_multiplier
  // (0: 1 / sqrt(head_dim)), and the logits divided by logits_scaling.
  double embedding_multiplier = 1.0;
  double residual_multiplier = 1.0;
  double attention_multiplier = 0.0;
  double logits_scaling = 1.0;

  FfnKind ffn_kind(int layer) const;
  bool layer_is_moe(int layer) const { return ffn_kind(layer) == FfnKind::Moe; }
  bool has_moe() const;    // some layer is MoE
  bool has_dense() const;  // some layer has a dense FFN
  int num_moe_layers() const;
  // e.g. "16 experts of width 1408, top-2", "FFN width 5632", or for mixed layers
  // "dense layers 0,5 (width 5632); 6 MoE layers: 16 experts of width 1408, top-2".
  std::string ffn_summary() const;
  int ffn_width(int layer) const { return layer_is_moe(layer) ? moe_intermediate_size : intermediate_size; }
  // Tensor names: Mixtral/Skywork's block_sparse_moe.{gate,experts.E.w1} or the mlp.{gate,
  // experts.E.gate_proj} of Qwen-MoE and OLMoE.
  bool mlp_expert_names() const {
    return model_type == "qwen2_moe" || model_type == "qwen3_moe" || model_type == "olmoe" || deepseek();
  }
  // Granite-MoE (granitemoe, and granitemoeshared with its shared_mlp): experts stored stacked per
  // layer (block_sparse_moe.input_linear [E, 2I, H] holding each expert's gate and up rows,
  // output_linear [E, H, I]); params.h StoredAt says where each expert's matrix sits.
  bool granite() const { return model_type == "granitemoe" || model_type == "granitemoeshared"; }
  bool stacked_experts() const { return granite(); }
  double attention_scale() const;  // attention_multiplier, or 1 / sqrt(head_dim)
  bool mla() const { return kv_lora_rank > 0; }
  bool deepseek() const { return model_type == "deepseek_v2" || model_type == "deepseek_v3"; }
  int q_dim() const { return num_heads * head_dim; }
  int o_dim() const { return mla() ? num_heads * v_head_dim : q_dim(); }  // o_proj's input width
  int rope_dim() const { return mla() ? qk_rope_dim : head_dim; }
  // Values the KV cache holds per token and layer: keys and values, or MLA's latent and rope key.
  int64_t kv_cache_width() const { return mla() ? int64_t(kv_lora_rank) + qk_rope_dim : 2 * int64_t(kv_dim()); }
  int kv_dim() const { return num_kv_heads * head_dim; }

  int64_t param_count() const;         // every weight
  int64_t active_param_count() const;  // per token: attention, top-k experts, router, embeddings row, head

  void validate() const;  // throws sky::Error naming the offending field and value
  nlohmann::json to_hf_json() const;
  // `source` names the file in error messages.
  static ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load_file(const std::string& path);  // a config.json, or a directory holding one
  static ModelConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();
  // A preset name, a config.json path or a model directory.
  static ModelConfig resolve(const std::string& preset_or_path);
};

}  // namespace sky
