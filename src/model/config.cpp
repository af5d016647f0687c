#include "model/config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace sky {

using json = nlohmann::json;
namespace fs = std::filesystem;

int64_t ModelConfig::param_count() const {
  const int64_t h = hidden_size, L = num_layers;
  int64_t attn = h * q_dim() * 2 + h * kv_dim() * 2;
  int64_t ffn = is_moe() ? int64_t(num_experts) * 3 * h * intermediate_size + int64_t(num_experts) * h
                         : 3 * h * intermediate_size;
  return 2 * int64_t(vocab_size) * h + h + L * (attn + ffn + 2 * h);
}

int64_t ModelConfig::active_param_count() const {
  const int64_t h = hidden_size, L = num_layers;
  int64_t attn = h * q_dim() * 2 + h * kv_dim() * 2;
  int64_t ffn = is_moe() ? int64_t(top_k) * 3 * h * intermediate_size + int64_t(num_experts) * h
                         : 3 * h * intermediate_size;
  // One embedding row is read per token; the LM head is read whole.
  return int64_t(vocab_size) * h + h + h + L * (attn + ffn + 2 * h);
}

void ModelConfig::validate() const {
  auto pos = [](const char* field, int64_t v) {
    SKY_CHECK(v > 0, "config: {} must be positive, got {}", field, v);
  };
  pos("vocab_size", vocab_size);
  pos("hidden_size", hidden_size);
  pos("num_hidden_layers", num_layers);
  pos("num_attention_heads", num_heads);
  pos("num_key_value_heads", num_kv_heads);
  pos("intermediate_size", intermediate_size);
  pos("max_position_embeddings", max_position_embeddings);
  SKY_CHECK(hidden_size % num_heads == 0,
            "config: hidden_size {} is not divisible by num_attention_heads {}", hidden_size, num_heads);
  SKY_CHECK(head_dim == hidden_size / num_heads, "config: head_dim {} != hidden_size / num_attention_heads = {}",
            head_dim, hidden_size / num_heads);
  SKY_CHECK(head_dim % 2 == 0, "config: head dimension {} must be even for RoPE", head_dim);
  SKY_CHECK(num_kv_heads <= num_heads && num_heads % num_kv_heads == 0,
            "config: num_attention_heads {} is not a multiple of num_key_value_heads {}", num_heads, num_kv_heads);
  SKY_CHECK(num_experts >= 0, "config: num_experts must be >= 0, got {}", num_experts);
  if (is_moe()) {
    SKY_CHECK(top_k >= 1, "config: top-k must be >= 1, got {}", top_k);
    SKY_CHECK(top_k <= num_experts, "config: top-k {} exceeds the number of experts {}", top_k, num_experts);
    SKY_CHECK(!logits_norm || num_experts >= 2, "config: gating logit normalization needs >= 2 experts");
    SKY_CHECK(gate_norm_std > 0, "config: moe_gate_norm_std must be positive, got {}", gate_norm_std);
  }
  SKY_CHECK(rope_theta > 0, "config: rope_theta must be positive, got {}", rope_theta);
  SKY_CHECK(rms_norm_eps > 0, "config: rms_norm_eps must be positive, got {}", rms_norm_eps);
}

static int get_int(const json& j, const char* key, const std::string& src, bool required, int dflt) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) fail("{}: missing field '{}'", src, key);
    return dflt;
  }
  const json& v = j[key];
  if (!v.is_number_integer()) fail("{}: field '{}' must be an integer, got {}", src, key, v.dump());
  int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) fail("{}: field '{}' out of range: {}", src, key, x);
  return int(x);
}

static double get_num(const json& j, const char* key, const std::string& src, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) fail("{}: field '{}' must be a number, got {}", src, key, j[key].dump());
  return j[key].get<double>();
}

static bool get_bool(const json& j, const char* key, const std::string& src, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) fail("{}: field '{}' must be true or false, got {}", src, key, j[key].dump());
  return j[key].get<bool>();
}

ModelConfig ModelConfig::from_hf_json(const json& j, const std::string& src) {
  SKY_CHECK(j.is_object(), "{}: expected a JSON object", src);
  ModelConfig c;
  c.model_type = j.value("model_type", std::string("llama"));
  const std::string& mt = c.model_type;
  SKY_CHECK(mt == "llama" || mt == "skywork" || mt == "skywork_moe" || mt == "mixtral",
            "{}: unsupported model_type '{}' (expected llama, skywork, skywork_moe or mixtral)", src, mt);
  c.vocab_size = get_int(j, "vocab_size", src, true, 0);
  c.hidden_size = get_int(j, "hidden_size", src, true, 0);
  c.num_layers = get_int(j, "num_hidden_layers", src, true, 0);
  c.num_heads = get_int(j, "num_attention_heads", src, true, 0);
  c.num_kv_heads = get_int(j, "num_key_value_heads", src, false, c.num_heads);
  c.intermediate_size = get_int(j, "intermediate_size", src, true, 0);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, false, 4096);
  c.rope_theta = get_num(j, "rope_theta", src, 10000.0);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.bos_token_id = get_int(j, "bos_token_id", src, false, 1);
  c.eos_token_id = get_int(j, "eos_token_id", src, false, 2);
  SKY_CHECK(c.num_heads > 0, "{}: num_attention_heads must be positive, got {}", src, c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    int hd = get_int(j, "head_dim", src, true, 0);
    SKY_CHECK(hd == c.head_dim, "{}: head_dim {} != hidden_size / num_attention_heads = {} (not supported)",
              src, hd, c.head_dim);
  }
  if (get_bool(j, "tie_word_embeddings", src, false))
    fail("{}: tie_word_embeddings=true is not supported (skymoe models keep an untied lm_head)", src);
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    fail("{}: hidden_act {} is not supported (only silu)", src, j["hidden_act"].dump());

  if (mt == "mixtral") {
    c.num_experts = get_int(j, "num_local_experts", src, true, 0);
    c.top_k = get_int(j, "num_experts_per_tok", src, false, 2);
  } else if (mt == "skywork" || mt == "skywork_moe") {
    if (j.contains("num_experts") && !j["num_experts"].is_null()) {
      const json& ne = j["num_experts"];
      if (ne.is_array()) {
        SKY_CHECK(!ne.empty(), "{}: field 'num_experts' is an empty list", src);
        for (auto& v : ne)
          SKY_CHECK(v.is_number_integer() && v == ne[0],
                    "{}: field 'num_experts' {} must list one expert count (per-layer counts are not supported)",
                    src, ne.dump());
        c.num_experts = ne[0].get<int>();
      } else if (ne.is_number_integer()) {
        c.num_experts = ne.get<int>();
      } else {
        fail("{}: field 'num_experts' must be an integer or a list, got {}", src, ne.dump());
      }
    }
    int interval = get_int(j, "moe_expert_interval", src, false, 1);
    SKY_CHECK(interval == 1, "{}: moe_expert_interval {} is not supported (only 1: every layer is MoE)", src, interval);
    // Skywork fixes top-2; accept the Mixtral-style key too.
    c.top_k = get_int(j, "num_experts_per_tok", src, false, get_int(j, "moe_topk", src, false, 2));
    c.logits_norm = get_bool(j, "moe_use_logits_norm", src, false);
    c.gate_norm_std = get_num(j, "moe_gate_norm_std", src, 1.0);
    if (c.num_experts <= 1) c.num_experts = 0;  // a single "expert" is the dense model (Skywork-13B)
  }
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: {}", src, e.what());
  }
  return c;
}

json ModelConfig::to_hf_json() const {
  json j;
  j["model_type"] = model_type;
  j["architectures"] = json::array({model_type == "mixtral" ? "MixtralForCausalLM"
                                    : model_type == "llama" ? "LlamaForCausalLM"
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
  j["tie_word_embeddings"] = false;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = "float32";
  if (model_type == "mixtral") {
    j["num_local_experts"] = num_experts;
    j["num_experts_per_tok"] = top_k;
  } else if (model_type == "skywork" || model_type == "skywork_moe") {
    j["num_experts"] = json::array({is_moe() ? num_experts : 1});
    j["moe_expert_interval"] = 1;
    j["num_experts_per_tok"] = top_k;
    j["moe_use_logits_norm"] = logits_norm;
    j["moe_gate_norm_std"] = gate_norm_std;
  }
  return j;
}

ModelConfig ModelConfig::load_file(const std::string& path) {
  fs::path p = path;
  std::error_code ec;
  if (fs::is_directory(p, ec)) p /= "config.json";
  std::ifstream f(p);
  SKY_CHECK(f.good(), "cannot read config file '{}'", p.string());
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail("{}: malformed JSON: {}", p.string(), e.what());
  }
  return from_hf_json(j, p.string());
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
  c.num_experts = experts;
  c.top_k = topk;
  c.max_position_embeddings = maxpos;
  c.logits_norm = lnorm;
  return c;
}

std::vector<std::string> ModelConfig::preset_names() {
  return {"tiny", "tiny-dense", "bench-moe", "train-moe", "train-dense", "skywork-moe-146b", "skywork-13b"};
}

ModelConfig ModelConfig::preset(const std::string& name) {
  if (name == "tiny") return make("skywork_moe", 256, 64, 2, 4, 2, 96, 4, 2, 512, true);
  if (name == "tiny-dense") return make("llama", 256, 64, 2, 4, 2, 96, 0, 2, 512, false);
  if (name == "bench-moe") return make("skywork_moe", 32000, 1024, 8, 16, 16, 2816, 16, 2, 4096, true);
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
