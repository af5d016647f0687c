#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/token_data.h"
#include "model/config.h"
#include "ref.h"

using namespace sky;
using json = nlohmann::json;

static json skywork_json() {
  return json::parse(R"({"model_type": "skywork_moe", "vocab_size": 65532, "hidden_size": 4608,
    "num_hidden_layers": 52, "num_attention_heads": 36, "num_key_value_heads": 36,
    "intermediate_size": 12288, "num_experts": [16], "moe_use_logits_norm": true, "moe_gate_norm_std": 1.0,
    "rope_theta": 10000, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192,
    "tie_word_embeddings": false, "hidden_act": "silu"})");
}

static void expect_error(json j, const std::string& needle) {
  try {
    ModelConfig::from_hf_json(j, "cfg.json");
    FAIL() << "expected an error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
  }
}

TEST(Config, SkyworkMixtralLlama) {
  ModelConfig s = ModelConfig::from_hf_json(skywork_json(), "x");
  EXPECT_EQ(s.num_experts, 16);
  EXPECT_EQ(s.top_k, 2);
  EXPECT_TRUE(s.logits_norm);
  EXPECT_EQ(s.head_dim, 128);
  auto m = json::parse(R"({"model_type": "mixtral", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48, "num_local_experts": 8,
    "num_experts_per_tok": 2, "sliding_window": null})");
  ModelConfig mx = ModelConfig::from_hf_json(m, "x");
  EXPECT_EQ(mx.num_experts, 8);
  EXPECT_EQ(mx.num_kv_heads, 2);
  EXPECT_FALSE(mx.logits_norm);
  auto l = json::parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 48})");
  ModelConfig ll = ModelConfig::from_hf_json(l, "x");
  EXPECT_FALSE(ll.has_moe());
  EXPECT_EQ(ll.num_kv_heads, 4);
  // Round trip through to_hf_json.
  for (auto* c : {&s, &mx, &ll}) EXPECT_EQ(ModelConfig::from_hf_json(c->to_hf_json(), "y").to_hf_json(), c->to_hf_json());
}

TEST(Config, PresetsMatchDesignCounts) {
  ModelConfig b = ModelConfig::preset("bench-moe");
  EXPECT_NEAR(b.param_count() / 1e6, 1206.5, 0.5);
  EXPECT_NEAR(b.active_param_count() / 1e6, 204.7, 0.2);
  for (auto& n : ModelConfig::preset_names()) EXPECT_NO_THROW(ModelConfig::preset(n).validate()) << n;
  EXPECT_THROW(ModelConfig::preset("nope"), Error);
}

TEST(Config, BadValuesAreNamed) {
  auto j = skywork_json();
  j.erase("hidden_size");
  expect_error(j, "hidden_size");
  j = skywork_json();
  j["num_hidden_layers"] = -3;
  expect_error(j, "num_hidden_layers");
  j = skywork_json();
  j["hidden_size"] = 4600;  // 36 heads do not divide it
  expect_error(j, "not divisible");
  j = skywork_json();
  j["num_experts_per_tok"] = 20;
  expect_error(j, "top-k");
  j = skywork_json();
  j["num_key_value_heads"] = 5;
  expect_error(j, "num_key_value_heads");
  j = skywork_json();
  j["vocab_size"] = "big";
  expect_error(j, "vocab_size");
  j = skywork_json();
  j["model_type"] = "gpt2";
  expect_error(j, "gpt2");
  j["model_type"] = 7;  // once a JSON exception that named neither the file nor the field
  expect_error(j, "model_type");
  j = skywork_json();
  j["num_experts"] = {16, 8};
  expect_error(j, "num_experts");
}

// Hard limits checked right after parsing, before any work: sizes near 2^30 once wrapped the
// parameter total into a heap overflow in init/train --config, and 2e9 layers took 25 s and 8 GB.
TEST(Config, SizesAreBoundedBeforeAnyWork) {
  auto j = skywork_json();
  j["hidden_size"] = 1 << 30;
  j["num_attention_heads"] = 1 << 20;
  expect_error(j, "hidden_size = 1073741824 exceeds the limit");
  j = skywork_json();
  j["num_hidden_layers"] = 2000000000;
  expect_error(j, "num_hidden_layers = 2000000000 exceeds the limit");
  j = skywork_json();
  j["num_experts"] = {2000000000};
  expect_error(j, "num_experts = 2000000000 exceeds the limit");
  j = skywork_json();  // every size within its limit, the product not
  j["vocab_size"] = 1 << 24;
  j["hidden_size"] = 1 << 17;
  j["num_attention_heads"] = j["num_key_value_heads"] = 1024;
  j["intermediate_size"] = 1 << 20;
  j["num_hidden_layers"] = 4096;
  expect_error(j, "parameters exceeds the limit");
  j = skywork_json();
  j["max_position_embeddings"] = 1 << 24;  // x head dim 128
  expect_error(j, "RoPE table");
}

// Nesting is bounded while parsing: 100k levels once overflowed the stack (an error message
// dumped the value recursively).
TEST(Config, DeepNestingIsRefused) {
  auto dir = skytest::temp_dir("cfg-deep");
  std::string deep = R"({"model_type": "llama", "vocab_size": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
  std::ofstream(dir + "/config.json") << deep;
  try {
    ModelConfig::load_file(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper than 64 levels"), std::string::npos) << e.what();
  }
}

TEST(Config, FileErrors) {
  auto dir = skytest::temp_dir("cfg");
  std::ofstream(dir + "/config.json") << "{ not json";
  try {
    ModelConfig::load_file(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ModelConfig::load_file(dir + "/missing.json"), Error);
  EXPECT_THROW(ModelConfig::resolve("no-such-preset-or-file"), Error);
}

// ---------------------------------------------------------------------------------------------
// The FFN of each layer as data: the keys real configs use to mix dense and MoE layers.
// ---------------------------------------------------------------------------------------------

static std::vector<int> moe_layers(const ModelConfig& c) {
  std::vector<int> v;
  for (int l = 0; l < c.num_layers; l++)
    if (c.layer_is_moe(l)) v.push_back(l);
  return v;
}

static json small_json(const char* type) {
  json j = {{"model_type", type},         {"vocab_size", 50},          {"hidden_size", 16},
            {"num_hidden_layers", 6},     {"num_attention_heads", 2},  {"num_key_value_heads", 1},
            {"intermediate_size", 40},    {"rope_theta", 500.0},       {"max_position_embeddings", 64}};
  if (std::string(type) == "mixtral") j["num_local_experts"] = 4;
  return j;
}

// A round trip through config.json keeps every layer's kind and width.
static void expect_round_trip(const ModelConfig& c) {
  ModelConfig b = ModelConfig::from_hf_json(c.to_hf_json(), "round trip");
  EXPECT_EQ(moe_layers(b), moe_layers(c));
  EXPECT_EQ(b.intermediate_size, c.intermediate_size);
  EXPECT_EQ(b.moe_intermediate_size, c.moe_intermediate_size);
  EXPECT_EQ(b.tie_word_embeddings, c.tie_word_embeddings);
  EXPECT_EQ(b.param_count(), c.param_count());
}

TEST(Config, LeadingDenseLayersAndSeparateWidths) {
  json j = small_json("mixtral");
  j["first_k_dense_replace"] = 2;  // DeepSeek
  j["moe_intermediate_size"] = 12;
  j["tie_word_embeddings"] = true;
  ModelConfig c = ModelConfig::from_hf_json(j, "x");
  EXPECT_EQ(moe_layers(c), (std::vector<int>{2, 3, 4, 5}));
  EXPECT_EQ(c.ffn_width(0), 40);
  EXPECT_EQ(c.ffn_width(2), 12);
  EXPECT_TRUE(c.has_dense() && c.has_moe());
  EXPECT_TRUE(c.tie_word_embeddings);
  // Counted by hand: one embedding (tied), final norm; per layer attention 16*16*2 + 16*8*2 and two
  // norms; 2 dense FFNs of 3*16*40; 4 MoE layers of 4 experts 3*16*12 plus a router 4*16.
  const int64_t attn = 16 * 16 * 2 + 16 * 8 * 2 + 2 * 16;
  EXPECT_EQ(c.param_count(), 50 * 16 + 16 + 6 * attn + 2 * 3 * 16 * 40 + 4 * (4 * 3 * 16 * 12 + 4 * 16));
  EXPECT_EQ(c.active_param_count(), 50 * 16 + 16 + 16 + 6 * attn + 2 * 3 * 16 * 40 + 4 * (2 * 3 * 16 * 12 + 4 * 16));
  expect_round_trip(c);
  EXPECT_NE(c.ffn_summary().find("dense layers 0,1 (width 40)"), std::string::npos) << c.ffn_summary();
  // Every layer dense: saved, it once came back as an all-MoE model (found by fuzz_config), so
  // init wrote a model that did not load. It is a dense model.
  j["first_k_dense_replace"] = 6;
  c = ModelConfig::from_hf_json(j, "x");
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_EQ(c.ffn_summary(), "FFN width 40");
  expect_round_trip(c);
}

TEST(Config, SparseStepAndMlpOnlyLayers) {
  json j = small_json("mixtral");
  j["decoder_sparse_step"] = 2;  // Qwen2-MoE: layers 1, 3, 5 ...
  j["mlp_only_layers"] = {3};    // ... except 3
  ModelConfig c = ModelConfig::from_hf_json(j, "x");
  EXPECT_EQ(moe_layers(c), (std::vector<int>{1, 5}));
  EXPECT_EQ(c.moe_intermediate_size, 40);  // defaults to intermediate_size
  expect_round_trip(c);
  j["mlp_only_layers"] = {9};
  expect_error(j, "mlp_only_layers");
  j["mlp_only_layers"] = {"a"};
  expect_error(j, "mlp_only_layers");
  j["mlp_only_layers"] = {(int64_t(1) << 32) + 3};  // once wrapped to layer 3 and was taken
  expect_error(j, "mlp_only_layers");
  j.erase("mlp_only_layers");
  j["decoder_sparse_step"] = 0;
  expect_error(j, "decoder_sparse_step");
}

TEST(Config, SkyworkExpertListAndInterval) {
  json j = small_json("skywork_moe");
  j["moe_expert_interval"] = 2;  // MoE slots: layers 1, 3, 5
  j["num_experts"] = {4, 1, 4};  // the middle slot is dense
  ModelConfig c = ModelConfig::from_hf_json(j, "x");
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(moe_layers(c), (std::vector<int>{1, 5}));
  expect_round_trip(c);
  EXPECT_EQ(c.to_hf_json()["num_experts"], json({4, 1, 4}));
  j["num_experts"] = {4, 8, 4};
  expect_error(j, "different expert counts");
  j["num_experts"] = {4, 4};
  expect_error(j, "one per MoE slot");
  // Plain configs keep writing what they always wrote.
  ModelConfig s = ModelConfig::from_hf_json(skywork_json(), "x");
  EXPECT_EQ(s.to_hf_json()["num_experts"], json({16}));
  EXPECT_FALSE(s.to_hf_json().contains("moe_intermediate_size"));
  EXPECT_EQ(s.num_moe_layers(), 52);
}

TEST(Config, RouterOptions) {
  json j = small_json("mixtral");
  j["scoring_func"] = "sigmoid";
  j["norm_topk_prob"] = false;
  j["routed_scaling_factor"] = 2.5;
  ModelConfig c = ModelConfig::from_hf_json(j, "x");
  EXPECT_TRUE(c.router_sigmoid);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.routed_scaling_factor, 2.5);
  ModelConfig b = ModelConfig::from_hf_json(c.to_hf_json(), "round trip");
  EXPECT_TRUE(b.router_sigmoid);
  EXPECT_FALSE(b.norm_topk_prob);
  EXPECT_EQ(b.routed_scaling_factor, 2.5);
  j["scoring_func"] = "sparsemax";
  expect_error(j, "scoring_func");
  j["scoring_func"] = "softmax";
  j["routed_scaling_factor"] = -1;
  expect_error(j, "routed_scaling_factor");
}

// Granite-MoE: num_local_experts experts as wide as intermediate_size in every layer, its four
// multipliers (transformers' defaults: all 1, attention_multiplier too, not 1/sqrt(head_dim)),
// renormalized softmax top-k whatever router keys the file has (transformers reads none).
TEST(Config, GraniteMoe) {
  json j = json::parse(R"({"model_type": "granitemoe", "vocab_size": 49155, "hidden_size": 1024,
    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8, "intermediate_size": 512,
    "num_local_experts": 32, "num_experts_per_tok": 8, "embedding_multiplier": 12.0, "attention_multiplier": 0.015625,
    "residual_multiplier": 0.22, "logits_scaling": 6.0, "tie_word_embeddings": true, "attention_bias": false,
    "position_embedding_type": "rope", "max_position_embeddings": 4096, "rope_theta": 10000})");
  ModelConfig c = ModelConfig::from_hf_json(j, "x");
  EXPECT_EQ(c.num_experts, 32);
  EXPECT_EQ(c.top_k, 8);
  EXPECT_EQ(c.moe_intermediate_size, 512);
  EXPECT_EQ(c.num_moe_layers(), 24);
  EXPECT_TRUE(c.stacked_experts());
  EXPECT_EQ(c.embedding_multiplier, 12.0);
  EXPECT_EQ(c.attention_scale(), 0.015625);
  EXPECT_EQ(c.residual_multiplier, 0.22);
  EXPECT_EQ(c.logits_scaling, 6.0);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(ModelConfig::from_hf_json(c.to_hf_json(), "y").to_hf_json(), c.to_hf_json());
  EXPECT_EQ(c.to_hf_json()["architectures"][0], "GraniteMoeForCausalLM");
  EXPECT_EQ(ModelConfig::preset("bench-granitemoe").to_hf_json()["attention_multiplier"], 0.015625);
  json d = j;
  for (const char* k : {"embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling"}) d.erase(k);
  d["norm_topk_prob"] = false;
  d["mlp_only_layers"] = {0};
  ModelConfig dc = ModelConfig::from_hf_json(d, "x");
  EXPECT_EQ(dc.attention_scale(), 1.0);
  EXPECT_EQ(dc.embedding_multiplier, 1.0);
  EXPECT_TRUE(dc.norm_topk_prob);
  EXPECT_EQ(dc.num_moe_layers(), 24);
  json bad = j;
  bad["attention_bias"] = true;
  expect_error(bad, "attention_bias");
  bad = j;
  bad["num_local_experts"] = 1;
  expect_error(bad, "num_local_experts");
  bad = j;
  bad["logits_scaling"] = 0;
  expect_error(bad, "logits_scaling");
  bad = j;
  bad["residual_multiplier"] = -0.5;
  expect_error(bad, "residual_multiplier");
}

TEST(Config, NestedValueIsDescribedNotPrinted) {
  json j = skywork_json();
  j["num_experts"] = json::parse("[[[[1, 2]]]]");
  expect_error(j, "num_experts");
  j = skywork_json();
  j["hidden_size"] = json::parse(R"({"a": {"b": [1, 2, 3]}})");
  expect_error(j, "an object of 1 keys");
}

// A FIFO in place of a config, weights or token file once hung the reader forever (opening it
// blocks until a writer comes, before any regular-file check). Each reader must refuse it at once.
TEST(Config, FifoInsteadOfAFileIsRefused) {
  const auto dir = skytest::temp_dir("fifo");
  auto check = [&](const std::string& path, const std::function<void()>& load) {
    ASSERT_EQ(mkfifo(path.c_str(), 0600), 0) << path;
    auto result = std::async(std::launch::async, [&] {
      try {
        load();
        return std::string("no error");
      } catch (const Error& e) {
        return std::string(e.what());
      }
    });
    if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      ADD_FAILURE() << path << ": still blocked after 10 s";
      ::close(::open(path.c_str(), O_WRONLY));  // a writer lets the reader go
    }
    const std::string msg = result.get();
    EXPECT_NE(msg.find("not a regular file"), std::string::npos) << path << ": " << msg;
  };
  check(dir + "/config.json", [&] { ModelConfig::load_file(dir); });
  check(dir + "/model.safetensors", [&] { SafetensorsReader::open(dir + "/model.safetensors"); });
  check(dir + "/tokens.bin", [&] { TokenFile::open(dir + "/tokens.bin", 256); });
}
