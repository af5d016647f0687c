#include "model/transformer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "dist/communicator.h"
#include "backend/backend.h"

namespace sky {

RouterOptions router_options(const ModelConfig& cfg) {
  RouterOptions r;
  r.num_experts = cfg.num_experts;
  r.top_k = cfg.top_k;
  r.logits_norm = cfg.logits_norm;
  r.lambda = cfg.gate_norm_std;
  r.sigmoid = cfg.router_sigmoid;
  r.renormalize = cfg.norm_topk_prob;
  r.scale = cfg.routed_scaling_factor;
  return r;
}

MoeOptions moe_options(const ModelConfig& cfg, double capacity_factor, DropPolicy policy, AuxLossType aux) {
  MoeOptions o;
  o.router = router_options(cfg);
  o.capacity_factor = capacity_factor;
  o.policy = policy;
  o.aux = aux;
  return o;
}

void check_tokens(const int32_t* ids, size_t n, int vocab, const char* what) {
  for (size_t i = 0; i < n; i++)
    SKY_CHECK(ids[i] >= 0 && ids[i] < vocab, "{}: token id {} at position {} is outside the vocabulary [0, {})",
              what, ids[i], i, vocab);
}

// Local sizes of the shard a model holds.
struct Dims {
  int H, nh, nkv, hd, qd, kvd, I, V;  // I: the dense FFN width held
  explicit Dims(const Model& m)
      : H(m.cfg.hidden_size), nh(m.shard.q_heads.size), nkv(m.shard.kv_heads.size), hd(m.cfg.head_dim),
        qd(nh * hd), kvd(nkv * hd), I(m.shard.ffn.size),
        V(m.cfg.vocab_size) {}
};

// `dense`: the layer (or, for the recompute scratch, some layer) has a dense FFN.
static void size_layer(const Model& m, LayerActs& L, int B, int T, bool dense) {
  const Dims d(m);
  const size_t N = size_t(B) * T;
  L.ln1.resize(N * d.H);
  L.rstd1.resize(N);
  L.q.resize(N * d.qd);
  L.k.resize(N * d.kvd);
  L.v.resize(N * d.kvd);
  L.att.resize(size_t(B) * d.nh * T * T);
  L.ctx.resize(N * d.qd);
  L.mid.resize(N * d.H);
  L.ln2.resize(N * d.H);
  L.rstd2.resize(N);
  if (dense) {
    L.h1.resize(N * d.I);
    L.h3.resize(N * d.I);
    L.act.resize(N * d.I);
  }
}

void Activations::resize(const Model& m, int B_, int T_) {
  const ModelConfig& c = m.cfg;
  B = B_;
  T = T_;
  const int nl = m.shard.num_layers();
  const size_t N = size_t(B) * T, H = c.hidden_size;
  inputs.resize(N);
  targets.resize(N);
  pos.resize(N);
  for (size_t n = 0; n < N; n++) pos[n] = int32_t(n % T);
  resid.resize(nl + 1);
  for (auto& r : resid) r.resize(N * H);
  layers.resize(nl);
  for (int l = 0; l < nl; l++)
    if (!(l < int(recompute.size()) && recompute[l]))
      size_layer(m, layers[l], B, T, !m.cfg.layer_is_moe(m.shard.layer_begin + l));
  if (scratch) size_layer(m, *scratch, B, T, m.cfg.has_dense());
  if (m.shard.head) {
    lnf.resize(N * H);
    rstdf.resize(N);
    logits.resize(N * size_t(c.vocab_size));
    losses.resize(N);
  }
}

static MoeWeights<float> moe_weights(const Model& m, const LayerView<float>& L) {
  MoeWeights<float> w;
  w.H = m.cfg.hidden_size;
  w.I = m.shard.expert_ffn.size;  // the expert width held
  w.E = m.cfg.num_experts;
  w.e_begin = m.shard.experts.begin;
  w.e_count = m.shard.experts.size;
  w.router = L.router;
  w.w1 = L.w1;
  w.w3 = L.w3;
  w.w2 = L.w2;
  return w;
}

static void tp_sum(Communicator* tp, float* data, size_t n) {
  if (tp) tp->all_reduce_sum(data, n);
}

// out = FFN(in) for N rows, dense or MoE (complete sums, tensor-parallel partials added up); the
// caches receive what backward needs. `l` is the shard's local layer index.
static void ffn_forward(const Model& m, int l, LayerActs& A, const float* in, float* out, int N, const MoeOptions& moe,
                        Communicator* tp) {
  const Dims d(m);
  Backend& be = *m.be;
  const auto& L = m.w.layers[l];
  if (m.cfg.layer_is_moe(m.shard.layer_begin + l)) {
    moe_forward(be, out, in, N, moe_weights(m, L), moe, A.moe);
    return;
  }
  A.h1.resize(size_t(N) * d.I);
  A.h3.resize(size_t(N) * d.I);
  A.act.resize(size_t(N) * d.I);
  be.matmul(A.h1.data(), in, L.w_gate, N, d.H, d.I);
  be.matmul(A.h3.data(), in, L.w_up, N, d.H, d.I);
  be.swiglu(A.act.data(), A.h1.data(), A.h3.data(), long(N) * d.I);
  be.matmul(out, A.act.data(), L.w_down, N, d.I, d.H);
  tp_sum(tp, out, size_t(N) * d.H);
}

// One decoder layer (local index l): y = mid + ffn(norm(mid)), mid = x + attn(norm(x)).
static void layer_forward(const Model& m, int l, LayerActs& L, const float* x, float* y, const int32_t* pos, int B,
                          int T, const MoeOptions& moe, Communicator* tp) {
  const Dims d(m);
  Backend& be = *m.be;
  const auto& W = m.w.layers[l];
  const int N = B * T;
  const float eps = float(m.cfg.rms_norm_eps);
  be.rmsnorm(L.ln1.data(), L.rstd1.data(), x, W.attn_norm, N, d.H, eps);
  be.matmul(L.q.data(), L.ln1.data(), W.wq, N, d.H, d.qd);
  be.matmul(L.k.data(), L.ln1.data(), W.wk, N, d.H, d.kvd);
  be.matmul(L.v.data(), L.ln1.data(), W.wv, N, d.H, d.kvd);
  be.rope(L.q.data(), pos, N, d.nh, m.rope);
  be.rope(L.k.data(), pos, N, d.nkv, m.rope);
  be.attention(L.ctx.data(), L.att.data(), L.q.data(), L.k.data(), L.v.data(), B, T, d.nh, d.nkv, d.hd);
  be.matmul(L.mid.data(), L.ctx.data(), W.wo, N, d.qd, d.H);
  tp_sum(tp, L.mid.data(), size_t(N) * d.H);
  be.add(L.mid.data(), x, size_t(N) * d.H);  // mid = x + attn
  be.rmsnorm(L.ln2.data(), L.rstd2.data(), L.mid.data(), W.ffn_norm, N, d.H, eps);
  ffn_forward(m, l, L, L.ln2.data(), y, N, moe, tp);
  be.add(y, L.mid.data(), size_t(N) * d.H);
}

double forward(const Model& m, Activations& A, const int32_t* inputs, const int32_t* targets, int B, int T,
               const MoeOptions& moe, Communicator* tp) {
  const ModelConfig& c = m.cfg;
  SKY_CHECK(T <= c.max_position_embeddings, "sequence length {} exceeds max_position_embeddings {}", T,
            c.max_position_embeddings);
  const int nl = m.shard.num_layers();
  if (A.B != B || A.T != T || A.layers.size() != size_t(nl)) A.resize(m, B, T);
  const int N = B * T, H = c.hidden_size, V = c.vocab_size;
  std::memcpy(A.inputs.data(), inputs, sizeof(int32_t) * N);
  check_tokens(inputs, N, V, "input");
  if (targets) {
    std::memcpy(A.targets.data(), targets, sizeof(int32_t) * N);
    check_tokens(targets, N, V, "target");
  }
  Backend& be = *m.be;
  if (m.shard.embed) be.embedding(A.resid[0].data(), inputs, m.w.embed, N, H);
  A.moe_stats.resize(c.has_moe() ? nl : 0);
  for (int l = 0; l < nl; l++) {
    LayerActs& L = A.layer(l);
    layer_forward(m, l, L, A.resid[l].data(), A.resid[l + 1].data(), A.pos.data(), B, T, moe, tp);
    if (c.layer_is_moe(m.shard.layer_begin + l))
      A.moe_stats[l] = {L.moe.disp.dropped, L.moe.entropy, L.moe.aux_loss, L.moe.z_loss, L.moe.disp.load};
    else if (c.has_moe())
      A.moe_stats[l] = {};  // a dense layer of a mixed model
  }
  if (!m.shard.head) return 0.0;
  be.rmsnorm(A.lnf.data(), A.rstdf.data(), A.resid[nl].data(), m.w.final_norm, N, H, float(c.rms_norm_eps));
  be.matmul(A.logits.data(), A.lnf.data(), m.w.lm_head, N, H, V);
  if (!targets) return 0.0;
  be.cross_entropy(A.losses.data(), A.logits.data(), targets, N, V);
  double sum = 0;
  for (int n = 0; n < N; n++) sum += A.losses[n];
  return sum / N;
}

static void grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

static void zero(std::vector<float>& v, size_t n) { std::fill(v.begin(), v.begin() + n, 0.0f); }

// Dense SwiGLU FFN backward: accumulates d_in (partial under tensor parallelism) and weight grads.
static void dense_ffn_backward(Backend& be, const Dims& d, const LayerView<float>& W, const LayerView<float>& G, LayerActs& L,
                               Activations& A, const float* in, const float* d_out, float* d_in, int N) {
  const size_t NI = size_t(N) * d.I;
  grow(A.d_h1, NI);
  grow(A.d_h3, NI);
  grow(A.d_act, NI);
  zero(A.d_h1, NI);
  zero(A.d_h3, NI);
  zero(A.d_act, NI);
  be.matmul_backward(A.d_act.data(), G.w_down, d_out, L.act.data(), W.w_down, N, d.I, d.H);
  be.swiglu_backward(A.d_h1.data(), A.d_h3.data(), A.d_act.data(), L.h1.data(), L.h3.data(), long(NI));
  be.matmul_backward(d_in, G.w_gate, A.d_h1.data(), in, W.w_gate, N, d.H, d.I);
  be.matmul_backward(d_in, G.w_up, A.d_h3.data(), in, W.w_up, N, d.H, d.I);
}

// Backward of layer_forward for local layer l: A.d_x holds the gradient of y on entry and of x on exit.
static void layer_backward(const Model& m, int l, LayerActs& L, Activations& A, const LayerView<float>& GL,
                           const MoeOptions& moe, const LossWeights& lw, double scale, Communicator* tp) {
  const Dims d(m);
  Backend& be = *m.be;
  const auto& W = m.w.layers[l];
  const int B = A.B, T = A.T, N = B * T;
  const size_t NH = size_t(N) * d.H;
  // y = mid + ffn(ln2(mid)): d_mid = d_y + d(ffn path).
  std::copy(A.d_x.begin(), A.d_x.begin() + NH, A.d_mid.begin());
  zero(A.d_ln, NH);
  if (m.cfg.layer_is_moe(m.shard.layer_begin + l)) {
    MoeGrads<float> mg{GL.router, GL.w1, GL.w3, GL.w2};
    const int lg = m.shard.layer_begin + l;
    double alpha = lg < int(lw.aux_alpha.size()) ? lw.aux_alpha[lg] : 0.0;
    moe_backward(be, A.d_ln.data(), mg, A.d_x.data(), L.ln2.data(), N, moe_weights(m, W), moe, L.moe, alpha * scale,
                 lw.z_coef * scale);
  } else {
    dense_ffn_backward(be, d, W, GL, L, A, L.ln2.data(), A.d_x.data(), A.d_ln.data(), N);
    tp_sum(tp, A.d_ln.data(), NH);
  }
  be.rmsnorm_backward(A.d_mid.data(), GL.ffn_norm, A.d_ln.data(), L.mid.data(), W.ffn_norm, L.rstd2.data(), N, d.H);
  // mid = x + o_proj(attn(...)): d_x = d_mid + d(attention path).
  std::copy(A.d_mid.begin(), A.d_mid.begin() + NH, A.d_x.begin());
  zero(A.d_ctx, size_t(N) * d.qd);
  be.matmul_backward(A.d_ctx.data(), GL.wo, A.d_mid.data(), L.ctx.data(), W.wo, N, d.qd, d.H);
  zero(A.d_q, size_t(N) * d.qd);
  zero(A.d_k, size_t(N) * d.kvd);
  zero(A.d_v, size_t(N) * d.kvd);
  be.attention_backward(A.d_q.data(), A.d_k.data(), A.d_v.data(), A.d_ctx.data(), L.q.data(), L.k.data(), L.v.data(),
                     L.att.data(), B, T, d.nh, d.nkv, d.hd);
  be.rope_backward(A.d_q.data(), A.pos.data(), N, d.nh, m.rope);
  be.rope_backward(A.d_k.data(), A.pos.data(), N, d.nkv, m.rope);
  zero(A.d_ln, NH);
  be.matmul_backward(A.d_ln.data(), GL.wq, A.d_q.data(), L.ln1.data(), W.wq, N, d.H, d.qd);
  be.matmul_backward(A.d_ln.data(), GL.wk, A.d_k.data(), L.ln1.data(), W.wk, N, d.H, d.kvd);
  be.matmul_backward(A.d_ln.data(), GL.wv, A.d_v.data(), L.ln1.data(), W.wv, N, d.H, d.kvd);
  tp_sum(tp, A.d_ln.data(), NH);
  be.rmsnorm_backward(A.d_x.data(), GL.attn_norm, A.d_ln.data(), A.resid[l].data(), W.attn_norm, L.rstd1.data(), N, d.H);
}

void backward(const Model& m, Activations& A, float* grads, const MoeOptions& moe, const LossWeights& lw,
              double scale, double global_tokens, Communicator* tp, const float* d_top) {
  const Dims d(m);
  Backend& be = *m.be;
  const int B = A.B, T = A.T, N = B * T, nl = m.shard.num_layers();
  const size_t NH = size_t(N) * d.H;
  ParamView<float> G = param_view<float>(m.layout, m.shard.layer_begin, nl, grads);
  for (auto* v : {&A.d_lnf, &A.d_x, &A.d_mid, &A.d_ln}) grow(*v, NH);
  grow(A.d_q, size_t(N) * d.qd);
  grow(A.d_ctx, size_t(N) * d.qd);
  grow(A.d_k, size_t(N) * d.kvd);
  grow(A.d_v, size_t(N) * d.kvd);

  if (m.shard.head) {
    // Loss = mean over the global batch's positions, times the accumulation scale.
    grow(A.d_logits, size_t(N) * d.V);
    std::vector<float> dloss(N, float(scale / (global_tokens > 0 ? global_tokens : N)));
    zero(A.d_logits, size_t(N) * d.V);
    be.cross_entropy_backward(A.d_logits.data(), A.logits.data(), A.targets.data(), dloss.data(), N, d.V);
    zero(A.d_lnf, NH);
    be.matmul_backward(A.d_lnf.data(), G.lm_head, A.d_logits.data(), A.lnf.data(), m.w.lm_head, N, d.H, d.V);
    zero(A.d_x, NH);  // d_x: gradient wrt the residual stream at the current depth
    be.rmsnorm_backward(A.d_x.data(), G.final_norm, A.d_lnf.data(), A.resid[nl].data(), m.w.final_norm, A.rstdf.data(), N,
                     d.H);
  } else {
    SKY_CHECK(d_top, "backward: a shard without the LM head needs the gradient of its output");
    std::memcpy(A.d_x.data(), d_top, NH * sizeof(float));
  }
  for (int l = nl - 1; l >= 0; l--) {
    const bool again = l < int(A.recompute.size()) && A.recompute[l];
    if (again)  // recompute this layer's activations from its saved input
      layer_forward(m, l, *A.scratch, A.resid[l].data(), A.resid[l + 1].data(), A.pos.data(), B, T, moe, tp);
    layer_backward(m, l, A.layer(l), A, G.layers[l], moe, lw, scale, tp);
  }
  if (m.shard.embed) be.embedding_backward(G.embed, A.d_x.data(), A.inputs.data(), N, d.H);
}

}  // namespace sky
