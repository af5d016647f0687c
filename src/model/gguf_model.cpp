#include "model/gguf_model.h"

#include <fmt/format.h>

#include <climits>
#include <cstring>
#include <set>

#include "core/error.h"
#include "model/params.h"

namespace sky {

bool is_gguf_file(const std::string& path) { return gguf::File::is_gguf(path); }

namespace {

const char* const kArchs = "llama (dense, or with experts as Mixtral), qwen2moe, qwen3moe, olmoe";

int as_int(const gguf::File& f, const std::string& key, uint64_t v) {
  SKY_CHECK(v <= uint64_t(INT_MAX), "{}: metadata '{}' = {} is too large", f.path(), key, v);
  return int(v);
}

int req_int(const gguf::File& f, const std::string& key) { return as_int(f, key, f.get_uint(key)); }
int opt_int(const gguf::File& f, const std::string& key, int dflt) {
  return f.has(key) ? as_int(f, key, f.get_uint(key)) : dflt;
}

std::string blk(int l, const char* what) { return fmt::format("blk.{}.{}", l, what); }

// The GGUF tensor that holds HF parameter `s`, and where in it (merged experts: one slice of E).
struct Source {
  std::string name;
  int slice = -1;  // expert index within a merged {cols, rows, E} tensor
  bool permute_heads = false;  // llama q/k: rows in llama.cpp's interleaved RoPE order
  int heads = 0;
};

Source source_of(const gguf::File& f, const ModelConfig& c, const std::string& arch, const ParamSpec& s) {
  using K = ParamKind;
  const int l = s.layer, e = s.expert;
  auto expert = [&](const char* merged, const char* single) -> Source {
    const std::string m = blk(l, merged) + ".weight";
    if (f.find_tensor(m)) return {m, e};
    return {fmt::format("blk.{}.{}.{}.weight", l, single, e)};
  };
  switch (s.kind) {
    case K::Embed: return {"token_embd.weight"};
    case K::FinalNorm: return {"output_norm.weight"};
    case K::Head: return {"output.weight"};
    case K::AttnNorm: return {blk(l, "attn_norm.weight")};
    case K::Wq: return {blk(l, "attn_q.weight"), -1, arch == "llama", c.num_heads};
    case K::Wk: return {blk(l, "attn_k.weight"), -1, arch == "llama", c.num_kv_heads};
    case K::Wv: return {blk(l, "attn_v.weight")};
    case K::Wo: return {blk(l, "attn_output.weight")};
    case K::FfnNorm: return {blk(l, "ffn_norm.weight")};
    case K::Gate: return {blk(l, "ffn_gate.weight")};
    case K::Up: return {blk(l, "ffn_up.weight")};
    case K::Down: return {blk(l, "ffn_down.weight")};
    case K::Router: return {blk(l, "ffn_gate_inp.weight")};
    case K::W1: return expert("ffn_gate_exps", "ffn_gate");
    case K::W3: return expert("ffn_up_exps", "ffn_up");
    case K::W2: return expert("ffn_down_exps", "ffn_down");
    case K::BiasQ: return {blk(l, "attn_q.bias")};
    case K::BiasK: return {blk(l, "attn_k.bias")};
    case K::BiasV: return {blk(l, "attn_v.bias")};
    case K::QNorm: return {blk(l, "attn_q_norm.weight")};
    case K::KNorm: return {blk(l, "attn_k_norm.weight")};
    case K::SharedGate: return {blk(l, "ffn_gate_shexp.weight")};
    case K::SharedUp: return {blk(l, "ffn_up_shexp.weight")};
    case K::SharedDown: return {blk(l, "ffn_down_shexp.weight")};
    case K::SharedRouter: return {blk(l, "ffn_gate_inp_shexp.weight")};
  }
  fail("GGUF: no source for {}", s.name);
}

// Rows of a row-major matrix (rows of `row_bytes`) from llama.cpp's order back to HF's: within each
// head of d rows, HF row k*d/2 + j is GGUF row 2j + k (the inverse of gguf_export's permutation).
std::shared_ptr<uint8_t> unpermute_rows(const uint8_t* src, int heads, int64_t rows, size_t row_bytes) {
  const int64_t d = rows / heads, half = d / 2;
  std::shared_ptr<uint8_t> out(new uint8_t[size_t(rows) * row_bytes], std::default_delete<uint8_t[]>());
  for (int h = 0; h < heads; h++)
    for (int64_t j = 0; j < half; j++)
      for (int k = 0; k < 2; k++)
        std::memcpy(out.get() + size_t(h * d + k * half + j) * row_bytes, src + size_t(h * d + 2 * j + k) * row_bytes,
                    row_bytes);
  return out;
}

}  // namespace

ModelConfig gguf_model_config(const gguf::File& f) {
  const std::string arch = f.get_string("general.architecture");
  SKY_CHECK(arch == "llama" || arch == "qwen2moe" || arch == "qwen3moe" || arch == "olmoe",
            "{}: GGUF architecture '{}' (general.architecture) is not supported; skymoe runs {}", f.path(), arch, kArchs);
  const std::string A = arch + ".";
  ModelConfig c;
  c.num_layers = req_int(f, A + "block_count");
  // Each layer has tensors: a count beyond the file's is refused before any per-layer work.
  SKY_CHECK(uint64_t(c.num_layers) <= f.tensors().size(),
            "{}: metadata '{}block_count' is {} but the file holds {} tensors", f.path(), A, c.num_layers,
            f.tensors().size());
  c.hidden_size = req_int(f, A + "embedding_length");
  c.num_heads = req_int(f, A + "attention.head_count");
  SKY_CHECK(c.num_heads > 0, "{}: metadata '{}attention.head_count' is 0", f.path(), A);
  c.num_kv_heads = opt_int(f, A + "attention.head_count_kv", c.num_heads);
  c.head_dim = opt_int(f, A + "attention.key_length", c.hidden_size / c.num_heads);
  if (f.has(A + "attention.value_length"))
    SKY_CHECK(req_int(f, A + "attention.value_length") == c.head_dim,
              "{}: metadata '{}attention.value_length' {} differs from the key length {}; skymoe needs them equal",
              f.path(), A, req_int(f, A + "attention.value_length"), c.head_dim);
  if (f.has(A + "rope.dimension_count"))
    SKY_CHECK(req_int(f, A + "rope.dimension_count") == c.head_dim,
              "{}: metadata '{}rope.dimension_count' {} is not the head dimension {} (partial rotary embeddings are "
              "not supported)",
              f.path(), A, req_int(f, A + "rope.dimension_count"), c.head_dim);
  for (const char* k : {"rope.scaling.type", "rope.scaling_type"})
    if (f.has(A + k)) {
      const std::string t = f.get_string(A + k);
      SKY_CHECK(t == "none" || (t == "linear" && f.get_float(A + "rope.scaling.factor", 1.0) == 1.0),
                "{}: metadata '{}{}' is '{}': RoPE scaling is not supported", f.path(), A, k, t);
    }
  if (f.has(A + "rope.scaling.factor"))
    SKY_CHECK(f.get_float(A + "rope.scaling.factor") == 1.0 || f.get_float(A + "rope.scaling.factor") == 0.0,
              "{}: metadata '{}rope.scaling.factor' is {}: RoPE scaling is not supported", f.path(), A,
              f.get_float(A + "rope.scaling.factor"));
  c.rope_theta = f.get_float(A + "rope.freq_base", 10000.0);
  c.rms_norm_eps = f.get_float(A + "attention.layer_norm_rms_epsilon", 1e-5);
  c.max_position_embeddings = opt_int(f, A + "context_length", 4096);
  c.bos_token_id = opt_int(f, "tokenizer.ggml.bos_token_id", 1);
  c.eos_token_id = opt_int(f, "tokenizer.ggml.eos_token_id", 2);

  const gguf::TensorEntry& emb = f.tensor("token_embd.weight");
  SKY_CHECK(emb.ne.size() == 2 && emb.ne[0] == c.hidden_size,
            "{}: tensor 'token_embd.weight' has shape {} (GGUF order); expected {{{}, vocab}}", f.path(),
            shape_str(emb.ne), c.hidden_size);
  SKY_CHECK(emb.ne[1] <= INT_MAX, "{}: tensor 'token_embd.weight' has {} rows", f.path(), emb.ne[1]);
  c.vocab_size = int(emb.ne[1]);
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;

  c.num_experts = opt_int(f, A + "expert_count", 0);
  SKY_CHECK(c.num_experts <= (1 << 14), "{}: metadata '{}expert_count' = {} exceeds the limit of 16384", f.path(), A,
            c.num_experts);
  c.top_k = opt_int(f, A + "expert_used_count", c.num_experts > 0 ? 2 : 0);
  c.first_dense_layers = 0;
  c.intermediate_size = opt_int(f, A + "feed_forward_length", 0);
  c.moe_intermediate_size = opt_int(f, A + "expert_feed_forward_length", 0);
  c.shared_expert_size = opt_int(f, A + "expert_shared_feed_forward_length", 0);
  if (c.num_experts > 0) {
    // Which layers are MoE: those with a router.
    for (int l = 0; l < c.num_layers; l++)
      if (!f.find_tensor(blk(l, "ffn_gate_inp.weight"))) c.dense_layers.push_back(l);
    // The experts' width from the tensors when the key is absent (llama: feed_forward_length).
    for (int l = 0; l < c.num_layers && c.moe_intermediate_size == 0; l++) {
      if (auto* t = f.find_tensor(blk(l, "ffn_gate_exps.weight")); t && t->ne.size() >= 2)
        c.moe_intermediate_size = as_int(f, t->name, uint64_t(t->ne[1]));
      else if (auto* t1 = f.find_tensor(fmt::format("blk.{}.ffn_gate.0.weight", l)); t1 && t1->ne.size() >= 2)
        c.moe_intermediate_size = as_int(f, t1->name, uint64_t(t1->ne[1]));
    }
    if (c.intermediate_size == 0) c.intermediate_size = c.moe_intermediate_size;
    if (c.moe_intermediate_size == 0) c.moe_intermediate_size = c.intermediate_size;
  } else {
    SKY_CHECK(!f.find_tensor("blk.0.ffn_gate_inp.weight"),
              "{}: tensor 'blk.0.ffn_gate_inp.weight' (a router) but no '{}expert_count'", f.path(), A);
  }
  // Routing. llama (Mixtral), qwen3moe: softmax, renormalized top-k; qwen2moe, olmoe: not renormalized.
  c.norm_topk_prob = f.get_bool(A + "expert_weights_norm", arch == "llama" || arch == "qwen3moe");
  if (f.has(A + "expert_gating_func")) {
    const uint64_t g = f.get_uint(A + "expert_gating_func");
    SKY_CHECK(g == 1 || g == 2, "{}: metadata '{}expert_gating_func' is {} (1 softmax and 2 sigmoid are supported)",
              f.path(), A, g);
    c.router_sigmoid = g == 2;
  }
  c.routed_scaling_factor = f.get_float(A + "expert_weights_scale", 1.0);
  if (c.routed_scaling_factor == 0.0) c.routed_scaling_factor = 1.0;  // llama.cpp writes 0 for "unset"
  if (f.has(A + "leading_dense_block_count")) c.first_dense_layers = req_int(f, A + "leading_dense_block_count");
  if (arch == "llama") {
    c.model_type = c.num_experts > 0 ? "mixtral" : "llama";
  } else if (arch == "qwen2moe") {
    c.model_type = "qwen2_moe";
    c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    c.shared_expert_gate = f.find_tensor("blk.0.ffn_gate_inp_shexp.weight") != nullptr;
    if (c.shared_expert_size == 0)
      if (auto* t = f.find_tensor("blk.0.ffn_gate_shexp.weight"); t && t->ne.size() == 2)
        c.shared_expert_size = as_int(f, t->name, uint64_t(t->ne[1]));
  } else if (arch == "qwen3moe") {
    c.model_type = "qwen3_moe";
    c.qk_norm = QkNorm::PerHead;
  } else {
    c.model_type = "olmoe";
    c.qk_norm = QkNorm::Whole;
  }
  // Skywork's gating logit normalization, when skymoe's own export recorded it.
  c.logits_norm = f.get_bool("skymoe.moe.logits_norm", false);
  if (c.logits_norm) c.gate_norm_std = f.get_float("skymoe.moe.gate_norm_std", 1.0);
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: {}", f.path(), e.what());
  }
  return c;
}

SafetensorsReader gguf_model_tensors(const gguf::File& f, const ModelConfig& c) {
  const std::string arch = f.get_string("general.architecture");
  // Before laying out the parameters (work in layers x experts): every layer and every expert the
  // metadata claims must have its tensors in the file, so the work is bounded by the file's size.
  for (int l = 0; l < c.num_layers; l++) {
    SKY_CHECK(f.find_tensor(blk(l, "attn_norm.weight")), "{}: GGUF tensor '{}' is missing ({} layers claimed)",
              f.path(), blk(l, "attn_norm.weight"), c.num_layers);
    if (!c.layer_is_moe(l)) continue;
    const gguf::TensorEntry* m = f.find_tensor(blk(l, "ffn_gate_exps.weight"));
    if (m)
      SKY_CHECK(m->ne.size() == 3 && m->ne[2] == c.num_experts, "{}: tensor '{}' has shape {}; {} experts claimed",
                f.path(), m->name, shape_str(m->ne), c.num_experts);
    else
      SKY_CHECK(f.find_tensor(fmt::format("blk.{}.ffn_gate.{}.weight", l, c.num_experts - 1)),
                "{}: GGUF tensor '{}' (or 'blk.{}.ffn_gate_exps.weight') is missing ({} experts claimed)", f.path(),
                fmt::format("blk.{}.ffn_gate.{}.weight", l, c.num_experts - 1), l, c.num_experts);
  }
  const ParamLayout layout = ParamLayout::build(c);
  std::vector<SafetensorsReader::Virtual> out;
  std::set<std::string> used;
  auto keep = std::make_shared<gguf::File>(f);  // the map and entries stay alive with every tensor
  for (const ParamSpec& s : layout.specs) {
    const Source src = source_of(f, c, arch, s);
    const gguf::TensorEntry* t = f.find_tensor(src.name);
    SKY_CHECK(t, "{}: GGUF tensor '{}' (for {}) is missing", f.path(), src.name, s.name);
    used.insert(src.name);
    const BlockTraits* tr = block_traits(uint32_t(t->type));
    SKY_CHECK(tr->decodable, "{}: tensor '{}' has type {}, which skymoe cannot decode yet (supported: f32, f16, bf16, "
              "q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K)",
              f.path(), src.name, tr->name);
    // Expected GGUF shape: the HF shape reversed (+ E for merged experts); a [1, H] vector may be {H}.
    std::vector<int64_t> want(s.shape.rbegin(), s.shape.rend());
    if (src.slice >= 0) want.push_back(c.num_experts);
    std::vector<int64_t> have = t->ne;
    if (s.kind == ParamKind::SharedRouter && have.size() == 1) have.push_back(1);
    SKY_CHECK(have == want, "{}: tensor '{}' has shape {} (GGUF order, innermost first); {} needs {}", f.path(),
              src.name, shape_str(t->ne), s.name, shape_str(want));
    const int64_t rows = s.shape.size() == 2 ? s.shape[0] : 1, cols = s.shape.back();
    const size_t row_bytes = block_row_bytes(t->type, cols);
    const size_t nbytes = row_bytes * size_t(rows);
    const uint8_t* base = static_cast<const uint8_t*>(t->data) + (src.slice >= 0 ? size_t(src.slice) * nbytes : 0);
    if (src.permute_heads)
      SKY_CHECK(rows % src.heads == 0 && (rows / src.heads) % 2 == 0, "{}: tensor '{}' has {} rows for {} heads",
                f.path(), src.name, rows, src.heads);

    SafetensorsReader::Virtual v;
    v.info.name = s.name;
    v.info.shape = s.shape;
    v.info.file = f.path();
    v.info.offset = size_t(base - static_cast<const uint8_t*>(f.mapping().get()));
    v.info.nbytes = nbytes;
    v.info.stored_as = tr->name;
    const BlockType type = t->type;
    v.info.dtype = type == BlockType::F16 ? DType::F16 : type == BlockType::BF16 ? DType::BF16 : DType::F32;
    const bool permute = src.permute_heads;
    const int heads = src.heads;
    // The stored bytes in HF row order: the map itself, or a reordered copy.
    auto bytes = [keep, base, permute, heads, rows, row_bytes]() -> std::pair<const void*, std::shared_ptr<void>> {
      if (!permute) return {base, keep->mapping()};
      std::shared_ptr<uint8_t> p = unpermute_rows(base, heads, rows, row_bytes);
      return {p.get(), p};
    };
    const Shape shape = s.shape;
    v.make = [bytes, type, shape]() {
      auto [p, owner] = bytes();
      Tensor out;
      if (!block_is_quantized(type)) {
        out.dtype = type == BlockType::F16 ? DType::F16 : type == BlockType::BF16 ? DType::BF16 : DType::F32;
        out.shape = shape;
        out.data = const_cast<void*>(p);
        out.owner = owner;
        return out;
      }
      out = Tensor::empty(DType::F32, shape);
      block_dequantize(type, p, out.f32(), out.numel());
      return out;
    };
    if (s.shape.size() == 2)
      v.blocks = [bytes, type, rows, cols]() {
        auto [p, owner] = bytes();
        BlockTensor b;
        b.type = type;
        b.rows = rows;
        b.cols = cols;
        b.data = p;
        b.owner = owner;
        return b;
      };
    out.push_back(std::move(v));
  }
  for (const gguf::TensorEntry& t : f.tensors())
    SKY_CHECK(used.count(t.name), "{}: tensor '{}' ({}) is not part of a {} model skymoe runs (architecture {}): cannot "
              "run this file",
              f.path(), t.name, block_type_name(t.type), c.model_type, arch);
  return SafetensorsReader::from_virtual(f.path(), std::move(out));
}

SafetensorsReader gguf_model_tensors(const std::string& path) {
  const gguf::File f = gguf::File::open(path);
  return gguf_model_tensors(f, gguf_model_config(f));
}

SafetensorsReader open_model_tensors(const std::string& path) {
  return is_gguf_file(path) ? gguf_model_tensors(path) : SafetensorsReader::open(path);
}

}  // namespace sky
