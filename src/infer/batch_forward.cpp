#include "infer/batch_forward.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "infer/tp.h"
#include "backend/backend.h"
#include "model/transformer.h"

namespace sky {

// The decoder's view of layer l: the engine's typed weights (held experts only).
static LayerWeights layer_weights(const InferModel& m, int l, BatchScratch& s) {
  const ModelConfig& c = m.cfg;
  const InferLayer& L = m.layers[l];
  LayerWeights w;
  w.attn_norm = L.attn_norm.data();
  w.ffn_norm = L.ffn_norm.data();
  w.wq = &L.wq, w.wk = &L.wk, w.wv = &L.wv, w.wo = &L.wo;
  if (c.mla()) {
    if (L.wq_a.data) w.wq_a = &L.wq_a, w.wq_b = &L.wq_b, w.q_a_norm = L.q_a_norm.data();
    w.wkv_a = &L.wkv_a;
    w.kv_a_norm = L.kv_a_norm.data();
    w.uk = L.uk.data();
    w.uv = L.uv.data();
  }
  if (!L.bq.empty()) w.bq = L.bq.data(), w.bk = L.bk.data(), w.bv = L.bv.data();
  if (!L.q_norm.empty()) w.q_norm = L.q_norm.data(), w.k_norm = L.k_norm.data();
  if (!c.layer_is_moe(l)) {
    w.gate = &L.gate, w.up = &L.up, w.down = &L.down;
    return w;
  }
  const int e0 = m.shard.experts.begin, held = m.shard.experts.size;
  s.w1.resize(held);
  s.w3.resize(held);
  s.w2.resize(held);
  for (int j = 0; j < held; j++) {
    s.w1[j] = &L.w1[e0 + j];
    s.w3[j] = &L.w3[e0 + j];
    s.w2[j] = &L.w2[e0 + j];
  }
  MoeWeights<float>& e = w.moe;
  e.H = c.hidden_size;
  e.I = c.moe_intermediate_size;
  e.E = c.num_experts;
  e.e_begin = e0;
  e.e_count = held;
  e.router = L.router.data();
  if (!L.router_bias.empty()) e.select_bias = L.router_bias.data();
  e.q1 = s.w1.data();
  e.q3 = s.w3.data();
  e.q2 = s.w2.data();
  if (L.sh_down.data) w.sh_gate = &L.sh_gate, w.sh_up = &L.sh_up, w.sh_down = &L.sh_down;
  if (L.sh_router.data) w.sh_router = &L.sh_router;
  return w;
}

// logits [n, V] = the LM head over the final norm's rows ln [n, H], divided by logits_scaling.
static void head_linear(const InferModel& m, float* logits, const float* ln, int n) {
  m.be->linear(logits, ln, m.lm_head, n);
  if (m.cfg.logits_scaling != 1.0)
    m.be->scale(logits, size_t(n) * m.cfg.vocab_size, float(1.0 / m.cfg.logits_scaling));
}

// RowLogits: the head over every row but the last of each marked sequence, kBlock rows at a time.
static void head_rows(const InferModel& m, const std::vector<BatchRow>& rows, const RowLogits& rl, BatchScratch& s) {
  constexpr int kBlock = 32;
  const int H = m.cfg.hidden_size, V = m.cfg.vocab_size;
  grow(s.row_logits, size_t(kBlock) * V);
  int r0 = 0;
  for (size_t i = 0; i < rows.size(); r0 += rows[i].n, i++) {
    if (i >= rl.want.size() || !rl.want[i]) continue;
    for (int j = 0; j < rows[i].n - 1; j += kBlock) {
      const int b = std::min(kBlock, rows[i].n - 1 - j);
      m.be->rmsnorm(s.ln.data(), s.rstd.data(), s.x.data() + size_t(r0 + j) * H, m.final_norm.data(), b, H,
                    float(m.cfg.rms_norm_eps));
      head_linear(m, s.row_logits.data(), s.ln.data(), b);
      for (int k = 0; k < b; k++) rl.fn(int(i), j + k, s.row_logits.data() + size_t(k) * V);
    }
  }
}

void batch_forward(const InferModel& m, const std::vector<BatchRow>& rows, float* logits, BatchScratch& s,
                   float* all_logits, const RowLogits* row_logits) {
  const ModelConfig& c = m.cfg;
  Backend& be = *m.be;
  const int H = c.hidden_size, V = c.vocab_size;
  const float eps = float(c.rms_norm_eps);
  int n = 0;
  for (const auto& r : rows) {
    SKY_CHECK(r.n > 0, "batch_forward: a sequence with no new tokens");
    SKY_CHECK(r.kv->len + r.n <= r.kv->capacity, "sequence of {} tokens exceeds its KV capacity {}", r.kv->len + r.n,
              r.kv->capacity);
    SKY_CHECK(r.kv->len + r.n <= m.rope.max_pos, "position {} exceeds max_position_embeddings {}", r.kv->len + r.n - 1,
              m.rope.max_pos);
    for (int i = 0; i < r.n; i++)
      SKY_CHECK(r.tokens[i] >= 0 && r.tokens[i] < V, "token id {} is outside the vocabulary [0, {})", r.tokens[i], V);
    n += r.n;
  }
  if (m.tp) m.tp->announce(rows);  // rank 0 tells the other ranks what to run
  const StepScope step(be, n);
  grow(s.x, size_t(n) * H);
  grow(s.ln, size_t(n) * H);
  grow(s.rstd, n);
  grow(s.pos, n);
  {
    int r0 = 0;
    for (const auto& r : rows)
      for (int i = 0; i < r.n; i++, r0++) {
        s.pos[r0] = r.kv->len + i;
        std::memcpy(s.x.data() + size_t(r0) * H, m.embed.data() + size_t(r.tokens[i]) * H, sizeof(float) * H);
      }
    if (c.embedding_multiplier != 1.0) be.scale(s.x.data(), size_t(n) * H, float(c.embedding_multiplier));
  }
  LayerShape d;
  d.H = H;
  d.nh = c.num_heads;
  d.nkv = c.num_kv_heads;
  d.hd = c.head_dim;
  d.I = c.intermediate_size;
  d.S = c.shared_expert_size;
  d.qk_norm = c.qk_norm;
  d.eps = eps;
  d.set_multipliers(c);
  d.rope = &m.rope;
  set_mla_shape(d, c);
  RowBatch rb;
  rb.N = n;
  rb.pos = s.pos.data();
  rb.seqs = &rows;
  // Dropless, no aux loss; the held-experts dispatcher leaves the ranks' partial outputs to the
  // group's sum, as the attention heads and the dense FFN width.
  const MoeOptions moe = moe_options(c, 0.0, DropPolicy::Prob, AuxLossType::None);
  PartialSum sums;
  if (m.tp) sums.sum = [&m](float* x, size_t count) { m.tp->sum(x, count); };
  sums.moe = true;
  for (int l = 0; l < c.num_layers; l++)
    layer_forward(be, layer_weights(m, l, s), d, l, s.layer, s.x.data(), s.x.data(), rb, moe, sums);
  for (const auto& r : rows) r.kv->len += r.n;
  if (!m.shard.head) return;  // a tensor-parallel rank other than 0: rank 0 alone computes logits
  if (row_logits) head_rows(m, rows, *row_logits, s);
  if (all_logits) {
    be.rmsnorm(s.ln.data(), s.rstd.data(), s.x.data(), m.final_norm.data(), n, H, eps);
    head_linear(m, all_logits, s.ln.data(), n);
    int r0 = 0;
    for (size_t i = 0; i < rows.size(); i++) {
      r0 += rows[i].n;
      std::memcpy(logits + i * V, all_logits + size_t(r0 - 1) * V, sizeof(float) * V);
    }
    return;
  }
  // Only each sequence's last row goes through the final norm and the LM head.
  const int S = int(rows.size());
  grow(s.logits_in, size_t(S) * H);
  int r0 = 0;
  for (int i = 0; i < S; i++) {
    r0 += rows[i].n;
    std::memcpy(s.logits_in.data() + size_t(i) * H, s.x.data() + size_t(r0 - 1) * H, sizeof(float) * H);
  }
  be.rmsnorm(s.ln.data(), s.rstd.data(), s.logits_in.data(), m.final_norm.data(), S, H, eps);
  head_linear(m, logits, s.ln.data(), S);
}

}  // namespace sky
