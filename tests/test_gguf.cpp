// GGUF export (src/io/gguf*.cpp, `skymoe export gguf`): files are parsed back by an independent
// minimal GGUF reader written here from the spec (ggml docs/gguf.md), and every value is checked
// against the model it came from: metadata, vocabulary, tensor names/shapes/types, the layout
// (alignment, offsets), exact f32 data, f16 and q8_0 within their rounding, stacked experts, and
// the Q/K row permutation (through RoPE itself).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>

#include "core/error.h"
#include "core/rng.h"
#include "io/gguf_export.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "ref.h"

extern char** environ;

namespace fs = std::filesystem;
using sky::GgufExportOptions;
using sky::GgufFileType;
using sky::Model;
using sky::ModelConfig;
using sky::Tokenizer;

namespace {

// ---------------------------------------------------------------------------------------------
// An independent GGUF reader
// ---------------------------------------------------------------------------------------------

// Value types (gguf_metadata_value_type) and tensor types (ggml_type) by number, from the spec.
enum : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };
enum : uint32_t { GGML_F32 = 0, GGML_F16 = 1, GGML_Q8_0 = 8 };

struct Value {
  uint32_t type = 0;
  uint64_t u = 0;  // unsigned ints and bool
  int64_t i = 0;   // signed ints
  double f = 0;    // floats
  std::string s;
  uint32_t elem = 0;  // arrays
  std::vector<Value> arr;
};

struct TInfo {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  uint64_t offset = 0;
};

struct Gguf {
  uint32_t version = 0;
  uint64_t n_tensors = 0, n_kv = 0;
  std::map<std::string, Value> kv;
  std::vector<TInfo> tensors;
  uint64_t alignment = 32, data_start = 0;
  std::string bytes;

  const Value& at(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) throw std::runtime_error("missing key " + k);
    return it->second;
  }
  const TInfo& tensor(const std::string& n) const {
    for (auto& t : tensors)
      if (t.name == n) return t;
    throw std::runtime_error("missing tensor " + n);
  }
  const uint8_t* data(const TInfo& t) const { return reinterpret_cast<const uint8_t*>(bytes.data()) + data_start + t.offset; }
};

class Cursor {
 public:
  explicit Cursor(const std::string& b) : b_(b) {}
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    uint64_t n = get<uint64_t>();
    need(n);
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  Value value(uint32_t type) {
    Value v;
    v.type = type;
    switch (type) {
      case U8: v.u = get<uint8_t>(); break;
      case I8: v.i = get<int8_t>(); break;
      case U16: v.u = get<uint16_t>(); break;
      case I16: v.i = get<int16_t>(); break;
      case U32: v.u = get<uint32_t>(); break;
      case I32: v.i = get<int32_t>(); break;
      case F32: v.f = get<float>(); break;
      case BOOL: {
        v.u = get<uint8_t>();
        if (v.u > 1) throw std::runtime_error("bool value " + std::to_string(v.u));
        break;
      }
      case STRING: v.s = str(); break;
      case ARRAY: {
        v.elem = get<uint32_t>();
        uint64_t n = get<uint64_t>();
        for (uint64_t k = 0; k < n; k++) v.arr.push_back(value(v.elem));
        break;
      }
      case U64: v.u = get<uint64_t>(); break;
      case I64: v.i = get<int64_t>(); break;
      case F64: v.f = get<double>(); break;
      default: throw std::runtime_error("unknown value type " + std::to_string(type));
    }
    return v;
  }
  size_t pos() const { return pos_; }

 private:
  void need(uint64_t n) const {
    if (n > b_.size() - pos_) throw std::runtime_error("truncated at byte " + std::to_string(pos_));
  }
  const std::string& b_;
  size_t pos_ = 0;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

Gguf read_gguf(const std::string& path) {
  Gguf g;
  g.bytes = slurp(path);
  Cursor c(g.bytes);
  if (g.bytes.compare(0, 4, "GGUF") != 0) throw std::runtime_error("bad magic");
  c.get<uint32_t>();
  g.version = c.get<uint32_t>();
  g.n_tensors = c.get<uint64_t>();
  g.n_kv = c.get<uint64_t>();
  for (uint64_t k = 0; k < g.n_kv; k++) {
    std::string key = c.str();
    uint32_t type = c.get<uint32_t>();
    if (g.kv.count(key)) throw std::runtime_error("duplicate key " + key);
    g.kv[key] = c.value(type);
  }
  if (g.kv.count("general.alignment")) {
    const Value& a = g.kv["general.alignment"];
    if (a.type != U32) throw std::runtime_error("general.alignment is not u32");
    g.alignment = a.u;
  }
  for (uint64_t k = 0; k < g.n_tensors; k++) {
    TInfo t;
    t.name = c.str();
    uint32_t nd = c.get<uint32_t>();
    for (uint32_t d = 0; d < nd; d++) t.ne.push_back(c.get<uint64_t>());
    t.type = c.get<uint32_t>();
    t.offset = c.get<uint64_t>();
    g.tensors.push_back(t);
  }
  g.data_start = (c.pos() + g.alignment - 1) / g.alignment * g.alignment;
  for (size_t p = c.pos(); p < g.data_start; p++)
    if (g.bytes[p] != 0) throw std::runtime_error("non-zero padding before the data");
  return g;
}

uint64_t numel(const TInfo& t) {
  uint64_t n = 1;
  for (auto d : t.ne) n *= d;
  return n;
}

uint64_t nbytes(const TInfo& t) {
  switch (t.type) {
    case GGML_F32: return numel(t) * 4;
    case GGML_F16: return numel(t) * 2;
    case GGML_Q8_0: return numel(t) / 32 * 34;
  }
  throw std::runtime_error("unexpected tensor type " + std::to_string(t.type));
}

// IEEE half -> double, written out here rather than taken from core/dtype.
double half_to_double(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp(m, -24) : e == 31 ? INFINITY : std::ldexp(1024 + m, e - 25);
  return s ? -v : v;
}

std::vector<float> read_f32(const Gguf& g, const TInfo& t) {
  std::vector<float> v(numel(t));
  std::memcpy(v.data(), g.data(t), v.size() * 4);
  return v;
}

// ---------------------------------------------------------------------------------------------
// The model and tokenizer under test
// ---------------------------------------------------------------------------------------------

std::string make_corpus() {
  const std::vector<std::string> words = {"the", "expert", "router", "token", "layer", "gating", "sparse",
                                          "mixture", "model", "quick", "brown", "fox", "llama", "weights",
                                          "of", "and", "to", "in", "is", "2024", "混合专家", "模型"};
  sky::Rng rng(11);
  std::string s;
  for (int line = 0; line < 200; line++) {
    int n = 3 + int(rng.below(9));
    for (int i = 0; i < n; i++) s += (i ? " " : "") + words[rng.below(words.size())];
    s += ".\n";
  }
  return s;
}

struct Fixture {
  std::string dir, tok_path;
  std::unique_ptr<Tokenizer> tok;
};

const Fixture& fixture() {
  static Fixture f = [] {
    Fixture r;
    r.dir = skytest::temp_dir("gguf");
    std::ofstream(r.dir + "/corpus.txt") << make_corpus();
    r.tok = std::make_unique<Tokenizer>(Tokenizer::train({r.dir + "/corpus.txt"}, r.dir + "/tok", 320));
    r.tok_path = r.dir + "/tok.model";
    return r;
  }();
  return f;
}

// The tiny MoE preset (GQA 4/2 heads, 4 experts, top-2, logit normalization on) with the
// tokenizer's vocabulary and non-default RoPE base and epsilon, so the metadata check means something.
ModelConfig moe_config() {
  ModelConfig c = ModelConfig::preset("tiny");
  c.vocab_size = fixture().tok->vocab_size();
  c.rope_theta = 50000.0;
  c.rms_norm_eps = 1e-5;
  return c;
}

const Model& moe_model() {
  static Model m = Model::random(moe_config(), 5);
  return m;
}

struct Exported {
  Gguf g;
  sky::GgufExportReport report;
};

Exported export_and_read(const Model& m, const Tokenizer* tok, GgufFileType type, const std::string& tag) {
  GgufExportOptions o;
  o.type = type;
  o.name = "tiny-moe";
  std::string path = skytest::temp_dir("gguf-" + tag) + "/model.gguf";
  Exported e;
  e.report = sky::export_gguf(m, tok, path, o);
  e.g = read_gguf(path);
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(getpid()))) << "temporary file left behind";
  return e;
}

const Exported& moe_export(GgufFileType t) {
  static std::map<GgufFileType, Exported> cache;
  auto it = cache.find(t);
  if (it == cache.end())
    it = cache.emplace(t, export_and_read(moe_model(), fixture().tok.get(), t, std::to_string(int(t)))).first;
  return it->second;
}

// Expected GGUF tensors of a config: name -> ne (innermost first).
std::map<std::string, std::vector<uint64_t>> expected_shapes(const ModelConfig& c) {
  const uint64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  const uint64_t Q = c.q_dim(), KV = c.kv_dim();
  std::map<std::string, std::vector<uint64_t>> s;
  s["token_embd.weight"] = {H, V};
  s["output_norm.weight"] = {H};
  s["output.weight"] = {H, V};
  for (int l = 0; l < c.num_layers; l++) {
    auto n = [&](const char* w) { return "blk." + std::to_string(l) + "." + w + ".weight"; };
    s[n("attn_norm")] = {H};
    s[n("attn_q")] = {H, Q};
    s[n("attn_k")] = {H, KV};
    s[n("attn_v")] = {H, KV};
    s[n("attn_output")] = {Q, H};
    s[n("ffn_norm")] = {H};
    if (c.layer_is_moe(l)) {
      s[n("ffn_gate_inp")] = {H, E};
      s[n("ffn_gate_exps")] = {H, I, E};
      s[n("ffn_up_exps")] = {H, I, E};
      s[n("ffn_down_exps")] = {I, H, E};
    } else {
      s[n("ffn_gate")] = {H, I};
      s[n("ffn_up")] = {H, I};
      s[n("ffn_down")] = {I, H};
    }
  }
  return s;
}

bool is_norm(const std::string& n) { return n.find("_norm.") != std::string::npos; }
bool is_router(const std::string& n) { return n.find("ffn_gate_inp") != std::string::npos; }

// The source f32 values of a GGUF tensor in HF order (before any Q/K permutation).
std::vector<float> source_values(const Model& m, const std::string& name) {
  const ModelConfig& c = m.cfg;
  const auto& w = m.w;
  const size_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  auto span = [](const float* p, size_t n) { return std::vector<float>(p, p + n); };
  if (name == "token_embd.weight") return span(w.embed, V * H);
  if (name == "output.weight") return span(w.lm_head, V * H);
  if (name == "output_norm.weight") return span(w.final_norm, H);
  int l = std::stoi(name.substr(4));
  const auto& L = w.layers[l];
  std::string what = name.substr(name.find('.', 4) + 1);
  what = what.substr(0, what.find('.'));
  if (what == "attn_norm") return span(L.attn_norm, H);
  if (what == "ffn_norm") return span(L.ffn_norm, H);
  if (what == "attn_q") return span(L.wq, size_t(c.q_dim()) * H);
  if (what == "attn_k") return span(L.wk, size_t(c.kv_dim()) * H);
  if (what == "attn_v") return span(L.wv, size_t(c.kv_dim()) * H);
  if (what == "attn_output") return span(L.wo, size_t(c.q_dim()) * H);
  if (what == "ffn_gate_inp") return span(L.router, E * H);
  if (what == "ffn_gate") return span(L.w_gate, I * H);
  if (what == "ffn_up") return span(L.w_up, I * H);
  if (what == "ffn_down") return span(L.w_down, I * H);
  // Stacked experts, rebuilt from the per-expert HF tensors by name.
  const char* hf = what == "ffn_gate_exps" ? "w1" : what == "ffn_up_exps" ? "w3" : "w2";
  std::vector<float> out;
  for (size_t e = 0; e < E; e++) {
    const sky::ParamSpec* s = m.layout.find(skytest::expert_name(l, int(e), hf));
    if (!s) throw std::runtime_error("no HF tensor for " + name);
    out.insert(out.end(), m.params.data() + s->offset, m.params.data() + s->offset + s->numel());
  }
  return out;
}

// Q/K rows as llama.cpp's layout needs them: written out from the converter's reshape
// (n_head, 2, d/2, cols) -> swap axes 1, 2 -> (n_head, d/2, 2, cols).
std::vector<float> permuted(const std::vector<float>& w, int n_head, int d, size_t cols) {
  std::vector<float> out(w.size());
  for (int h = 0; h < n_head; h++)
    for (int two = 0; two < 2; two++)
      for (int j = 0; j < d / 2; j++)
        for (size_t c = 0; c < cols; c++)
          out[((size_t(h) * (d / 2) + j) * 2 + two) * cols + c] = w[((size_t(h) * 2 + two) * (d / 2) + j) * cols + c];
  return out;
}

std::vector<float> expected_values(const Model& m, const std::string& name) {
  std::vector<float> v = source_values(m, name);
  const ModelConfig& c = m.cfg;
  if (name.find("attn_q.") != std::string::npos) return permuted(v, c.num_heads, c.head_dim, c.hidden_size);
  if (name.find("attn_k.") != std::string::npos) return permuted(v, c.num_kv_heads, c.head_dim, c.hidden_size);
  return v;
}

// Decodes any of the three tensor types to double.
std::vector<double> decode(const Gguf& g, const TInfo& t) {
  std::vector<double> out(numel(t));
  const uint8_t* p = g.data(t);
  for (size_t i = 0; i < out.size(); i++) {
    if (t.type == GGML_F32) {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      out[i] = f;
    } else if (t.type == GGML_F16) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = half_to_double(h);
    } else {
      const uint8_t* blk = p + (i / 32) * 34;
      uint16_t d;
      std::memcpy(&d, blk, 2);
      out[i] = half_to_double(d) * double(int8_t(blk[2 + i % 32]));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

TEST(Gguf, HeaderAndMetadata) {
  const Exported& e = moe_export(GgufFileType::F16);
  const Gguf& g = e.g;
  const ModelConfig c = moe_config();
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.n_kv, g.kv.size());
  EXPECT_EQ(g.n_tensors, g.tensors.size());
  EXPECT_EQ(e.report.kv, g.kv.size());
  EXPECT_EQ(e.report.tensors, g.tensors.size());

  auto u32 = [&](const char* k) {
    const Value& v = g.at(k);
    EXPECT_EQ(v.type, U32) << k;
    return v.u;
  };
  auto f32 = [&](const char* k) {
    const Value& v = g.at(k);
    EXPECT_EQ(v.type, F32) << k;
    return v.f;
  };
  auto str = [&](const char* k) {
    const Value& v = g.at(k);
    EXPECT_EQ(v.type, STRING) << k;
    return v.s;
  };
  EXPECT_EQ(str("general.architecture"), "llama");
  EXPECT_EQ(str("general.name"), "tiny-moe");
  EXPECT_EQ(u32("general.alignment"), 32u);
  EXPECT_EQ(u32("general.file_type"), 1u);  // MOSTLY_F16
  EXPECT_EQ(u32("general.quantization_version"), 2u);
  EXPECT_EQ(u32("llama.vocab_size"), uint64_t(c.vocab_size));
  EXPECT_EQ(u32("llama.context_length"), uint64_t(c.max_position_embeddings));
  EXPECT_EQ(u32("llama.embedding_length"), uint64_t(c.hidden_size));
  EXPECT_EQ(u32("llama.block_count"), uint64_t(c.num_layers));
  EXPECT_EQ(u32("llama.feed_forward_length"), uint64_t(c.intermediate_size));
  EXPECT_EQ(u32("llama.attention.head_count"), uint64_t(c.num_heads));
  EXPECT_EQ(u32("llama.attention.head_count_kv"), uint64_t(c.num_kv_heads));
  EXPECT_EQ(u32("llama.rope.dimension_count"), uint64_t(c.head_dim));
  EXPECT_EQ(u32("llama.expert_count"), 4u);
  EXPECT_EQ(u32("llama.expert_used_count"), 2u);
  EXPECT_EQ(f32("llama.rope.freq_base"), 50000.0);
  EXPECT_EQ(f32("llama.attention.layer_norm_rms_epsilon"), double(1e-5f));
  // The logit normalization is recorded under our own prefix and warned about.
  EXPECT_EQ(g.at("skymoe.moe.logits_norm").u, 1u);
  ASSERT_FALSE(e.report.warnings.empty());
  EXPECT_NE(e.report.warnings[0].find("logit normalization"), std::string::npos) << e.report.warnings[0];
  EXPECT_NE(e.report.warnings[0].find("same"), std::string::npos) << e.report.warnings[0];
}

TEST(Gguf, Vocabulary) {
  const Gguf& g = moe_export(GgufFileType::F16).g;
  const Tokenizer& tok = *fixture().tok;
  const int V = tok.vocab_size();
  EXPECT_EQ(g.at("tokenizer.ggml.model").s, "llama");
  const Value& tokens = g.at("tokenizer.ggml.tokens");
  const Value& scores = g.at("tokenizer.ggml.scores");
  const Value& types = g.at("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.elem, STRING);
  ASSERT_EQ(scores.elem, F32);
  ASSERT_EQ(types.elem, I32);
  ASSERT_EQ(tokens.arr.size(), size_t(V));
  ASSERT_EQ(scores.arr.size(), size_t(V));
  ASSERT_EQ(types.arr.size(), size_t(V));
  int bytes = 0, normal = 0;
  std::set<double> distinct_scores;
  for (int i = 0; i < V; i++) {
    const std::string& p = tokens.arr[i].s;
    EXPECT_EQ(p, tok.id_to_piece(i)) << i;
    EXPECT_EQ(float(scores.arr[i].f), tok.score(i)) << i;
    distinct_scores.insert(scores.arr[i].f);
    // Types from what the pieces are (our trainer: unk 0, bos 1, eos 2, byte fallback "<0xAB>").
    int64_t want = i == 0 ? 2 : (i == 1 || i == 2) ? 3 : (p.size() == 6 && p.starts_with("<0x") && p.back() == '>') ? 6 : 1;
    EXPECT_EQ(types.arr[i].i, want) << i << " " << p;
    bytes += want == 6;
    normal += want == 1;
  }
  EXPECT_EQ(bytes, 256);
  EXPECT_GT(normal, 20);
  EXPECT_GT(distinct_scores.size(), 20u);  // real scores, not a constant
  EXPECT_EQ(g.at("tokenizer.ggml.bos_token_id").u, 1u);
  EXPECT_EQ(g.at("tokenizer.ggml.eos_token_id").u, 2u);
  EXPECT_EQ(g.at("tokenizer.ggml.unknown_token_id").u, 0u);
  EXPECT_EQ(g.at("tokenizer.ggml.bos_token_id").type, U32);
  EXPECT_EQ(g.at("tokenizer.ggml.add_bos_token").type, BOOL);
  EXPECT_EQ(g.at("tokenizer.ggml.add_bos_token").u, 1u);
  EXPECT_FALSE(g.kv.count("tokenizer.ggml.padding_token_id"));  // our tokenizers have no pad
}

// Names, shapes, per-tensor types and the byte layout, for each --type.
TEST(Gguf, TensorTableAndLayout) {
  for (GgufFileType ft : {GgufFileType::F32, GgufFileType::F16, GgufFileType::Q8_0}) {
    SCOPED_TRACE(int(ft));
    const Exported& e = moe_export(ft);
    const Gguf& g = e.g;
    auto want = expected_shapes(moe_config());
    ASSERT_EQ(g.tensors.size(), want.size());
    const uint32_t matrix = ft == GgufFileType::F32 ? GGML_F32 : ft == GgufFileType::F16 ? GGML_F16 : GGML_Q8_0;
    EXPECT_EQ(g.at("general.file_type").u, ft == GgufFileType::F32 ? 0u : ft == GgufFileType::F16 ? 1u : 7u);
    size_t f32s = 0;
    uint64_t end = 0;
    EXPECT_EQ(g.data_start % 32, 0u);
    for (const TInfo& t : g.tensors) {
      ASSERT_TRUE(want.count(t.name)) << "unexpected tensor " << t.name;
      EXPECT_EQ(t.ne, want[t.name]) << t.name;
      // Norms and the router stay f32; everything else takes the requested type.
      uint32_t type = is_norm(t.name) || is_router(t.name) ? GGML_F32 : matrix;
      EXPECT_EQ(t.type, type) << t.name;
      f32s += t.type == GGML_F32;
      // Offsets aligned, in order, without overlap; every tensor inside the file.
      EXPECT_EQ(t.offset % 32, 0u) << t.name;
      EXPECT_GE(t.offset, end) << t.name;
      end = t.offset + nbytes(t);
      EXPECT_LE(g.data_start + end, g.bytes.size()) << t.name;
    }
    EXPECT_EQ(g.bytes.size(), g.data_start + (end + 31) / 32 * 32);  // the last tensor padded too
    EXPECT_EQ(e.report.file_bytes, g.bytes.size());
    EXPECT_EQ(e.report.count_f32, f32s);
  }
}

// f32: every tensor bit-exact (Q/K after the permutation); stacked experts equal the per-expert
// HF tensors.
TEST(Gguf, F32DataExact) {
  const Gguf& g = moe_export(GgufFileType::F32).g;
  for (const TInfo& t : g.tensors) {
    std::vector<float> want = expected_values(moe_model(), t.name);
    std::vector<float> got = read_f32(g, t);
    ASSERT_EQ(got.size(), want.size()) << t.name;
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << t.name;
  }
  // One expert slice spelled out: blk.1.ffn_down_exps[e=3] is experts.3.w2 ([H, I] row-major).
  const ModelConfig& c = moe_model().cfg;
  const TInfo& t = g.tensor("blk.1.ffn_down_exps.weight");
  const sky::ParamSpec* s = moe_model().layout.find(skytest::expert_name(1, 3, "w2"));
  ASSERT_NE(s, nullptr);
  const size_t slice = size_t(c.hidden_size) * c.intermediate_size;
  std::vector<float> got = read_f32(g, t);
  EXPECT_EQ(std::memcmp(got.data() + 3 * slice, moe_model().params.data() + s->offset, slice * 4), 0);
}

TEST(Gguf, F16WithinRounding) {
  const Gguf& g = moe_export(GgufFileType::F16).g;
  for (const TInfo& t : g.tensors) {
    std::vector<float> want = expected_values(moe_model(), t.name);
    std::vector<double> got = decode(g, t);
    double worst = 0;
    for (size_t i = 0; i < got.size(); i++) {
      // Round to nearest: within half an f16 ulp (2^-11 relative; 2^-25 absolute for subnormals).
      double tol = t.type == GGML_F32 ? 0.0 : std::max(std::fabs(want[i]) * std::ldexp(1.0, -11), std::ldexp(1.0, -25));
      worst = std::max(worst, std::fabs(got[i] - want[i]) - tol);
    }
    EXPECT_LE(worst, 0.0) << t.name;
  }
}

TEST(Gguf, Q8_0BlocksWithinHalfAStep) {
  const Gguf& g = moe_export(GgufFileType::Q8_0).g;
  size_t blocks = 0;
  for (const TInfo& t : g.tensors) {
    std::vector<float> want = expected_values(moe_model(), t.name);
    std::vector<double> got = decode(g, t);
    if (t.type != GGML_Q8_0) {
      EXPECT_EQ(std::vector<double>(want.begin(), want.end()), got) << t.name;
      continue;
    }
    ASSERT_EQ(t.ne[0] % 32, 0u);
    for (size_t b = 0; b < got.size() / 32; b++, blocks++) {
      double amax = 0;
      for (int i = 0; i < 32; i++) amax = std::max(amax, double(std::fabs(want[b * 32 + i])));
      uint16_t dh;
      std::memcpy(&dh, g.data(t) + b * 34, 2);
      const double d = half_to_double(dh);
      ASSERT_NEAR(d, amax / 127, amax / 127 * std::ldexp(1.0, -11)) << t.name << " block " << b;
      // max|x|/127/2, plus the f16 rounding of d itself.
      const double bound = amax / 127 / 2 * (1 + std::ldexp(1.0, -10));
      for (int i = 0; i < 32; i++)
        ASSERT_LE(std::fabs(got[b * 32 + i] - want[b * 32 + i]), bound) << t.name << " block " << b << " i " << i;
    }
  }
  EXPECT_GT(blocks, 1000u);
}

// RoPE, written out both ways: HF rotate-half pairs (i, i + d/2); llama.cpp's llama arch pairs
// (2i, 2i + 1). Both rotate pair i by pos * base^(-2i/d).
void rope_half(std::vector<double>& x, int n_head, int d, int pos, double base) {
  for (int h = 0; h < n_head; h++)
    for (int i = 0; i < d / 2; i++) {
      double a = pos * std::pow(base, -2.0 * i / d), cs = std::cos(a), sn = std::sin(a);
      double& x0 = x[size_t(h) * d + i];
      double& x1 = x[size_t(h) * d + i + d / 2];
      double y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
      x0 = y0, x1 = y1;
    }
}
void rope_interleaved(std::vector<double>& x, int n_head, int d, int pos, double base) {
  for (int h = 0; h < n_head; h++)
    for (int i = 0; i < d / 2; i++) {
      double a = pos * std::pow(base, -2.0 * i / d), cs = std::cos(a), sn = std::sin(a);
      double& x0 = x[size_t(h) * d + 2 * i];
      double& x1 = x[size_t(h) * d + 2 * i + 1];
      double y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
      x0 = y0, x1 = y1;
    }
}

std::vector<double> matvec(const std::vector<float>& w, const std::vector<double>& x) {
  std::vector<double> y(w.size() / x.size());
  for (size_t r = 0; r < y.size(); r++)
    for (size_t c = 0; c < x.size(); c++) y[r] += double(w[r * x.size() + c]) * x[c];
  return y;
}

// The permuted weights under llama.cpp's RoPE give the same rotated vectors as the HF weights
// under rotate-half, up to the same within-head reordering, so every attention score agrees.
TEST(Gguf, QkPermutationMatchesRope) {
  const Gguf& g = moe_export(GgufFileType::F32).g;
  const Model& m = moe_model();
  const ModelConfig& c = m.cfg;
  const int d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  for (int l = 0; l < c.num_layers; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    std::vector<float> gq = read_f32(g, g.tensor(p + "attn_q.weight")), gk = read_f32(g, g.tensor(p + "attn_k.weight"));
    std::vector<float> hq = source_values(m, p + "attn_q.weight"), hk = source_values(m, p + "attn_k.weight");
    for (int pos : {0, 1, 7, 300}) {
      std::vector<double> x = skytest::randn(c.hidden_size, 100 + pos + l);
      std::vector<double> q_hf = matvec(hq, x), k_hf = matvec(hk, x), q_ll = matvec(gq, x), k_ll = matvec(gk, x);
      rope_half(q_hf, nh, d, pos, c.rope_theta);
      rope_half(k_hf, nkv, d, pos, c.rope_theta);
      rope_interleaved(q_ll, nh, d, pos, c.rope_theta);
      rope_interleaved(k_ll, nkv, d, pos, c.rope_theta);
      for (int h = 0; h < nh; h++)
        for (int j = 0; j < d / 2; j++)
          for (int k = 0; k < 2; k++)
            ASSERT_NEAR(q_ll[size_t(h) * d + 2 * j + k], q_hf[size_t(h) * d + k * d / 2 + j], 1e-12);
      // Scores of a query at `pos` against a key at position 3 (GQA: query head h reads kv head h / (nh/nkv)).
      std::vector<double> k3_hf = matvec(hk, x), k3_ll = matvec(gk, x);
      rope_half(k3_hf, nkv, d, 3, c.rope_theta);
      rope_interleaved(k3_ll, nkv, d, 3, c.rope_theta);
      for (int h = 0; h < nh; h++) {
        int kh = h / (nh / nkv);
        double s_hf = 0, s_ll = 0;
        for (int i = 0; i < d; i++) {
          s_hf += q_hf[size_t(h) * d + i] * k3_hf[size_t(kh) * d + i];
          s_ll += q_ll[size_t(h) * d + i] * k3_ll[size_t(kh) * d + i];
        }
        EXPECT_NEAR(s_ll, s_hf, 1e-10 * (1 + std::fabs(s_hf))) << "layer " << l << " head " << h << " pos " << pos;
      }
    }
  }
  // The library's own helper agrees with the converter's reshape/swap written out above.
  std::vector<float> w = source_values(m, "blk.0.attn_k.weight");
  EXPECT_EQ(sky::permute_qk_rows(w.data(), nkv, d, c.hidden_size), permuted(w, nkv, d, c.hidden_size));
}

// A dense Llama whose FFN rows (72) do not fit q8_0 blocks, and whose embedding has 3 rows more
// than the tokenizer has tokens.
TEST(Gguf, DenseQ8FallbackAndPaddedVocab) {
  const Tokenizer& tok = *fixture().tok;
  ModelConfig c = ModelConfig::preset("tiny-dense");
  c.vocab_size = tok.vocab_size() + 3;
  c.intermediate_size = c.moe_intermediate_size = 72;
  Model m = Model::random(c, 9);
  Exported e = export_and_read(m, &tok, GgufFileType::Q8_0, "dense");
  const Gguf& g = e.g;
  auto want = expected_shapes(c);
  ASSERT_EQ(g.tensors.size(), want.size());
  for (const TInfo& t : g.tensors) {
    ASSERT_TRUE(want.count(t.name)) << t.name;
    EXPECT_EQ(t.ne, want[t.name]) << t.name;
    uint32_t type = is_norm(t.name) ? GGML_F32 : t.ne[0] % 32 ? GGML_F16 : GGML_Q8_0;
    EXPECT_EQ(t.type, type) << t.name;
  }
  EXPECT_EQ(g.tensor("blk.0.ffn_down.weight").type, GGML_F16);
  EXPECT_EQ(g.tensor("blk.0.ffn_up.weight").type, GGML_Q8_0);
  EXPECT_FALSE(g.kv.count("llama.expert_count"));
  EXPECT_FALSE(g.kv.count("skymoe.moe.logits_norm"));
  bool noted = false;
  for (auto& w : e.report.warnings) noted |= w.find("f16 instead of q8_0") != std::string::npos;
  EXPECT_TRUE(noted);
  // Tokens padded to the embedding's rows, as unused [PADi].
  const Value& tokens = g.at("tokenizer.ggml.tokens");
  const Value& types = g.at("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.arr.size(), size_t(c.vocab_size));
  for (int i = tok.vocab_size(); i < c.vocab_size; i++) {
    EXPECT_EQ(tokens.arr[i].s, "[PAD" + std::to_string(i) + "]");
    EXPECT_EQ(types.arr[i].i, 5);
  }
  // The dense FFN is not permuted or stacked: straight f16 of the HF tensor.
  std::vector<double> got = decode(g, g.tensor("blk.1.ffn_down.weight"));
  for (size_t i = 0; i < got.size(); i++) {
    const double x = m.w.layers[1].w_down[i];
    ASSERT_NEAR(got[i], x, std::max(std::fabs(x) * std::ldexp(1.0, -11), std::ldexp(1.0, -25))) << i;
  }
}

TEST(Gguf, LibraryErrors) {
  const Tokenizer& tok = *fixture().tok;
  ModelConfig c = moe_config();
  c.vocab_size = tok.vocab_size() - 1;  // the tokenizer has ids the model cannot embed
  Model m = Model::random(c, 1);
  std::string dir = skytest::temp_dir("gguf-err");
  try {
    sky::export_gguf(m, &tok, dir + "/x.gguf", {});
    ADD_FAILURE() << "no error";
  } catch (const sky::Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir + "/x.gguf"));
  EXPECT_THROW(sky::parse_gguf_file_type("q4_0"), sky::Error);
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

struct RunResult {
  int code = -1, signal = 0;
  std::string out, err;
  std::string describe() const {
    return "exit " + std::to_string(code) + " signal " + std::to_string(signal) + "\nstdout: " + out + "\nstderr: " + err;
  }
};

RunResult run(const std::vector<std::string>& args) {
  static const std::string io = skytest::temp_dir("gguf-cli-io");
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

void expect_clean_failure(const std::vector<std::string>& args, const std::vector<std::string>& needles) {
  RunResult r = run(args);
  EXPECT_EQ(r.signal, 0) << r.describe();
  EXPECT_GT(r.code, 0) << r.describe();
  EXPECT_LT(r.code, 128) << r.describe();
  for (auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "stderr lacks '" << n << "'\n" << r.describe();
}

TEST(GgufCli, ExportsModelDirectory) {
  const std::string root = skytest::temp_dir("gguf-cli");
  const std::string model = root + "/my-moe";
  moe_model().save(model);
  fs::copy_file(fixture().tok_path, model + "/tokenizer.model");

  RunResult r = run({"export", "gguf", "--model", model, "--out", root + "/m.gguf", "--type", "q8_0"});
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.out.find("wrote " + root + "/m.gguf"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("warning: this model uses gating logit normalization"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("blk.0"), std::string::npos) << "per-tensor lines only on a terminal\n" << r.err;
  Gguf g = read_gguf(root + "/m.gguf");
  EXPECT_EQ(g.at("general.name").s, "my-moe");
  EXPECT_EQ(g.at("tokenizer.ggml.tokens").arr.size(), size_t(moe_model().cfg.vocab_size));
  EXPECT_EQ(g.tensor("blk.0.ffn_up_exps.weight").type, GGML_Q8_0);
  // The command reads the directory one layer at a time (f32): the data is the in-memory model's.
  Gguf lib = moe_export(GgufFileType::Q8_0).g;
  EXPECT_EQ(g.bytes.substr(g.data_start), lib.bytes.substr(lib.data_start));

  // --no-tokenizer: weights only, no tokenizer keys, and a warning.
  fs::remove(model + "/tokenizer.model");
  r = run({"export", "gguf", "--model", model, "--out", root + "/n.gguf", "--no-tokenizer", "--type", "f32"});
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("llama.cpp needs"), std::string::npos) << r.err;
  g = read_gguf(root + "/n.gguf");
  for (auto& [k, v] : g.kv) EXPECT_FALSE(k.starts_with("tokenizer.")) << k;

  // An explicit --tokenizer elsewhere.
  r = run({"export", "gguf", "--model", model, "--out", root + "/t.gguf", "--tokenizer", fixture().tok_path});
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_EQ(read_gguf(root + "/t.gguf").at("general.file_type").u, 1u);  // f16 by default
}

TEST(GgufCli, BadInputFailsClearly) {
  const std::string root = skytest::temp_dir("gguf-cli-bad");
  const std::string model = root + "/m";
  moe_model().save(model);
  expect_clean_failure({"export", "gguf", "--model", root + "/nope", "--out", root + "/x.gguf", "--no-tokenizer"},
                       {root + "/nope", "no such model directory"});
  expect_clean_failure({"export", "gguf", "--model", model, "--out", root + "/x.gguf", "--type", "bogus"},
                       {"--type", "bogus"});
  expect_clean_failure({"export", "gguf", "--model", model, "--out", root + "/x.gguf"},
                       {"no tokenizer", model + "/tokenizer.model", "--tokenizer", "--no-tokenizer"});
  expect_clean_failure({"export", "gguf", "--model", model, "--out", root + "/x.gguf", "--tokenizer", root + "/t.model"},
                       {root + "/t.model"});
  expect_clean_failure({"export", "gguf", "--model", model, "--out", root, "--no-tokenizer"}, {"is a directory"});
  expect_clean_failure({"export", "safetensors"}, {"unknown export format 'safetensors'"});
  RunResult h = run({"export", "gguf", "--help"});
  EXPECT_EQ(h.code, 0) << h.describe();
  EXPECT_NE(h.out.find("--no-tokenizer"), std::string::npos) << h.out;
  EXPECT_FALSE(fs::exists(root + "/x.gguf"));
}

}  // namespace
