// GGUF quantization: the per-tensor type mix (io/gguf_quant_mix, llama.cpp's llama_tensor_get_type
// rules written out again here as tables), and `skymoe quantize --to q8_0|q6_k|q4_k_m` /
// `export gguf --type ...` end to end: a model directory (and a .gguf) quantized, each tensor's type
// checked against the mix, the file loaded back by skymoe with its blocks kept, and its logits
// compared with the f32 model's under stated tolerances.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "infer/batch_forward.h"
#include "infer/infer_model.h"
#include "io/gguf_quant_mix.h"
#include "io/gguf_reader.h"
#include "model/model.h"
#include "model_ref.h"
#include "ref.h"
#include "logits_check.h"

using namespace sky;
namespace fs = std::filesystem;

namespace {

// ---- The mix, as a table ----

GgufTensorChoice choose(GgufFileType ft, const std::string& name, int64_t row, int n_layers = 32, int experts = 0,
                        bool tied = false) {
  int layer = name.starts_with("blk.") ? std::stoi(name.substr(4)) : -1;
  return gguf_tensor_type(ft, name, layer, row, {n_layers, experts, tied});
}
BlockType type_of(GgufFileType ft, const std::string& name, int64_t row, int n_layers = 32, int experts = 0,
                  bool tied = false) {
  return choose(ft, name, row, n_layers, experts, tied).type;
}

TEST(GgufMix, Q4KMFollowsLlamaCpp) {
  const auto Q4 = GgufFileType::Q4_K_M;
  // 32 layers: the first and last eighth (0-3, 28-31) and every third layer from 4 on (6, 9, ..., 27)
  // get q6_K attn_v and ffn_down.
  const std::set<int> more = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  for (int l = 0; l < 32; l++) {
    const std::string b = "blk." + std::to_string(l) + ".";
    const BlockType hi = more.count(l) ? BlockType::Q6_K : BlockType::Q4_K;
    EXPECT_EQ(type_of(Q4, b + "attn_v.weight", 4096), hi) << l;
    EXPECT_EQ(type_of(Q4, b + "ffn_down.weight", 11008), hi) << l;  // 11008 = 43 * 256
    EXPECT_EQ(type_of(Q4, b + "ffn_down_exps.weight", 14336, 32, 4), hi) << l;
    EXPECT_EQ(type_of(Q4, b + "ffn_down_shexp.weight", 1024, 32, 4), hi) << l;
    for (const char* t : {"attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "ffn_gate_exps", "ffn_up_exps"})
      EXPECT_EQ(type_of(Q4, b + t + ".weight", 4096, 32, 4), BlockType::Q4_K) << b << t;
    // Never quantized: norms, the router, biases.
    for (const char* t : {"attn_norm.weight", "ffn_norm.weight", "ffn_gate_inp.weight", "attn_q.bias",
                          "attn_k_norm.weight", "ffn_gate_inp_shexp.weight"})
      EXPECT_EQ(type_of(Q4, b + t, 4096, 32, 4), BlockType::F32) << b << t;
  }
  // Eight experts (Mixtral): attn_v and attn_k q8_0 everywhere, attn_output q5_K.
  EXPECT_EQ(type_of(Q4, "blk.5.attn_v.weight", 4096, 32, 8), BlockType::Q8_0);
  EXPECT_EQ(type_of(Q4, "blk.6.attn_v.weight", 4096, 32, 8), BlockType::Q8_0);
  EXPECT_EQ(type_of(Q4, "blk.5.attn_k.weight", 4096, 32, 8), BlockType::Q8_0);
  EXPECT_EQ(type_of(Q4, "blk.5.attn_output.weight", 4096, 32, 8), BlockType::Q5_K);
  EXPECT_EQ(type_of(Q4, "blk.5.attn_output.weight", 4096, 32, 16), BlockType::Q4_K);
  // Embedding: q4_K; head: q6_K; a tied embedding is the head.
  EXPECT_EQ(type_of(Q4, "token_embd.weight", 4096), BlockType::Q4_K);
  EXPECT_EQ(type_of(Q4, "output.weight", 4096), BlockType::Q6_K);
  EXPECT_EQ(type_of(Q4, "token_embd.weight", 4096, 32, 0, true), BlockType::Q6_K);
  // Rows not a multiple of 256: the head goes to q8_0; the rest fall back as llama.cpp does.
  EXPECT_EQ(type_of(Q4, "output.weight", 4000), BlockType::Q8_0);
  GgufTensorChoice c = choose(Q4, "blk.4.ffn_up.weight", 96);
  EXPECT_EQ(c.type, BlockType::Q5_0);
  EXPECT_EQ(c.wanted, BlockType::Q4_K);
  EXPECT_TRUE(c.fell_back());
  EXPECT_EQ(type_of(Q4, "blk.0.ffn_down.weight", 96), BlockType::Q8_0);      // q6_K -> q8_0
  EXPECT_EQ(type_of(Q4, "blk.0.attn_output.weight", 96, 32, 8), BlockType::Q5_1);  // q5_K -> q5_1
  EXPECT_EQ(type_of(Q4, "blk.4.ffn_up.weight", 100), BlockType::F16);         // not even 32
  EXPECT_FALSE(choose(Q4, "blk.4.ffn_up.weight", 512).fell_back());
}

TEST(GgufMix, Q6KAndQ8AndPlainTypes) {
  for (const char* t : {"blk.0.attn_v.weight", "blk.5.ffn_down_exps.weight", "token_embd.weight", "output.weight"}) {
    EXPECT_EQ(type_of(GgufFileType::Q6_K, t, 4096, 32, 4), BlockType::Q6_K) << t;
    EXPECT_EQ(type_of(GgufFileType::Q8_0, t, 4096, 32, 4), BlockType::Q8_0) << t;
    EXPECT_EQ(type_of(GgufFileType::F16, t, 4096, 32, 4), BlockType::F16) << t;
    EXPECT_EQ(type_of(GgufFileType::F32, t, 4096, 32, 4), BlockType::F32) << t;
  }
  EXPECT_EQ(type_of(GgufFileType::Q6_K, "blk.1.attn_k.weight", 4096, 32, 8), BlockType::Q8_0);
  EXPECT_EQ(type_of(GgufFileType::Q6_K, "blk.1.ffn_up.weight", 96), BlockType::Q8_0);
  EXPECT_EQ(type_of(GgufFileType::Q8_0, "blk.1.ffn_up.weight", 100), BlockType::F16);
  EXPECT_EQ(type_of(GgufFileType::F16, "blk.1.ffn_norm.weight", 4096), BlockType::F32);
  EXPECT_EQ(gguf_llama_ftype(GgufFileType::Q4_K_M), 15u);
  EXPECT_EQ(gguf_llama_ftype(GgufFileType::Q6_K), 18u);
  EXPECT_EQ(gguf_llama_ftype(GgufFileType::Q8_0), 7u);
  EXPECT_EQ(parse_gguf_file_type("q4_k_m"), GgufFileType::Q4_K_M);
  try {
    parse_gguf_file_type("q4_k_s");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_k_s"), std::string::npos) << e.what();
  }
}

// ---- End to end ----

// A Mixtral-style model whose rows fit the K types' 256-value blocks (hidden 256), except the
// expert width 96, which exercises the fallbacks on ffn_down. Eight layers: the q4_k_m
// "more bits" layers are 0, 3, 6, 7.
ModelConfig quant_config() {
  ModelConfig c = ModelConfig::preset("tiny");
  c.model_type = "mixtral";
  c.vocab_size = 300;
  c.hidden_size = 256;
  c.num_layers = 8;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.intermediate_size = c.moe_intermediate_size = 96;
  c.num_experts = 4;
  c.top_k = 2;
  c.logits_norm = false;  // GGUF cannot express it (docs/gguf.md)
  c.max_position_embeddings = 256;
  return c;
}

const std::set<int> kMoreBits = {0, 3, 6, 7};

// The expected type of each tensor of quant_config() written as `ft`.
BlockType expected_type(const std::string& ft, const std::string& name) {
  if (name.find("_norm.") != std::string::npos || name.find("ffn_gate_inp") != std::string::npos)
    return BlockType::F32;
  const int layer = name.starts_with("blk.") ? std::stoi(name.substr(4)) : -1;
  const bool down = name.find("ffn_down") != std::string::npos;  // rows of 96
  if (ft == "q8_0") return BlockType::Q8_0;
  if (ft == "q6_k") return down ? BlockType::Q8_0 : BlockType::Q6_K;
  if (name == "output.weight") return BlockType::Q6_K;
  if (down) return kMoreBits.count(layer) ? BlockType::Q8_0 : BlockType::Q5_0;  // q6_K / q4_K fallbacks
  if (name.find("attn_v.") != std::string::npos && kMoreBits.count(layer)) return BlockType::Q6_K;
  return BlockType::Q4_K;
}

std::vector<float> logits(const InferModel& im, const std::vector<int32_t>& t) {
  const int V = im.cfg.vocab_size, T = int(t.size());
  SeqKV kv;
  kv.init(im.cfg, T, im.kv_bf16);
  BatchScratch s;
  std::vector<float> all(size_t(T) * V), last(static_cast<size_t>(V));
  batch_forward(im, {{&kv, t.data(), T}}, last.data(), s, all.data());
  return all;
}

using skytest::rel_rms;

std::string run_ok(const std::string& args) {
  std::string out;
  const int rc = skytest::shell(std::string(SKYMOE_BIN) + " " + args, &out);
  EXPECT_EQ(rc, 0) << args << "\n" << out;
  return out;
}

struct QuantCli : testing::Test {
  static void SetUpTestSuite() {
    root = new std::string(skytest::temp_dir("gguf-quant"));
    model = new Model(skytest::scaled_model(quant_config(), 11, 12, 0.02, 0.1));
    model->save(*root + "/f32");
    Rng r(std::random_device{}());
    for (int i = 0; i < 24; i++) tokens.push_back(int32_t(r.below(uint64_t(model->cfg.vocab_size))));
    ref = logits(InferModel::from_model(*model, DType::F32), tokens);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root);
    delete model;
    delete root;
  }
  static inline std::string* root = nullptr;
  static inline Model* model = nullptr;
  static inline std::vector<int32_t> tokens;
  static inline std::vector<float> ref;
};

// Stated tolerances on the logits' relative RMS error against the f32 model (24 fresh random
// tokens, eight layers of N(0, 0.02) weights): q8_0 5%, q6_k 12%, q4_k_m 35%. Measured: 1.5-2.3%,
// 4.9-6.7%, 16-18.5%, about 3x the weights' own relative RMS error (0.54%, 1.8%, 7.4% for Gaussian
// values: test_block_quant), as ~40 rounded matrices in sequence add up; a misplaced bit or scale
// gives errors near 100%. The encoders' precision itself is checked per value in test_block_quant.
TEST_F(QuantCli, QuantizesToEachTypeAndLoadsBack) {
  const std::pair<std::string, double> cases[] = {{"q8_0", 0.05}, {"q6_k", 0.12}, {"q4_k_m", 0.35}};
  const uint32_t ftypes[] = {7, 18, 15};
  std::vector<double> errors;
  for (size_t k = 0; k < 3; k++) {
    const auto& [ft, tol] = cases[k];
    SCOPED_TRACE(ft);
    const std::string out = *root + "/m-" + ft + ".gguf";
    const std::string msg = run_ok("quantize --model " + *root + "/f32 --to " + ft + " --out " + out + " --no-tokenizer");
    EXPECT_NE(msg.find("wrote " + out + " (" + ft + ")"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bits/weight"), std::string::npos) << msg;
    if (ft != "q8_0") {  // ffn_down's rows of 96 do not fit 256-value blocks
      EXPECT_NE(msg.find("as llama.cpp falls back"), std::string::npos) << msg;
    }

    gguf::File f = gguf::File::open(out);
    EXPECT_EQ(f.get_uint("general.file_type"), ftypes[k]);
    size_t checked = 0;
    for (const gguf::TensorEntry& t : f.tensors()) {
      EXPECT_EQ(t.type, expected_type(ft, t.name)) << t.name << " is " << block_type_name(t.type);
      checked++;
    }
    EXPECT_EQ(checked, size_t(3 + 8 * 10));

    // As stored (the int8-dot kernels, activations rounded to int8 blocks), and decoded to f32 on
    // load (the weights' rounding alone): the kernels add little to what the file's values do.
    const double e = rel_rms(logits(InferModel::load(out), tokens), ref);
    InferLoadOptions lo;
    lo.dtype = "f32";
    const double e_dec = rel_rms(logits(InferModel::load(out, lo), tokens), ref);
    std::printf("  %-7s logits relative RMS error vs f32: %.4f as stored, %.4f decoded to f32 (tolerance %.2f), "
                "%.2f MiB\n", ft.c_str(), e, e_dec, tol, double(fs::file_size(out)) / 1048576.0);
    EXPECT_LT(e, tol);
    EXPECT_GT(e_dec, 0.0);
    EXPECT_LT(std::fabs(e - e_dec), 0.25 * e_dec + 0.005);
    errors.push_back(e);
  }
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_LT(errors[0], errors[1]);  // fewer bits, more error
  EXPECT_LT(errors[1], errors[2]);
}

TEST_F(QuantCli, ExportTypeAndGgufSourceAgree) {
  // export gguf --type q4_k_m writes the same tensors as quantize --to q4_k_m.
  const std::string a = *root + "/e.gguf", b = *root + "/q.gguf";
  run_ok("export gguf --model " + *root + "/f32 --out " + a + " --type q4_k_m --no-tokenizer --name x");
  run_ok("quantize --model " + *root + "/f32 --out " + b + " --to q4_k_m --no-tokenizer --name x");
  gguf::File fa = gguf::File::open(a), fb = gguf::File::open(b);
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (size_t i = 0; i < fa.tensors().size(); i++) {
    const auto &ta = fa.tensors()[i], &tb = fb.tensors()[i];
    EXPECT_EQ(ta.name, tb.name);
    EXPECT_EQ(ta.type, tb.type) << ta.name;
    ASSERT_EQ(ta.nbytes, tb.nbytes) << ta.name;
    EXPECT_EQ(std::memcmp(ta.data, tb.data, ta.nbytes), 0) << ta.name;
  }
  // A .gguf as the source: decoded to f32 (q/k rows back in HF order), then re-quantized. From the
  // f16 export, q6_k stays within the q6_k tolerance of the f32 model.
  const std::string f16 = *root + "/h.gguf", q6 = *root + "/h-q6.gguf";
  run_ok("export gguf --model " + *root + "/f32 --out " + f16 + " --type f16 --no-tokenizer");
  run_ok("quantize --model " + f16 + " --to q6_k --out " + q6 + " --no-tokenizer");
  gguf::File f = gguf::File::open(q6);
  EXPECT_EQ(f.get_uint("general.file_type"), 18u);
  EXPECT_EQ(f.tensor("blk.2.attn_q.weight").type, BlockType::Q6_K);
  EXPECT_LT(rel_rms(logits(InferModel::load(q6), tokens), ref), 0.12);
}

TEST_F(QuantCli, BadFlagsFailClearly) {
  std::string out;
  const std::string m = *root + "/f32";
  EXPECT_NE(skytest::shell(std::string(SKYMOE_BIN) + " quantize --model " + m + " --to q4_k_m --out " + *root +
                               "/x.gguf --scale per-channel --no-tokenizer", &out), 0);
  EXPECT_NE(out.find("--scale applies to --to fp8/bf16"), std::string::npos) << out;
  EXPECT_NE(skytest::shell(std::string(SKYMOE_BIN) + " quantize --model " + m + " --to fp8 --out " + *root +
                               "/x --no-tokenizer", &out), 0);
  EXPECT_NE(out.find("--no-tokenizer applies to the GGUF outputs"), std::string::npos) << out;
  EXPECT_NE(skytest::shell(std::string(SKYMOE_BIN) + " quantize --model " + m + " --to q3_k --out " + *root +
                               "/x.gguf", &out), 0);
  EXPECT_NE(out.find("q3_k"), std::string::npos) << out;
  // No tokenizer in the directory: the GGUF writer says what to pass.
  EXPECT_NE(skytest::shell(std::string(SKYMOE_BIN) + " quantize --model " + m + " --to q8_0 --out " + *root +
                               "/x.gguf", &out), 0);
  EXPECT_NE(out.find("--no-tokenizer"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(*root + "/x.gguf"));
}

}  // namespace
