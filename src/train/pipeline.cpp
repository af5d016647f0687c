#include "train/pipeline.h"

#include <algorithm>

#include "core/error.h"

namespace sky {

void StageStats::reset(int layers, int experts) {
  ce_sum = 0;
  dropped.assign(layers, 0.0);
  entropy_sum.assign(layers, 0.0);
  aux.assign(layers, 0.0);
  z.assign(layers, 0.0);
  load.assign(layers, std::vector<double>(experts, 0.0));
}

Pipeline::Pipeline(const Model& m, const Mesh& mesh, int rows, int S) : m_(m), mesh_(mesh), rows_(rows), S_(S) {
  SKY_CHECK(rows % mesh.microbatches == 0, "{} rows per rank do not split into {} micro-batches", rows,
            mesh.microbatches);
  const int in_flight = std::min(mesh.pp - mesh.pp_rank, mesh.microbatches);
  acts_.resize(in_flight);
  const int nl = m.shard.num_layers(), rc = mesh.recompute_layers();
  for (Activations& A : acts_) {
    // The stage's first `rc` layers keep only their input and are recomputed in backward.
    A.recompute.assign(nl, 0);
    for (int l = 0; l < rc; l++) A.recompute[l] = 1;
    A.scratch = &scratch_;
  }
}

void Pipeline::forward_one(int i, const int32_t* in, const int32_t* tgt, const MoeOptions& moe, StageStats& st) {
  const int b = microbatch_rows(), N = b * S_, H = m_.cfg.hidden_size, nl = m_.shard.num_layers();
  Activations& A = acts_[i % acts_.size()];
  if (A.B != b || A.T != S_) A.resize(m_, b, S_);
  const size_t off = size_t(i) * N;
  if (!m_.shard.embed)
    mesh_.world->recv(A.resid[0].data(), size_t(N) * H, mesh_.world_rank(mesh_.pp_rank - 1, mesh_.dp_rank, mesh_.tp_rank), i);
  const double ce = forward(m_, A, in + off, tgt + off, b, S_, moe, mesh_.tp_comm());
  if (m_.shard.head) st.ce_sum += ce * N;
  for (int l = 0; l < int(A.moe_stats.size()); l++) {
    const MoeLayerStats& s = A.moe_stats[l];
    st.dropped[l] += double(s.dropped);
    st.entropy_sum[l] += s.entropy * N;
    st.aux[l] += s.aux_loss;
    st.z[l] += s.z_loss;
    for (size_t e = 0; e < s.load.size(); e++) st.load[l][e] += s.load[e];
  }
  if (!m_.shard.head)
    mesh_.world->send(A.resid[nl].data(), size_t(N) * H, mesh_.world_rank(mesh_.pp_rank + 1, mesh_.dp_rank, mesh_.tp_rank), i);
}

void Pipeline::backward_one(int i, float* grads, const MoeOptions& moe, const LossWeights& lw, double scale,
                            double tokens) {
  const int b = microbatch_rows(), N = b * S_, H = m_.cfg.hidden_size;
  Activations& A = acts_[i % acts_.size()];
  const float* d_top = nullptr;
  if (!m_.shard.head) {
    d_top_.resize(size_t(N) * H);
    mesh_.world->recv(d_top_.data(), d_top_.size(), mesh_.world_rank(mesh_.pp_rank + 1, mesh_.dp_rank, mesh_.tp_rank), i);
    d_top = d_top_.data();
  }
  backward(m_, A, grads, moe, lw, scale, tokens, mesh_.tp_comm(), d_top);
  if (!m_.shard.embed)
    mesh_.world->send(A.d_x.data(), size_t(N) * H, mesh_.world_rank(mesh_.pp_rank - 1, mesh_.dp_rank, mesh_.tp_rank), i);
}

void Pipeline::step(const int32_t* in, const int32_t* tgt, float* grads, const MoeOptions& moe, const LossWeights& lw,
                    double scale, double global_tokens, StageStats& st) {
  const int M = mesh_.microbatches;
  const int warmup = std::min(mesh_.pp - mesh_.pp_rank - 1, M);
  for (int i = 0; i < warmup; i++) forward_one(i, in, tgt, moe, st);
  for (int i = 0; i + warmup < M; i++) {
    forward_one(i + warmup, in, tgt, moe, st);
    backward_one(i, grads, moe, lw, scale, global_tokens);
  }
  for (int i = std::max(0, M - warmup); i < M; i++) backward_one(i, grads, moe, lw, scale, global_tokens);
  mesh_.world->wait_sends();
}

double Pipeline::eval(const int32_t* in, const int32_t* tgt, int rows, const MoeOptions& moe) {
  const int N = rows * S_, H = m_.cfg.hidden_size, nl = m_.shard.num_layers();
  Activations& A = eval_acts_;
  if (A.B != rows || A.T != S_) A.resize(m_, rows, S_);
  if (!m_.shard.embed)
    mesh_.world->recv(A.resid[0].data(), size_t(N) * H, mesh_.world_rank(mesh_.pp_rank - 1, mesh_.dp_rank, mesh_.tp_rank), 0);
  const double ce = forward(m_, A, in, tgt, rows, S_, moe, mesh_.tp_comm());
  if (!m_.shard.head) {
    mesh_.world->send(A.resid[nl].data(), size_t(N) * H, mesh_.world_rank(mesh_.pp_rank + 1, mesh_.dp_rank, mesh_.tp_rank), 0);
    mesh_.world->wait_sends();
    return 0.0;
  }
  return ce * N;
}

}  // namespace sky
