#include "model/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_input.h"
#include "model/gguf_model.h"

namespace sky {

using json = nlohmann::json;
namespace fs = std::filesystem;

static double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

double RopeScaling::rope_factor() const {
  if (!yarn) return 1.0;
  if (attention_factor > 0) return attention_factor;
  if (mscale != 0 && mscale_all_dim != 0) return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim);
  return yarn_mscale(factor, 1.0);
}

double RopeScaling::softmax_factor() const {
  if (!yarn || mscale_all_dim == 0) return 1.0;
  const double m = yarn_mscale(factor, mscale_all_dim);
  return m * m;
}

FfnKind ModelConfig::ffn_kind(int l) const {
  if (num_experts <= 0 || l < first_dense_layers || (l + 1) % moe_layer_step != 0 || l % moe_layer_freq != 0)
    return FfnKind::Dense;
  for (int d : dense_layers)
    if (d == l) return FfnKind::Dense;
  return FfnKind::Moe;
}

int ModelConfig::num_moe_layers() const {
  int n = 0;
  for (int l = 0; l < num_layers; l++) n += layer_is_moe(l);
  return n;
}

std::string ModelConfig::ffn_summary() const {
  const std::string moe = fmt::format("{} experts of width {}, top-{}", num_experts, moe_intermediate_size, top_k);
  const int nm = num_moe_layers();
  if (nm == num_layers) return moe;
  if (nm == 0) return fmt::format("FFN width {}", intermediate_size);
  std::string dense;
  for (int l = 0; l < num_layers; l++)
    if (!layer_is_moe(l)) dense += (dense.empty() ? "" : ",") + std::to_string(l);
  return fmt::format("dense layers {} (width {}); {} MoE layers: {}", dense, intermediate_size, nm, moe);
}

bool ModelConfig::has_moe() const { return num_moe_layers() > 0; }
bool ModelConfig::has_dense() const { return num_moe_layers() < num_layers; }

double ModelConfig::attention_scale() const {
  return attention_multiplier > 0 ? attention_multiplier : 1.0 / std::sqrt(double(head_dim));
}

// Attention weights of one layer: projections, biases, q/k norms.
static int64_t attention_params(const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  if (c.mla()) {
    const int64_t nh = c.num_heads, r = c.kv_lora_rank, q = c.q_dim();
    int64_t n = c.q_lora_rank > 0 ? h * c.q_lora_rank + c.q_lora_rank + int64_t(c.q_lora_rank) * q : h * q;
    n += h * (r + c.qk_rope_dim) + r + r * nh * (c.qk_nope_dim + c.v_head_dim);
    return n + int64_t(c.o_dim()) * h;
  }
  int64_t n = h * c.q_dim() * 2 + h * c.kv_dim() * 2;
  if (c.qkv_bias) n += c.q_dim() + 2 * c.kv_dim();
  if (c.qk_norm == QkNorm::PerHead) n += 2 * c.head_dim;
  if (c.qk_norm == QkNorm::Whole) n += c.q_dim() + c.kv_dim();
  return n;
}

static int64_t shared_expert_params(const ModelConfig& c) {
  return 3 * int64_t(c.hidden_size) * c.shared_expert_size + (c.shared_expert_gate ? c.hidden_size : 0) +
         (c.router_bias ? c.num_experts : 0);  // (the selection bias rides along with the router)
}

int64_t ModelConfig::param_count() const {
  const int64_t h = hidden_size;
  const int64_t attn = attention_params(*this);
  int64_t total = int64_t(tie_word_embeddings ? 1 : 2) * vocab_size * h + h;
  for (int l = 0; l < num_layers; l++)
    total += attn + 2 * h +
             (layer_is_moe(l) ? int64_t(num_experts) * (3 * h * moe_intermediate_size + h) + shared_expert_params(*this)
                              : 3 * h * intermediate_size);
  return total;
}

int64_t ModelConfig::active_param_count() const {
  const int64_t h = hidden_size;
  const int64_t attn = attention_params(*this);
  // One embedding row is read per token; the LM head is read whole.
  int64_t total = int64_t(vocab_size) * h + h + h;
  for (int l = 0; l < num_layers; l++)
    total += attn + 2 * h +
             (layer_is_moe(l) ? int64_t(top_k) * 3 * h * moe_intermediate_size + int64_t(num_experts) * h +
                                    shared_expert_params(*this)
                              : 3 * h * intermediate_size);
  return total;
}

void ModelConfig::validate() const {
  // Hard limits, far above any released model, checked first: no size computed from a config can
  // then overflow (the parameter count is summed in 64 bits), and a hostile config fails here, not
  // after minutes of work or a wrapped allocation.
  auto at_most = [](const char* field, int64_t v, int64_t hi) {
    SKY_CHECK(v <= hi, "config: {} = {} exceeds the limit of {}", field, v, hi);
  };
  at_most("vocab_size", vocab_size, int64_t(1) << 24);
  at_most("hidden_size", hidden_size, int64_t(1) << 17);
  at_most("num_hidden_layers", num_layers, int64_t(1) << 12);
  at_most("num_attention_heads", num_heads, int64_t(1) << 12);
  at_most("intermediate_size", intermediate_size, int64_t(1) << 20);
  at_most("moe_intermediate_size", moe_intermediate_size, int64_t(1) << 20);
  at_most("num_experts", num_experts, int64_t(1) << 14);
  at_most("shared_expert_intermediate_size", shared_expert_size, int64_t(1) << 20);
  at_most("head_dim", head_dim, int64_t(1) << 12);
  at_most("q_lora_rank", q_lora_rank, int64_t(1) << 16);
  at_most("kv_lora_rank", kv_lora_rank, int64_t(1) << 16);
  at_most("qk_nope_head_dim", qk_nope_dim, int64_t(1) << 12);
  at_most("qk_rope_head_dim", qk_rope_dim, int64_t(1) << 12);
  at_most("v_head_dim", v_head_dim, int64_t(1) << 12);
  at_most("n_group", n_group, int64_t(1) << 14);
  at_most("max_position_embeddings", max_position_embeddings, int64_t(1) << 24);
  {
    const double H = hidden_size, L = num_layers, E = std::max(num_experts, 0);
    const double attn = 2.0 * H * (double(num_heads) + num_kv_heads) * std::max(head_dim, 1);
    const double per_layer =
        attn + 3.0 * H * std::max<double>(intermediate_size, E * moe_intermediate_size + shared_expert_size) + E * H;
    const double params = 2.0 * double(vocab_size) * H + L * per_layer;
    SKY_CHECK(params <= double(int64_t(1) << 42), "config: about {:.3g} parameters exceeds the limit of {:.3g}", params,
              double(int64_t(1) << 42));
    SKY_CHECK(double(max_position_embeddings) * rope_dim() <= double(int64_t(1) << 30),
              "config: max_position_embeddings {} x RoPE dimension {} exceeds the RoPE table limit of 2^30 values",
              max_position_embeddings, rope_dim());
  }
  auto pos = [](const char* field, int64_t v) {
    SKY_CHECK(v > 0, "config: {} must be positive, got {}", field, v);
  };
  pos("vocab_size", vocab_size);
  pos("hidden_size", hidden_size);
  pos("num_hidden_layers", num_layers);
  pos("num_attention_heads", num_heads);
  pos("num_key_value_heads", num_kv_heads);
  pos("max_position_embeddings", max_position_embeddings);
  SKY_CHECK(num_experts >= 0, "config: num_experts must be >= 0, got {}", num_experts);
  SKY_CHECK(first_dense_layers >= 0, "config: first_k_dense_replace must be >= 0, got {}", first_dense_layers);
  SKY_CHECK(moe_layer_step >= 1, "config: decoder_sparse_step (moe_expert_interval) must be >= 1, got {}",
            moe_layer_step);
  for (int d : dense_layers)
    SKY_CHECK(d >= 0 && d < num_layers, "config: mlp_only_layers holds layer {} outside [0, {})", d, num_layers);
  if (has_dense()) pos("intermediate_size", intermediate_size);
  if (has_moe()) pos("moe_intermediate_size", moe_intermediate_size);
  pos("head_dim", head_dim);
  if (mla()) {
    pos("qk_rope_head_dim", qk_rope_dim);
    pos("v_head_dim", v_head_dim);
    pos("qk_nope_head_dim", qk_nope_dim);
    SKY_CHECK(q_lora_rank >= 0, "config: q_lora_rank must be >= 0, got {}", q_lora_rank);
    // Training pads the values to the q/k head to run the one attention op.
    SKY_CHECK(v_head_dim <= qk_nope_dim + qk_rope_dim, "config: v_head_dim {} > qk_nope_head_dim + qk_rope_head_dim {} "
              "is not supported", v_head_dim, qk_nope_dim + qk_rope_dim);
    SKY_CHECK(head_dim == qk_nope_dim + qk_rope_dim, "config: MLA head_dim {} != qk_nope_head_dim + qk_rope_head_dim",
              head_dim);
    SKY_CHECK(num_kv_heads == num_heads, "config: multi-head latent attention has one key per head ({} heads, {} kv heads)",
              num_heads, num_kv_heads);
  }
  SKY_CHECK(rope_dim() % 2 == 0, "config: RoPE dimension {} must be even", rope_dim());
  SKY_CHECK(moe_layer_freq >= 1, "config: moe_layer_freq must be >= 1, got {}", moe_layer_freq);
  if (rope_scaling.yarn) {
    SKY_CHECK(rope_scaling.factor > 0 && std::isfinite(rope_scaling.factor), "config: rope_scaling factor must be positive");
    SKY_CHECK(rope_scaling.original_max_position >= 0, "config: rope_scaling original_max_position_embeddings < 0");
    SKY_CHECK(std::isfinite(rope_scaling.mscale) && std::isfinite(rope_scaling.mscale_all_dim) &&
                  std::isfinite(rope_scaling.beta_fast) && std::isfinite(rope_scaling.beta_slow) &&
                  std::isfinite(rope_scaling.attention_factor) && rope_scaling.attention_factor >= 0,
              "config: rope_scaling values must be finite");
  }
  SKY_CHECK(shared_expert_size >= 0, "config: shared_expert_intermediate_size must be >= 0, got {}", shared_expert_size);
  SKY_CHECK(num_kv_heads <= num_heads && num_heads % num_kv_heads == 0,
            "config: num_attention_heads {} is not a multiple of num_key_value_heads {}", num_heads, num_kv_heads);
  if (has_moe()) {
    SKY_CHECK(top_k >= 1, "config: top-k must be >= 1, got {}", top_k);
    SKY_CHECK(top_k <= num_experts, "config: top-k {} exceeds the number of experts {}", top_k, num_experts);
    SKY_CHECK(!logits_norm || num_experts >= 2, "config: gating logit normalization needs >= 2 experts");
    SKY_CHECK(gate_norm_std > 0, "config: moe_gate_norm_std must be positive, got {}", gate_norm_std);
    SKY_CHECK(routed_scaling_factor > 0 && std::isfinite(routed_scaling_factor),
              "config: routed_scaling_factor must be positive, got {}", routed_scaling_factor);
    SKY_CHECK(topk_method == "greedy" || topk_method == "group_limited_greedy" || topk_method == "noaux_tc",
              "config: topk_method '{}' is not supported (greedy, group_limited_greedy or noaux_tc)", topk_method);
    if (topk_method != "greedy") {
      SKY_CHECK(n_group >= 1 && num_experts % n_group == 0, "config: n_group {} does not divide {} experts", n_group,
                num_experts);
      SKY_CHECK(topk_group >= 1 && topk_group <= n_group, "config: topk_group {} outside [1, n_group {}]", topk_group,
                n_group);
      SKY_CHECK(top_k <= int64_t(topk_group) * (num_experts / n_group),
                "config: top-k {} exceeds the {} experts of topk_group {} groups", top_k,
                int64_t(topk_group) * (num_experts / n_group), topk_group);
      SKY_CHECK(topk_method != "noaux_tc" || num_experts / n_group >= 2,
                "config: noaux_tc scores a group by its two best experts; groups of {} expert", num_experts / n_group);
    }
  }
  for (auto [field, v] : {std::pair{"embedding_multiplier", embedding_multiplier},
                          {"residual_multiplier", residual_multiplier}, {"logits_scaling", logits_scaling}})
    SKY_CHECK(v > 0 && std::isfinite(v), "config: {} must be positive, got {}", field, v);
  SKY_CHECK(attention_multiplier >= 0 && std::isfinite(attention_multiplier),
            "config: attention_multiplier must be positive, got {}", attention_multiplier);
  SKY_CHECK(rope_theta > 0, "config: rope_theta must be positive, got {}", rope_theta);
  SKY_CHECK(rms_norm_eps > 0, "config: rms_norm_eps must be positive, got {}", rms_norm_eps);
}

static std::string short_dump_flat(const json& v) {
  std::string s = v.dump();
  return s.size() > 200 ? s.substr(0, 197) + "..." : s;
}

// A value for an error message, never deep: a nested value is described, not printed (a hostile
// config may nest 100k levels, and dump() recurses).
static std::string short_dump(const json& v) {
  if (v.is_primitive()) {
    std::string s = v.dump();
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
  }
  if (v.is_array()) {
    bool flat = v.size() <= 64;
    for (auto& e : v) flat = flat && e.is_primitive();
    if (flat) return short_dump_flat(v);
    return fmt::format("a list of {} values", v.size());
  }
  return fmt::format("an object of {} keys", v.size());
}

static int get_int(const json& j, const char* key, const std::string& src, bool required, int dflt) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) fail("{}: missing field '{}'", src, key);
    return dflt;
  }
  const json& v = j[key];
  if (!v.is_number_integer()) fail("{}: field '{}' must be an integer, got {}", src, key, short_dump(v));
  int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) fail("{}: field '{}' out of range: {}", src, key, x);
  return int(x);
}

static double get_num(const json& j, const char* key, const std::string& src, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) fail("{}: field '{}' must be a number, got {}", src, key, short_dump(j[key]));
  return j[key].get<double>();
}

static bool get_bool(const json& j, const char* key, const std::string& src, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) fail("{}: field '{}' must be true or false, got {}", src, key, short_dump(j[key]));
  return j[key].get<bool>();
}

ModelConfig ModelConfig::from_hf_json(const json& j, const std::string& src) {
  SKY_CHECK(j.is_object(), "{}: expected a JSON object", src);
  ModelConfig c;
  if (j.contains("model_type") && !j["model_type"].is_null()) {
    SKY_CHECK(j["model_type"].is_string(), "{}: field 'model_type' must be a string, got {}", src,
              short_dump(j["model_type"]));
    c.model_type = j["model_type"].get<std::string>();
  } else {
    c.model_type = "llama";
  }
  const std::string& mt = c.model_type;
  SKY_CHECK(mt == "llama" || mt == "skywork" || mt == "skywork_moe" || mt == "mixtral" || mt == "qwen2_moe" ||
                mt == "qwen3_moe" || mt == "olmoe" || mt == "granitemoe" || mt == "granitemoeshared" ||
                mt == "deepseek_v2" || mt == "deepseek_v3",
            "{}: unsupported model_type '{}' (expected llama, skywork, skywork_moe, mixtral, qwen2_moe, qwen3_moe, "
            "olmoe, granitemoe, granitemoeshared, deepseek_v2 or deepseek_v3)",
            src, mt);
  const bool ds = c.deepseek();
  c.vocab_size = get_int(j, "vocab_size", src, true, 0);
  c.hidden_size = get_int(j, "hidden_size", src, true, 0);
  c.num_layers = get_int(j, "num_hidden_layers", src, true, 0);
  c.num_heads = get_int(j, "num_attention_heads", src, true, 0);
  c.num_kv_heads = get_int(j, "num_key_value_heads", src, false, c.num_heads);
  c.intermediate_size = get_int(j, "intermediate_size", src, !j.contains("moe_intermediate_size"), 0);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, false, 4096);
  c.rope_theta = get_num(j, "rope_theta", src, 10000.0);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.bos_token_id = get_int(j, "bos_token_id", src, false, 1);
  c.eos_token_id = get_int(j, "eos_token_id", src, false, 2);
  SKY_CHECK(c.num_heads > 0, "{}: num_attention_heads must be positive, got {}", src, c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  if (ds) {
    // Multi-head latent attention (transformers' defaults where a key is missing; q_lora_rank null:
    // q_proj directly, as V2-Lite). head_dim in their config.json is the RoPE width: not read.
    const bool has_q_lora_key = j.contains("q_lora_rank");
    c.q_lora_rank = has_q_lora_key ? get_int(j, "q_lora_rank", src, false, 0) : 1536;
    c.kv_lora_rank = get_int(j, "kv_lora_rank", src, false, 512);
    c.qk_nope_dim = get_int(j, "qk_nope_head_dim", src, false, 128);
    c.qk_rope_dim = get_int(j, "qk_rope_head_dim", src, false, 64);
    c.v_head_dim = get_int(j, "v_head_dim", src, false, 128);
    SKY_CHECK(c.kv_lora_rank > 0, "{}: kv_lora_rank must be positive, got {}", src, c.kv_lora_rank);
    c.head_dim = c.qk_nope_dim + c.qk_rope_dim;
    SKY_CHECK(c.num_kv_heads == c.num_heads,
              "{}: num_key_value_heads {} != num_attention_heads {}: multi-head latent attention has a key per head",
              src, c.num_kv_heads, c.num_heads);
    c.rope_interleave = mt == "deepseek_v2" ? true : get_bool(j, "rope_interleave", src, true);
  } else if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    int hd = get_int(j, "head_dim", src, true, 0);
    // Qwen3 sets it apart from hidden_size / heads; the others must agree.
    SKY_CHECK(hd == c.head_dim || mt == "qwen3_moe",
              "{}: head_dim {} != hidden_size / num_attention_heads = {} (not supported for {})", src, hd, c.head_dim, mt);
    c.head_dim = hd;
  }
  SKY_CHECK(mt == "qwen3_moe" || ds || c.hidden_size % c.num_heads == 0,
            "{}: hidden_size {} is not divisible by num_attention_heads {}", src, c.hidden_size, c.num_heads);
  for (const char* key : {"use_sliding_window", "attention_bias", "mlp_bias"})
    SKY_CHECK(!get_bool(j, key, src, false), "{}: '{}' true is not supported", src, key);
  if (j.contains("clip_qkv") && !j["clip_qkv"].is_null()) fail("{}: clip_qkv is not supported", src);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    SKY_CHECK(ds, "{}: rope_scaling is not supported yet for {} (only YaRN, for deepseek_v2/v3)", src, mt);
    SKY_CHECK(rs.is_object(), "{}: field 'rope_scaling' must be an object, got {}", src, short_dump(rs));
    const char* tk = rs.contains("rope_type") ? "rope_type" : "type";
    SKY_CHECK(rs.contains(tk) && rs[tk] == "yarn", "{}: rope_scaling {} is not supported (only type yarn)", src,
              short_dump(rs));
    RopeScaling& y = c.rope_scaling;
    y.yarn = true;
    SKY_CHECK(rs.contains("factor"), "{}: rope_scaling yarn needs a 'factor'", src);
    y.factor = get_num(rs, "factor", src, 1.0);
    y.original_max_position = get_int(rs, "original_max_position_embeddings", src, false, 0);
    // transformers reads these with `or`: 0 or null means the default.
    y.beta_fast = get_num(rs, "beta_fast", src, 0.0);
    y.beta_slow = get_num(rs, "beta_slow", src, 0.0);
    if (y.beta_fast == 0) y.beta_fast = 32;
    if (y.beta_slow == 0) y.beta_slow = 1;
    y.mscale = get_num(rs, "mscale", src, 0.0);
    y.mscale_all_dim = get_num(rs, "mscale_all_dim", src, 0.0);
    y.attention_factor = get_num(rs, "attention_factor", src, 0.0);
    y.truncate = get_bool(rs, "truncate", src, true);
  }
  if (mt == "qwen2_moe") c.qkv_bias = true;
  if (mt == "qwen3_moe") c.qk_norm = QkNorm::PerHead;
  if (mt == "olmoe") c.qk_norm = QkNorm::Whole;
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    fail("{}: hidden_act {} is not supported (only silu)", src, short_dump(j["hidden_act"]));

  // Which layers are MoE: the keys real configs use, read whatever the model type.
  c.first_dense_layers = get_int(j, "first_k_dense_replace", src, false, 0);
  c.moe_layer_step = get_int(j, "decoder_sparse_step", src, false, 1);
  if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null()) {
    const json& ml = j["mlp_only_layers"];
    SKY_CHECK(ml.is_array(), "{}: field 'mlp_only_layers' must be a list of layer indices, got {}", src,
              short_dump(ml));
    for (auto& v : ml) {
      // Range-checked before the conversion to int: 2^32 + 3 would wrap into a valid layer.
      SKY_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
                "{}: field 'mlp_only_layers' holds {}, not a layer index", src, short_dump(v));
      c.dense_layers.push_back(int(v.get<int64_t>()));
    }
  }
  if (mt == "mixtral") {
    c.num_experts = get_int(j, "num_local_experts", src, true, 0);
    c.top_k = get_int(j, "num_experts_per_tok", src, false, 2);
  } else if (c.granite()) {
    // Every layer is MoE (transformers reads no layer-pattern keys for Granite-MoE, so neither do
    // we), of experts as wide as intermediate_size; the router takes the softmax of the top-k
    // logits, i.e. renormalized top-k softmax weights.
    c.first_dense_layers = 0, c.moe_layer_step = 1, c.dense_layers.clear();
    c.num_experts = get_int(j, "num_local_experts", src, false, 8);
    SKY_CHECK(c.num_experts >= 2, "{}: {} with num_local_experts {} is not supported (at least 2 experts)", src, mt,
              c.num_experts);
    // GraniteMoeShared: an ungated SwiGLU shared expert (shared_mlp) added to the experts' output.
    if (mt == "granitemoeshared") c.shared_expert_size = get_int(j, "shared_intermediate_size", src, false, 0);
    c.top_k = get_int(j, "num_experts_per_tok", src, false, 2);
    c.embedding_multiplier = get_num(j, "embedding_multiplier", src, 1.0);
    c.residual_multiplier = get_num(j, "residual_multiplier", src, 1.0);
    c.attention_multiplier = get_num(j, "attention_multiplier", src, 1.0);
    c.logits_scaling = get_num(j, "logits_scaling", src, 1.0);
    SKY_CHECK(c.attention_multiplier > 0 && std::isfinite(c.attention_multiplier),
              "{}: attention_multiplier must be positive, got {}", src, c.attention_multiplier);
    SKY_CHECK(!j.contains("position_embedding_type") || j["position_embedding_type"] == "rope",
              "{}: position_embedding_type {} is not supported (only rope)", src,
              short_dump(j["position_embedding_type"]));
  } else if (ds) {
    c.num_experts = get_int(j, "n_routed_experts", src, false, mt == "deepseek_v2" ? 64 : 256);
    c.top_k = get_int(j, "num_experts_per_tok", src, true, 0);
    c.moe_layer_freq = get_int(j, "moe_layer_freq", src, false, 1);
    if (j.contains("topk_method") && !j["topk_method"].is_null()) {
      SKY_CHECK(j["topk_method"].is_string(), "{}: field 'topk_method' must be a string", src);
      c.topk_method = j["topk_method"].get<std::string>();
    } else {
      c.topk_method = mt == "deepseek_v2" ? "greedy" : "noaux_tc";
    }
    // transformers' DeepSeek-V3 router always runs noaux_tc; V2's greedy or group-limited.
    SKY_CHECK(mt == "deepseek_v2" ? c.topk_method != "noaux_tc" : c.topk_method == "noaux_tc",
              "{}: topk_method '{}' is not supported for {} ({})", src, c.topk_method, mt,
              mt == "deepseek_v2" ? "greedy or group_limited_greedy" : "noaux_tc");
    if (c.topk_method != "greedy") {
      c.n_group = get_int(j, "n_group", src, true, 1);
      c.topk_group = get_int(j, "topk_group", src, true, 1);
    } else {
      c.n_group = 1, c.topk_group = 1;
    }
    c.router_bias = mt == "deepseek_v3";
  } else if (mt == "qwen2_moe" || mt == "qwen3_moe" || mt == "olmoe") {
    c.num_experts = get_int(j, "num_experts", src, true, 0);
    c.top_k = get_int(j, "num_experts_per_tok", src, false, mt == "olmoe" ? 8 : 4);
    if (mt == "qwen2_moe") {
      c.shared_expert_size = get_int(j, "shared_expert_intermediate_size", src, false, 0);
      c.shared_expert_gate = c.shared_expert_size > 0;
    }
  } else if (mt == "skywork" || mt == "skywork_moe") {
    // Megatron-DeepSpeed's convention: MoE slots are the layers l with (l + 1) % moe_expert_interval
    // == 0; num_experts lists one count for all of them or one per slot, and a count of 1 is a
    // dense layer.
    c.moe_layer_step = get_int(j, "moe_expert_interval", src, false, c.moe_layer_step);
    SKY_CHECK(c.moe_layer_step >= 1, "{}: field 'moe_expert_interval' must be >= 1, got {}", src, c.moe_layer_step);
    std::vector<int> counts;
    if (j.contains("num_experts") && !j["num_experts"].is_null()) {
      const json& ne = j["num_experts"];
      if (ne.is_array()) {
        SKY_CHECK(!ne.empty(), "{}: field 'num_experts' is an empty list", src);
        for (auto& v : ne) {
          SKY_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
                    "{}: field 'num_experts' holds {}, not an expert count", src, short_dump(v));
          counts.push_back(v.get<int>());
        }
      } else if (ne.is_number_integer()) {
        counts.push_back(get_int(j, "num_experts", src, true, 0));
      } else {
        fail("{}: field 'num_experts' must be an integer or a list, got {}", src, short_dump(ne));
      }
    }
    const int slots = c.num_layers > 0 ? c.num_layers / c.moe_layer_step : 0;
    SKY_CHECK(counts.size() <= 1 || int(counts.size()) == slots,
              "{}: field 'num_experts' lists {} counts; expected 1 or one per MoE slot ({} = num_hidden_layers {} / "
              "moe_expert_interval {})",
              src, counts.size(), slots, c.num_layers, c.moe_layer_step);
    for (size_t i = 0; i < counts.size(); i++) {
      if (counts[i] <= 1) {
        if (counts.size() > 1) c.dense_layers.push_back(int(i + 1) * c.moe_layer_step - 1);
        continue;
      }
      SKY_CHECK(c.num_experts == 0 || counts[i] == c.num_experts,
                "{}: field 'num_experts' {} gives MoE layers different expert counts ({} and {}); skymoe needs one "
                "count for every MoE layer",
                src, short_dump(j["num_experts"]), c.num_experts, counts[i]);
      c.num_experts = counts[i];
    }
    // Skywork fixes top-2; accept the Mixtral-style key too.
    c.top_k = get_int(j, "num_experts_per_tok", src, false, get_int(j, "moe_topk", src, false, 2));
    c.logits_norm = get_bool(j, "moe_use_logits_norm", src, false);
    c.gate_norm_std = get_num(j, "moe_gate_norm_std", src, 1.0);
  }
  if (c.num_experts <= 1) c.num_experts = 0;  // a single "expert" is the dense model (Skywork-13B)
  c.moe_intermediate_size = c.num_experts > 0 && !c.granite()
                                ? get_int(j, "moe_intermediate_size", src, false, c.intermediate_size)
                                : c.num_experts > 0 ? c.intermediate_size : 0;
  // Router options, whatever the model type (defaults: what Skywork and Mixtral do).
  if (j.contains("scoring_func") && !j["scoring_func"].is_null()) {
    const json& sf = j["scoring_func"];
    SKY_CHECK(sf == "softmax" || sf == "sigmoid", "{}: scoring_func {} is not supported (softmax or sigmoid)", src,
              short_dump(sf));
    c.router_sigmoid = sf == "sigmoid";
  }
  // Skywork and Mixtral always renormalize; the Qwen and OLMoE configs say (transformers' default: no).
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", src, mt == "deepseek_v3" || !c.mlp_expert_names());
  c.routed_scaling_factor = get_num(j, "routed_scaling_factor", src, mt == "deepseek_v3" ? 2.5 : 1.0);
  if (c.granite()) c.router_sigmoid = false, c.norm_topk_prob = true, c.routed_scaling_factor = 1.0;
  if (ds) {
    // DeepSeek-V2 scores with softmax, V3 with sigmoid (transformers ignores scoring_func: a config
    // saying otherwise would run differently there).
    const bool sig = mt == "deepseek_v3";
    SKY_CHECK(!j.contains("scoring_func") || j["scoring_func"].is_null() || c.router_sigmoid == sig,
              "{}: scoring_func {} is not supported for {} (it scores with {})", src, short_dump(j["scoring_func"]),
              mt, sig ? "sigmoid" : "softmax");
    c.router_sigmoid = sig;
    // transformers' V2 router never renormalizes; DeepSeek's own code renormalizes without the
    // scaling factor. No V2 checkpoint sets it.
    SKY_CHECK(mt != "deepseek_v2" || !c.norm_topk_prob,
              "{}: norm_topk_prob true is not supported for deepseek_v2 (transformers ignores it)", src);
    const int ns = get_int(j, "n_shared_experts", src, false, mt == "deepseek_v2" ? 2 : 1);
    SKY_CHECK(ns >= 0 && ns <= 1024, "{}: n_shared_experts {} out of range", src, ns);
    c.shared_expert_size = c.num_experts > 0 ? ns * c.moe_intermediate_size : 0;
  }
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: {}", src, e.what());
  }
  // Experts but no MoE layer (first_k_dense_replace covering every layer): a dense model, and
  // written as one, or to_hf_json would leave out the keys that make its layers dense and the
  // saved config would load as an MoE model.
  if (!c.has_moe()) c.num_experts = 0, c.moe_intermediate_size = 0, c.shared_expert_size = 0, c.router_bias = false;
  return c;
}

json ModelConfig::to_hf_json() const {
  json j;
  j["model_type"] = model_type;
  j["architectures"] = json::array({model_type == "mixtral"     ? "MixtralForCausalLM"
                                    : model_type == "llama"     ? "LlamaForCausalLM"
                                    : model_type == "qwen2_moe" ? "Qwen2MoeForCausalLM"
                                    : model_type == "qwen3_moe" ? "Qwen3MoeForCausalLM"
                                    : model_type == "olmoe"     ? "OlmoeForCausalLM"
                                    : model_type == "granitemoe" ? "GraniteMoeForCausalLM"
                                    : model_type == "granitemoeshared" ? "GraniteMoeSharedForCausalLM"
                                    : model_type == "deepseek_v2" ? "DeepseekV2ForCausalLM"
                                    : model_type == "deepseek_v3" ? "DeepseekV3ForCausalLM"
                                                                : "SkyworkForCausalLM"});
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = "float32";
  if (has_moe() && moe_intermediate_size != intermediate_size) j["moe_intermediate_size"] = moe_intermediate_size;
  const bool skywork = model_type == "skywork" || model_type == "skywork_moe";
  if (has_moe() && router_sigmoid) j["scoring_func"] = "sigmoid";
  if (has_moe() && (!norm_topk_prob || mlp_expert_names())) j["norm_topk_prob"] = norm_topk_prob;
  if (head_dim * num_heads != hidden_size && !deepseek()) j["head_dim"] = head_dim;
  if (has_moe() && routed_scaling_factor != 1.0) j["routed_scaling_factor"] = routed_scaling_factor;
  if (has_moe() && !skywork) {
    if (first_dense_layers > 0) j["first_k_dense_replace"] = first_dense_layers;
    if (moe_layer_step != 1) j["decoder_sparse_step"] = moe_layer_step;
    if (!dense_layers.empty()) j["mlp_only_layers"] = dense_layers;
  }
  if (deepseek()) {
    j["q_lora_rank"] = q_lora_rank > 0 ? json(q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_dim;
    j["qk_rope_head_dim"] = qk_rope_dim;
    j["v_head_dim"] = v_head_dim;
    if (model_type == "deepseek_v3") j["rope_interleave"] = rope_interleave;
    if (rope_scaling.yarn) {
      const RopeScaling& y = rope_scaling;
      json rs = {{"type", "yarn"}, {"rope_type", "yarn"}, {"factor", y.factor}, {"beta_fast", y.beta_fast},
                 {"beta_slow", y.beta_slow}};
      if (y.original_max_position > 0) rs["original_max_position_embeddings"] = y.original_max_position;
      if (y.mscale != 0) rs["mscale"] = y.mscale;
      if (y.mscale_all_dim != 0) rs["mscale_all_dim"] = y.mscale_all_dim;
      if (y.attention_factor != 0) rs["attention_factor"] = y.attention_factor;
      if (!y.truncate) rs["truncate"] = false;
      j["rope_scaling"] = rs;
    } else {
      j["rope_scaling"] = nullptr;
    }
    j["n_routed_experts"] = has_moe() ? num_experts : 0;
    j["num_experts_per_tok"] = top_k;
    j["moe_intermediate_size"] = has_moe() ? moe_intermediate_size : intermediate_size;
    j["n_shared_experts"] = has_moe() && moe_intermediate_size > 0 ? shared_expert_size / moe_intermediate_size : 0;
    j["first_k_dense_replace"] = has_moe() ? first_dense_layers : num_layers;
    j["moe_layer_freq"] = moe_layer_freq;
    j["topk_method"] = topk_method;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["norm_topk_prob"] = norm_topk_prob;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["scoring_func"] = router_sigmoid ? "sigmoid" : "softmax";
  } else if (model_type == "mixtral") {
    j["num_local_experts"] = num_experts;
    j["num_experts_per_tok"] = top_k;
  } else if (granite()) {
    j["num_local_experts"] = num_experts;
    j["num_experts_per_tok"] = top_k;
    j["intermediate_size"] = moe_intermediate_size;
    j.erase("moe_intermediate_size");
    j["embedding_multiplier"] = embedding_multiplier;
    j["residual_multiplier"] = residual_multiplier;
    j["attention_multiplier"] = attention_scale();
    j["logits_scaling"] = logits_scaling;
    if (model_type == "granitemoeshared") j["shared_intermediate_size"] = shared_expert_size;
  } else if (mlp_expert_names()) {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = top_k;
    if (has_moe()) j["moe_intermediate_size"] = moe_intermediate_size;
    if (shared_expert_size > 0) j["shared_expert_intermediate_size"] = shared_expert_size;
  } else if (skywork) {
    // One count per MoE slot (1: a dense layer) when some slot is dense, else the one count.
    json counts = json::array();
    bool mixed = false;
    for (int l = moe_layer_step - 1; l < num_layers; l += moe_layer_step) {
      counts.push_back(layer_is_moe(l) ? num_experts : 1);
      mixed = mixed || !layer_is_moe(l);
    }
    j["num_experts"] = has_moe() && mixed ? counts : json::array({has_moe() ? num_experts : 1});
    j["moe_expert_interval"] = has_moe() ? moe_layer_step : 1;
    j["num_experts_per_tok"] = top_k;
    j["moe_use_logits_norm"] = logits_norm;
    j["moe_gate_norm_std"] = gate_norm_std;
  }
  return j;
}

ModelConfig ModelConfig::load_file(const std::string& path) {
  if (is_gguf_file(path)) return gguf_model_config(gguf::File::open(path));
  fs::path p = path;
  std::error_code ec;
  if (fs::is_directory(p, ec)) p /= "config.json";
  return from_hf_json(read_json_file(p.string()), p.string());
}

static ModelConfig make(const char* type, int vocab, int hidden, int layers, int heads, int kv, int inter,
                        int experts, int topk, int maxpos, bool lnorm) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.head_dim = hidden / heads;
  c.intermediate_size = inter;
  c.moe_intermediate_size = experts > 0 ? inter : 0;
  c.num_experts = experts;
  c.top_k = topk;
  c.max_position_embeddings = maxpos;
  c.logits_norm = lnorm;
  return c;
}

std::vector<std::string> ModelConfig::preset_names() {
  return {"tiny",        "tiny-dense",  "bench-moe",        "bench-qwen3moe", "bench-olmoe", "bench-granitemoe",
          "bench-deepseek", "train-moe", "train-dense", "skywork-moe-146b", "skywork-13b"};
}

ModelConfig ModelConfig::preset(const std::string& name) {
  if (name == "tiny") return make("skywork_moe", 256, 64, 2, 4, 2, 96, 4, 2, 512, true);
  if (name == "tiny-dense") return make("llama", 256, 64, 2, 4, 2, 96, 0, 2, 512, false);
  if (name == "bench-moe") return make("skywork_moe", 32000, 1024, 8, 16, 16, 2816, 16, 2, 4096, true);
  // Qwen3-30B-A3B and OLMoE-1B-7B scaled to bench-moe's hidden size and depth: many small experts,
  // top-8 (Qwen3: 128 of width 384 with per-head q/k norms and GQA; OLMoE: 64 of width 512).
  if (name == "bench-qwen3moe") {
    ModelConfig c = make("qwen3_moe", 32000, 1024, 8, 16, 4, 3072, 128, 8, 4096, false);
    c.moe_intermediate_size = 384;
    c.qk_norm = QkNorm::PerHead;
    return c;
  }
  if (name == "bench-olmoe") {
    ModelConfig c = make("olmoe", 32000, 1024, 8, 16, 16, 1024, 64, 8, 4096, false);
    c.moe_intermediate_size = 512;
    c.qk_norm = QkNorm::Whole;
    c.norm_topk_prob = false;
    return c;
  }
  // Granite-3.0-1B-A400M's shape at bench-moe's size: 32 experts of width 512, top-8, GQA, tied
  // embeddings and its multipliers.
  if (name == "bench-granitemoe") {
    ModelConfig c = make("granitemoe", 32000, 1024, 8, 16, 8, 512, 32, 8, 4096, false);
    c.tie_word_embeddings = true;
    c.embedding_multiplier = 12.0;
    c.residual_multiplier = 0.22;
    c.attention_multiplier = 0.015625;
    c.logits_scaling = 6.0;
    return c;
  }
  // DeepSeek-V2-Lite's attention and router at bench-moe's hidden size and depth: multi-head latent
  // attention (16 heads, q_proj directly, kv_lora_rank 512, q/k heads 128 + 64, v heads 128), a dense
  // first layer, 64 experts of width 352 top-6 plus 2 shared, no renormalization.
  if (name == "bench-deepseek") {
    ModelConfig c = make("deepseek_v2", 32000, 1024, 8, 16, 16, 2816, 64, 6, 4096, false);
    c.moe_intermediate_size = 352;
    c.shared_expert_size = 2 * 352;
    c.first_dense_layers = 1;
    c.kv_lora_rank = 512;
    c.qk_nope_dim = 128;
    c.qk_rope_dim = 64;
    c.v_head_dim = 128;
    c.head_dim = 192;
    c.rope_interleave = true;
    c.norm_topk_prob = false;
    return c;
  }
  if (name == "train-moe") return make("skywork_moe", 8192, 512, 8, 8, 8, 1408, 16, 2, 4096, true);
  if (name == "train-dense") return make("llama", 8192, 512, 8, 8, 8, 1408, 0, 2, 4096, false);
  if (name == "skywork-moe-146b") return make("skywork_moe", 65532, 4608, 52, 36, 36, 12288, 16, 2, 8192, true);
  if (name == "skywork-13b") return make("skywork", 65519, 4608, 52, 36, 36, 12288, 0, 2, 4096, false);
  std::string names;
  for (auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  fail("unknown preset '{}' (known: {})", name, names);
}

ModelConfig ModelConfig::resolve(const std::string& s) {
  for (auto& n : preset_names())
    if (n == s) return preset(s);
  std::error_code ec;
  if (fs::exists(s, ec)) return load_file(s);
  std::string names;
  for (auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  fail("'{}' is neither a preset ({}) nor an existing config file or model directory", s, names);
}

}  // namespace sky
