// GGUF as a model source: the reader on files the PyPI `gguf` package wrote
// (tests/make_gguf_fixtures.py, committed under tests/data/gguf) and on hostile bytes; block
// dequantization against gguf's reference and a plain reading of the spec; models converted from
// the HF fixtures against transformers' logits; a Mixtral-style llama in f32/q8_0/q4_0 against the
// same weights in safetensors; skymoe's own export read back; tokenizers from tokenizer.ggml.*; the
// CLI on .gguf files.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/block_quant.h"
#include "core/dtype.h"
#include "core/error.h"
#include "backend/backend.h"
#include "infer/batch_forward.h"
#include "io/chat_template.h"
#include "infer/infer_model.h"
#include "io/gguf.h"
#include "io/gguf_export.h"
#include "io/gguf_reader.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/gguf_model.h"
#include "model/model.h"
#include "ref.h"
#include "logits_check.h"

extern char** environ;

using namespace sky;
namespace fs = std::filesystem;

namespace {

const std::string kData = std::string(SKYMOE_TEST_DATA);
const std::string kG = kData + "/gguf/";

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

using skytest::engine_logits;
using skytest::prompt;
using skytest::rel_rms;

struct RunResult {
  int code = -1, signal = 0;
  std::string out, err;
  std::string describe() const {
    return "exit " + std::to_string(code) + " signal " + std::to_string(signal) + "\nstdout: " + out + "\nstderr: " + err;
  }
};

RunResult run(const std::vector<std::string>& args) {
  static const std::string io = skytest::temp_dir("gguf-model-cli-io");
  std::vector<std::string> full = {SKYMOE_BIN};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, (io + "/out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, (io + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  RunResult r;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return r;
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = slurp(io + "/out");
  r.err = slurp(io + "/err");
  return r;
}

using skytest::error_of;

// ---------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------

TEST(GgufReader, ReadsWhatGgufPyWrote) {
  const gguf::File f = gguf::File::open(kG + "qwen3_moe.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "qwen3moe");
  EXPECT_EQ(f.get_uint("qwen3moe.block_count"), 2u);
  EXPECT_EQ(f.get_uint("qwen3moe.attention.key_length"), 12u);
  EXPECT_FLOAT_EQ(float(f.get_float("qwen3moe.rope.freq_base")), 10000.0f);
  const gguf::TensorEntry& t = f.tensor("blk.0.ffn_gate_exps.weight");
  EXPECT_EQ(t.ne, (std::vector<int64_t>{32, 8, 16}));
  EXPECT_EQ(t.type, BlockType::F32);
  EXPECT_EQ(t.file_offset % f.alignment(), 0u);
  EXPECT_TRUE(gguf::File::is_gguf(kG + "qwen3_moe.gguf"));
  EXPECT_FALSE(gguf::File::is_gguf(kData + "/hf/qwen3_moe/config.json"));
  // Typed reads name the key.
  EXPECT_NE(error_of([&] { f.get_string("qwen3moe.block_count"); }).find("'qwen3moe.block_count' is u32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f.get("nope.key"); }).find("no 'nope.key'"), std::string::npos);

  const gguf::File tok = gguf::File::open(kG + "tok-qwen2.gguf");
  EXPECT_EQ(tok.get_string("tokenizer.ggml.pre"), "qwen2");
  EXPECT_GT(tok.get_strings("tokenizer.ggml.tokens").size(), 500u);
  EXPECT_EQ(tok.get_ints("tokenizer.ggml.token_type").size(), tok.get_strings("tokenizer.ggml.tokens").size());
  EXPECT_EQ(tok.describe("tokenizer.ggml.merges").rfind("[array of ", 0), 0u);
}

// A small valid file from skymoe's writer, then every truncation and a set of targeted corruptions:
// each must be a sky::Error (naming what is wrong), never a crash.
TEST(GgufReader, HostileFilesGiveErrors) {
  const std::string dir = skytest::temp_dir("gguf-hostile");
  gguf::Writer w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 1);
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "c"});
  w.add_f32_array("tokenizer.ggml.scores", {0, 1, 2});
  std::vector<float> x(64, 0.5f);
  w.add_tensor("a.weight", gguf::TensorType::F32, {32, 2}, [&] { return gguf::encode(gguf::TensorType::F32, x.data(), 64); });
  w.add_tensor("b.weight", gguf::TensorType::Q8_0, {32, 2}, [&] { return gguf::encode(gguf::TensorType::Q8_0, x.data(), 64); });
  const std::string good_path = dir + "/good.gguf";
  w.write(good_path);
  const std::string good = slurp(good_path);
  uint64_t data_end = 0;  // past it only padding follows: a file cut there still holds every tensor
  {
    const gguf::File g = gguf::File::open(good_path);
    for (const auto& t : g.tensors()) data_end = std::max(data_end, t.file_offset + t.nbytes);
  }
  ASSERT_LT(data_end, good.size());
  const std::string p = dir + "/bad.gguf";
  for (size_t n = 0; n < data_end; n++) {
    spit(p, good.substr(0, n));
    EXPECT_THROW(gguf::File::open(p), Error) << "truncated to " << n;
  }
  auto expect = [&](std::string bytes, const std::string& needle) {
    spit(p, bytes);
    const std::string e = error_of([&] { gguf::File::open(p); });
    EXPECT_NE(e.find(needle), std::string::npos) << "error '" << e << "' lacks '" << needle << "'";
  };
  auto put64 = [](std::string& s, size_t at, uint64_t v) { std::memcpy(s.data() + at, &v, 8); };
  auto put32 = [](std::string& s, size_t at, uint32_t v) { std::memcpy(s.data() + at, &v, 4); };
  std::string b = good;
  put32(b, 4, 1);
  expect(b, "version 1");
  b = good;
  put32(b, 4, 0x03000000);
  expect(b, "big-endian");
  b = good;
  put64(b, 8, uint64_t(1) << 60);
  expect(b, "tensors");
  b = good;
  put64(b, 16, ~uint64_t(0));
  expect(b, "metadata entries");
  b = good;
  put64(b, 24, ~uint64_t(0) - 3);  // the first key's length
  expect(b, "truncated");
  // The first value's type (after "general.architecture", 20 bytes).
  b = good;
  put32(b, 24 + 8 + 20, 77);
  expect(b, "unknown value type 77");
  // The tokens array's length: find the key, then type (4) + elem type (4) + count (8).
  const size_t tk = good.find("tokenizer.ggml.tokens") + std::strlen("tokenizer.ggml.tokens");
  b = good;
  put64(b, tk + 8, uint64_t(1) << 62);
  expect(b, "'tokenizer.ggml.tokens' claims");
  const size_t sc = good.find("tokenizer.ggml.scores") + std::strlen("tokenizer.ggml.scores");
  b = good;
  put64(b, sc + 8, uint64_t(1) << 61);
  expect(b, "'tokenizer.ggml.scores' claims");
  // Tensor infos: name, n_dims, ne..., type, offset.
  const size_t ta = good.find("a.weight") + 8;
  b = good;
  put32(b, ta, 9);
  expect(b, "tensor 'a.weight' has 9 dimensions");
  b = good;
  put64(b, ta + 4, 0);
  expect(b, "tensor 'a.weight' has dimension 0 = 0");
  b = good;
  put64(b, ta + 4 + 8, uint64_t(1) << 62);
  expect(b, "tensor 'a.weight'");
  b = good;
  put64(b, ta + 4, uint64_t(1) << 40);
  put64(b, ta + 4 + 8, uint64_t(1) << 40);
  expect(b, "tensor 'a.weight' has dimension 1");
  b = good;
  put32(b, ta + 4 + 16, 4);
  expect(b, "tensor 'a.weight' has unknown tensor type 4");
  b = good;
  put64(b, ta + 4 + 16 + 4, 8);
  expect(b, "not a multiple of the alignment");
  b = good;
  put64(b, ta + 4 + 16 + 4, uint64_t(1) << 20);
  expect(b, "tensor 'a.weight' (f32, 256 bytes at data offset 1048576) runs past the end");
  b = good;
  put64(b, ta + 4 + 16 + 4, ~uint64_t(0) - 31);
  expect(b, "runs past the end");
  const size_t tb = good.find("b.weight") + 8;
  b = good;
  put64(b, tb + 4, 31);
  expect(b, "not a multiple of the block");
  b = good;
  put64(b, tb + 4 + 16 + 4, 0);
  expect(b, "overlap");
  // A duplicate key: rename the second key to the first's name (same length: "llama.block_count" vs ...).
  b = good;
  const size_t k2 = good.find("llama.block_count");
  b.replace(k2, 17, "general.architect");
  // not a duplicate yet (different length) -- instead duplicate the tensor name
  b = good;
  b.replace(good.find("b.weight"), 8, "a.weight");
  expect(b, "tensor 'a.weight' appears twice");
  // Not GGUF at all.
  expect(std::string(64, 'x'), "not a GGUF file");
}

// ---------------------------------------------------------------------------------------------
// Block dequantization
// ---------------------------------------------------------------------------------------------

float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// The spec read plainly, one value at a time: value i of a block.
float spec_value(BlockType t, const uint8_t* b, int i) {
  auto nib = [](const uint8_t* qs, int j) { return j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4; };  // 32-value types
  auto bit5 = [](const uint8_t* qh4, int j) {
    uint32_t qh;
    std::memcpy(&qh, qh4, 4);
    return int((qh >> j) & 1);
  };
  // K types: the 6-bit scale/min of group g (0..7).
  auto k_scale = [](const uint8_t* s, int g, bool min) {
    if (g < 4) return min ? s[g + 4] & 63 : s[g] & 63;
    return min ? (s[g + 4] >> 4) | ((s[g] >> 6) << 4) : (s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4);
  };
  switch (t) {
    case BlockType::Q4_0: return float(nib(b + 2, i) - 8) * h2f(b);
    case BlockType::Q4_1: return float(nib(b + 4, i)) * h2f(b) + h2f(b + 2);
    case BlockType::Q5_0: return float((nib(b + 6, i) | bit5(b + 2, i) << 4) - 16) * h2f(b);
    case BlockType::Q5_1: return float(nib(b + 8, i) | bit5(b + 4, i) << 4) * h2f(b) + h2f(b + 2);
    case BlockType::Q8_0: return float(int8_t(b[2 + i])) * h2f(b);
    case BlockType::Q4_K:
    case BlockType::Q5_K: {
      const int g = i / 32, chunk = i / 64, l = i % 32;  // groups of 32; each 32 bytes of qs holds two groups
      const uint8_t* qs = b + (t == BlockType::Q4_K ? 16 : 48) + chunk * 32;
      int q = g % 2 == 0 ? qs[l] & 0xF : qs[l] >> 4;
      if (t == BlockType::Q5_K) q += ((b[16 + l] >> g) & 1) << 4;
      const float d = h2f(b) * float(k_scale(b + 4, g, false)), m = h2f(b + 2) * float(k_scale(b + 4, g, true));
      return d * float(q) - m;
    }
    case BlockType::Q6_K: {
      const int half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
      const uint8_t* ql = b + half * 64;
      const uint8_t* qh = b + 128 + half * 32;
      const int low = quarter % 2 == 0 ? ql[l + (quarter / 2 ? 0 : 0) + (quarter & 1 ? 32 : 0)] : 0;
      (void)low;
      // quarter 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high; qh bits 2*quarter.
      const uint8_t lb = ql[l + (quarter % 2) * 32];
      const int lo = quarter < 2 ? lb & 0xF : lb >> 4;
      const int q = (lo | ((qh[l] >> (2 * quarter)) & 3) << 4) - 32;
      const int8_t sc = int8_t(b[192 + half * 8 + quarter * 2 + l / 16]);
      return h2f(b + 208) * float(sc) * float(q);
    }
    case BlockType::Q2_K:
    case BlockType::Q3_K: {
      // Value i: half i / 128; within it, 2-bit plane p = (i % 128) / 32 of the half's 32 bytes of
      // qs, byte l = i % 32; group i / 16.
      const int half = i / 128, plane = (i % 128) / 32, l = i % 32, g = i / 16;
      const uint8_t* qs = b + (t == BlockType::Q2_K ? 16 : 32) + half * 32;
      const int low = (qs[l] >> (2 * plane)) & 3;
      if (t == BlockType::Q2_K)
        return h2f(b + 80) * float(b[g] & 0xF) * float(low) - h2f(b + 82) * float(b[g] >> 4);
      // Q3_K: the third bit is bit 4 * half + plane of hmask[l]; set means no -4.
      const int q = low - (((b[l] >> (4 * half + plane)) & 1) ? 0 : 4);
      // 6-bit scale g: its low 4 bits in nibble g / 8 of byte 96 + g % 8, its top 2 bits in bits
      // 2 (g / 4).. of byte 104 + g % 4.
      const int sc = ((b[96 + g % 8] >> (4 * (g / 8))) & 0xF) | (((b[104 + g % 4] >> (2 * (g / 4))) & 3) << 4);
      return h2f(b + 108) * float(sc - 32) * float(q);
    }
    default: return NAN;
  }
}

TEST(BlockQuant, DequantizationIsBitExact) {
  const gguf::File f = gguf::File::open(kG + "blocks.gguf");
  int checked = 0;
  for (BlockType t : {BlockType::Q4_0, BlockType::Q4_1, BlockType::Q5_0, BlockType::Q5_1, BlockType::Q8_0,
                      BlockType::Q4_K, BlockType::Q5_K, BlockType::Q6_K, BlockType::Q2_K, BlockType::Q3_K}) {
    const std::string name = block_type_name(t);
    std::string lower = name;
    for (auto& c : lower) c = char(std::tolower(c));
    const gguf::TensorEntry& q = f.tensor(lower);
    const gguf::TensorEntry& ref = f.tensor(lower + ".deq");
    ASSERT_EQ(q.type, t);
    ASSERT_EQ(q.numel(), ref.numel());
    std::vector<float> got(size_t(q.numel()));
    block_dequantize(t, q.data, got.data(), q.numel());
    const auto* want = static_cast<const float*>(ref.data);
    const int64_t bv = block_values(t), bb = block_bytes(t);
    for (int64_t i = 0; i < q.numel(); i++) {
      float w;
      std::memcpy(&w, want + i, 4);
      // gguf's numpy reference, bit for bit (the same f32 operations in the same order).
      ASSERT_EQ(std::memcmp(&got[i], &w, 4), 0) << name << " value " << i << ": " << got[i] << " vs gguf " << w;
      const float s = spec_value(t, static_cast<const uint8_t*>(q.data) + (i / bv) * bb, int(i % bv));
      ASSERT_EQ(std::memcmp(&got[i], &s, 4), 0) << name << " value " << i << ": " << got[i] << " vs spec " << s;
      checked++;
    }
  }
  EXPECT_GT(checked, 10 * 1000);
  EXPECT_THROW(block_dequantize(BlockType::IQ2_XXS, nullptr, nullptr, 256), Error);
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

class GgufFamily : public testing::TestWithParam<std::string> {};

// The HF fixtures converted as llama.cpp lays them out give transformers' logits.
TEST_P(GgufFamily, LogitsMatchTransformers) {
  const std::string fam = GetParam();
  const std::string path = kG + fam + ".gguf";
  const ModelConfig g = ModelConfig::load_file(path), h = ModelConfig::load_file(kData + "/hf/" + fam);
  EXPECT_EQ(g.model_type, h.model_type);
  EXPECT_EQ(g.param_count(), h.param_count());
  EXPECT_EQ(g.head_dim, h.head_dim);
  EXPECT_EQ(g.qk_norm, h.qk_norm);
  EXPECT_EQ(g.qkv_bias, h.qkv_bias);
  EXPECT_EQ(g.norm_topk_prob, h.norm_topk_prob);
  EXPECT_EQ(g.shared_expert_size, h.shared_expert_size);
  EXPECT_EQ(g.shared_expert_gate, h.shared_expert_gate);
  EXPECT_EQ(g.dense_layers.size(), h.dense_layers.size());
  EXPECT_EQ(g.top_k, h.top_k);

  const SafetensorsReader ref = SafetensorsReader::open(kData + "/hf/" + fam + "/reference.safetensors");
  Tensor ids_t = ref.get("ids").to_f32(), logits_t = ref.get("logits").to_f32();
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < ids_t.numel(); i++) ids.push_back(int32_t(ids_t.f32()[i]));
  const InferModel im = InferModel::load(path);
  const std::vector<float> got = engine_logits(im, ids);
  ASSERT_EQ(got.size(), size_t(logits_t.numel()));
  EXPECT_LT(rel_rms(got.data(), logits_t.f32(), got.size()), 1e-4);

  // The training model reads the file too, parameter for parameter equal to the safetensors.
  const Model a = Model::load(path), b = Model::load(kData + "/hf/" + fam);
  ASSERT_EQ(a.layout.total, b.layout.total);
  EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(), a.layout.total * 4), 0);
}

INSTANTIATE_TEST_SUITE_P(Families, GgufFamily, testing::Values("qwen2_moe", "qwen3_moe", "olmoe"));

// The Mixtral-style llama: merged experts in f32 (q/k permuted by the writer) are the safetensors
// model exactly; per-expert q8_0 and merged q4_0 within their quantization error.
TEST(GgufModel, LlamaMoeMatchesSafetensors) {
  const std::string st = kG + "llama_moe";
  const ModelConfig c = ModelConfig::load_file(kG + "llama_moe-f32.gguf");
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.top_k, 2);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_FLOAT_EQ(float(c.rms_norm_eps), 1e-5f);
  const InferModel ref = InferModel::load(st);
  const std::vector<int32_t> ids = prompt(c.vocab_size);
  const std::vector<float> want = engine_logits(ref, ids);
  const Model a = Model::load(kG + "llama_moe-f32.gguf"), b = Model::load(st);
  EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(), a.layout.total * 4), 0) << "f32 weights differ";
  EXPECT_LT(rel_rms(engine_logits(InferModel::load(kG + "llama_moe-f32.gguf"), ids).data(), want.data(), want.size()),
            1e-6);
  const double e8 = rel_rms(engine_logits(InferModel::load(kG + "llama_moe-q8_0.gguf"), ids).data(), want.data(),
                            want.size());
  const double e4 = rel_rms(engine_logits(InferModel::load(kG + "llama_moe-q4_0.gguf"), ids).data(), want.data(),
                            want.size());
  // Every weight quantized (embedding and head too) and routers that flip between close experts.
  EXPECT_LT(e8, 0.05);
  EXPECT_LT(e4, 0.5);
  EXPECT_LT(e8, e4);
  // Per weight: within the block's step (q8_0: max|block| / 127, q4_0: max|block| / 8 with round-off).
  for (auto [file, steps] : {std::pair{"llama_moe-q8_0.gguf", 127.0}, std::pair{"llama_moe-q4_0.gguf", 7.0}}) {
    const Model q = Model::load(kG + file);
    for (const ParamSpec& s : b.layout.specs) {
      const float* x = q.params.data() + s.offset;
      const float* y = b.params.data() + s.offset;
      const size_t n = s.numel();
      const bool quantized = s.shape.size() == 2;
      for (size_t i = 0; i < n; i += 32) {
        double amax = 0, err = 0;
        for (size_t j = i; j < std::min(n, i + 32); j++) {
          amax = std::max(amax, std::fabs(double(y[j])));
          err = std::max(err, std::fabs(double(x[j]) - y[j]));
        }
        ASSERT_LE(err, quantized ? amax / steps * 1.01 + 1e-7 : 0.0) << file << " " << s.name << " block " << i / 32;
      }
    }
  }
}

// Block-quantized weights run as stored (views into the map, integer-dot kernels) and match the same
// weights decoded to f32 within the int8 activations' rounding; the reference backend decodes them
// exactly.
TEST(GgufModel, BlockWeightsRunAsStored) {
  for (const char* file : {"llama_moe-q8_0.gguf", "llama_moe-q4_0.gguf"}) {
    InferModel a = InferModel::load(kG + file);
    EXPECT_EQ(a.layers[0].wq.dtype, DType::Blocks) << file;
    EXPECT_EQ(a.layers[1].w2[3].dtype, DType::Blocks) << file;
    EXPECT_EQ(a.lm_head.dtype, DType::Blocks) << file;
    EXPECT_EQ(a.weight_dtype, std::string(file).find("q8") != std::string::npos ? "q8_0" : "q4_0");
    EXPECT_TRUE(a.mmapped);
    InferLoadOptions f32;
    f32.dtype = "f32";
    InferModel b = InferModel::load(kG + file, f32);
    EXPECT_EQ(b.layers[0].wq.dtype, DType::F32);
    EXPECT_LT(a.decode_weight_bytes_per_token(), b.decode_weight_bytes_per_token() / 3) << file;
    const std::vector<int32_t> ids = prompt(a.cfg.vocab_size);
    const std::vector<float> want = engine_logits(b, ids);
    EXPECT_LT(rel_rms(engine_logits(a, ids).data(), want.data(), want.size()), 0.02) << file;
    a.be = &backend("ref");
    b.be = &backend("ref");
    const std::vector<float> ra = engine_logits(a, ids), rb = engine_logits(b, ids);
    EXPECT_LT(rel_rms(ra.data(), rb.data(), rb.size()), 1e-6) << file;
  }
}

TEST(GgufModel, DenseBf16TiedHead) {
  const ModelConfig c = ModelConfig::load_file(kG + "llama_dense-bf16.gguf");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.has_moe());
  const std::vector<int32_t> ids = prompt(c.vocab_size);
  const std::vector<float> want = engine_logits(InferModel::load(kG + "llama_dense"), ids);
  InferLoadOptions f32;
  f32.dtype = "f32";
  EXPECT_LT(rel_rms(engine_logits(InferModel::load(kG + "llama_dense-bf16.gguf", f32), ids).data(), want.data(),
                    want.size()),
            1e-6);
  // As stored (bf16 weights through the bf16 kernels; activations may round to bf16).
  EXPECT_LT(rel_rms(engine_logits(InferModel::load(kG + "llama_dense-bf16.gguf"), ids).data(), want.data(),
                    want.size()),
            1e-2);
}

// skymoe's own export reads back: f32 exactly, q8_0 within its error.
TEST(GgufModel, ExportRoundTrip) {
  const std::string dir = skytest::temp_dir("gguf-roundtrip");
  const std::string st = kG + "llama_moe";
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  export_gguf(st, nullptr, dir + "/f32.gguf", o);
  o.type = GgufFileType::Q8_0;
  export_gguf(st, nullptr, dir + "/q8.gguf", o);
  const std::vector<int32_t> ids = prompt(64);
  const std::vector<float> want = engine_logits(InferModel::load(st), ids);
  EXPECT_LT(rel_rms(engine_logits(InferModel::load(dir + "/f32.gguf"), ids).data(), want.data(), want.size()), 1e-6);
  EXPECT_LT(rel_rms(engine_logits(InferModel::load(dir + "/q8.gguf"), ids).data(), want.data(), want.size()), 0.05);
  // The file llama.cpp's layout puts q/k in: exported by skymoe and by gguf-py, the same bytes.
  const gguf::File mine = gguf::File::open(dir + "/f32.gguf"), theirs = gguf::File::open(kG + "llama_moe-f32.gguf");
  for (const char* n : {"blk.1.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down_exps.weight"}) {
    const gguf::TensorEntry &x = mine.tensor(n), &y = theirs.tensor(n);
    ASSERT_EQ(x.ne, y.ne) << n;
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << n;
  }
}

TEST(GgufModel, FilesItCannotRunNameTheProblem) {
  const std::string dir = skytest::temp_dir("gguf-bad-model");
  auto file = [&](const std::string& name, const std::function<void(gguf::Writer&)>& f) {
    gguf::Writer w;
    f(w);
    w.write(dir + "/" + name);
    return dir + "/" + name;
  };
  std::vector<float> x(64 * 8, 0.1f);
  auto t = [&](gguf::Writer& w, const std::string& n, std::vector<int64_t> ne) {
    w.add_tensor(n, gguf::TensorType::F32, ne, [&x, ne] {
      int64_t k = 1;
      for (auto d : ne) k *= d;
      return gguf::encode(gguf::TensorType::F32, x.data(), k);
    });
  };
  auto base = [&](gguf::Writer& w, const std::string& arch) {
    w.add_string("general.architecture", arch);
    w.add_u32(arch + ".block_count", 1);
    w.add_u32(arch + ".embedding_length", 8);
    w.add_u32(arch + ".attention.head_count", 2);
    w.add_u32(arch + ".feed_forward_length", 8);
    t(w, "token_embd.weight", {8, 16});
  };
  auto msg = [](const std::string& p) { return error_of([&] { InferModel::load(p); }); };
  EXPECT_NE(msg(file("arch.gguf", [&](gguf::Writer& w) { base(w, "gemma3"); })).find("'gemma3' (general.architecture)"),
            std::string::npos);
  EXPECT_NE(msg(file("missing.gguf", [&](gguf::Writer& w) { base(w, "llama"); })).find("GGUF tensor 'blk.0.attn_norm.weight' is missing (1 layers claimed)"),
            std::string::npos);
  EXPECT_NE(msg(file("key.gguf", [&](gguf::Writer& w) {
              w.add_string("general.architecture", "llama");
              t(w, "token_embd.weight", {8, 16});
            })).find("'llama.block_count'"),
            std::string::npos);
  EXPECT_NE(msg(file("rope.gguf", [&](gguf::Writer& w) {
              base(w, "llama");
              w.add_string("llama.rope.scaling.type", "yarn");
            })).find("'llama.rope.scaling.type' is 'yarn'"),
            std::string::npos);
  // A whole valid dense model plus one tensor skymoe does not know.
  auto dense = [&](gguf::Writer& w) {
    base(w, "llama");
    t(w, "output_norm.weight", {8});
    t(w, "blk.0.attn_norm.weight", {8});
    t(w, "blk.0.ffn_norm.weight", {8});
    for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
      t(w, std::string("blk.0.") + n + ".weight", {8, 8});
  };
  EXPECT_EQ(msg(file("ok.gguf", dense)), "");
  EXPECT_NE(msg(file("extra.gguf", [&](gguf::Writer& w) {
              dense(w);
              t(w, "rope_freqs.weight", {4});
            })).find("tensor 'rope_freqs.weight' (f32) is not part of"),
            std::string::npos);
  EXPECT_NE(msg(file("shape.gguf", [&](gguf::Writer& w) {
              base(w, "llama");
              t(w, "output_norm.weight", {8});
              t(w, "blk.0.attn_norm.weight", {4, 2});
            })).find("'blk.0.attn_norm.weight' has shape [4, 2]"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Tokenizers
// ---------------------------------------------------------------------------------------------

std::vector<std::string> sample_texts() {
  std::vector<std::string> out;
  std::istringstream in(slurp(kData + "/hf_tokenizers/test_text.txt"));
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  out.push_back("  two  spaces,\ttabs\nand newlines\n\n  ");
  out.push_back("I'm here, we'll see 12345 numbers 1 22 333 4444");
  out.push_back("<|endoftext|>hi<|im_start|>");
  return out;
}

class GgufBpe : public testing::TestWithParam<std::string> {};

// A byte-level BPE vocabulary (tokens, merges, tokenizer.ggml.pre) encodes as its tokenizer.json.
TEST_P(GgufBpe, EncodesAsTokenizerJson) {
  const Tokenizer g = Tokenizer::load(kG + "tok-" + GetParam() + ".gguf");
  const Tokenizer h = Tokenizer::load(kData + "/hf_tokenizers/" + GetParam() + "/tokenizer.json");
  EXPECT_EQ(g.kind(), Tokenizer::Kind::HfBpe);
  int n = 0;
  for (const std::string& s : sample_texts()) {
    const std::vector<int32_t> a = g.encode(s), b = h.encode(s);
    EXPECT_EQ(a, b) << "text: " << s;
    EXPECT_EQ(g.decode(a), h.decode(b));
    n++;
  }
  EXPECT_GT(n, 5);
}

INSTANTIATE_TEST_SUITE_P(Vocabs, GgufBpe, testing::Values("gpt2", "qwen2", "llama3"));

// A SentencePiece vocabulary written by `export gguf` encodes as the SentencePiece model.
TEST(GgufTokenizer, SentencePieceVocabulary) {
  const std::string dir = skytest::temp_dir("gguf-sp");
  const std::string sp_path = std::string(SKYMOE_TEST_DATA) + "/../../fuzz/corpus/tokenizer/bpe-320.model";
  const Tokenizer sp = Tokenizer::load(sp_path);
  ModelConfig c = ModelConfig::preset("tiny-dense");
  c.vocab_size = sp.vocab_size();
  c.bos_token_id = sp.bos_id();
  c.eos_token_id = sp.eos_id();
  const Model m = Model::random(c, 3);
  GgufExportOptions o;
  o.type = GgufFileType::F32;
  export_gguf(m, &sp, dir + "/m.gguf", o);
  const Tokenizer g = Tokenizer::load(dir + "/m.gguf");
  EXPECT_EQ(g.kind(), Tokenizer::Kind::SentencePiece);
  EXPECT_EQ(g.vocab_size(), sp.vocab_size());
  EXPECT_EQ(g.bos_id(), sp.bos_id());
  EXPECT_EQ(g.eos_id(), sp.eos_id());
  EXPECT_EQ(g.unk_id(), sp.unk_id());
  EXPECT_EQ(g.adds_dummy_prefix(), sp.adds_dummy_prefix());
  for (const std::string& s : sample_texts()) {
    if (s.find("  ") != std::string::npos) continue;  // SentencePiece's model may fold spaces; GGUF's never does
    EXPECT_EQ(g.encode(s), sp.encode(s)) << s;
    EXPECT_EQ(g.decode(g.encode(s)), sp.decode(sp.encode(s))) << s;
  }
  EXPECT_EQ(find_tokenizer(dir + "/m.gguf"), dir + "/m.gguf");
  // No vocabulary: the error names the key.
  export_gguf(m, nullptr, dir + "/n.gguf", o);
  EXPECT_NE(error_of([&] { Tokenizer::load(dir + "/n.gguf"); }).find("tokenizer.ggml.model"), std::string::npos);
}

// tokenizer.chat_template with the special tokens of tokenizer.ggml.*.
TEST(GgufTokenizer, ChatTemplate) {
  const std::string dir = skytest::temp_dir("gguf-chat");
  gguf::Writer w;
  w.add_string("general.architecture", "llama");
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "<|im_start|>", "<|im_end|>"});
  w.add_i32_array("tokenizer.ggml.token_type", {1, 1, 3, 3});
  w.add_u32("tokenizer.ggml.eos_token_id", 3);
  w.add_string("tokenizer.chat_template",
               "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
  w.write(dir + "/c.gguf");
  const std::optional<ChatTemplate> t = ChatTemplate::from_model_dir(dir + "/c.gguf");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->render(nlohmann::json::array({{{"role", "user"}, {"content", "hi"}}}), true),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  ASSERT_FALSE(t->stop_strings().empty());
  EXPECT_EQ(t->stop_strings()[0], "<|im_end|>");
  EXPECT_FALSE(ChatTemplate::from_model_dir(kG + "tok-qwen2.gguf"));  // no template
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

TEST(GgufCliModel, InfoGenerateEval) {
  const std::string q = kG + "llama_moe-q8_0.gguf";
  RunResult r = run({"info", q, "--tensors"});
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.out.find("mixtral (4 experts, top-2)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("q8_0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.block_sparse_moe.experts.3.w2.weight"), std::string::npos) << r.out;

  auto gen = [](const std::string& model) {
    RunResult g = run({"generate", "--model", model, "--prompt-ids", "1,5,9", "--max-tokens", "6", "--json"});
    EXPECT_EQ(g.code, 0) << g.describe();
    return g.out;
  };
  const std::string a = gen(kG + "llama_moe-f32.gguf"), b = gen(kG + "llama_moe");
  ASSERT_NE(a.find("\"generated_ids\""), std::string::npos) << a;
  EXPECT_EQ(nlohmann::json::parse(a)["generated_ids"], nlohmann::json::parse(b)["generated_ids"]);

  const std::string dir = skytest::temp_dir("gguf-cli-eval");
  std::vector<uint32_t> toks;
  for (int i = 0; i < 300; i++) toks.push_back(uint32_t((i * 13 + 5) % 64));
  std::ofstream(dir + "/t.bin", std::ios::binary).write(reinterpret_cast<const char*>(toks.data()), toks.size() * 4);
  RunResult e1 = run({"eval", "--model", kG + "llama_moe-f32.gguf", "--data", dir + "/t.bin", "--seq-len", "32", "--json"});
  RunResult e2 = run({"eval", "--model", kG + "llama_moe", "--data", dir + "/t.bin", "--seq-len", "32", "--json"});
  ASSERT_EQ(e1.code, 0) << e1.describe();
  ASSERT_EQ(e2.code, 0) << e2.describe();
  EXPECT_EQ(nlohmann::json::parse(e1.out)["loss"], nlohmann::json::parse(e2.out)["loss"]);
}

}  // namespace
