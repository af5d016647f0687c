#include "model/params.h"

#include <fmt/format.h>

namespace sky {

std::string expert_param_name(int layer, int expert, const char* w) {
  return fmt::format("model.layers.{}.block_sparse_moe.experts.{}.{}.weight", layer, expert, w);
}

ParamLayout ParamLayout::build(const ModelConfig& c) {
  ParamLayout L;
  auto add = [&](std::string name, Shape shape) {
    ParamSpec s;
    s.name = std::move(name);
    s.decay = shape.size() == 2;
    s.shape = std::move(shape);
    s.offset = L.total;
    L.total += s.numel();
    L.specs.push_back(std::move(s));
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  add("model.embed_tokens.weight", {c.vocab_size, H});
  for (int l = 0; l < c.num_layers; l++) {
    std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", {H});
    add(p + "self_attn.q_proj.weight", {c.q_dim(), H});
    add(p + "self_attn.k_proj.weight", {c.kv_dim(), H});
    add(p + "self_attn.v_proj.weight", {c.kv_dim(), H});
    add(p + "self_attn.o_proj.weight", {H, c.q_dim()});
    add(p + "post_attention_layernorm.weight", {H});
    if (c.is_moe()) {
      add(p + "block_sparse_moe.gate.weight", {c.num_experts, H});
      for (const char* w : {"w1", "w3"})
        for (int e = 0; e < c.num_experts; e++) add(expert_param_name(l, e, w), {I, H});
      for (int e = 0; e < c.num_experts; e++) add(expert_param_name(l, e, "w2"), {H, I});
    } else {
      add(p + "mlp.gate_proj.weight", {I, H});
      add(p + "mlp.up_proj.weight", {I, H});
      add(p + "mlp.down_proj.weight", {H, I});
    }
  }
  add("model.norm.weight", {H});
  add("lm_head.weight", {c.vocab_size, H});
  return L;
}

const ParamSpec* ParamLayout::find(const std::string& name) const {
  for (auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

template <class T>
ParamView<T> param_view(const ModelConfig& c, T* base) {
  // Walks the same order as ParamLayout::build.
  T* p = base;
  auto take = [&](size_t n) { T* r = p; p += n; return r; };
  const size_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  ParamView<T> v;
  v.embed = take(size_t(c.vocab_size) * H);
  for (int l = 0; l < c.num_layers; l++) {
    LayerView<T> L{};
    L.attn_norm = take(H);
    L.wq = take(size_t(c.q_dim()) * H);
    L.wk = take(size_t(c.kv_dim()) * H);
    L.wv = take(size_t(c.kv_dim()) * H);
    L.wo = take(H * c.q_dim());
    L.ffn_norm = take(H);
    if (c.is_moe()) {
      L.router = take(E * H);
      L.w1 = take(E * I * H);
      L.w3 = take(E * I * H);
      L.w2 = take(E * H * I);
    } else {
      L.w_gate = take(I * H);
      L.w_up = take(I * H);
      L.w_down = take(H * I);
    }
    v.layers.push_back(L);
  }
  v.final_norm = take(H);
  v.lm_head = take(size_t(c.vocab_size) * H);
  return v;
}

template ParamView<float> param_view<float>(const ModelConfig&, float*);
template ParamView<double> param_view<double>(const ModelConfig&, double*);
template ParamView<const float> param_view<const float>(const ModelConfig&, const float*);

}  // namespace sky
