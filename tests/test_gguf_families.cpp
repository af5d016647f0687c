// `export gguf` for every family skymoe runs, read back by skymoe's GGUF reader: the logits of the
// exported f32 file equal the HF directory's, the config round-trips, the byte-level BPE
// vocabularies encode as their tokenizer.json, and what cannot be written or read is an error
// naming it. (llama.cpp's own reading of these files: scripts/check_llamacpp_logits.py.)
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/batch_forward.h"
#include "infer/infer_model.h"
#include "io/gguf.h"
#include "io/gguf_export.h"
#include "io/gguf_reader.h"
#include "io/tokenizer.h"
#include "model/gguf_arch.h"
#include "model/gguf_model.h"
#include "model/model.h"
#include "ref.h"
#include "logits_check.h"

using namespace sky;

namespace {

const std::string kData = std::string(SKYMOE_TEST_DATA);

using skytest::engine_logits;
using skytest::prompt;
using skytest::rel_rms;

using skytest::error_of;

bool close(double a, double b, double tol = 1e-6) { return std::abs(a - b) <= tol * std::max(1.0, std::abs(b)); }

// The fields that decide what the model computes, compared one by one so a failure names the field.
void expect_same_config(const ModelConfig& g, const ModelConfig& h, const std::string& family) {
  SCOPED_TRACE(family);
  EXPECT_EQ(g.model_type, h.model_type);
  EXPECT_EQ(g.vocab_size, h.vocab_size);
  EXPECT_EQ(g.hidden_size, h.hidden_size);
  EXPECT_EQ(g.num_layers, h.num_layers);
  EXPECT_EQ(g.num_heads, h.num_heads);
  EXPECT_EQ(g.num_kv_heads, h.num_kv_heads);
  EXPECT_EQ(g.head_dim, h.head_dim);
  EXPECT_EQ(g.qkv_bias, h.qkv_bias);
  EXPECT_EQ(int(g.qk_norm), int(h.qk_norm));
  EXPECT_EQ(g.q_lora_rank, h.q_lora_rank);
  EXPECT_EQ(g.kv_lora_rank, h.kv_lora_rank);
  EXPECT_EQ(g.qk_nope_dim, h.qk_nope_dim);
  EXPECT_EQ(g.qk_rope_dim, h.qk_rope_dim);
  EXPECT_EQ(g.v_head_dim, h.v_head_dim);
  if (h.has_dense()) {
    EXPECT_EQ(g.intermediate_size, h.intermediate_size);
  }
  EXPECT_EQ(g.moe_intermediate_size, h.moe_intermediate_size);
  EXPECT_EQ(g.num_experts, h.num_experts);
  EXPECT_EQ(g.top_k, h.top_k);
  EXPECT_EQ(g.shared_expert_size, h.shared_expert_size);
  EXPECT_EQ(g.shared_expert_gate, h.shared_expert_gate);
  for (int l = 0; l < h.num_layers; l++) EXPECT_EQ(g.layer_is_moe(l), h.layer_is_moe(l)) << "layer " << l;
  EXPECT_EQ(g.tie_word_embeddings, h.tie_word_embeddings);
  EXPECT_TRUE(close(g.rope_theta, h.rope_theta));
  EXPECT_TRUE(close(g.rms_norm_eps, h.rms_norm_eps));
  EXPECT_EQ(g.max_position_embeddings, h.max_position_embeddings);
  EXPECT_EQ(g.router_sigmoid, h.router_sigmoid);
  EXPECT_EQ(g.norm_topk_prob, h.norm_topk_prob);
  EXPECT_TRUE(close(g.routed_scaling_factor, h.routed_scaling_factor));
  EXPECT_EQ(g.topk_method, h.topk_method);
  EXPECT_EQ(g.n_group, h.n_group);
  EXPECT_EQ(g.topk_group, h.topk_group);
  EXPECT_EQ(g.router_bias, h.router_bias);
  EXPECT_TRUE(close(g.embedding_multiplier, h.embedding_multiplier));
  EXPECT_TRUE(close(g.residual_multiplier, h.residual_multiplier));
  EXPECT_TRUE(close(g.attention_scale(), h.attention_scale()));
  EXPECT_TRUE(close(g.logits_scaling, h.logits_scaling));
  // YaRN: the same frequencies and the same two scales (the file keeps llama.cpp's parameters).
  EXPECT_EQ(g.rope_scaling.yarn, h.rope_scaling.yarn);
  EXPECT_TRUE(close(g.rope_scaling.factor, h.rope_scaling.factor));
  EXPECT_TRUE(close(g.rope_scaling.rope_factor(), h.rope_scaling.rope_factor())) << g.rope_scaling.rope_factor();
  EXPECT_TRUE(close(g.rope_scaling.softmax_factor(), h.rope_scaling.softmax_factor()));
  if (h.rope_scaling.yarn) {
    EXPECT_EQ(g.rope_scaling.original_max_position, h.rope_scaling.original_max_position);
    EXPECT_TRUE(close(g.rope_scaling.beta_fast, h.rope_scaling.beta_fast));
    EXPECT_TRUE(close(g.rope_scaling.beta_slow, h.rope_scaling.beta_slow));
  }
}

class GgufExportFamily : public testing::TestWithParam<std::string> {};

// Exported to f32 and read back, each family computes what its HF directory computes.
TEST_P(GgufExportFamily, RoundTripsLogitsAndConfig) {
  const std::string src = kData + "/hf/" + GetParam();
  const std::string out = skytest::temp_dir("gguf-family-" + GetParam()) + "/m.gguf";
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  GgufExportReport rep = export_gguf(src, nullptr, out, o);
  EXPECT_GT(rep.tensors, 0u);

  const ModelConfig want_cfg = ModelConfig::load_file(src);
  const gguf::File f = gguf::File::open(out);
  EXPECT_EQ(f.get_string("general.architecture"), gguf_arch_of(want_cfg));
  const ModelConfig got_cfg = gguf_model_config(f);
  expect_same_config(got_cfg, want_cfg, GetParam());

  const InferModel hf = InferModel::load(src);
  const InferModel gg = InferModel::load(out);
  const std::vector<int32_t> ids = prompt(want_cfg.vocab_size);
  const std::vector<float> want = engine_logits(hf, ids), got = engine_logits(gg, ids);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LE(rel_rms(got, want), 1e-6) << GetParam();
}

// q8_0 (f16 where rows are not a multiple of 32): the quantized files read back too (Granite's
// stacked experts assembled from block rows, DeepSeek's kv_b from f16 halves). The bound is
// tests/test_hf_families.cpp's for fp8: these random routers have thin top-k margins, and a token
// whose experts change under rounding moves all its logits (qwen2_moe 0.14, deepseek_v3 0.10).
TEST_P(GgufExportFamily, Q8RoundTripsWithinRounding) {
  const std::string src = kData + "/hf/" + GetParam();
  const std::string out = skytest::temp_dir("gguf-family-q8-" + GetParam()) + "/m.gguf";
  GgufExportOptions o;
  o.type = GgufFileType::Q8_0;
  export_gguf(src, nullptr, out, o);
  const InferModel hf = InferModel::load(src);
  const InferModel gg = InferModel::load(out);
  const std::vector<int32_t> ids = prompt(hf.cfg.vocab_size);
  const std::vector<float> want = engine_logits(hf, ids), got = engine_logits(gg, ids);
  const double e = rel_rms(got, want);
  EXPECT_LE(e, 0.20) << GetParam();
  EXPECT_GT(e, 1e-4) << GetParam();  // it did quantize
}

INSTANTIATE_TEST_SUITE_P(Families, GgufExportFamily,
                         testing::Values("qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "granitemoeshared",
                                         "deepseek_v2", "deepseek_v2_lite", "deepseek_v3", "deepseek_v3_half"));

// The DeepSeek layout llama.cpp loads: MLA as one KV head over the latent, kv_b split per head,
// the selection bias as exp_probs_b, and the metadata its loader requires.
TEST(GgufExport, DeepSeekLayout) {
  const std::string out = skytest::temp_dir("gguf-ds-layout") + "/m.gguf";
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  export_gguf(kData + "/hf/deepseek_v3", nullptr, out, o);
  const gguf::File f = gguf::File::open(out);
  const ModelConfig c = ModelConfig::load_file(kData + "/hf/deepseek_v3");
  EXPECT_EQ(f.get_uint("deepseek2.attention.head_count_kv"), 1u);
  EXPECT_EQ(f.get_uint("deepseek2.attention.key_length"), uint64_t(c.kv_lora_rank + c.qk_rope_dim));
  EXPECT_EQ(f.get_uint("deepseek2.attention.value_length"), uint64_t(c.kv_lora_rank));
  EXPECT_EQ(f.get_uint("deepseek2.attention.key_length_mla"), uint64_t(c.head_dim));
  EXPECT_EQ(f.get_uint("deepseek2.attention.value_length_mla"), uint64_t(c.v_head_dim));
  EXPECT_EQ(f.get_uint("deepseek2.rope.dimension_count"), uint64_t(c.qk_rope_dim));
  EXPECT_EQ(f.get_uint("deepseek2.leading_dense_block_count"), uint64_t(c.first_dense_layers));
  EXPECT_EQ(f.get_uint("deepseek2.expert_gating_func"), 2u);
  EXPECT_EQ(f.get_uint("deepseek2.expert_group_count"), uint64_t(c.n_group));
  EXPECT_EQ(f.get_string("deepseek2.rope.scaling.type"), "yarn");
  EXPECT_EQ(f.tensor("blk.1.attn_k_b.weight").ne, (std::vector<int64_t>{c.qk_nope_dim, c.kv_lora_rank, c.num_heads}));
  EXPECT_EQ(f.tensor("blk.1.attn_v_b.weight").ne, (std::vector<int64_t>{c.kv_lora_rank, c.v_head_dim, c.num_heads}));
  EXPECT_EQ(f.tensor("blk.1.exp_probs_b.bias").ne, (std::vector<int64_t>{c.num_experts}));
  EXPECT_EQ(f.find_tensor("blk.1.attn_kv_b.weight"), nullptr);
  EXPECT_NE(f.find_tensor("blk.0.ffn_gate.weight"), nullptr);  // the leading dense layer
  EXPECT_EQ(f.find_tensor("blk.0.exp_probs_b.bias"), nullptr);

  // kv_b split and joined again is the identity, and the key half is transposed per head.
  std::vector<float> kvb(size_t(c.num_heads) * (c.qk_nope_dim + c.v_head_dim) * c.kv_lora_rank);
  for (size_t i = 0; i < kvb.size(); i++) kvb[i] = float(i);
  std::vector<float> kb(size_t(c.num_heads) * c.kv_lora_rank * c.qk_nope_dim),
      vb(size_t(c.num_heads) * c.v_head_dim * c.kv_lora_rank), back(kvb.size());
  split_kv_b(c, kvb.data(), kb.data(), vb.data());
  join_kv_b(c, kb.data(), vb.data(), back.data());
  EXPECT_EQ(back, kvb);
  // Head 1, key row i, latent column j sits at k_b[(1 * r + j) * nope + i].
  const int64_t r = c.kv_lora_rank, nope = c.qk_nope_dim, hd = nope + c.v_head_dim;
  EXPECT_EQ(kb[size_t((1 * r + 5) * nope + 3)], kvb[size_t((1 * hd + 3) * r + 5)]);
  EXPECT_EQ(vb[size_t(1 * c.v_head_dim * r + 2 * r + 7)], kvb[size_t((1 * hd + nope + 2) * r + 7)]);
}

// Granite's multipliers become llama.cpp's scale keys; q/k rows are in llama.cpp's RoPE order.
TEST(GgufExport, GraniteLayout) {
  const std::string out = skytest::temp_dir("gguf-granite-layout") + "/m.gguf";
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  export_gguf(kData + "/hf/granitemoeshared", nullptr, out, o);
  const gguf::File f = gguf::File::open(out);
  const ModelConfig c = ModelConfig::load_file(kData + "/hf/granitemoeshared");
  EXPECT_FLOAT_EQ(float(f.get_float("granitemoe.logit_scale")), float(c.logits_scaling));
  EXPECT_FLOAT_EQ(float(f.get_float("granitemoe.attention.scale")), float(c.attention_scale()));
  EXPECT_FLOAT_EQ(float(f.get_float("granitemoe.embedding_scale")), float(c.embedding_multiplier));
  EXPECT_FLOAT_EQ(float(f.get_float("granitemoe.residual_scale")), float(c.residual_multiplier));
  EXPECT_EQ(f.get_uint("granitemoe.feed_forward_length"), uint64_t(c.moe_intermediate_size));
  EXPECT_EQ(f.get_uint("granitemoe.expert_shared_feed_forward_length"), uint64_t(c.shared_expert_size));
  EXPECT_EQ(f.tensor("blk.0.ffn_up_shexp.weight").ne, (std::vector<int64_t>{c.hidden_size, c.shared_expert_size}));
  EXPECT_EQ(f.tensor("blk.0.ffn_gate_exps.weight").ne,
            (std::vector<int64_t>{c.hidden_size, c.moe_intermediate_size, c.num_experts}));
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);  // tied
  // Row 1 of head 0 in the file is HF row head_dim/2 (the pair partner of row 0).
  const Model m = Model::load(kData + "/hf/granitemoeshared");
  const auto* q = static_cast<const float*>(f.tensor("blk.0.attn_q.weight").data);
  const float* hq = m.w.layers[0].wq;
  EXPECT_EQ(q[1 * c.hidden_size + 4], hq[(c.head_dim / 2) * c.hidden_size + 4]);
  EXPECT_EQ(q[2 * c.hidden_size + 4], hq[1 * c.hidden_size + 4]);
}

// YaRN parameters through llama.cpp's two knobs (log multiplier, attention factor) and back.
TEST(GgufArch, YarnScalesRoundTrip) {
  for (double ms : {0.0, 0.707, 1.0})
    for (double all : {0.0, 0.707, 0.8, 1.0}) {
      RopeScaling y;
      y.yarn = true, y.factor = 40, y.mscale = ms, y.mscale_all_dim = all;
      const YarnGguf g = yarn_to_gguf(y);
      RopeScaling back;
      back.factor = 40;
      yarn_from_gguf(g, back);
      EXPECT_NEAR(back.rope_factor(), y.rope_factor(), 1e-12) << ms << " " << all;
      EXPECT_NEAR(back.softmax_factor(), y.softmax_factor(), 1e-12) << ms << " " << all;
      // llama.cpp's arithmetic (src/llama-context.cpp, src/models/deepseek2.cpp) on the stored pair.
      const double m1 = 1 + 0.1 * std::log(40.0);
      const double cos_sin = g.log_mul != 0 ? g.attn_factor : g.attn_factor * m1;
      const double kq = g.log_mul != 0 ? g.attn_factor * (1 + 0.1 * g.log_mul * std::log(40.0)) : g.attn_factor * m1;
      EXPECT_NEAR(cos_sin, y.rope_factor(), 1e-12);
      EXPECT_NEAR(kq * kq, y.softmax_factor(), 1e-12);
      if (ms == all && ms != 0) {
        EXPECT_EQ(g.attn_factor, 1.0);  // DeepSeek's own configs: one key, as the converter writes
      }
    }
}

// What GGUF cannot say is refused before anything is written, naming the setting.
TEST(GgufExport, RefusesWhatCannotBeWritten) {
  const std::string dir = skytest::temp_dir("gguf-family-bad");
  ModelConfig c = ModelConfig::load_file(kData + "/hf/deepseek_v2");
  c.rope_scaling.truncate = false;
  Model m = Model::random(c, 1);
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  EXPECT_NE(error_of([&] { export_gguf(m, nullptr, dir + "/t.gguf", o); }).find("rope_scaling truncate false"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir + "/t.gguf"));
  ModelConfig s = ModelConfig::load_file(kData + "/hf/deepseek_v2");
  s.shared_expert_size = s.moe_intermediate_size + 1;
  Model ms = Model::random(s, 1);
  EXPECT_NE(error_of([&] { export_gguf(ms, nullptr, dir + "/s.gguf", o); }).find("is not a multiple of the experts' width"),
            std::string::npos);
}

// A deepseek2 file without its split kv_b (nor attn_kv_b) names the tensors it needs.
TEST(GgufModelFamilies, MissingTensorsAreNamed) {
  const std::string dir = skytest::temp_dir("gguf-family-missing");
  const std::string src = kData + "/hf/deepseek_v2_lite";
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  export_gguf(src, nullptr, dir + "/full.gguf", o);
  // Copy the file's metadata and every tensor but one into a new file.
  const gguf::File f = gguf::File::open(dir + "/full.gguf");
  auto copy_without = [&](const std::string& drop, const std::string& out) {
    gguf::Writer w;
    // The keys the reader needs (the rest keep their defaults).
    for (const char* k : {"block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
                          "attention.kv_lora_rank", "rope.dimension_count", "attention.key_length_mla",
                          "attention.value_length_mla", "expert_count", "expert_used_count",
                          "expert_feed_forward_length", "feed_forward_length", "expert_shared_count",
                          "leading_dense_block_count", "expert_gating_func"})
      w.add_u32(std::string("deepseek2.") + k, uint32_t(f.get_uint(std::string("deepseek2.") + k)));
    w.add_string("general.architecture", "deepseek2");
    for (const gguf::TensorEntry& t : f.tensors()) {
      if (t.name == drop) continue;
      const uint8_t* p = static_cast<const uint8_t*>(t.data);
      const size_t n = size_t(t.numel()) * 4;
      w.add_tensor(t.name, gguf::TensorType::F32, t.ne, [p, n] { return std::vector<uint8_t>(p, p + n); });
    }
    w.write(out);
    return out;
  };
  EXPECT_EQ(error_of([&] { InferModel::load(copy_without("", dir + "/same.gguf")); }), "");
  const std::string e = error_of([&] { InferModel::load(copy_without("blk.1.attn_v_b.weight", dir + "/nov.gguf")); });
  EXPECT_NE(e.find("'blk.1.attn_k_b.weight' and 'blk.1.attn_v_b.weight' (or 'blk.1.attn_kv_b.weight') are missing"),
            std::string::npos)
      << e;
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE vocabularies (tokenizer.json -> llama.cpp's "gpt2" vocabulary)
// ---------------------------------------------------------------------------------------------

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> sample_texts() {
  std::vector<std::string> out;
  std::istringstream in(slurp(kData + "/hf_tokenizers/test_text.txt"));
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  out.push_back("  two  spaces,\ttabs\nand newlines\n\n  ");
  out.push_back("I'm here, we'll see 12345 numbers 1 22 333 4444; CAPS'LL DON'T");
  out.push_back("<|endoftext|>hi<|im_start|>user\n<think>x</think>");
  out.push_back("混合 text 日本語のテキスト カタカナ 1234567 !!!abc \u00e9t\u00e9");
  return out;
}

// A tiny model whose embedding has a few rows more than the tokenizer has ids.
Model model_for(const Tokenizer& tok) {
  ModelConfig c = ModelConfig::load_file(kData + "/hf/qwen2_moe");
  c.vocab_size = tok.vocab_size() + 3;
  c.bos_token_id = tok.bos_id() >= 0 ? tok.bos_id() : 0;
  c.eos_token_id = tok.eos_id() >= 0 ? tok.eos_id() : 0;
  return Model::random(c, 7);
}

struct VocabCase {
  const char* dir;
  const char* pre;  // tokenizer.ggml.pre expected
  bool add_bos;
};

class GgufExportVocab : public testing::TestWithParam<VocabCase> {};

// The exported vocabulary, read back by skymoe, gives the tokenizer.json's ids; the keys say what
// llama.cpp needs (its pre-tokenizer name, token types, merges, add_bos_token).
TEST_P(GgufExportVocab, EncodesAsTokenizerJson) {
  const VocabCase vc = GetParam();
  const std::string out = skytest::temp_dir(std::string("gguf-vocab-") + vc.dir) + "/m.gguf";
  const Tokenizer h = Tokenizer::load(kData + "/hf_tokenizers/" + vc.dir + "/tokenizer.json");
  const Model m = model_for(h);
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  const GgufExportReport rep = export_gguf(m, &h, out, o);
  EXPECT_EQ(rep.vocab, m.cfg.vocab_size);

  const gguf::File f = gguf::File::open(out);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), vc.pre);
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_bos_token"), vc.add_bos);
  EXPECT_FALSE(f.get_strings("tokenizer.ggml.merges").empty());
  const std::vector<int64_t> types = f.get_ints("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), size_t(m.cfg.vocab_size));
  EXPECT_EQ(types.back(), 5);  // a padding row
  EXPECT_EQ(f.get_strings("tokenizer.ggml.tokens").back(), fmt::format("[PAD{}]", m.cfg.vocab_size - 1));
  if (h.bos_id() >= 0) {
    EXPECT_EQ(types[size_t(h.bos_id())], 3);  // special added tokens are control
  }

  const Tokenizer g = Tokenizer::load(out);
  EXPECT_EQ(g.kind(), Tokenizer::Kind::HfBpe);
  int n = 0;
  for (const std::string& s : sample_texts()) {
    const std::vector<int32_t> a = g.encode(s), b = h.encode(s);
    EXPECT_EQ(a, b) << vc.dir << " text: " << s;
    EXPECT_EQ(g.decode(a), h.decode(b));
    n++;
  }
  EXPECT_GT(n, 5);
}

INSTANTIATE_TEST_SUITE_P(Vocabs, GgufExportVocab,
                         testing::Values(VocabCase{"gpt2", "gpt-2", false}, VocabCase{"qwen2", "qwen2", false},
                                         VocabCase{"llama3", "llama-bpe", true},
                                         VocabCase{"deepseek", "deepseek-v3", false}),
                         [](const testing::TestParamInfo<VocabCase>& i) { return std::string(i.param.dir); });

// Qwen2's user-defined added tokens (<think>) stay user-defined, and the chat template travels.
TEST(GgufExportVocabExtras, AddedTokensAndChatTemplate) {
  const std::string dir = skytest::temp_dir("gguf-vocab-tpl");
  const std::string src = kData + "/hf_tokenizers/qwen2";
  std::filesystem::copy_file(src + "/tokenizer.json", dir + "/tokenizer.json");
  nlohmann::json cfg = nlohmann::json::parse(slurp(src + "/tokenizer_config.json"));
  const std::string tpl = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
  cfg["chat_template"] = tpl;
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump();
  const Tokenizer h = Tokenizer::load(dir + "/tokenizer.json");
  const Model m = model_for(h);
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  export_gguf(m, &h, dir + "/m.gguf", o);
  const gguf::File f = gguf::File::open(dir + "/m.gguf");
  EXPECT_EQ(f.get_string("tokenizer.chat_template"), tpl);
  const std::vector<std::string> tokens = f.get_strings("tokenizer.ggml.tokens");
  const std::vector<int64_t> types = f.get_ints("tokenizer.ggml.token_type");
  EXPECT_EQ(tokens[600], "<think>");
  EXPECT_EQ(types[600], 4);  // user-defined: added, not special
  EXPECT_EQ(tokens[1], "<|im_start|>");
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[100], 1);
  EXPECT_EQ(f.get_uint("tokenizer.ggml.padding_token_id"), uint64_t(h.pad_id()));
}

// Tokenizers llama.cpp's "gpt2" vocabulary cannot express are refused, naming why.
TEST(GgufExportVocabExtras, RefusesWhatItCannotWrite) {
  const std::string dir = skytest::temp_dir("gguf-vocab-bad");
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  auto err = [&](const std::string& which) {
    const Tokenizer h = Tokenizer::load(kData + "/hf_tokenizers/" + which + "/tokenizer.json");
    const Model m = model_for(h);
    return error_of([&] { export_gguf(m, &h, dir + "/" + which + ".gguf", o); });
  };
  const std::string mixtral = err("mixtral");
  EXPECT_NE(mixtral.find("byte_fallback"), std::string::npos) << mixtral;
  EXPECT_NE(mixtral.find("tokenizer.model"), std::string::npos) << mixtral;
  const std::string splits = err("splits");
  EXPECT_NE(splits.find("is not a Split by a regex (Isolated)"), std::string::npos) << splits;
  EXPECT_FALSE(std::filesystem::exists(dir + "/splits.gguf"));
  // An unknown regex is named.
  nlohmann::json j = nlohmann::json::parse(slurp(kData + "/hf_tokenizers/qwen2/tokenizer.json"));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\p{N}";
  std::ofstream(dir + "/tokenizer.json") << j.dump();
  const Tokenizer odd = Tokenizer::load(dir + "/tokenizer.json");
  const Model m = model_for(odd);
  const std::string e = error_of([&] { export_gguf(m, &odd, dir + "/odd.gguf", o); });
  EXPECT_NE(e.find("'\\p{L}+|\\p{N}'"), std::string::npos) << e;
  EXPECT_NE(e.find("no llama.cpp pre-tokenizer name"), std::string::npos) << e;
}

}  // namespace
