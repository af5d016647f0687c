#pragma once
// One config type for dense Llama / Skywork-13B, Skywork-MoE and Mixtral, read from and written to
// Hugging Face config.json. DESIGN.md section 1.
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace sky {

struct ModelConfig {
  std::string model_type = "skywork_moe";  // llama | skywork | skywork_moe | mixtral
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;           // hidden_size / num_heads
  int intermediate_size = 0;  // dense FFN width, or each expert's width
  int num_experts = 0;        // 0 = dense model
  int top_k = 2;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 4096;
  bool logits_norm = false;    // gating logit normalization (Skywork eq. 6)
  double gate_norm_std = 1.0;  // lambda
  int bos_token_id = 1;
  int eos_token_id = 2;

  bool is_moe() const { return num_experts > 0; }
  int q_dim() const { return num_heads * head_dim; }
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
