#include "dist/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/shard.h"

namespace sky {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Mixed precision with Megatron's defaults: bf16 weights, fp32 gradient accumulation buffers (the
// micro-batch sum would lose bits in bf16), AdamW's fp32 master copy, m and v.
constexpr double kParamBytes = 2, kGradBytes = 4, kOptimBytes = 12;
constexpr double kActBytes = 2;  // bf16 activations

// Ring collectives: each device moves 2(n-1)/n of the buffer for an all-reduce, (n-1)/n for an
// all-to-all, at the per-device bus bandwidth.
double allreduce_s(double bytes, int n, double gbs) { return n > 1 ? 2.0 * (n - 1) / n * bytes / (gbs * 1e9) : 0; }
double alltoall_s(double bytes, int n, double gbs) { return n > 1 ? double(n - 1) / n * bytes / (gbs * 1e9) : 0; }

// The slowest TP rank holds ceil(H/t) heads when heads do not divide evenly (DESIGN section 5), so
// attention costs that rank ceil(H/t)/(H/t) times the even share.
double head_skew(const ModelConfig& c, int tp) {
  return double((c.num_heads + tp - 1) / tp) * tp / c.num_heads;
}

}  // namespace

const char* expert_layout_name(ExpertLayout e) {
  switch (e) {
    case ExpertLayout::None: return "none";
    case ExpertLayout::EP: return "ep";
    case ExpertLayout::ETP: return "etp";
    case ExpertLayout::EDP: return "edp";
  }
  return "?";
}

ExpertLayout parse_expert_layout(const std::string& s) {
  if (s == "none") return ExpertLayout::None;
  if (s == "ep") return ExpertLayout::EP;
  if (s == "etp") return ExpertLayout::ETP;
  if (s == "edp") return ExpertLayout::EDP;
  fail("--expert-layout: '{}' is not one of none, ep, etp, edp", s);
}

int Layout::ep_size(const ModelConfig& c) const {
  if (!c.has_moe()) return 1;
  switch (experts) {
    case ExpertLayout::None: return 1;
    case ExpertLayout::EP: return dp * tp;  // Megatron EP: Size_EP = Size_DP x Size_TP
    case ExpertLayout::ETP: return dp;      // Size_EP = Size_DP, each expert split over TP
    case ExpertLayout::EDP: return tp;      // Skywork: Size_EP = Size_TP
  }
  return 1;
}

std::string Layout::describe(const ModelConfig& c) const {
  std::string s = fmt::format("PP {} x TP {} x DP {}", pp, tp, dp);
  if (c.has_moe()) {
    s += fmt::format(", experts {}", expert_layout_name(experts));
    if (experts != ExpertLayout::None) s += fmt::format(" (EP {})", ep_size(c));
  }
  return s + (zero1 ? ", ZeRO-1" : ", no ZeRO");
}

Mem& Mem::operator+=(const Mem& o) {
  params += o.params, grads += o.grads, optim += o.optim, acts += o.acts, other += o.other;
  return *this;
}

Mem operator*(double k, const Mem& m) { return {k * m.params, k * m.grads, k * m.optim, k * m.acts, k * m.other}; }

std::string SplitPlan::pp_layers() const {
  std::string s;
  for (auto& st : stages) s += (s.empty() ? "" : ",") + std::to_string(st.layers);
  return s;
}

std::string SplitPlan::recompute_layers() const {
  std::string s;
  for (auto& st : stages) s += (s.empty() ? "" : ",") + std::to_string(st.recompute);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Stage costs and the split search
// ---------------------------------------------------------------------------------------------

namespace {

Mem stage_mem(const CostModel& cm, int s, int n, int r) {
  const bool first = s == 0, last = s == cm.stages - 1;
  Mem m = double(n) * cm.layer_static;
  if (first) m += cm.embed_static;
  if (last) m += cm.head_static;
  // 1F1B: stage s has run up to P - s forwards before its first backward frees one.
  const int in_flight = std::min(cm.stages - s, cm.micro_batches);
  double per_mb = (n - r) * cm.layer_act + r * cm.layer_ckpt_act + (last ? cm.head_act : 0);
  m.acts = in_flight * per_mb;
  // Backward through a recomputed layer rebuilds its full activations for one micro-batch.
  if (r > 0) m.acts += cm.layer_act;
  m.other = cm.reserve_bytes;
  return m;
}

bool fits(const CostModel& cm, double bytes) { return cm.cap_bytes <= 0 || bytes <= cm.cap_bytes * (1 + 1e-12); }

// How far past the end of the pipelined part stage s's gradient sync and optimizer step run.
// Buckets go out as the last micro-batch's backward produces them, so the reduction starts when
// that backward starts; stage s finishes it s drain slots (`bwd_slot`) before stage 0 does, which is
// slack for its reduction. ZeRO-1 reduce-scatters, runs the sharded optimizer, then all-gathers the
// updated weights (exposed); without ZeRO the optimizer follows the all-reduce.
double stage_tail(const CostModel& cm, int s, int n, double bwd_s, double bwd_slot) {
  const bool first = s == 0, last = s == cm.stages - 1;
  double c = n * cm.layer_dp_s + (first ? cm.embed_dp_s : 0) + (last ? cm.head_dp_s : 0);
  double opt = n * cm.layer_opt_s + (first ? cm.embed_opt_s : 0) + (last ? cm.head_opt_s : 0);
  double reduce = cm.zero1 ? c / 2 : c, gather = cm.zero1 ? c / 2 : 0;
  double finish = -s * bwd_slot, start = finish - bwd_s;  // relative to the pipeline's end
  return std::max(finish, start + reduce) + opt + gather;
}

// min over compositions of L into P positive parts (each at most nmax) of max_s cost(s, n_s);
// cost = inf marks a part that is not allowed.
template <class Cost>
double minmax_split(int P, int L, int nmax, Cost cost) {
  std::vector<std::vector<double>> best(P, std::vector<double>(L + 1, kInf));
  for (int n = 1; n <= nmax; n++) best[0][n] = cost(0, n);
  for (int s = 1; s < P; s++)
    for (int l = s + 1; l <= L; l++)
      for (int n = 1; n <= std::min(nmax, l - s); n++)
        best[s][l] = std::min(best[s][l], std::max(best[s - 1][l - n], cost(s, n)));
  return best[P - 1][L];
}

}  // namespace

StagePlan stage_cost(const CostModel& cm, int s, int n, int r) {
  const bool first = s == 0, last = s == cm.stages - 1;
  StagePlan st;
  st.layers = n;
  st.recompute = r;
  st.mem = stage_mem(cm, s, n, r);
  // Forward sends the activation on; backward sends its gradient back.
  st.fwd_s = n * cm.layer_fwd_s + (first ? cm.embed_fwd_s : 0) + (last ? cm.head_fwd_s : 0) + (last ? 0 : cm.p2p_s);
  st.bwd_s = n * cm.layer_bwd_s + r * cm.layer_fwd_s + (first ? cm.embed_bwd_s : 0) + (last ? cm.head_bwd_s : 0) +
             (first ? 0 : cm.p2p_s);
  return st;
}

int min_recompute(const CostModel& cm, int s, int n) {
  // Not monotone at r = 1 (the rebuild buffer appears), so scan; n is at most a few dozen.
  for (int r = 0; r <= n; r++)
    if (fits(cm, stage_mem(cm, s, n, r).total())) return r;
  return -1;
}

std::vector<int> uniform_split(int layers, int stages) {
  std::vector<int> v(stages, layers / stages);
  for (int i = 0; i < layers % stages; i++) v[i]++;
  return v;
}

SplitPlan evaluate_split(const CostModel& cm, const std::vector<int>& layers, std::vector<int> recompute) {
  const int P = cm.stages, M = cm.micro_batches;
  SKY_CHECK(int(layers.size()) == P, "split has {} stages, the layout has {}", layers.size(), P);
  if (recompute.empty()) recompute.assign(P, -1);
  SplitPlan sp;
  sp.feasible = true;
  for (int s = 0; s < P; s++) {
    int r = recompute[s] >= 0 ? recompute[s] : min_recompute(cm, s, layers[s]);
    if (r < 0) {  // does not fit: report it with every layer recomputed
      sp.feasible = false;
      r = layers[s];
    }
    StagePlan st = stage_cost(cm, s, layers[s], r);
    if (!fits(cm, st.mem.total())) sp.feasible = false;
    sp.stages.push_back(st);
  }
  double bwd_slot = 0, useful = 0;
  for (auto& st : sp.stages) {
    sp.stage_max_s = std::max(sp.stage_max_s, st.time_s());
    sp.max_mem = std::max(sp.max_mem, st.mem.total());
    bwd_slot = std::max(bwd_slot, st.bwd_s);
    useful += st.time_s();
  }
  sp.pipeline_s = (M + P - 1) * sp.stage_max_s;
  sp.bubble = sp.pipeline_s > 0 ? 1 - M * useful / P / sp.pipeline_s : 0;
  double tail = 0;
  for (int s = 0; s < P; s++)
    tail = std::max(tail, stage_tail(cm, s, sp.stages[s].layers, sp.stages[s].bwd_s, bwd_slot));
  const double end = sp.pipeline_s + tail;
  sp.dp_exposed_s = end - sp.pipeline_s;
  sp.step_s = end;
  return sp;
}

SplitPlan optimize_split(const CostModel& cm) {
  const int L = cm.num_layers, P = cm.stages;
  SplitPlan none;
  if (P < 1 || P > L) return none;
  const int nmax = L - P + 1;
  // t[s][n]: stage s holding n layers, with the fewest recomputed layers that fit the cap.
  std::vector<std::vector<double>> t(P, std::vector<double>(nmax + 1, kInf));
  std::vector<std::vector<int>> rc(P, std::vector<int>(nmax + 1, -1));
  for (int s = 0; s < P; s++)
    for (int n = 1; n <= nmax; n++)
      if ((rc[s][n] = min_recompute(cm, s, n)) >= 0) t[s][n] = stage_cost(cm, s, n, rc[s][n]).time_s();

  // Pass 1: the smallest achievable slowest stage, which sets the pipelined time (M + P - 1) x it.
  const double tmax = minmax_split(P, L, nmax, [&](int s, int n) { return t[s][n]; });
  if (!std::isfinite(tmax)) return none;
  const double bound = tmax * (1 + 1e-9);

  // Pass 2: within that bound, the least gradient-sync tail (stage 0 has no drain slack, so moving
  // layers off it can hide more of the reduction). The drain slot is estimated from the bound.
  std::vector<std::vector<double>> g(P, std::vector<double>(nmax + 1, kInf));
  const double slot = tmax * cm.layer_bwd_s / (cm.layer_fwd_s + cm.layer_bwd_s);
  for (int s = 0; s < P; s++)
    for (int n = 1; n <= nmax; n++)
      if (t[s][n] <= bound)  // a tail hidden behind the pipeline (negative) costs nothing
        g[s][n] = std::max(0.0, stage_tail(cm, s, n, stage_cost(cm, s, n, rc[s][n]).bwd_s, slot));
  const double gmax = minmax_split(P, L, nmax, [&](int s, int n) { return g[s][n]; });
  const double gbound = gmax + 1e-9 * tmax;

  // Pass 3: within both bounds, the least total time (least recompute), then the most even memory
  // (sum of squares): ties in time go to the split with the most headroom on its fullest stages.
  struct Cell { double sum = kInf, sq = kInf; int n = 0; };
  auto better = [](double s1, double q1, const Cell& c) {
    if (s1 < c.sum * (1 - 1e-12)) return true;
    return s1 <= c.sum * (1 + 1e-12) && q1 < c.sq * (1 - 1e-12);
  };
  auto ok = [&](int s, int n) { return t[s][n] <= bound && g[s][n] <= gbound; };
  auto sq = [](double x) { return x * x; };
  std::vector<std::vector<double>> mem(P, std::vector<double>(nmax + 1, 0));
  for (int s = 0; s < P; s++)
    for (int n = 1; n <= nmax; n++)
      if (rc[s][n] >= 0) mem[s][n] = stage_mem(cm, s, n, rc[s][n]).total();
  std::vector<std::vector<Cell>> dp(P, std::vector<Cell>(L + 1));
  for (int n = 1; n <= nmax; n++)
    if (ok(0, n)) dp[0][n] = {t[0][n], sq(mem[0][n]), n};
  for (int s = 1; s < P; s++)
    for (int l = s + 1; l <= L; l++)
      for (int n = 1; n <= std::min(nmax, l - s); n++) {
        const Cell& prev = dp[s - 1][l - n];
        if (!ok(s, n) || !std::isfinite(prev.sum)) continue;
        double sum = prev.sum + t[s][n], q = prev.sq + sq(mem[s][n]);
        if (better(sum, q, dp[s][l])) dp[s][l] = {sum, q, n};
      }
  std::vector<int> layers(P), recompute(P);
  for (int s = P - 1, l = L; s >= 0; s--) {
    int n = dp[s][l].n;
    layers[s] = n;
    recompute[s] = rc[s][n];
    l -= n;
  }
  return evaluate_split(cm, layers, recompute);
}

double min_memory_bytes(const CostModel& cm) {
  const int L = cm.num_layers, P = cm.stages;
  if (P < 1 || P > L) return kInf;
  const int nmax = L - P + 1;
  auto least = [&](int s, int n) {
    double m = kInf;
    for (int r = 0; r <= n; r++) m = std::min(m, stage_mem(cm, s, n, r).total());
    return m;
  };
  return minmax_split(P, L, nmax, least);
}

// ---------------------------------------------------------------------------------------------
// The cost model of a real layout
// ---------------------------------------------------------------------------------------------

// Layers are costed as the mean layer: a model mixing dense and MoE layers weighs each part by
// its share of the layers (stages are then balanced by layer count, not by kind).
static double moe_fraction(const ModelConfig& c) { return double(c.num_moe_layers()) / c.num_layers; }

double layer_fwd_flops_per_token(const ModelConfig& c, int seq_len) {
  const double h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), I = c.intermediate_size;
  const double EI = c.moe_intermediate_size, f = moe_fraction(c);
  double attn = 2 * (2 * h * q + 2 * h * kv);  // q, k, v, o projections
  double core = 2.0 * seq_len * q;             // QK^T and AV, causal: each token sees S/2 keys on average
  double ffn = f * (2 * h * c.num_experts + c.top_k * 2 * 3 * h * EI)  // router + top-k experts
               + (1 - f) * 2 * 3 * h * I;
  return attn + core + ffn;
}

double head_fwd_flops_per_token(const ModelConfig& c) {
  // LM head matmul plus the softmax cross-entropy over the vocabulary (a handful of ops a logit).
  return 2.0 * c.hidden_size * c.vocab_size + 5.0 * c.vocab_size;
}

static double fwd_flops_per_token(const ModelConfig& c, int seq_len) {
  return c.num_layers * layer_fwd_flops_per_token(c, seq_len) + head_fwd_flops_per_token(c);
}

double model_flops_per_token(const ModelConfig& c, int seq_len) { return 3 * fwd_flops_per_token(c, seq_len); }

void validate_layout(const ModelConfig& c, const Cluster& cl, const Batch& b, const Layout& l) {
  SKY_CHECK(l.pp >= 1 && l.tp >= 1 && l.dp >= 1, "PP, TP and DP must be positive (got PP {} TP {} DP {})", l.pp, l.tp,
            l.dp);
  SKY_CHECK(int64_t(l.pp) * l.tp * l.dp == cl.devices, "PP {} x TP {} x DP {} = {} devices, but --devices is {}", l.pp,
            l.tp, l.dp, int64_t(l.pp) * l.tp * l.dp, cl.devices);
  SKY_CHECK(l.pp <= c.num_layers, "PP {} exceeds the model's {} layers (every stage needs a layer)", l.pp,
            c.num_layers);
  SKY_CHECK(l.tp <= c.num_heads, "TP {} exceeds the model's {} attention heads", l.tp, c.num_heads);
  SKY_CHECK(l.tp <= cl.devices_per_node && cl.devices_per_node % l.tp == 0,
            "TP {} must stay inside a node: it must divide --devices-per-node {}", l.tp, cl.devices_per_node);
  if (!c.has_moe()) {
    SKY_CHECK(l.experts == ExpertLayout::None, "--expert-layout {} needs an MoE model; this one is dense",
              expert_layout_name(l.experts));
  } else if (l.experts != ExpertLayout::None) {
    const int ep = l.ep_size(c);
    const char* why = l.experts == ExpertLayout::EP ? "DP x TP" : l.experts == ExpertLayout::ETP ? "DP" : "TP";
    SKY_CHECK(ep <= c.num_experts, "expert layout {}: EP size {} (= {}) exceeds the model's {} experts",
              expert_layout_name(l.experts), ep, why, c.num_experts);
    SKY_CHECK(c.num_experts % ep == 0, "expert layout {}: the {} experts do not divide evenly over EP size {} (= {})",
              expert_layout_name(l.experts), c.num_experts, ep, why);
  }
  SKY_CHECK(b.seq_len <= c.max_position_embeddings, "--seq-len {} exceeds the model's max_position_embeddings {}",
            b.seq_len, c.max_position_embeddings);
  SKY_CHECK(b.global_batch % (int64_t(l.dp) * b.micro_batch) == 0,
            "--global-batch {} is not a multiple of DP {} x --micro-batch {}", b.global_batch, l.dp, b.micro_batch);
}

CostModel build_cost_model(const ModelConfig& c, const Cluster& cl, const Batch& b, const Layout& l,
                           const Calibration& cal) {
  validate_layout(c, cl, b, l);
  SKY_CHECK(cl.tflops > 0, "--tflops must be positive");
  const int t = l.tp, d = l.dp, P = l.pp, dpn = cl.devices_per_node;
  const double h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), I = c.intermediate_size, V = c.vocab_size;
  const double EI = c.moe_intermediate_size, f = moe_fraction(c);
  const double E = c.num_experts, k = c.top_k, H = c.num_heads;
  const double T = double(b.micro_batch) * b.seq_len;  // tokens per micro-batch
  const double skew = head_skew(c, t);

  // Ranks are numbered TP fastest, then DP, then PP, so a group spanning `span` consecutive ranks
  // leaves the node when span > devices per node.
  auto bw = [&](int64_t span) { return span > dpn ? cl.inter_gbs : cl.intra_gbs; };
  const double bw_dp = bw(int64_t(t) * d);

  CostModel cm;
  cm.num_layers = c.num_layers;
  cm.stages = P;
  cm.micro_batches = b.global_batch / (d * b.micro_batch);
  cm.cap_bytes = cl.memory_gib * kGiB;
  cm.zero1 = l.zero1;
  cm.reserve_bytes = cl.reserve_gib * kGiB;

  // --- compute: per device, TP splits every matmul; experts are balanced over the ranks holding them.
  const double flops_s = cl.tflops * 1e12;
  const double attn_flops = 2 * (2 * h * q + 2 * h * kv) + 2.0 * b.seq_len * q;
  const double rest_flops = layer_fwd_flops_per_token(c, b.seq_len) - attn_flops;
  const double layer_flops = T * (attn_flops * skew + rest_flops) / t;
  double layer_f = cal.fwd_scale * layer_flops / flops_s, layer_b = cal.bwd_scale * 2 * layer_flops / flops_s;

  // --- collectives inside a layer, per micro-batch (the backward mirrors each forward one).
  const double act = kActBytes * T * h;  // one hidden-state tensor of the micro-batch
  const double tp_ar = allreduce_s(act, t, cl.intra_gbs);
  double comm = 2 * tp_ar;  // attention and FFN outputs (Megatron; a reduce-scatter/all-gather pair under SP)
  double moe_comm = comm;
  if (c.has_moe() && l.experts == ExpertLayout::EP) {
    // Whole experts on DP x TP ranks: each rank dispatches its 1/t of the tokens (top-k copies) and
    // gets the outputs back; no TP collective after the experts.
    moe_comm = tp_ar + 2 * alltoall_s(kActBytes * T * k * h / t, d * t, bw(int64_t(d) * t));
  } else if (c.has_moe() && l.experts == ExpertLayout::ETP) {
    // Experts over DP, each split over TP: every TP rank exchanges all T tokens' copies, then the
    // TP all-reduce of the expert outputs.
    moe_comm = 2 * tp_ar + 2 * alltoall_s(kActBytes * T * k * h, d, bw(int64_t(d) * t));
  }
  comm = f * moe_comm + (1 - f) * comm;
  // EDP and none: tokens are already on every TP rank after attention; one all-reduce inside TP
  // combines the experts' outputs, as for a dense FFN.
  cm.layer_fwd_s = layer_f + comm;
  cm.layer_bwd_s = layer_b + comm;

  // Embedding: a row gather forward, a scatter-add backward; its weight on stage 0 is memory.
  const double embed_flops = T * 2 * h / t;
  cm.embed_fwd_s = cal.fwd_scale * embed_flops / flops_s;
  cm.embed_bwd_s = cal.bwd_scale * 2 * embed_flops / flops_s;
  const double head_flops = T * head_fwd_flops_per_token(c) / t;  // vocab-parallel head and loss
  cm.head_fwd_s = cal.fwd_scale * head_flops / flops_s;
  cm.head_bwd_s = cal.bwd_scale * 2 * head_flops / flops_s;
  // Between stages goes a hidden state split over TP (the sequence-parallel scatter/gather trick).
  cm.p2p_s = act / t / ((int64_t(t) * d * P > dpn ? cl.inter_gbs : cl.intra_gbs) * 1e9);

  // --- static memory per device. `repl`: how many DP ranks hold the same copy (the ZeRO-1 shard count).
  const double attn_p = (2 * h * q + 2 * h * kv) * skew / t;
  const double small_p = 2 * h + f * h * E  // norms and router, replicated over TP
                         + (1 - f) * 3 * h * I / t;  // dense FFN, Megatron column/row split
  double expert_p = 0;
  int expert_repl = d;
  if (c.has_moe()) {
    switch (l.experts) {
      case ExpertLayout::None: expert_p = E * 3 * h * EI / t; break;
      case ExpertLayout::EDP: expert_p = E / t * 3 * h * EI; break;  // E/t whole experts, copied across DP
      case ExpertLayout::EP: expert_p = E / (d * t) * 3 * h * EI, expert_repl = 1; break;
      case ExpertLayout::ETP: expert_p = E / d * 3 * h * EI / t, expert_repl = 1; break;
    }
    expert_p *= f;
  }
  auto statics = [&](double shared_p, double exp_p, int exp_repl) {
    Mem m;
    m.params = kParamBytes * (shared_p + exp_p);
    m.grads = kGradBytes * (shared_p + exp_p);
    m.optim = kOptimBytes * (l.zero1 ? shared_p / d + exp_p / exp_repl : shared_p + exp_p);
    return m;
  };
  cm.layer_static = statics(attn_p + small_p, expert_p, expert_repl);
  const double embed_p = V * h / t, head_p = V * h / t + h;  // vocab-parallel
  cm.embed_static = statics(embed_p, 0, 1);
  cm.head_static = statics(head_p, 0, 1);

  // DP gradient all-reduce (fp32 buffers); expert copies only across their own replicas.
  cm.layer_dp_s = allreduce_s(kGradBytes * (attn_p + small_p), d, bw_dp) +
                  allreduce_s(kGradBytes * expert_p, expert_repl, bw_dp);
  cm.embed_dp_s = allreduce_s(kGradBytes * embed_p, d, bw_dp);
  cm.head_dp_s = allreduce_s(kGradBytes * head_p, d, bw_dp);
  auto updated = [&](double shared_p, double exp_p, int exp_repl) {
    return l.zero1 ? shared_p / d + exp_p / exp_repl : shared_p + exp_p;
  };
  cm.layer_opt_s = cal.opt_s_per_param * updated(attn_p + small_p, expert_p, expert_repl);
  cm.embed_opt_s = cal.opt_s_per_param * updated(embed_p, 0, 1);
  cm.head_opt_s = cal.opt_s_per_param * updated(head_p, 0, 1);

  // --- activations kept for one micro-batch (bf16 unless noted), with flash attention (no S x S
  // scores) and sequence parallelism (the norm-region tensors split over TP).
  const double hs = kActBytes * T * h / t;  // one hidden state, sequence-parallel shard
  double attn_act = 3 * hs                                         // layer input, norm-1 output, norm-2 input
                    + kActBytes * T * (q + 2 * kv) * skew / t      // q, k, v
                    + kActBytes * T * q * skew / t                 // attention output (o_proj input)
                    + 4.0 * T * H * skew / t;                      // softmax log-sum-exp, fp32
  double ffn_act = (1 - f) * (hs + kActBytes * 3 * T * I / t);  // dense: w1 and w3 outputs, w2 input
  if (c.has_moe()) {
    // slots: expert assignments this rank computes; w: the width of its share of each expert.
    double slots = T * k / t, w = EI;
    if (l.experts == ExpertLayout::None || l.experts == ExpertLayout::ETP) slots = T * k, w = EI / t;
    ffn_act += f * (hs + 2 * 4.0 * T * E / t  // norm-2 output; router logits and probabilities, fp32
                    + slots * kActBytes * (2 * h + 3 * w));  // per assignment: input, output (gate grad); w1, w3, w2 inputs
  }
  cm.layer_act = attn_act + ffn_act;
  cm.layer_ckpt_act = hs;  // a recomputed layer keeps its input only
  cm.head_act = hs + kActBytes * T * h + 6.0 * T * V / t;  // norm input, head input, bf16 logits + fp32 softmax
  return cm;
}

// ---------------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------------

namespace {

struct Profile {
  ModelConfig model;
  std::string preset;
  int seq = 0, batch = 0;
  double fwd = 0, bwd = 0, opt = 0;
};

Profile read_profile(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("profile {}: malformed JSON ({}); expected the output of `skymoe bench train --json`", source, e.what());
  }
  auto num = [&](const char* key, bool required) {
    if (!j.contains(key)) {
      SKY_CHECK(!required, "profile {}: missing \"{}\" (expected the output of `skymoe bench train --json`)", source,
                key);
      return 0.0;
    }
    SKY_CHECK(j[key].is_number() && j[key].get<double>() >= 0, "profile {}: \"{}\" must be a non-negative number",
              source, key);
    return j[key].get<double>();
  };
  Profile p;
  p.fwd = num("forward_s", true);
  p.bwd = num("backward_s", true);
  p.opt = num("optimizer_s", false);
  p.seq = int(num("seq_len", true));
  p.batch = int(num("batch_size", true));
  SKY_CHECK(p.fwd > 0 && p.bwd > 0 && p.seq > 0 && p.batch > 0,
            "profile {}: forward_s, backward_s, seq_len and batch_size must be positive", source);
  SKY_CHECK(j.contains("preset") && j["preset"].is_string(), "profile {}: missing \"preset\" (the profiled model)",
            source);
  p.preset = j["preset"].get<std::string>();
  p.model = ModelConfig::resolve(p.preset);
  return p;
}

}  // namespace

double profile_tflops(const std::string& text, const std::string& source) {
  Profile p = read_profile(text, source);
  double tokens = double(p.batch) * p.seq;
  return tokens * model_flops_per_token(p.model, p.seq) / (p.fwd + p.bwd) / 1e12;
}

Calibration calibrate(const std::string& text, double tflops, const std::string& source) {
  Profile p = read_profile(text, source);
  // The single-process prediction: no parallelism, no communication, FLOPs at `tflops`.
  const double tokens = double(p.batch) * p.seq;
  const double fwd_pred = tokens * (fwd_flops_per_token(p.model, p.seq) + 2 * p.model.hidden_size) / (tflops * 1e12);
  Calibration c;
  c.fwd_scale = p.fwd / fwd_pred;
  c.bwd_scale = p.bwd / (2 * fwd_pred);
  c.opt_s_per_param = p.opt / double(p.model.param_count());
  c.note = fmt::format(
      "{} ({}): {} x {} tokens measured fwd {:.3f}s bwd {:.3f}s opt {:.3f}s; FLOP model at {:.3g} TFLOP/s "
      "predicts fwd {:.3f}s bwd {:.3f}s -> scale fwd x{:.3f}, bwd x{:.3f}; optimizer {:.3g} ns/param",
      source, p.preset, p.batch, p.seq, p.fwd, p.bwd, p.opt, tflops, fwd_pred, 2 * fwd_pred, c.fwd_scale, c.bwd_scale,
      c.opt_s_per_param * 1e9);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Layout search
// ---------------------------------------------------------------------------------------------

namespace {

void check_given_split(const PlanRequest& r, int P) {
  const int L = r.model.num_layers;
  SKY_CHECK(int(r.pp_layers.size()) == P, "--pp-layers has {} stages but PP is {}", r.pp_layers.size(), P);
  int sum = 0;
  for (int n : r.pp_layers) {
    SKY_CHECK(n >= 1, "--pp-layers: every stage needs at least one layer, got {}", n);
    sum += n;
  }
  SKY_CHECK(sum == L, "--pp-layers adds up to {} layers; the model has {}", sum, L);
  if (!r.recompute_layers.empty()) {
    SKY_CHECK(r.recompute_layers.size() == r.pp_layers.size(), "--recompute-layers has {} stages, --pp-layers {}",
              r.recompute_layers.size(), r.pp_layers.size());
    for (size_t s = 0; s < r.pp_layers.size(); s++)
      SKY_CHECK(r.recompute_layers[s] >= 0 && r.recompute_layers[s] <= r.pp_layers[s],
                "--recompute-layers: stage {} recomputes {} of its {} layers", s, r.recompute_layers[s],
                r.pp_layers[s]);
  }
}

std::string gib(double b) { return fmt::format("{:.1f} GiB", b / kGiB); }

}  // namespace

LayoutPlan plan_layout(const PlanRequest& r, const Layout& l) {
  CostModel cm = build_cost_model(r.model, r.cluster, r.batch, l, r.cal);
  LayoutPlan lp;
  lp.layout = l;
  lp.micro_batches = cm.micro_batches;
  if (!r.pp_layers.empty()) {
    check_given_split(r, l.pp);
    lp.plan = evaluate_split(cm, r.pp_layers, r.recompute_layers);
    for (size_t s = 0; s < lp.plan.stages.size(); s++) {
      const StagePlan& st = lp.plan.stages[s];
      SKY_CHECK(fits(cm, st.mem.total()),
                "{}: stage {} ({} layers, {} recomputed) needs {} per device, over the {} cap", l.describe(r.model), s,
                st.layers, st.recompute, gib(st.mem.total()), gib(cm.cap_bytes));
    }
  } else {
    lp.plan = optimize_split(cm);
  }
  lp.uniform = evaluate_split(cm, uniform_split(r.model.num_layers, l.pp));
  if (!lp.plan.feasible) {
    double need = min_memory_bytes(cm);
    fail("{} does not fit in {} per device: the smallest memory that fits this layout is {} (recomputing "
         "layers where needed)",
         l.describe(r.model), gib(cm.cap_bytes), gib(need));
  }
  const double tokens = double(r.batch.global_batch) * r.batch.seq_len;
  const double peak = (r.cluster.peak_tflops > 0 ? r.cluster.peak_tflops : r.cluster.tflops) * 1e12;
  const double fpt = model_flops_per_token(r.model, r.batch.seq_len);
  lp.tokens_per_s_per_device = tokens / lp.plan.step_s / r.cluster.devices;
  lp.mfu = lp.tokens_per_s_per_device * fpt / peak;
  if (lp.uniform.feasible) {
    lp.uniform_tokens_per_s_per_device = tokens / lp.uniform.step_s / r.cluster.devices;
    lp.uniform_mfu = lp.uniform_tokens_per_s_per_device * fpt / peak;
  }
  return lp;
}

PlanResult plan(const PlanRequest& r) {
  const ModelConfig& c = r.model;
  const Cluster& cl = r.cluster;
  SKY_CHECK(cl.devices >= 1 && cl.devices_per_node >= 1, "--devices and --devices-per-node must be positive");
  SKY_CHECK(cl.memory_gib > 0 && cl.tflops > 0 && cl.intra_gbs > 0 && cl.inter_gbs > 0,
            "--memory-gb, --tflops, --intra-gbs and --inter-gbs must be positive");
  SKY_CHECK(r.batch.global_batch > 0 && r.batch.micro_batch > 0 && r.batch.seq_len > 0,
            "--global-batch, --micro-batch and --seq-len must be positive");
  std::optional<int> pp = r.pp;
  if (!r.pp_layers.empty()) {
    SKY_CHECK(!pp || *pp == int(r.pp_layers.size()), "--pp {} but --pp-layers lists {} stages", *pp,
              r.pp_layers.size());
    pp = int(r.pp_layers.size());
    check_given_split(r, *pp);
  }
  std::vector<int> pps, tps;
  if (pp) pps = {*pp};
  else
    for (int p = 1; p <= std::min(c.num_layers, cl.devices); p++) pps.push_back(p);
  SKY_CHECK(!r.tp || *r.tp == 1 || tensor_parallel_supported(c),
            "--tp {}: tensor parallelism does not support {} models yet", *r.tp, c.model_type);
  if (r.tp) tps = {*r.tp};
  else
    for (int t = 1; t <= std::min({cl.devices_per_node, c.num_heads, cl.devices}); t++)
      if (cl.devices_per_node % t == 0 && (t == 1 || tensor_parallel_supported(c))) tps.push_back(t);
  std::vector<ExpertLayout> exps;
  if (r.experts) exps = {*r.experts};
  else if (c.has_moe()) exps = {ExpertLayout::None, ExpertLayout::EP, ExpertLayout::ETP, ExpertLayout::EDP};
  else exps = {ExpertLayout::None};

  std::vector<Layout> layouts;
  for (int p : pps)
    for (int t : tps) {
      // Without a fixed DP, only PP x TP that divide the devices are candidates.
      if (!r.dp && cl.devices % (p * t) != 0 && (pps.size() > 1 || tps.size() > 1)) continue;
      int d = r.dp.value_or(std::max(1, cl.devices / (p * t)));
      for (ExpertLayout e : exps) {
        std::vector<bool> zs = r.zero1 ? std::vector<bool>{*r.zero1} : d > 1 ? std::vector<bool>{false, true}
                                                                          : std::vector<bool>{false};
        for (bool z : zs) layouts.push_back({p, t, d, e, z});
      }
    }
  // One layout asked for: its problem is the answer. A search: skip invalid ones, but say why if
  // none is valid.
  const bool fixed = layouts.size() == 1;
  PlanResult res;
  std::string first_error;
  double least_need = kInf;
  std::string least_layout;
  for (const Layout& l : layouts) {
    try {
      validate_layout(c, cl, r.batch, l);
    } catch (const Error& e) {
      if (fixed) throw;
      if (first_error.empty()) first_error = fmt::format("{}: {}", l.describe(c), e.what());
      continue;
    }
    res.searched++;
    try {
      res.candidates.push_back(plan_layout(r, l));
    } catch (const Error& e) {
      if (fixed) throw;  // its own message already names the memory it needs
      double need = min_memory_bytes(build_cost_model(c, cl, r.batch, l, r.cal));
      if (need < least_need) least_need = need, least_layout = l.describe(c);
    }
  }
  if (res.searched == 0) {
    SKY_CHECK(!layouts.empty(), "no layout to try: PP x TP must divide --devices {}", cl.devices);
    fail("no valid layout for {} devices (first one tried, {})", cl.devices, first_error);
  }
  if (res.candidates.empty()) {
    fail("no layout fits in {} per device: the smallest memory that fits is {} ({}, recomputing layers where needed)",
         gib(cl.memory_gib * kGiB), gib(least_need), least_layout);
  }
  std::stable_sort(res.candidates.begin(), res.candidates.end(), [](const LayoutPlan& a, const LayoutPlan& b) {
    // Equal step times (within rounding) go to the layout with more memory headroom.
    if (std::abs(a.plan.step_s - b.plan.step_s) > 1e-9 * b.plan.step_s) return a.plan.step_s < b.plan.step_s;
    return a.plan.max_mem < b.plan.max_mem;
  });
  res.best = res.candidates.front();
  return res;
}

}  // namespace sky
