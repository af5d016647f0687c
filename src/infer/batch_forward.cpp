#include "infer/batch_forward.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "infer/tp.h"
#include "moe/router.h"
#include "ops/attention.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "ops/vmath.h"

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

static void add_rows(float* y, const float* x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; i++) y[i] += x[i];
}

// Splits the concatenation of the active experts' output rows [0, A * O) across the team by
// estimated cost and runs this thread's share as run(j, o0, o1). A row of expert j costs
// row_cost(tokens_j), at least kStreamRows: streaming a weight row takes about as long as
// multiplying it with that many tokens, so small batches split by bytes and large ones (prefill)
// by flops; an even split of rows would leave one thread waiting whenever routing is uneven.
// Shares end on multiples of 4 rows so register tiles stay full.
constexpr int kStreamRows = 6;
// The kernels run tokens in groups of 4 (a partial group costs a full one), so 5 tokens cost 8.
static int row_cost(int n) { return std::max((n + 3) / 4 * 4, kStreamRows); }
template <class F>
static void split_rows(const std::vector<int>& tokens, int O, F&& run) {
  const int nt = omp_get_num_threads(), t = omp_get_thread_num();
  int64_t total = 0;
  for (int n : tokens) total += int64_t(row_cost(n)) * O;
  const int64_t lo = total * t / nt, hi = total * (t + 1) / nt;
  int64_t base = 0;
  for (size_t j = 0; j < tokens.size(); j++) {
    const int64_t c = row_cost(tokens[j]);
    // First row at or after cost position v (the same function for both ends: no gaps, no overlap).
    auto row = [&](int64_t v) { return int(std::min<int64_t>(O, (std::clamp<int64_t>((v - base + c - 1) / c, 0, O) + 3) / 4 * 4)); };
    const int o0 = row(lo), o1 = t == nt - 1 ? O : row(hi);
    if (o0 < o1) run(int(j), o0, o1);
    base += c * O;
  }
}

void grouped_experts(const InferLayer& L, const Dispatch& d, const float* xg, float* h1, float* h3, float* y, int H,
                     int I) {
  std::vector<int> active, tokens;  // experts with routed rows, and their row counts
  for (int e = 0; e < d.num_experts; e++)
    if (d.offsets[e + 1] > d.offsets[e]) {
      active.push_back(e);
      tokens.push_back(d.offsets[e + 1] - d.offsets[e]);
    }
#pragma omp parallel
  {
    // Gate and up projections, then SwiGLU on the same (rows, columns) this thread produced.
    split_rows(tokens, I, [&](int j, int o0, int o1) {
      const int e = active[j], r0 = d.offsets[e], n = d.offsets[e + 1] - r0;
      const float* x = xg + size_t(r0) * H;
      float* a = h1 + size_t(r0) * I;
      float* b = h3 + size_t(r0) * I;
      qmatmul_rows(a, x, L.w1[e], n, o0, o1);
      qmatmul_rows(b, x, L.w3[e], n, o0, o1);
      for (int r = 0; r < n; r++) silu_mul(a + size_t(r) * I + o0, a + size_t(r) * I + o0, b + size_t(r) * I + o0, o1 - o0);
    });
#pragma omp barrier
    split_rows(tokens, H, [&](int j, int o0, int o1) {
      const int e = active[j], r0 = d.offsets[e], n = d.offsets[e + 1] - r0;
      qmatmul_rows(y + size_t(r0) * H, h1 + size_t(r0) * I, L.w2[e], n, o0, o1);
    });
  }
}

static void ffn(const InferModel& m, int l, const float* in, float* out, int n, BatchScratch& s) {
  const ModelConfig& c = m.cfg;
  const InferLayer& L = m.layers[l];
  const int H = c.hidden_size;
  if (!c.layer_is_moe(l)) {
    const int I = c.intermediate_size;
    grow(s.h1, size_t(n) * I);
    grow(s.h3, size_t(n) * I);
    qmatmul_multi(in, n, {{s.h1.data(), &L.gate}, {s.h3.data(), &L.up}});
    swiglu_forward(s.h1.data(), s.h1.data(), s.h3.data(), long(n) * I);
    qmatmul(out, s.h1.data(), L.down, n);
    return;
  }
  const int E = c.num_experts, k = c.top_k, I = c.moe_intermediate_size;
  RouterOptions ro{E, k, c.logits_norm, c.gate_norm_std};
  grow(s.router_logits, size_t(n) * E);
  grow(s.probs, size_t(n) * E);
  grow(s.topk_w, size_t(n) * k);
  grow(s.topk_idx, size_t(n) * k);
  matmul_forward(s.router_logits.data(), in, L.router.data(), n, H, E);
  router_forward(s.probs.data(), s.topk_idx.data(), s.topk_w.data(), s.router_logits.data(), n, ro);
  make_dispatch_into(s.disp, s.topk_idx.data(), s.probs.data(), n, E, k, 0.0, DropPolicy::Prob);  // inference is dropless
  if (m.shard.experts.size < E) keep_experts(s.disp, m.shard.experts);  // expert parallel: only the experts held
  const int R = s.disp.offsets[E];
  grow(s.xg, size_t(R) * H);
  grow(s.h1, size_t(R) * I);
  grow(s.h3, size_t(R) * I);
  grow(s.y, size_t(R) * H);
  for (int r = 0; r < R; r++)
    std::memcpy(s.xg.data() + size_t(r) * H, in + size_t(s.disp.row_token[r]) * H, sizeof(float) * H);
  grouped_experts(L, s.disp, s.xg.data(), s.h1.data(), s.h3.data(), s.y.data(), H, I);
  // Combine: each token sums its experts' outputs weighted by the renormalized gate.
#pragma omp parallel for schedule(static) if (n > 8)
  for (int t = 0; t < n; t++) {
    float* o = out + size_t(t) * H;
    std::fill(o, o + H, 0.0f);
    for (int j = 0; j < k; j++) {
      const int row = s.disp.slot_row[size_t(t) * k + j];
      if (row < 0) continue;  // an expert another rank holds
      const float w = s.topk_w[size_t(t) * k + j];
      const float* yr = s.y.data() + size_t(row) * H;
      for (int i = 0; i < H; i++) o[i] += w * yr[i];
    }
  }
}

void batch_forward(const InferModel& m, const std::vector<BatchRow>& rows, float* logits, BatchScratch& s,
                   float* all_logits) {
  const ModelConfig& c = m.cfg;
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
    rmsnorm_forward(s.ln.data(), s.rstd.data(), s.x.data(), L.attn_norm.data(), n, H, eps);
    qmatmul_multi(s.ln.data(), n, {{s.q.data(), &L.wq}, {s.k.data(), &L.wk}, {s.v.data(), &L.wv}});
    rope_forward(s.q.data(), s.pos.data(), n, c.num_heads, m.rope);
    rope_forward(s.k.data(), s.pos.data(), n, c.num_kv_heads, m.rope);
    int r0 = 0;
    for (size_t i = 0; i < rows.size(); i++) {
      const BatchRow& r = rows[i];
      r.kv->put(c, l, r.kv->len, s.k.data() + size_t(r0) * kvd, s.v.data() + size_t(r0) * kvd, r.n);
      s.attn[i] = {s.ctx.data() + size_t(r0) * qd, s.q.data() + size_t(r0) * qd, r.kv->view(c, l), r.kv->len, r.n};
      r0 += r.n;
    }
    attention_cached_batch(s.attn.data(), int(rows.size()), c.num_heads, c.num_kv_heads, c.head_dim);
    qmatmul(s.tmp.data(), s.ctx.data(), L.wo, n);
    if (m.tp) m.tp->sum(s.tmp.data(), size_t(n) * H);  // every rank's heads
    add_rows(s.x.data(), s.tmp.data(), size_t(n) * H);
    rmsnorm_forward(s.ln.data(), s.rstd.data(), s.x.data(), L.ffn_norm.data(), n, H, eps);
    ffn(m, l, s.ln.data(), s.tmp.data(), n, s);
    if (m.tp) m.tp->sum(s.tmp.data(), size_t(n) * H);  // every rank's FFN width or experts
    add_rows(s.x.data(), s.tmp.data(), size_t(n) * H);
  }
  for (const auto& r : rows) r.kv->len += r.n;
  if (!m.shard.head) return;  // a tensor-parallel rank other than 0: rank 0 alone computes logits
  if (all_logits) {
    rmsnorm_forward(s.ln.data(), s.rstd.data(), s.x.data(), m.final_norm.data(), n, H, eps);
    qmatmul(all_logits, s.ln.data(), m.lm_head, n);
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
  rmsnorm_forward(s.ln.data(), s.rstd.data(), s.logits_in.data(), m.final_norm.data(), S, H, eps);
  qmatmul(logits, s.ln.data(), m.lm_head, S);
}

}  // namespace sky
