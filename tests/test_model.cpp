// Whole-model checks: the engine's forward pass against the independent float64 reference
// (tests/model_ref.cpp), KV-cache generation against the batch forward, save/load round trips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "model/transformer.h"
#include "io/safetensors.h"
#include "model_ref.h"
#include "ref.h"

using namespace sky;

static ModelConfig tiny_moe(bool lnorm = true) {
  ModelConfig c = ModelConfig::preset("tiny");
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.num_heads = 6;
  c.num_kv_heads = 2;  // GQA
  c.head_dim = 4;
  c.intermediate_size = c.moe_intermediate_size = 10;
  c.num_experts = 5;
  c.top_k = 2;
  c.logits_norm = lnorm;
  c.gate_norm_std = 1.3;
  c.rope_theta = 500.0;
  return c;
}

static Model random_model(const ModelConfig& c, uint64_t seed) { return skytest::scaled_model(c, seed, seed + 99, 0.3, 0.2); }

static std::vector<double> params_f64(const Model& m) {
  return std::vector<double>(m.params.data(), m.params.data() + m.layout.total);
}

static std::vector<int32_t> random_tokens(int n, int V, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(r.below(V));
  return t;
}

static void check_against_reference(const ModelConfig& c, int B, int T, double cf, uint64_t seed) {
  Model m = random_model(c, seed);
  auto toks = random_tokens(B * T + 1, c.vocab_size, seed + 1);
  std::vector<int32_t> in(toks.begin(), toks.end() - 1), tgt(toks.begin() + 1, toks.end());
  Activations A;
  double loss = forward(m, A, in.data(), tgt.data(), B, T, moe_options(c, cf));
  auto P = params_f64(m);
  skytest::RefOut ref = skytest::ref_forward(c, P, in, B, T, cf);
  EXPECT_LE(skytest::max_err_ratio(A.logits.data(), ref.logits.data(), ref.logits.size(), 1e-4, 1e-4), 1.0);
  EXPECT_NEAR(loss, skytest::ref_loss(c, ref.logits, tgt), 1e-4 * std::fabs(loss));
  for (int l = 0; l < c.num_layers; l++) {
    if (!c.layer_is_moe(l)) continue;
    EXPECT_NEAR(A.layers[l].moe.disp.drop_rate(), ref.drop_rates[l], 1e-12) << "layer " << l;
    EXPECT_NEAR(A.layers[l].moe.aux_loss, ref.aux[l], 1e-6 * ref.aux[l] + 1e-9) << "layer " << l;
  }
}

TEST(Model, MoeLogitsMatchReference) { check_against_reference(tiny_moe(true), 2, 7, 0.0, 1); }
TEST(Model, MoeWithoutLogitNormMatchesReference) { check_against_reference(tiny_moe(false), 3, 5, 0.0, 2); }
TEST(Model, MoeCapacityDroppingMatchesReference) {
  ModelConfig c = tiny_moe(true);
  check_against_reference(c, 2, 13, 0.6, 3);
  // The drop rate is really non-zero at this capacity.
  Model m = random_model(c, 3);
  auto toks = random_tokens(13, c.vocab_size, 4);
  Activations A;
  forward(m, A, toks.data(), nullptr, 1, 13, moe_options(c, 0.6));
  EXPECT_GT(A.layers[0].moe.disp.drop_rate(), 0.0);
}
TEST(Model, DenseLogitsMatchReference) {
  ModelConfig c = tiny_moe();
  c.model_type = "llama";
  c.num_experts = 0;
  check_against_reference(c, 2, 6, 0.0, 5);
}
TEST(Model, MhaTopOneMatchesReference) {
  ModelConfig c = tiny_moe();
  c.num_kv_heads = c.num_heads;
  c.top_k = 1;
  check_against_reference(c, 1, 9, 0.0, 6);
}

// Dense and MoE layers mixed (a leading dense layer of its own width, Qwen-style sparse step),
// tied embeddings: the config as data, checked against the float64 reference.
static ModelConfig mixed_tied() {
  ModelConfig c = tiny_moe(true);
  c.num_layers = 4;
  c.first_dense_layers = 1;    // layer 0 dense
  c.dense_layers = {2};        // layer 2 dense: MoE layers 1 and 3
  c.intermediate_size = 14;    // dense width
  c.moe_intermediate_size = 6;  // expert width
  c.tie_word_embeddings = true;
  return c;
}

TEST(Model, MixedLayersAndTiedEmbeddingsMatchReference) {
  ModelConfig c = mixed_tied();
  ASSERT_EQ(c.num_moe_layers(), 2);
  check_against_reference(c, 2, 6, 0.0, 11);
  check_against_reference(c, 2, 7, 0.7, 12);  // with capacity dropping
  ParamLayout lay = ParamLayout::build(c);
  EXPECT_EQ(lay.find("lm_head.weight"), nullptr);
  EXPECT_NE(lay.find("model.layers.0.mlp.gate_proj.weight"), nullptr);
  EXPECT_EQ(lay.find("model.layers.0.block_sparse_moe.gate.weight"), nullptr);
  EXPECT_EQ(lay.find("model.layers.1.block_sparse_moe.experts.0.w1.weight")->shape, (Shape{6, 24}));
  EXPECT_EQ(int64_t(lay.total), c.param_count());
  // A tied model saves no lm_head and loads back the same.
  Model m = random_model(c, 3);
  auto dir = skytest::temp_dir("mixed");
  m.save(dir);
  Model b = Model::load(dir);
  EXPECT_TRUE(b.cfg.tie_word_embeddings);
  EXPECT_EQ(b.w.lm_head, b.w.embed);
  for (size_t i = 0; i < m.layout.total; i++) ASSERT_EQ(b.params[i], m.params[i]);
  // A pipeline's last stage of a tied model holds the embedding as its head.
  Shard last = Shard::full(c);
  last.layer_begin = 2;
  last.embed = false;
  Model whole = Model::random(c, 3), tail = Model::random(c, 3, last);
  ASSERT_NE(tail.layout.find("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ(tail.w.lm_head, tail.w.embed);
  for (size_t i = 0; i < size_t(c.vocab_size) * c.hidden_size; i++) ASSERT_EQ(tail.w.lm_head[i], whole.w.embed[i]);
  std::filesystem::remove_all(dir);
}

// DeepSeek/Qwen-style router options: sigmoid scores, unnormalized top-k weights, a scaling factor.
TEST(Model, RouterOptionsMatchReference) {
  ModelConfig c = tiny_moe(false);
  c.router_sigmoid = true;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.8;
  check_against_reference(c, 2, 6, 0.0, 21);
  c.router_sigmoid = false;
  check_against_reference(c, 2, 6, 0.8, 22);
}

TEST(Model, SaveLoadRoundTrip) {
  ModelConfig c = tiny_moe();
  Model m = random_model(c, 9);
  auto dir = skytest::temp_dir("model");
  m.save(dir + "/f32");
  Model a = Model::load(dir + "/f32");
  ASSERT_EQ(a.layout.total, m.layout.total);
  for (size_t i = 0; i < m.layout.total; i++) ASSERT_EQ(a.params[i], m.params[i]);
  // Sharded BF16: every 2-D weight rounds to bf16, norms stay f32.
  m.save(dir + "/bf16", DType::BF16, 4096);
  EXPECT_TRUE(std::filesystem::exists(dir + "/bf16/model.safetensors.index.json"));
  Model b = Model::load(dir + "/bf16");
  for (auto& s : m.layout.specs)
    for (size_t i = 0; i < s.numel(); i++) {
      float want = s.shape.size() == 1 ? m.params[s.offset + i] : bf16_to_f32(f32_to_bf16(m.params[s.offset + i]));
      ASSERT_EQ(b.params[s.offset + i], want) << s.name;
    }
  EXPECT_EQ(b.cfg.to_hf_json(), c.to_hf_json());
  std::filesystem::remove_all(dir);
}

TEST(Model, LoadErrorsNameTheProblem) {
  ModelConfig c = tiny_moe();
  Model m = random_model(c, 10);
  auto dir = skytest::temp_dir("model-bad");
  m.save(dir);
  // Config claiming a different shape: shape mismatch names the tensor.
  auto j = c.to_hf_json();
  j["intermediate_size"] = 12;
  std::ofstream(dir + "/config.json") << j.dump();
  try {
    Model::load(dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w1.weight"), std::string::npos) << e.what();
  }
  // A tensor missing from the file is named.
  std::ofstream(dir + "/config.json") << c.to_hf_json().dump();
  NamedTensors ts;
  for (auto& s : m.layout.specs) {
    if (s.name == skytest::expert_name(1, 3, "w2")) continue;
    Tensor t = Tensor::empty(DType::F32, s.shape);
    std::copy(m.params.data() + s.offset, m.params.data() + s.offset + s.numel(), t.f32());
    ts.emplace_back(s.name, t);
  }
  write_safetensors(dir + "/model.safetensors", ts);
  try {
    Model::load(dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight'"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(Model::load(dir + "/nope"), Error);
  std::filesystem::remove_all(dir);
}

TEST(Model, OutOfVocabTokenIsAnError) {
  ModelConfig c = tiny_moe();
  Model m = random_model(c, 11);
  std::vector<int32_t> t = {1, 2, c.vocab_size};
  Activations A;
  EXPECT_THROW(forward(m, A, t.data(), nullptr, 1, 3, moe_options(c)), Error);
}

// A config within every size limit can still need more memory than the machine has: that is an
// error naming both figures, before the allocation (which overcommit would grant, and the random
// init would then fault in until the OOM killer struck).
TEST(Model, RefusesParametersBeyondMemory) {
  const ModelConfig c = ModelConfig::preset("skywork-moe-146b");  // 146B parameters, ~544 GiB in f32
  const double have = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  if (have > 600.0 * (1 << 30)) GTEST_SKIP() << "this machine could hold it";
  try {
    Model::random(c, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GiB; this machine has"), std::string::npos) << e.what();
  }
}
