#include "moe/upcycle.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace sky {

Model upcycle(const Model& dense, const UpcycleOptions& o) {
  const ModelConfig& d = dense.cfg;
  const int G = o.granularity;
  SKY_CHECK(!d.has_moe(), "upcycle: the source model already has {} experts; give a dense model", d.num_experts);
  SKY_CHECK(!d.mla(), "upcycle: {} models (multi-head latent attention) are not supported as a source yet",
            d.model_type);
  SKY_CHECK(o.experts >= 1, "upcycle: --experts must be >= 1, got {}", o.experts);
  SKY_CHECK(G >= 1, "upcycle: --granularity must be >= 1, got {}", G);
  SKY_CHECK(d.intermediate_size % G == 0,
            "upcycle: --granularity {} does not divide the dense FFN's intermediate size {} (slices of equal width)",
            G, d.intermediate_size);
  SKY_CHECK(o.experts % G == 0,
            "upcycle: --experts {} is not a multiple of --granularity {} (each copy of the dense FFN is {} experts)",
            o.experts, G, G);
  SKY_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "upcycle: --top-k {} must be in [1, --experts {}]", o.top_k, o.experts);
  SKY_CHECK(o.reinit_experts >= 0 && o.reinit_experts <= o.experts, "upcycle: --reinit-experts {} must be in [0, {}]",
            o.reinit_experts, o.experts);
  SKY_CHECK(o.expert_noise >= 0 && o.router_std >= 0, "upcycle: --expert-noise and --router-std must be >= 0");
  ModelConfig c = d;
  c.model_type = "skywork_moe";
  c.num_experts = o.experts;
  // Every layer becomes MoE, its experts slices (or, G = 1, copies) of the dense FFN; no dense layer
  // is left, so the dense width is the experts' too (Skywork's and Mixtral's configs have one width).
  c.intermediate_size = c.moe_intermediate_size = d.intermediate_size / G;
  c.first_dense_layers = 0;
  c.moe_layer_step = 1;
  c.dense_layers.clear();
  c.top_k = o.top_k;
  c.logits_norm = o.logits_norm;
  c.gate_norm_std = o.gate_norm_std;
  c.validate();

  Model m = Model::random(c, o.seed);  // router and re-initialized experts keep these values
  const size_t H = c.hidden_size, I = d.intermediate_size, Is = I / G, HS = H * Is;
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
      const size_t j = size_t(e % G);  // this expert's slice of the dense FFN
      float *w1 = M.w1 + e * HS, *w3 = M.w3 + e * HS, *w2 = M.w2 + e * HS;
      // gate/up: rows [j Is, (j+1) Is) of [I, H], contiguous; down: columns of [H, I], times G
      // (exact in floating point when G is a power of two).
      copy(w1, D.w_gate + j * Is * H, HS);
      copy(w3, D.w_up + j * Is * H, HS);
      for (size_t h = 0; h < H; h++)
        for (size_t i = 0; i < Is; i++) w2[h * Is + i] = float(G) * D.w_down[h * I + j * Is + i];
      if (o.expert_noise <= 0) continue;
      for (float* p : {w1, w3, w2}) {
        double ss = 0;
        for (size_t i = 0; i < HS; i++) ss += double(p[i]) * p[i];
        const double scale = o.expert_noise * std::sqrt(ss / HS);
        for (size_t i = 0; i < HS; i++) p[i] += float(scale * rng.normal());
      }
    }
  }
  return m;
}

}  // namespace sky
