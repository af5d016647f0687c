#include "infer/batch_forward.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "infer/tp.h"
#include "backend/backend.h"
#include "model/transformer.h"

namespace sky {

void SeqKV::init(const ModelConfig& c, int cap, bool half) {
  capacity = cap;
  len = 0;
  bf16 = half;
  const size_t n = size_t(c.num_layers) * cap * c.kv_dim();
  k.assign(bf16 ? 0 : n, 0.0f);
  v.assign(bf16 ? 0 : n, 0.0f);
  kh.assign(bf16 ? n : 0, 0);
  vh.assign(bf16 ? n : 0, 0);
}

void SeqKV::put(const ModelConfig& c, int layer, int pos, const float* keys, const float* values, int n) {
  const size_t at = (size_t(layer) * capacity + pos) * c.kv_dim(), count = size_t(n) * c.kv_dim();
  if (bf16) {
    convert_from_f32(DType::BF16, keys, kh.data() + at, count);
    convert_from_f32(DType::BF16, values, vh.data() + at, count);
  } else {
    std::memcpy(k.data() + at, keys, sizeof(float) * count);
    std::memcpy(v.data() + at, values, sizeof(float) * count);
  }
}

KvView SeqKV::view(const ModelConfig& c, int layer) const {
  const size_t at = size_t(layer) * capacity * c.kv_dim();
  if (bf16) return {nullptr, nullptr, kh.data() + at, vh.data() + at};
  return {k.data() + at, v.data() + at, nullptr, nullptr};
}

template <class V>
static void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

static void ffn(const InferModel& m, int l, const float* in, float* out, int n, BatchScratch& s) {
  const ModelConfig& c = m.cfg;
  const InferLayer& L = m.layers[l];
  Backend& be = *m.be;
  const int H = c.hidden_size;
  if (!c.layer_is_moe(l)) {
    const int I = c.intermediate_size;
    grow(s.h1, size_t(n) * I);
    grow(s.h3, size_t(n) * I);
    const LinearOut gate_up[] = {{s.h1.data(), &L.gate}, {s.h3.data(), &L.up}};
    be.linear_multi(in, n, gate_up, 2);
    be.swiglu(s.h1.data(), s.h1.data(), s.h3.data(), long(n) * I);
    be.linear(out, s.h1.data(), L.down, n);
    return;
  }
  // The MoE block training runs, over this rank's held experts' typed weights (dropless, no aux
  // loss); under tensor/expert parallelism the caller sums the ranks' partial outputs.
  const int e0 = m.shard.experts.begin, held = m.shard.experts.size;
  s.w1.resize(held);
  s.w3.resize(held);
  s.w2.resize(held);
  for (int j = 0; j < held; j++) {
    s.w1[j] = &L.w1[e0 + j];
    s.w3[j] = &L.w3[e0 + j];
    s.w2[j] = &L.w2[e0 + j];
  }
  MoeWeights<float> w;
  w.H = H;
  w.I = c.moe_intermediate_size;
  w.E = c.num_experts;
  w.e_begin = e0;
  w.e_count = held;
  w.router = L.router.data();
  w.q1 = s.w1.data();
  w.q3 = s.w3.data();
  w.q2 = s.w2.data();
  moe_forward(be, out, in, n, w, moe_options(c, 0.0, DropPolicy::Prob, AuxLossType::None), s.moe);
}

void batch_forward(const InferModel& m, const std::vector<BatchRow>& rows, float* logits, BatchScratch& s,
                   float* all_logits) {
  const ModelConfig& c = m.cfg;
  Backend& be = *m.be;
  const int H = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), V = c.vocab_size;
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
  be.step_begin(n);
  struct StepEnd {  // every way out of the step, errors included
    Backend& be;
    ~StepEnd() { be.step_end(); }
  } step_end{be};
  for (auto* b : {&s.x, &s.ln, &s.tmp}) grow(*b, size_t(n) * H);
  grow(s.q, size_t(n) * qd);
  grow(s.ctx, size_t(n) * qd);
  grow(s.k, size_t(n) * kvd);
  grow(s.v, size_t(n) * kvd);
  grow(s.rstd, n);
  grow(s.pos, n);
  grow(s.attn, rows.size());
  {
    int r0 = 0;
    for (const auto& r : rows)
      for (int i = 0; i < r.n; i++, r0++) {
        s.pos[r0] = r.kv->len + i;
        std::memcpy(s.x.data() + size_t(r0) * H, m.embed.data() + size_t(r.tokens[i]) * H, sizeof(float) * H);
      }
  }
  for (int l = 0; l < c.num_layers; l++) {
    const InferLayer& L = m.layers[l];
    be.rmsnorm(s.ln.data(), s.rstd.data(), s.x.data(), L.attn_norm.data(), n, H, eps);
    const LinearOut qkv[] = {{s.q.data(), &L.wq}, {s.k.data(), &L.wk}, {s.v.data(), &L.wv}};
    be.linear_multi(s.ln.data(), n, qkv, 3);
    be.rope(s.q.data(), s.pos.data(), n, c.num_heads, m.rope);
    be.rope(s.k.data(), s.pos.data(), n, c.num_kv_heads, m.rope);
    int r0 = 0;
    for (size_t i = 0; i < rows.size(); i++) {
      const BatchRow& r = rows[i];
      r.kv->put(c, l, r.kv->len, s.k.data() + size_t(r0) * kvd, s.v.data() + size_t(r0) * kvd, r.n);
      s.attn[i] = {s.ctx.data() + size_t(r0) * qd, s.q.data() + size_t(r0) * qd, r.kv->view(c, l), r.kv->len, r.n};
      r0 += r.n;
    }
    be.attention_kv(s.attn.data(), int(rows.size()), c.num_heads, c.num_kv_heads, c.head_dim);
    be.linear(s.tmp.data(), s.ctx.data(), L.wo, n);
    if (m.tp) m.tp->sum(s.tmp.data(), size_t(n) * H);  // every rank's heads
    be.add(s.x.data(), s.tmp.data(), size_t(n) * H);
    be.rmsnorm(s.ln.data(), s.rstd.data(), s.x.data(), L.ffn_norm.data(), n, H, eps);
    ffn(m, l, s.ln.data(), s.tmp.data(), n, s);
    if (m.tp) m.tp->sum(s.tmp.data(), size_t(n) * H);  // every rank's FFN width or experts
    be.add(s.x.data(), s.tmp.data(), size_t(n) * H);
  }
  for (const auto& r : rows) r.kv->len += r.n;
  if (!m.shard.head) return;  // a tensor-parallel rank other than 0: rank 0 alone computes logits
  if (all_logits) {
    be.rmsnorm(s.ln.data(), s.rstd.data(), s.x.data(), m.final_norm.data(), n, H, eps);
    be.linear(all_logits, s.ln.data(), m.lm_head, n);
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
  be.linear(logits, s.ln.data(), m.lm_head, S);
}

}  // namespace sky
