#include "model/params.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"

namespace sky {

// Granite-MoE's stacked expert tensors and each expert matrix's first row in them (read as
// [E * 2I, H] and [E * H, I]): gate (the SwiGLU's activation input) then up, per expert.
static StoredAt stacked_expert(const ModelConfig& c, ParamKind kind, int l, int e) {
  const int64_t E = c.num_experts, I = c.moe_intermediate_size, H = c.hidden_size;
  if (kind == ParamKind::W2)
    return {fmt::format("model.layers.{}.block_sparse_moe.output_linear.weight", l), {E, H, I}, int64_t(e) * H};
  return {fmt::format("model.layers.{}.block_sparse_moe.input_linear.weight", l), {E, 2 * I, H},
          int64_t(e) * 2 * I + (kind == ParamKind::W3 ? I : 0)};
}

StoredAt stored_at(const ModelConfig& c, ParamKind kind, int l, int e, const Shape& shape) {
  if (c.stacked_experts() && (kind == ParamKind::W1 || kind == ParamKind::W3 || kind == ParamKind::W2))
    return stacked_expert(c, kind, l, e);
  // GraniteMoeShared's shared expert: its gate and up rows stacked in shared_mlp.input_linear [2S, H].
  if (c.granite() && (kind == ParamKind::SharedGate || kind == ParamKind::SharedUp)) {
    const int64_t S = c.shared_expert_size;
    return {fmt::format("model.layers.{}.shared_mlp.input_linear.weight", l), {2 * S, c.hidden_size},
            kind == ParamKind::SharedUp ? S : 0};
  }
  return {tensor_name(c, kind, l, e), shape, 0};
}

std::string tensor_name(const ModelConfig& c, ParamKind kind, int l, int e) {
  if (c.stacked_experts() && (kind == ParamKind::W1 || kind == ParamKind::W3 || kind == ParamKind::W2)) {
    const StoredAt at = stacked_expert(c, kind, l, e);
    if (kind == ParamKind::W2) return fmt::format("{}[{}]", at.name, e);
    const int64_t r = at.row0 - int64_t(e) * at.shape[1];
    return fmt::format("{}[{}][{}:{}]", at.name, e, r, r + c.moe_intermediate_size);
  }
  if (c.granite() && kind == ParamKind::Router)
    return fmt::format("model.layers.{}.block_sparse_moe.router.layer.weight", l);
  if (c.granite() && (kind == ParamKind::SharedGate || kind == ParamKind::SharedUp)) {
    const int64_t r = kind == ParamKind::SharedUp ? c.shared_expert_size : 0;
    return fmt::format("model.layers.{}.shared_mlp.input_linear.weight[{}:{}]", l, r, r + c.shared_expert_size);
  }
  if (c.granite() && kind == ParamKind::SharedDown)
    return fmt::format("model.layers.{}.shared_mlp.output_linear.weight", l);
  const bool mlp = c.mlp_expert_names();
  const char* moe = mlp ? "mlp" : "block_sparse_moe";
  const char* shared = c.deepseek() ? "shared_experts" : "shared_expert";
  switch (kind) {
    case ParamKind::Embed: return "model.embed_tokens.weight";
    case ParamKind::FinalNorm: return "model.norm.weight";
    case ParamKind::Head: return "lm_head.weight";
    case ParamKind::AttnNorm: return fmt::format("model.layers.{}.input_layernorm.weight", l);
    case ParamKind::Wq: return fmt::format("model.layers.{}.self_attn.q_proj.weight", l);
    case ParamKind::Wk: return fmt::format("model.layers.{}.self_attn.k_proj.weight", l);
    case ParamKind::Wv: return fmt::format("model.layers.{}.self_attn.v_proj.weight", l);
    case ParamKind::Wo: return fmt::format("model.layers.{}.self_attn.o_proj.weight", l);
    case ParamKind::BiasQ: return fmt::format("model.layers.{}.self_attn.q_proj.bias", l);
    case ParamKind::BiasK: return fmt::format("model.layers.{}.self_attn.k_proj.bias", l);
    case ParamKind::BiasV: return fmt::format("model.layers.{}.self_attn.v_proj.bias", l);
    case ParamKind::QNorm: return fmt::format("model.layers.{}.self_attn.q_norm.weight", l);
    case ParamKind::KNorm: return fmt::format("model.layers.{}.self_attn.k_norm.weight", l);
    case ParamKind::FfnNorm: return fmt::format("model.layers.{}.post_attention_layernorm.weight", l);
    case ParamKind::Gate: return fmt::format("model.layers.{}.mlp.gate_proj.weight", l);
    case ParamKind::Up: return fmt::format("model.layers.{}.mlp.up_proj.weight", l);
    case ParamKind::Down: return fmt::format("model.layers.{}.mlp.down_proj.weight", l);
    case ParamKind::Router: return fmt::format("model.layers.{}.{}.gate.weight", l, mlp ? "mlp" : "block_sparse_moe");
    case ParamKind::W1: return fmt::format("model.layers.{}.{}.experts.{}.{}.weight", l, moe, e, mlp ? "gate_proj" : "w1");
    case ParamKind::W3: return fmt::format("model.layers.{}.{}.experts.{}.{}.weight", l, moe, e, mlp ? "up_proj" : "w3");
    case ParamKind::W2: return fmt::format("model.layers.{}.{}.experts.{}.{}.weight", l, moe, e, mlp ? "down_proj" : "w2");
    case ParamKind::SharedGate: return fmt::format("model.layers.{}.mlp.{}.gate_proj.weight", l, shared);
    case ParamKind::SharedUp: return fmt::format("model.layers.{}.mlp.{}.up_proj.weight", l, shared);
    case ParamKind::SharedDown: return fmt::format("model.layers.{}.mlp.{}.down_proj.weight", l, shared);
    case ParamKind::WqA: return fmt::format("model.layers.{}.self_attn.q_a_proj.weight", l);
    case ParamKind::QANorm: return fmt::format("model.layers.{}.self_attn.q_a_layernorm.weight", l);
    case ParamKind::WqB: return fmt::format("model.layers.{}.self_attn.q_b_proj.weight", l);
    case ParamKind::WkvA: return fmt::format("model.layers.{}.self_attn.kv_a_proj_with_mqa.weight", l);
    case ParamKind::KvANorm: return fmt::format("model.layers.{}.self_attn.kv_a_layernorm.weight", l);
    case ParamKind::WkvB: return fmt::format("model.layers.{}.self_attn.kv_b_proj.weight", l);
    case ParamKind::RouterBias: return fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", l);
    case ParamKind::SharedRouter: return fmt::format("model.layers.{}.mlp.shared_expert_gate.weight", l);
  }
  fail("tensor_name: unknown parameter kind {}", int(kind));
}

ParamLayout ParamLayout::build(const ModelConfig& c) { return build(c, Shard::full(c)); }

ParamLayout ParamLayout::build(const ModelConfig& c, const Shard& sh) {
  ParamLayout L;
  L.tied = c.tie_word_embeddings;
  // A partial shard stores its expert weights after everything else, so the parameters replicated
  // across data-parallel ranks and the (possibly unique) expert weights form two ranges.
  const bool experts_last = !sh.is_full(c);
  std::vector<ParamSpec> experts;
  int index = 0;
  // `held` is the block [row0, row0+rows) x [col0, col0+cols) of a tensor of shape `full`.
  auto add = [&](std::string name, ParamKind kind, int layer, int expert, Shape full, int64_t row0, int64_t rows,
                 int64_t col0, int64_t cols, bool held) {
    ParamSpec s;
    s.name = std::move(name);
    s.kind = kind;
    s.layer = layer;
    s.expert = expert;
    s.index = index++;
    s.decay = full.size() == 2;
    s.full_shape = full;
    s.row0 = row0;
    s.col0 = col0;
    s.shape = full.size() == 2 ? Shape{rows, cols} : Shape{rows};
    s.stored = stored_at(c, kind, layer, expert, full);
    if (!held) return;
    if (experts_last && s.is_expert()) experts.push_back(std::move(s));
    else L.specs.push_back(std::move(s));
  };
  auto whole = [&](std::string name, ParamKind kind, int layer, Shape full, bool held) {
    add(std::move(name), kind, layer, -1, full, 0, full[0], 0, full.size() == 2 ? full[1] : 0, held);
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size, EI = c.moe_intermediate_size, hd = c.head_dim;
  // Tied embeddings: the part holding the LM head holds the embedding as its head (a pipeline's
  // last stage keeps a copy whose gradient the trainer sums with the first stage's).
  whole(tensor_name(c, ParamKind::Embed), ParamKind::Embed, -1, {c.vocab_size, H},
        sh.embed || (c.tie_word_embeddings && sh.head));
  for (int l = 0; l < c.num_layers; l++) {
    const bool in = l >= sh.layer_begin && l < sh.layer_end;
    const int64_t q0 = sh.q_heads.begin * hd, qn = sh.q_heads.size * hd;
    const int64_t k0 = sh.kv_heads.begin * hd, kn = sh.kv_heads.size * hd;
    whole(tensor_name(c, ParamKind::AttnNorm, l), ParamKind::AttnNorm, l, {H}, in);
    if (c.mla()) {  // tensor parallelism is refused for MLA: whole tensors
      const int64_t nh = c.num_heads, r = c.kv_lora_rank, rq = c.q_lora_rank;
      if (rq > 0) {
        whole(tensor_name(c, ParamKind::WqA, l), ParamKind::WqA, l, {rq, H}, in);
        whole(tensor_name(c, ParamKind::QANorm, l), ParamKind::QANorm, l, {rq}, in);
        whole(tensor_name(c, ParamKind::WqB, l), ParamKind::WqB, l, {c.q_dim(), rq}, in);
      } else {
        whole(tensor_name(c, ParamKind::Wq, l), ParamKind::Wq, l, {c.q_dim(), H}, in);
      }
      whole(tensor_name(c, ParamKind::WkvA, l), ParamKind::WkvA, l, {r + c.qk_rope_dim, H}, in);
      whole(tensor_name(c, ParamKind::KvANorm, l), ParamKind::KvANorm, l, {r}, in);
      whole(tensor_name(c, ParamKind::WkvB, l), ParamKind::WkvB, l, {nh * (c.qk_nope_dim + c.v_head_dim), r}, in);
      whole(tensor_name(c, ParamKind::Wo, l), ParamKind::Wo, l, {H, c.o_dim()}, in);
    } else {
      add(tensor_name(c, ParamKind::Wq, l), ParamKind::Wq, l, -1, {c.q_dim(), H}, q0, qn, 0, H, in);
      add(tensor_name(c, ParamKind::Wk, l), ParamKind::Wk, l, -1, {c.kv_dim(), H}, k0, kn, 0, H, in);
      add(tensor_name(c, ParamKind::Wv, l), ParamKind::Wv, l, -1, {c.kv_dim(), H}, k0, kn, 0, H, in);
      if (c.qkv_bias) {
        add(tensor_name(c, ParamKind::BiasQ, l), ParamKind::BiasQ, l, -1, {c.q_dim()}, q0, qn, 0, 0, in);
        add(tensor_name(c, ParamKind::BiasK, l), ParamKind::BiasK, l, -1, {c.kv_dim()}, k0, kn, 0, 0, in);
        add(tensor_name(c, ParamKind::BiasV, l), ParamKind::BiasV, l, -1, {c.kv_dim()}, k0, kn, 0, 0, in);
      }
      if (c.qk_norm != QkNorm::None) {
        const bool per_head = c.qk_norm == QkNorm::PerHead;
        whole(tensor_name(c, ParamKind::QNorm, l), ParamKind::QNorm, l, {per_head ? hd : c.q_dim()}, in);
        whole(tensor_name(c, ParamKind::KNorm, l), ParamKind::KNorm, l, {per_head ? hd : c.kv_dim()}, in);
      }
      add(tensor_name(c, ParamKind::Wo, l), ParamKind::Wo, l, -1, {H, c.q_dim()}, 0, H, q0, qn, in);
    }
    whole(tensor_name(c, ParamKind::FfnNorm, l), ParamKind::FfnNorm, l, {H}, in);
    if (c.layer_is_moe(l)) {
      whole(tensor_name(c, ParamKind::Router, l), ParamKind::Router, l, {c.num_experts, H}, in);
      if (c.router_bias) whole(tensor_name(c, ParamKind::RouterBias, l), ParamKind::RouterBias, l, {c.num_experts}, in);
      if (c.shared_expert_size > 0) {
        const int64_t S = c.shared_expert_size;
        whole(tensor_name(c, ParamKind::SharedGate, l), ParamKind::SharedGate, l, {S, H}, in);
        whole(tensor_name(c, ParamKind::SharedUp, l), ParamKind::SharedUp, l, {S, H}, in);
        whole(tensor_name(c, ParamKind::SharedDown, l), ParamKind::SharedDown, l, {H, S}, in);
        if (c.shared_expert_gate)
          whole(tensor_name(c, ParamKind::SharedRouter, l), ParamKind::SharedRouter, l, {1, H}, in);
      }
      const Range& f = sh.expert_ffn;
      for (ParamKind kind : {ParamKind::W1, ParamKind::W3})
        for (int e = 0; e < c.num_experts; e++)
          add(tensor_name(c, kind, l, e), kind, l, e, {EI, H}, f.begin, f.size, 0, H,
              in && e >= sh.experts.begin && e < sh.experts.end());
      for (int e = 0; e < c.num_experts; e++)
        add(tensor_name(c, ParamKind::W2, l, e), ParamKind::W2, l, e, {H, EI}, 0, H, f.begin, f.size,
            in && e >= sh.experts.begin && e < sh.experts.end());
    } else {
      const Range& f = sh.ffn;
      add(tensor_name(c, ParamKind::Gate, l), ParamKind::Gate, l, -1, {I, H}, f.begin, f.size, 0, H, in);
      add(tensor_name(c, ParamKind::Up, l), ParamKind::Up, l, -1, {I, H}, f.begin, f.size, 0, H, in);
      add(tensor_name(c, ParamKind::Down, l), ParamKind::Down, l, -1, {H, I}, 0, H, f.begin, f.size, in);
    }
  }
  whole(tensor_name(c, ParamKind::FinalNorm), ParamKind::FinalNorm, -1, {H}, sh.head);
  // Tied embeddings: the LM head is the embedding matrix (param_view points lm_head at it).
  if (!c.tie_word_embeddings) whole(tensor_name(c, ParamKind::Head), ParamKind::Head, -1, {c.vocab_size, H}, sh.head);
  for (auto& s : experts) L.specs.push_back(std::move(s));
  for (auto& s : L.specs) {
    s.offset = L.total;
    L.total += s.numel();
  }
  L.expert_begin = L.total;
  for (auto& s : L.specs)
    if (experts_last && s.is_expert()) L.expert_begin = std::min(L.expert_begin, s.offset);
  return L;
}

const ParamSpec* ParamLayout::find(const std::string& name) const {
  for (auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

template <class T>
ParamView<T> param_view(const ParamLayout& layout, int layer_begin, int num_layers, T* base) {
  ParamView<T> v;
  v.layers.assign(num_layers, LayerView<T>{});
  for (const ParamSpec& s : layout.specs) {
    T* p = base + s.offset;
    if (s.layer < 0) {
      if (s.kind == ParamKind::Embed) v.embed = p;
      else if (s.kind == ParamKind::FinalNorm) v.final_norm = p;
      else v.lm_head = p;
      continue;
    }
    LayerView<T>& L = v.layers.at(s.layer - layer_begin);
    // Expert weights of one kind are contiguous: the view points at the first held expert.
    auto first = [&](T*& slot) { if (!slot) slot = p; };
    switch (s.kind) {
      case ParamKind::AttnNorm: L.attn_norm = p; break;
      case ParamKind::Wq: L.wq = p; break;
      case ParamKind::Wk: L.wk = p; break;
      case ParamKind::Wv: L.wv = p; break;
      case ParamKind::Wo: L.wo = p; break;
      case ParamKind::FfnNorm: L.ffn_norm = p; break;
      case ParamKind::Gate: L.w_gate = p; break;
      case ParamKind::Up: L.w_up = p; break;
      case ParamKind::Down: L.w_down = p; break;
      case ParamKind::Router: L.router = p; break;
      case ParamKind::W1: first(L.w1); break;
      case ParamKind::W3: first(L.w3); break;
      case ParamKind::W2: first(L.w2); break;
      case ParamKind::BiasQ: L.bq = p; break;
      case ParamKind::BiasK: L.bk = p; break;
      case ParamKind::BiasV: L.bv = p; break;
      case ParamKind::QNorm: L.q_norm = p; break;
      case ParamKind::KNorm: L.k_norm = p; break;
      case ParamKind::SharedGate: L.sh_gate = p; break;
      case ParamKind::SharedUp: L.sh_up = p; break;
      case ParamKind::SharedDown: L.sh_down = p; break;
      case ParamKind::SharedRouter: L.sh_router = p; break;
      case ParamKind::WqA: L.wq_a = p; break;
      case ParamKind::QANorm: L.q_a_norm = p; break;
      case ParamKind::WqB: L.wq_b = p; break;
      case ParamKind::WkvA: L.wkv_a = p; break;
      case ParamKind::KvANorm: L.kv_a_norm = p; break;
      case ParamKind::WkvB: L.wkv_b = p; break;
      case ParamKind::RouterBias: L.router_bias = p; break;
      default: fail("param_view: unexpected parameter '{}'", s.name);
    }
  }
  if (layout.tied && !v.lm_head) v.lm_head = v.embed;
  return v;
}

template <class T>
ParamView<T> param_view(const ModelConfig& c, T* base) {
  return param_view<T>(ParamLayout::build(c), 0, c.num_layers, base);
}

void copy_block_from_full(const ParamSpec& s, const float* full, float* block) {
  if (s.shape == s.full_shape || s.shape.size() == 1) {  // a vector's block is a row range
    std::memcpy(block, full + (s.shape.size() == 1 ? s.row0 : 0), s.numel() * sizeof(float));
    return;
  }
  const int64_t rows = s.shape[0], cols = s.shape[1], full_cols = s.full_shape[1];
  for (int64_t r = 0; r < rows; r++)
    std::memcpy(block + r * cols, full + (s.row0 + r) * full_cols + s.col0, cols * sizeof(float));
}

void copy_block_to_full(const ParamSpec& s, const float* block, float* full) {
  if (s.shape == s.full_shape || s.shape.size() == 1) {
    std::memcpy(full + (s.shape.size() == 1 ? s.row0 : 0), block, s.numel() * sizeof(float));
    return;
  }
  const int64_t rows = s.shape[0], cols = s.shape[1], full_cols = s.full_shape[1];
  for (int64_t r = 0; r < rows; r++)
    std::memcpy(full + (s.row0 + r) * full_cols + s.col0, block + r * cols, cols * sizeof(float));
}

template ParamView<float> param_view<float>(const ModelConfig&, float*);
template ParamView<double> param_view<double>(const ModelConfig&, double*);
template ParamView<const float> param_view<const float>(const ModelConfig&, const float*);
template ParamView<float> param_view<float>(const ParamLayout&, int, int, float*);
template ParamView<const float> param_view<const float>(const ParamLayout&, int, int, const float*);

}  // namespace sky
