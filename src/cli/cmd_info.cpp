#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "model/gguf_model.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"

namespace sky::cli {

int cmd_info(int argc, char** argv) {
  CLI::App app{"Print a model's config, parameter counts (total and active per token) and tensor table."};
  app.name("skymoe info");
  std::string model;
  bool tensors = false, json_out = false;
  app.add_option("--model,model", model, "model directory, config.json or preset")->required();
  app.add_flag("--tensors", tensors, "list every tensor (name, dtype, shape, bytes)");
  app.add_flag("--json", json_out, "print one JSON object");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  ModelConfig cfg = ModelConfig::resolve(model);
  ParamLayout layout = ParamLayout::build(cfg);

  // Tensor table from the files when this is a model directory, else from the layout.
  struct Row { std::string name, dtype; Shape shape; size_t bytes; };
  std::vector<Row> rows;
  std::map<std::string, size_t> bytes_by_dtype;
  bool have_files = std::filesystem::is_directory(model) || is_gguf_file(model);
  if (have_files) {
    SafetensorsReader r = open_model_tensors(model);
    for (auto& n : r.names()) {
      const TensorInfo& ti = r.info(n);
      const std::string dt = ti.stored_as.empty() ? dtype_name(ti.dtype) : ti.stored_as;
      rows.push_back({n, dt, ti.shape, ti.nbytes});
      bytes_by_dtype[dt] += ti.nbytes;
    }
  } else {
    std::set<std::string> stacked;  // listed once, whole, as the files hold them
    for (auto& s : layout.specs) {
      const bool whole = s.stored.whole(s.shape);
      if (!whole && !stacked.insert(s.stored.name).second) continue;
      const Shape shape = whole ? s.shape : s.stored.shape;
      const size_t bytes = size_t(shape_numel(shape)) * 4;
      rows.push_back({s.stored.name, "F32", shape, bytes});
      bytes_by_dtype["F32"] += bytes;
    }
  }
  if (json_out) {
    nlohmann::json j;
    j["config"] = cfg.to_hf_json();
    j["params_total"] = cfg.param_count();
    j["params_active"] = cfg.active_param_count();
    j["bytes_by_dtype"] = bytes_by_dtype;
    if (tensors) {
      j["tensors"] = nlohmann::json::array();
      for (auto& r : rows) j["tensors"].push_back({{"name", r.name}, {"dtype", r.dtype}, {"shape", r.shape}, {"bytes", r.bytes}});
    }
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  fmt::print("model        {}\n", model);
  fmt::print("type         {}{}\n", cfg.model_type, cfg.has_moe() ? fmt::format(" ({} experts, top-{}{})", cfg.num_experts, cfg.top_k,
                                                                                  cfg.logits_norm ? fmt::format(", gating logit norm lambda={}", cfg.gate_norm_std) : "")
                                                                : " (dense)");
  fmt::print("layers       {}   hidden {}   heads {} (kv {}, head dim {})   {}{}\n", cfg.num_layers, cfg.hidden_size,
             cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_summary(),
             cfg.tie_word_embeddings ? "   tied embeddings" : "");
  if (cfg.mla())
    fmt::print("attention    multi-head latent: q_lora_rank {}   kv_lora_rank {}   q/k head {} + {} (RoPE{})   v head {}   "
               "KV cache {} values a position and layer{}\n",
               cfg.q_lora_rank > 0 ? std::to_string(cfg.q_lora_rank) : "none", cfg.kv_lora_rank, cfg.qk_nope_dim,
               cfg.qk_rope_dim, cfg.rope_interleave ? ", interleaved" : "", cfg.v_head_dim, cfg.kv_cache_width(),
               cfg.rope_scaling.yarn ? fmt::format("   YaRN factor {}", cfg.rope_scaling.factor) : "");
  if (cfg.has_moe() && (cfg.topk_method != "greedy" || cfg.router_bias || cfg.shared_expert_size > 0 ||
                        cfg.routed_scaling_factor != 1.0 || cfg.router_sigmoid))
    fmt::print("router       {} scores, {}{}, {}renormalized, x {}{}\n", cfg.router_sigmoid ? "sigmoid" : "softmax",
               cfg.topk_method,
               cfg.topk_method != "greedy" ? fmt::format(" (top {} of {} groups)", cfg.topk_group, cfg.n_group) : "",
               cfg.norm_topk_prob ? "" : "not ", cfg.routed_scaling_factor,
               cfg.router_bias ? ", selection bias" : "");
  fmt::print("vocab        {}   max positions {}   rope theta {}   rms eps {}\n", cfg.vocab_size,
             cfg.max_position_embeddings, cfg.rope_theta, cfg.rms_norm_eps);
  fmt::print("parameters   {:.2f}M total, {:.2f}M active per token\n", cfg.param_count() / 1e6,
             cfg.active_param_count() / 1e6);
  for (auto& [dt, b] : bytes_by_dtype) fmt::print("storage      {}: {:.2f} MiB\n", dt, b / 1048576.0);
  if (tensors) {
    fmt::print("\n{:<64} {:<8} {:<16} {:>12}\n", "tensor", "dtype", "shape", "bytes");
    for (auto& r : rows) fmt::print("{:<64} {:<8} {:<16} {:>12}\n", r.name, r.dtype, shape_str(r.shape), r.bytes);
  }
  return 0;
}

}  // namespace sky::cli
