#include "dist/mesh.h"

#include <fmt/format.h>

#include <numeric>

#include "core/error.h"

namespace sky {

std::vector<int> parse_int_list(const std::string& s, const char* flag) {
  std::vector<int> v;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    size_t used = 0;
    int x = 0;
    try {
      x = std::stoi(item, &used);
    } catch (...) {
      used = 0;
    }
    SKY_CHECK(!item.empty() && used == item.size(), "{}: '{}' is not a comma-separated list of integers", flag, s);
    v.push_back(x);
    i = j + 1;
  }
  return v;
}

// Experts per expert-parallel rank, and how many such ranks a stage has.
static int ep_size(const ParallelOptions& o, int dp) {
  switch (o.experts) {
    case ExpertLayout::EP: return dp * o.tp;
    case ExpertLayout::ETP: return dp;
    case ExpertLayout::EDP: return o.tp;
    default: return 1;
  }
}

static int default_microbatches(int pp, int local_batch) {
  if (pp == 1) return 1;
  int best = 1;  // as many as the local batch allows, up to 2 * PP
  for (int m = 1; m <= std::min(local_batch, 2 * pp); m++)
    if (local_batch % m == 0) best = m;
  return best;
}

void Mesh::validate(int world, const ParallelOptions& o, const ModelConfig& c, int batch) {
  SKY_CHECK(o.tp >= 1, "--tp must be >= 1, got {}", o.tp);
  SKY_CHECK(o.pp >= 1, "--pp must be >= 1, got {}", o.pp);
  SKY_CHECK(world % (o.tp * o.pp) == 0,
            "--tp {} x --pp {} = {} does not divide the {} processes (data parallelism = processes / (TP x PP))",
            o.tp, o.pp, o.tp * o.pp, world);
  const int dp = world / (o.tp * o.pp);
  SKY_CHECK(o.pp <= c.num_layers, "--pp {} exceeds the model's {} layers", o.pp, c.num_layers);
  if (!o.pp_layers.empty()) {
    SKY_CHECK(int(o.pp_layers.size()) == o.pp, "--pp-layers has {} stages, --pp is {}", o.pp_layers.size(), o.pp);
    int sum = 0;
    for (int n : o.pp_layers) {
      SKY_CHECK(n >= 1, "--pp-layers: every stage needs at least one layer, got {}", n);
      sum += n;
    }
    SKY_CHECK(sum == c.num_layers, "--pp-layers adds up to {} layers; the model has {}", sum, c.num_layers);
  }
  std::vector<int> layers = o.pp_layers.empty() ? split_even(c.num_layers, o.pp) : o.pp_layers;
  if (!o.recompute.empty()) {
    SKY_CHECK(int(o.recompute.size()) == o.pp, "--recompute-layers has {} stages, --pp is {}", o.recompute.size(),
              o.pp);
    for (int s = 0; s < o.pp; s++)
      SKY_CHECK(o.recompute[s] >= 0 && o.recompute[s] <= layers[s],
                "--recompute-layers: stage {} has {} layers, cannot recompute {}", s, layers[s], o.recompute[s]);
  }
  SKY_CHECK(o.tp_shares.empty() || int(o.tp_shares.size()) == o.tp, "--tp-shares has {} values for --tp {}",
            o.tp_shares.size(), o.tp);
  if (o.tp > 1) {
    Shard s;
    split_attention(c, o.tp, o.tp_shares, 0, s);  // throws when heads or widths cannot be split
  }
  if (o.experts != ExpertLayout::None) {
    SKY_CHECK(c.has_moe(), "--expert-layout {} needs an MoE model; this one is dense", expert_layout_name(o.experts));
    const int ep = ep_size(o, dp);
    SKY_CHECK(ep <= c.num_experts, "--expert-layout {} spreads experts over {} ranks, more than the {} experts",
              expert_layout_name(o.experts), ep, c.num_experts);
  }
  SKY_CHECK(batch % dp == 0, "--batch-size {} is not divisible by the {} data-parallel ranks", batch, dp);
  const int local = batch / dp;
  if (o.pp_microbatches != 0) {
    SKY_CHECK(o.pp_microbatches >= 1, "--pp-microbatches must be >= 1, got {}", o.pp_microbatches);
    SKY_CHECK(local % o.pp_microbatches == 0,
              "--pp-microbatches {} does not divide the {} sequences each data-parallel rank gets per micro-step",
              o.pp_microbatches, local);
  }
  (void)default_microbatches;
}

Mesh Mesh::create(Communicator& world, const ParallelOptions& o, const ModelConfig& c, int batch) {
  validate(world.size(), o, c, batch);
  Mesh m;
  m.opt = o;
  m.world = &world;
  m.tp = o.tp;
  m.pp = o.pp;
  m.dp = world.size() / (o.tp * o.pp);
  m.rank = world.rank();
  m.tp_rank = m.rank % m.tp;
  m.dp_rank = (m.rank / m.tp) % m.dp;
  m.pp_rank = m.rank / (m.tp * m.dp);
  m.stage_layers = o.pp_layers.empty() ? split_even(c.num_layers, o.pp) : o.pp_layers;
  const int local = batch / m.dp;
  m.microbatches = o.pp_microbatches ? o.pp_microbatches : default_microbatches(m.pp, local);
  // Every rank makes every split, in the same order (each is collective over the world).
  m.tp_group = world.split(m.pp_rank * m.dp + m.dp_rank, m.tp_rank);
  m.dp_group = world.split(m.pp_rank * m.tp + m.tp_rank, m.dp_rank);
  m.stage_group = world.split(m.pp_rank, m.dp_rank * m.tp + m.tp_rank);
  if (c.tie_word_embeddings && m.pp > 1) {
    const bool ends = m.pp_rank == 0 || m.pp_rank == m.pp - 1;
    auto g = world.split(ends ? m.dp_rank * m.tp + m.tp_rank : world.size() + m.rank, m.pp_rank);
    if (ends) m.tied_group = std::move(g);
  }
  return m;
}

Shard Mesh::shard_of(const ModelConfig& c, int pp_r, int dp_r, int tp_r) const {
  Shard s = Shard::full(c);
  s.layer_begin = std::accumulate(stage_layers.begin(), stage_layers.begin() + pp_r, 0);
  s.layer_end = s.layer_begin + stage_layers[pp_r];
  s.embed = pp_r == 0;
  s.head = pp_r == pp - 1;
  if (tp > 1) split_attention(c, tp, opt.tp_shares, tp_r, s);
  if (!c.has_moe()) return s;
  switch (opt.experts) {
    case ExpertLayout::EP:
      s.experts = to_ranges(split_even(c.num_experts, dp * tp))[dp_r * tp + tp_r];
      s.expert_ffn = {0, c.moe_intermediate_size};
      break;
    case ExpertLayout::ETP: s.experts = to_ranges(split_even(c.num_experts, dp))[dp_r]; break;
    case ExpertLayout::EDP:
      s.experts = to_ranges(split_even(c.num_experts, tp))[tp_r];
      s.expert_ffn = {0, c.moe_intermediate_size};
      break;
    default: break;  // all experts, width split over TP like the dense FFN
  }
  return s;
}

MoeParallel Mesh::moe_parallel(const ModelConfig& c) const {
  MoeParallel p;
  if (tp > 1) p.partial = tp_group.get();
  auto owners = [&](int n) {
    std::vector<int> own;
    auto r = to_ranges(split_even(c.num_experts, n));
    for (int q = 0; q < n; q++)
      for (int e = r[q].begin; e < r[q].end(); e++) own.push_back(q);
    return own;
  };
  if (opt.experts == ExpertLayout::EP && dp * tp > 1) {
    p.exchange = stage_group.get();
    p.owner = owners(dp * tp);
    p.share_index = tp_rank;  // TP ranks hold the same tokens: each dispatches a slice of them
    p.share_count = tp;
  } else if (opt.experts == ExpertLayout::ETP && dp > 1) {
    p.exchange = dp_group.get();
    p.owner = owners(dp);
  }
  return p;
}

Communicator* Mesh::expert_replicas() const {
  if (opt.experts == ExpertLayout::EP || opt.experts == ExpertLayout::ETP) return nullptr;
  return dp > 1 ? dp_group.get() : nullptr;
}

std::string Mesh::describe() const {
  return fmt::format("TP {} x PP {} x DP {}, experts {}, stages {}, recompute {}, {} micro-batches", tp, pp, dp,
                     expert_layout_name(opt.experts), fmt::join(stage_layers, ","),
                     opt.recompute.empty() ? "none" : fmt::format("{}", fmt::join(opt.recompute, ",")), microbatches);
}

}  // namespace sky
