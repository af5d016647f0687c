#include "model/gguf_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "core/error.h"
#include "model/gguf_arch.h"
#include "model/params.h"

namespace sky {

bool is_gguf_file(const std::string& path) { return gguf::File::is_gguf(path); }

namespace {

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
  RopeRows rope;   // rows stored in llama.cpp's RoPE order (model/gguf_arch.h)
  bool kv_b_split = false;  // DeepSeek's kv_b_proj, joined from attn_k_b and attn_v_b
};

Source source_of(const gguf::File& f, const ModelConfig& c, const ParamSpec& s) {
  Source src;
  src.name = gguf_tensor_name(s.kind, s.layer);
  if (s.is_expert()) {
    // Merged {cols, rows, E}, or one tensor per expert (older llama files).
    if (f.find_tensor(src.name)) src.slice = s.expert;
    else src.name = gguf_expert_tensor_name(s.kind, s.layer, s.expert);
  }
  // Files written for llama.cpp's latent attention split kv_b (older ones keep attn_kv_b whole).
  if (s.kind == ParamKind::WkvB && !f.find_tensor(src.name)) src.kv_b_split = true;
  src.rope = gguf_rope_rows(c, s.kind);
  return src;
}

}  // namespace

ModelConfig gguf_model_config(const gguf::File& f) {
  namespace k = gguf_key;
  const std::string arch = f.get_string("general.architecture");
  SKY_CHECK(gguf_arch_known(arch), "{}: GGUF architecture '{}' (general.architecture) is not supported; skymoe runs {}",
            f.path(), arch, kGgufArchList);
  const bool mla = arch == "deepseek2";
  const std::string A = arch + ".";
  auto K = [&](const char* key) { return A + key; };
  ModelConfig c;
  c.num_layers = req_int(f, K(k::kBlockCount));
  // Each layer has tensors: a count beyond the file's is refused before any per-layer work.
  SKY_CHECK(uint64_t(c.num_layers) <= f.tensors().size(),
            "{}: metadata '{}block_count' is {} but the file holds {} tensors", f.path(), A, c.num_layers,
            f.tensors().size());
  c.hidden_size = req_int(f, K(k::kEmbeddingLength));
  c.num_heads = req_int(f, K(k::kHeadCount));
  SKY_CHECK(c.num_heads > 0, "{}: metadata '{}attention.head_count' is 0", f.path(), A);
  c.num_kv_heads = opt_int(f, K(k::kHeadCountKv), c.num_heads);
  if (mla) {
    // llama.cpp runs latent attention as one key/value head over the latent (head_count_kv 1,
    // key_length kv_lora_rank + rope dims); the per-head sizes are the _mla keys (older files: the
    // plain keys, with head_count_kv = head_count).
    c.num_kv_heads = c.num_heads;
    c.kv_lora_rank = req_int(f, K(k::kKvLoraRank));
    c.q_lora_rank = opt_int(f, K(k::kQLoraRank), 0);
    c.qk_rope_dim = req_int(f, K(k::kRopeDimensionCount));
    const bool split = f.has(K(k::kKeyLengthMla));
    c.head_dim = req_int(f, split ? K(k::kKeyLengthMla) : K(k::kKeyLength));
    c.v_head_dim = req_int(f, split ? K(k::kValueLengthMla) : K(k::kValueLength));
    SKY_CHECK(c.head_dim > c.qk_rope_dim, "{}: metadata '{}' {} is not above the RoPE dimensions {}", f.path(),
              split ? K(k::kKeyLengthMla) : K(k::kKeyLength), c.head_dim, c.qk_rope_dim);
    c.qk_nope_dim = c.head_dim - c.qk_rope_dim;
    c.rope_interleave = true;  // llama.cpp's deepseek2 rotates adjacent pairs: the file's rows are in that order
  } else {
    c.head_dim = opt_int(f, K(k::kKeyLength), c.hidden_size / c.num_heads);
    if (f.has(K(k::kValueLength)))
      SKY_CHECK(req_int(f, K(k::kValueLength)) == c.head_dim,
                "{}: metadata '{}attention.value_length' {} differs from the key length {}; skymoe needs them equal",
                f.path(), A, req_int(f, K(k::kValueLength)), c.head_dim);
    if (f.has(K(k::kRopeDimensionCount)))
      SKY_CHECK(req_int(f, K(k::kRopeDimensionCount)) == c.head_dim,
                "{}: metadata '{}rope.dimension_count' {} is not the head dimension {} (partial rotary embeddings are "
                "not supported)",
                f.path(), A, req_int(f, K(k::kRopeDimensionCount)), c.head_dim);
  }
  c.max_position_embeddings = opt_int(f, K(k::kContextLength), 4096);
  // RoPE scaling: YaRN for deepseek2 (as llama.cpp scales it, model/gguf_arch.h); none elsewhere.
  for (const char* key : {"rope.scaling.type", "rope.scaling_type"})
    if (f.has(A + key)) {
      const std::string t = f.get_string(A + key);
      if (mla && t == "yarn" && key == std::string(k::kRopeScalingType)) {
        RopeScaling& y = c.rope_scaling;
        y.factor = f.get_float(K(k::kRopeScalingFactor));
        y.original_max_position = opt_int(f, K(k::kRopeScalingOrigCtx), c.max_position_embeddings);
        y.beta_fast = f.get_float(K(k::kRopeYarnBetaFast), 32.0);
        y.beta_slow = f.get_float(K(k::kRopeYarnBetaSlow), 1.0);
        SKY_CHECK(y.factor > 0 && std::isfinite(y.factor), "{}: metadata '{}' is {}", f.path(),
                  K(k::kRopeScalingFactor), y.factor);
        // llama.cpp divides the stored multiplier by 0.1 ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]).
        YarnGguf g{f.get_float(K(k::kRopeYarnLogMul), 0.0) / 0.1, f.get_float(K(k::kRopeScalingAttnFactor), 1.0)};
        yarn_from_gguf(g, y);
        continue;
      }
      SKY_CHECK(t == "none" || (t == "linear" && f.get_float(K(k::kRopeScalingFactor), 1.0) == 1.0),
                "{}: metadata '{}{}' is '{}': RoPE scaling is not supported{}", f.path(), A, key, t,
                mla ? " (deepseek2: yarn only)" : "");
    }
  if (!c.rope_scaling.yarn && f.has(K(k::kRopeScalingFactor)))
    SKY_CHECK(f.get_float(K(k::kRopeScalingFactor)) == 1.0 || f.get_float(K(k::kRopeScalingFactor)) == 0.0,
              "{}: metadata '{}rope.scaling.factor' is {}: RoPE scaling is not supported", f.path(), A,
              f.get_float(K(k::kRopeScalingFactor)));
  c.rope_theta = f.get_float(K(k::kRopeFreqBase), 10000.0);
  c.rms_norm_eps = f.get_float(K(k::kRmsEps), 1e-5);
  c.bos_token_id = opt_int(f, "tokenizer.ggml.bos_token_id", 1);
  c.eos_token_id = opt_int(f, "tokenizer.ggml.eos_token_id", 2);

  const gguf::TensorEntry& emb = f.tensor("token_embd.weight");
  SKY_CHECK(emb.ne.size() == 2 && emb.ne[0] == c.hidden_size,
            "{}: tensor 'token_embd.weight' has shape {} (GGUF order); expected {{{}, vocab}}", f.path(),
            shape_str(emb.ne), c.hidden_size);
  SKY_CHECK(emb.ne[1] <= INT_MAX, "{}: tensor 'token_embd.weight' has {} rows", f.path(), emb.ne[1]);
  c.vocab_size = int(emb.ne[1]);
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;

  c.num_experts = opt_int(f, K(k::kExpertCount), 0);
  SKY_CHECK(c.num_experts <= (1 << 14), "{}: metadata '{}expert_count' = {} exceeds the limit of 16384", f.path(), A,
            c.num_experts);
  c.top_k = opt_int(f, K(k::kExpertUsedCount), c.num_experts > 0 ? 2 : 0);
  c.first_dense_layers = 0;
  c.intermediate_size = opt_int(f, K(k::kFeedForwardLength), 0);
  c.moe_intermediate_size = opt_int(f, K(k::kExpertFeedForwardLength), 0);
  c.shared_expert_size = opt_int(f, K(k::kExpertSharedFeedForwardLength), 0);
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
    // DeepSeek counts its shared experts (each as wide as a routed one).
    if (mla) {
      const int64_t width = int64_t(opt_int(f, K(k::kExpertSharedCount), 0)) * c.moe_intermediate_size;
      SKY_CHECK(width <= INT_MAX, "{}: metadata '{}' times the experts' width is {}, too large", f.path(),
                K(k::kExpertSharedCount), width);
      c.shared_expert_size = int(width);
    }
  } else {
    SKY_CHECK(!f.find_tensor("blk.0.ffn_gate_inp.weight"),
              "{}: tensor 'blk.0.ffn_gate_inp.weight' (a router) but no '{}expert_count'", f.path(), A);
  }
  // Routing. llama (Mixtral), qwen3moe, granitemoe: softmax, renormalized top-k; qwen2moe, olmoe,
  // deepseek2: not renormalized unless the file says so.
  c.norm_topk_prob = f.get_bool(K(k::kExpertWeightsNorm), arch == "llama" || arch == "qwen3moe" || arch == "granitemoe");
  if (f.has(K(k::kExpertGatingFunc))) {
    const uint64_t g = f.get_uint(K(k::kExpertGatingFunc));
    SKY_CHECK(g == 1 || g == 2, "{}: metadata '{}expert_gating_func' is {} (1 softmax and 2 sigmoid are supported)",
              f.path(), A, g);
    c.router_sigmoid = g == 2;
  }
  c.routed_scaling_factor = f.get_float(K(k::kExpertWeightsScale), 1.0);
  if (c.routed_scaling_factor == 0.0) c.routed_scaling_factor = 1.0;  // llama.cpp writes 0 for "unset"
  if (f.has(K(k::kLeadingDenseBlockCount))) c.first_dense_layers = req_int(f, K(k::kLeadingDenseBlockCount));
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
  } else if (arch == "olmoe") {
    c.model_type = "olmoe";
    c.qk_norm = QkNorm::Whole;
  } else if (arch == "granitemoe") {
    c.model_type = c.shared_expert_size > 0 ? "granitemoeshared" : "granitemoe";
    // llama.cpp's defaults when a key is absent: no scaling, 1/sqrt(head_dim) attention scores.
    c.attention_multiplier = f.get_float(K(k::kAttentionScale), 0.0);
    c.embedding_multiplier = f.get_float(K(k::kEmbeddingScale), 1.0);
    c.residual_multiplier = f.get_float(K(k::kResidualScale), 1.0);
    c.logits_scaling = f.get_float(K(k::kLogitScale), 1.0);
    if (c.embedding_multiplier == 0) c.embedding_multiplier = 1;  // llama.cpp: 0 means unset
    if (c.residual_multiplier == 0) c.residual_multiplier = 1;
  } else {  // deepseek2
    for (int l = 0; l < c.num_layers && c.num_experts > 0; l++)
      c.router_bias |= f.find_tensor(blk(l, "exp_probs_b.bias")) != nullptr;
    c.model_type = c.router_sigmoid ? "deepseek_v3" : "deepseek_v2";
    c.n_group = std::max(1, opt_int(f, K(k::kExpertGroupCount), 1));
    c.topk_group = c.n_group > 1 ? opt_int(f, K(k::kExpertGroupUsedCount), 1) : 1;
    // Sigmoid routers choose by groups as V3's noaux_tc; softmax ones as V2 (skymoe's own export
    // records group_limited_greedy, which llama.cpp does not distinguish).
    c.topk_method = c.router_sigmoid ? "noaux_tc" : c.n_group > 1 ? "group_limited_greedy" : "greedy";
    if (f.has("skymoe.moe.topk_method")) c.topk_method = f.get_string("skymoe.moe.topk_method");
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

namespace {

void check_decodable(const gguf::File& f, const gguf::TensorEntry& t) {
  const BlockTraits* tr = block_traits(uint32_t(t.type));
  SKY_CHECK(tr->decodable, "{}: tensor '{}' has type {}, which skymoe cannot decode yet (supported: f32, f16, bf16, "
            "q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K)",
            f.path(), t.name, tr->name);
}

// DeepSeek's kv_b_proj from llama.cpp's attn_k_b {qk_nope, kv_lora_rank, heads} and attn_v_b
// {kv_lora_rank, v_head_dim, heads}, decoded to f32 (the key half is stored transposed, so it has
// no block form to keep).
SafetensorsReader::Virtual joined_kv_b(const gguf::File& f, const ModelConfig& c, const ParamSpec& s,
                                       const std::shared_ptr<gguf::File>& keep) {
  const std::string kn = gguf_k_b_name(s.layer), vn = gguf_v_b_name(s.layer);
  const gguf::TensorEntry* kt = f.find_tensor(kn);
  const gguf::TensorEntry* vt = f.find_tensor(vn);
  SKY_CHECK(kt && vt, "{}: GGUF tensors '{}' and '{}' (or '{}') are missing (for {})", f.path(), kn, vn,
            gguf_tensor_name(ParamKind::WkvB, s.layer), s.name);
  const std::vector<int64_t> kw{c.qk_nope_dim, c.kv_lora_rank, c.num_heads}, vw{c.kv_lora_rank, c.v_head_dim, c.num_heads};
  SKY_CHECK(kt->ne == kw, "{}: tensor '{}' has shape {} (GGUF order); {} needs {}", f.path(), kn, shape_str(kt->ne),
            s.name, shape_str(kw));
  SKY_CHECK(vt->ne == vw, "{}: tensor '{}' has shape {} (GGUF order); {} needs {}", f.path(), vn, shape_str(vt->ne),
            s.name, shape_str(vw));
  check_decodable(f, *kt);
  check_decodable(f, *vt);
  SafetensorsReader::Virtual v;
  v.info.name = s.name;
  v.info.shape = s.shape;
  v.info.file = f.path();
  v.info.offset = size_t(static_cast<const uint8_t*>(kt->data) - static_cast<const uint8_t*>(f.mapping().get()));
  v.info.nbytes = size_t(shape_numel(s.shape)) * sizeof(float);
  v.info.stored_as = block_traits(uint32_t(kt->type))->name;
  v.info.dtype = DType::F32;
  const Shape shape = s.shape;
  const ModelConfig cfg = c;
  const BlockType ktype = kt->type, vtype = vt->type;
  const void *kp = kt->data, *vp = vt->data;
  v.make = [keep, cfg, shape, ktype, vtype, kp, vp] {
    std::vector<float> k_b(size_t(cfg.num_heads) * cfg.kv_lora_rank * cfg.qk_nope_dim),
        v_b(size_t(cfg.num_heads) * cfg.v_head_dim * cfg.kv_lora_rank);
    block_dequantize(ktype, kp, k_b.data(), int64_t(k_b.size()));
    block_dequantize(vtype, vp, v_b.data(), int64_t(v_b.size()));
    Tensor out = Tensor::empty(DType::F32, shape);
    join_kv_b(cfg, k_b.data(), v_b.data(), out.f32());
    return out;
  };
  return v;
}

// One parameter's rows inside a tensor the HF layout stacks (params.h StoredAt).
struct StackedPart {
  StoredAt at;
  BlockType type;
  const uint8_t* src;  // its rows in the file
  int64_t row0, rows;
  size_t row_bytes;
  std::string gguf_name;
};

// The stacked tensor from its parts' rows (GGUF keeps them apart: ffn_gate_exps and ffn_up_exps
// for Granite's input_linear). Rows are independent in every block type, so the bytes are copied
// as stored, once, when the tensor is first read, and decoded like any other tensor.
SafetensorsReader::Virtual stacked_virtual(const gguf::File& f, const std::string& name,
                                           const std::vector<StackedPart>& parts,
                                           const std::shared_ptr<gguf::File>& keep) {
  const StoredAt& at = parts.front().at;
  const BlockType type = parts.front().type;
  const size_t row_bytes = parts.front().row_bytes;
  const int64_t rows = at.rows();
  int64_t covered = 0;
  for (const StackedPart& p : parts) {
    SKY_CHECK(p.type == type, "{}: tensors '{}' ({}) and '{}' ({}) make up {} and must have one type", f.path(),
              parts.front().gguf_name, block_type_name(type), p.gguf_name, block_type_name(p.type), name);
    covered += p.rows;
  }
  SKY_CHECK(covered == rows, "{}: the tensors for {} cover {} of its {} rows", f.path(), name, covered, rows);
  struct Cache {
    std::once_flag once;
    std::shared_ptr<uint8_t> bytes;
  };
  auto cache = std::make_shared<Cache>();
  auto bytes = [cache, parts, rows, row_bytes, keep] {
    std::call_once(cache->once, [&] {
      cache->bytes.reset(new uint8_t[size_t(rows) * row_bytes], std::default_delete<uint8_t[]>());
      for (const StackedPart& p : parts)
        std::memcpy(cache->bytes.get() + size_t(p.row0) * row_bytes, p.src, size_t(p.rows) * row_bytes);
    });
    return cache->bytes;
  };
  SafetensorsReader::Virtual v;
  v.info.name = name;
  v.info.shape = at.shape;
  v.info.file = f.path();
  v.info.nbytes = size_t(rows) * row_bytes;
  v.info.stored_as = block_traits(uint32_t(type))->name;
  v.info.dtype = type == BlockType::F16 ? DType::F16 : type == BlockType::BF16 ? DType::BF16 : DType::F32;
  const Shape shape = at.shape;
  v.make = [bytes, type, shape] {
    std::shared_ptr<uint8_t> b = bytes();
    Tensor out;
    if (!block_is_quantized(type)) {
      out.dtype = type == BlockType::F16 ? DType::F16 : type == BlockType::BF16 ? DType::BF16 : DType::F32;
      out.shape = shape;
      out.data = b.get();
      out.owner = b;
      return out;
    }
    out = Tensor::empty(DType::F32, shape);
    block_dequantize(type, b.get(), out.f32(), out.numel());
    return out;
  };
  return v;
}

}  // namespace

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
  std::map<std::string, std::vector<StackedPart>> stacked;
  auto keep = std::make_shared<gguf::File>(f);  // the map and entries stay alive with every tensor
  for (const ParamSpec& s : layout.specs) {
    const Source src = source_of(f, c, s);
    if (src.kv_b_split) {
      out.push_back(joined_kv_b(f, c, s, keep));
      used.insert(gguf_k_b_name(s.layer));
      used.insert(gguf_v_b_name(s.layer));
      continue;
    }
    const gguf::TensorEntry* t = f.find_tensor(src.name);
    SKY_CHECK(t, "{}: GGUF tensor '{}' (for {}) is missing", f.path(), src.name, s.name);
    used.insert(src.name);
    check_decodable(f, *t);
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
    if (!s.stored.whole(s.shape)) {
      // A parameter the HF layout stacks with others (Granite's input_linear, output_linear,
      // shared_mlp.input_linear): loaders read the stacked tensor, assembled below.
      stacked[s.stored.name].push_back({s.stored, t->type, base, s.stored.row0, rows, row_bytes, src.name});
      continue;
    }
    const RopeRows rope = src.rope;
    if (rope.any())
      SKY_CHECK(rows == rope.groups * rope.group_rows, "{}: tensor '{}' has {} rows for {} RoPE groups of {}", f.path(),
                src.name, rows, rope.groups, rope.group_rows);

    SafetensorsReader::Virtual v;
    v.info.name = s.name;
    v.info.shape = s.shape;
    v.info.file = f.path();
    v.info.offset = size_t(base - static_cast<const uint8_t*>(f.mapping().get()));
    v.info.nbytes = nbytes;
    v.info.stored_as = block_traits(uint32_t(t->type))->name;
    const BlockType type = t->type;
    v.info.dtype = type == BlockType::F16 ? DType::F16 : type == BlockType::BF16 ? DType::BF16 : DType::F32;
    // The stored bytes in HF row order: the map itself, or a copy with the RoPE rows put back.
    auto bytes = [keep, base, rope, rows, row_bytes]() -> std::pair<const void*, std::shared_ptr<void>> {
      if (!rope.any()) return {base, keep->mapping()};
      std::shared_ptr<uint8_t> p(new uint8_t[size_t(rows) * row_bytes], std::default_delete<uint8_t[]>());
      reorder_rope_rows(base, p.get(), rope, row_bytes, false);
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
  for (auto& [name, parts] : stacked) out.push_back(stacked_virtual(f, name, parts, keep));
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
