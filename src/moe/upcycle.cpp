#include "moe/upcycle.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace sky {

Model upcycle(const Model& dense, const UpcycleOptions& o) {
  const ModelConfig& d = dense.cfg;
  SKY_CHECK(!d.has_moe(), "upcycle: the source model already has {} experts; give a dense model", d.num_experts);
  SKY_CHECK(!d.mla(), "upcycle: {} models (multi-head latent attention) are not supported as a source yet",
            d.model_type);
  SKY_CHECK(o.experts >= 1, "upcycle: --experts must be >= 1, got {}", o.experts);
  SKY_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "upcycle: --top-k {} must be in [1, --experts {}]", o.top_k, o.experts);
  SKY_CHECK(o.reinit_experts >= 0 && o.reinit_experts <= o.experts, "upcycle: --reinit-experts {} must be in [0, {}]",
            o.reinit_experts, o.experts);
  SKY_CHECK(o.expert_noise >= 0 && o.router_std >= 0, "upcycle: --expert-noise and --router-std must be >= 0");
  ModelConfig c = d;
  c.model_type = "skywork_moe";
  c.num_experts = o.experts;
  c.moe_intermediate_size = d.intermediate_size;  // every expert copies the dense FFN: every layer becomes MoE
  c.first_dense_layers = 0;
  c.moe_layer_step = 1;
  c.dense_layers.clear();
  c.top_k = o.top_k;
  c.logits_norm = o.logits_norm;
  c.gate_norm_std = o.gate_norm_std;
  c.validate();

  Model m = Model::random(c, o.seed);  // router and re-initialized experts keep these values
  const size_t H = c.hidden_size, I = c.intermediate_size, HI = H * I;
  auto copy = [](float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * sizeof(float)); };
  copy(m.w.embed, dense.w.embed, size_t(c.vocab_size) * H);
  copy(m.w.final_norm, dense.w.final_norm, H);
  copy(m.w.lm_head, dense.w.lm_head, size_t(c.vocab_size) * H);
  Rng rng(o.seed * 31 + 7);
  for (int l = 0; l < c.num_layers; l++) {
    const auto& D = dense.w.layers[l];
    auto& M = m.w.layers[l];
    copy(M.attn_norm, D.attn_norm, H);
    copy(M.ffn_norm, D.ffn_norm, H);
    copy(M.wq, D.wq, size_t(c.q_dim()) * H);
    copy(M.wk, D.wk, size_t(c.kv_dim()) * H);
    copy(M.wv, D.wv, size_t(c.kv_dim()) * H);
    copy(M.wo, D.wo, H * c.q_dim());
    for (size_t i = 0; i < size_t(c.num_experts) * H; i++) M.router[i] = float(o.router_std * rng.normal());
    for (int e = 0; e < c.num_experts - o.reinit_experts; e++) {
      struct { float* dst; const float* src; } parts[] = {
          {M.w1 + e * HI, D.w_gate}, {M.w3 + e * HI, D.w_up}, {M.w2 + e * HI, D.w_down}};
      for (auto& p : parts) {
        copy(p.dst, p.src, HI);
        if (o.expert_noise <= 0) continue;
        double ss = 0;
        for (size_t i = 0; i < HI; i++) ss += double(p.src[i]) * p.src[i];
        const double scale = o.expert_noise * std::sqrt(ss / HI);
        for (size_t i = 0; i < HI; i++) p.dst[i] += float(scale * rng.normal());
      }
    }
  }
  return m;
}

}  // namespace sky
