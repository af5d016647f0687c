#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
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
  EXPECT_FALSE(ll.is_moe());
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
  j = skywork_json();
  j["num_experts"] = {16, 8};
  expect_error(j, "num_experts");
}

TEST(Config, FileErrors) {
  auto dir = skytest::temp_dir("cfg");
  std::ofstream(dir + "/config.json") << "{ not json";
  try {
    ModelConfig::load_file(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("malformed JSON"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ModelConfig::load_file(dir + "/missing.json"), Error);
  EXPECT_THROW(ModelConfig::resolve("no-such-preset-or-file"), Error);
}
