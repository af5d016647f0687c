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
  if (cfg.topk_method != "greedy") {
    r.n_group = cfg.n_group;
    r.topk_group = cfg.topk_group;
    r.group_top2_sum = cfg.topk_method == "noaux_tc";
  }
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

void Activations::resize(const Model& m, int B_, int T_) {
  const ModelConfig& c = m.cfg;
  B = B_;
  T = T_;
  const size_t N = size_t(B) * T, H = c.hidden_size;
  inputs.resize(N);
  targets.resize(N);
  pos.resize(N);
  for (size_t n = 0; n < N; n++) pos[n] = int32_t(n % T);
  resid.resize(m.shard.num_layers() + 1);
  for (auto& r : resid) r.resize(N * H);
  layers.resize(m.shard.num_layers());  // each layer's buffers grow on its first forward
  if (m.shard.head) {
    lnf.resize(N * H);
    rstdf.resize(N);
    logits.resize(N * size_t(c.vocab_size));
    losses.resize(N);
  }
}

static RowBatch training_rows(const Activations& A) {
  RowBatch rb;
  rb.N = A.B * A.T;
  rb.pos = A.pos.data();
  rb.B = A.B;
  rb.T = A.T;
  return rb;
}

static PartialSum tp_sums(Communicator* tp) {
  PartialSum p;  // the MoE block's dispatcher adds up its own partials (MoeOptions::par)
  if (tp) p.sum = [tp](float* x, size_t n) { tp->all_reduce_sum(x, n); };
  return p;
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
  if (m.shard.embed) {
    be.embedding(A.resid[0].data(), inputs, m.w.embed, N, H);
    if (c.embedding_multiplier != 1.0) be.scale(A.resid[0].data(), size_t(N) * H, float(c.embedding_multiplier));
  }
  A.moe_stats.resize(c.has_moe() ? nl : 0);
  const LayerShape d = m.layer_shape();
  const RowBatch rb = training_rows(A);
  const PartialSum sums = tp_sums(tp);
  for (int l = 0; l < nl; l++) {
    LayerActs& L = A.layer(l);
    layer_forward(be, m.layer_weights[l], d, m.shard.layer_begin + l, L, A.resid[l].data(), A.resid[l + 1].data(), rb,
                  moe, sums);
    if (c.layer_is_moe(m.shard.layer_begin + l))
      A.moe_stats[l] = {L.moe.disp.dropped, L.moe.entropy, L.moe.aux_loss, L.moe.z_loss, L.moe.disp.load};
    else if (c.has_moe())
      A.moe_stats[l] = {};  // a dense layer of a mixed model
  }
  if (!m.shard.head) return 0.0;
  be.rmsnorm(A.lnf.data(), A.rstdf.data(), A.resid[nl].data(), m.w.final_norm, N, H, float(c.rms_norm_eps));
  be.linear(A.logits.data(), A.lnf.data(), m.lm_head, N);
  if (c.logits_scaling != 1.0) be.scale(A.logits.data(), size_t(N) * V, float(1.0 / c.logits_scaling));
  if (!targets) return 0.0;
  be.cross_entropy(A.losses.data(), A.logits.data(), targets, N, V);
  double sum = 0;
  for (int n = 0; n < N; n++) sum += A.losses[n];
  return sum / N;
}

void backward(const Model& m, Activations& A, float* grads, const MoeOptions& moe, const LossWeights& lw,
              double scale, double global_tokens, Communicator* tp, const float* d_top) {
  const LayerShape d = m.layer_shape();
  Backend& be = *m.be;
  const int N = A.B * A.T, V = m.cfg.vocab_size, nl = m.shard.num_layers();
  const size_t NH = size_t(N) * d.H;
  ParamView<float> G = param_view<float>(m.layout, m.shard.layer_begin, nl, grads);
  grow(A.d_lnf, NH);
  grow(A.d_x, NH);

  if (m.shard.head) {
    // Loss = mean over the global batch's positions, times the accumulation scale.
    std::vector<float> dloss(N, float(scale / (global_tokens > 0 ? global_tokens : N)));
    zero_prefix(A.d_logits, size_t(N) * V);
    be.cross_entropy_backward(A.d_logits.data(), A.logits.data(), A.targets.data(), dloss.data(), N, V);
    if (m.cfg.logits_scaling != 1.0) be.scale(A.d_logits.data(), size_t(N) * V, float(1.0 / m.cfg.logits_scaling));
    zero_prefix(A.d_lnf, NH);
    be.matmul_backward(A.d_lnf.data(), G.lm_head, A.d_logits.data(), A.lnf.data(), m.w.lm_head, N, d.H, V);
    zero_prefix(A.d_x, NH);
    be.rmsnorm_backward(A.d_x.data(), G.final_norm, A.d_lnf.data(), A.resid[nl].data(), m.w.final_norm, A.rstdf.data(),
                        N, d.H);
  } else {
    SKY_CHECK(d_top, "backward: a shard without the LM head needs the gradient of its output");
    std::memcpy(A.d_x.data(), d_top, NH * sizeof(float));
  }
  const RowBatch rb = training_rows(A);
  const PartialSum sums = tp_sums(tp);
  for (int l = nl - 1; l >= 0; l--) {
    const int lg = m.shard.layer_begin + l;
    if (l < int(A.recompute.size()) && A.recompute[l])  // recompute this layer's activations from its saved input
      layer_forward(be, m.layer_weights[l], d, lg, *A.scratch, A.resid[l].data(), A.resid[l + 1].data(), rb, moe, sums);
    const double alpha = lg < int(lw.aux_alpha.size()) ? lw.aux_alpha[lg] : 0.0;
    layer_backward(be, m.layer_weights[l], G.layers[l], d, A.layer(l), A.resid[l].data(), A.d_x.data(), rb, moe,
                   alpha * scale, lw.z_coef * scale, sums, A.grad);
  }
  if (m.shard.embed) {
    if (m.cfg.embedding_multiplier != 1.0) be.scale(A.d_x.data(), NH, float(m.cfg.embedding_multiplier));
    be.embedding_backward(G.embed, A.d_x.data(), A.inputs.data(), N, d.H);
  }
}

}  // namespace sky
