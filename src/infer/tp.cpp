#include "infer/tp.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <thread>

#include "core/error.h"
#include "infer/infer_model.h"

namespace sky {

Shard tp_shard(const ModelConfig& c, const TpOptions& o, int rank) {
  const int T = o.tp;
  SKY_CHECK(T >= 1, "--tp must be at least 1, got {}", T);
  SKY_CHECK(o.shares.empty() || int(o.shares.size()) == T, "--tp-shares has {} values but --tp is {}", o.shares.size(), T);
  for (int s : o.shares) SKY_CHECK(s > 0, "--tp-shares: every share must be positive, got {}", s);
  SKY_CHECK(T == 1 || !c.mla(),
            "--tp {}: tensor-parallel inference of {} models (multi-head latent attention) is not supported yet; run "
            "one process",
            T, c.model_type);
  SKY_CHECK(T <= c.num_kv_heads, "--tp {} exceeds the model's {} kv heads (each rank needs at least one; kv heads are not "
            "replicated)", T, c.num_kv_heads);
  SKY_CHECK(o.ep >= 1, "--ep must be at least 1, got {}", o.ep);
  if (o.ep > 1) {
    SKY_CHECK(c.has_moe(), "--ep {}: the model is dense (no experts to spread)", o.ep);
    SKY_CHECK(o.ep <= c.num_experts, "--ep {} exceeds the model's {} experts", o.ep, c.num_experts);
    SKY_CHECK(T % o.ep == 0, "--ep {} must divide --tp {} (experts are spread over groups of equal size)", o.ep, T);
  }
  const std::vector<int> shares = o.shares.empty() ? std::vector<int>(size_t(T), 1) : o.shares;
  auto kv = split_by_shares(c.num_kv_heads, shares);
  for (int r = 0; r < T; r++)
    SKY_CHECK(kv[r] > 0, "--tp-shares {} give rank {} no kv head (the model has {})", fmt::join(shares, ","), r,
              c.num_kv_heads);
  Shard s = Shard::full(c);
  s.head = rank == 0;
  Range kvr = to_ranges(kv)[rank];
  const int group = c.num_heads / c.num_kv_heads;
  s.kv_heads = kvr;
  s.q_heads = {kvr.begin * group, kvr.size * group};
  // The FFN / expert width: split over the ranks of this rank's expert group by their shares; the
  // experts: split over the groups by the groups' summed shares.
  const int per = T / o.ep, g = rank / per, j = rank % per;
  std::vector<int> member(shares.begin() + g * per, shares.begin() + (g + 1) * per), groups;
  for (int q = 0; q < o.ep; q++) groups.push_back(std::accumulate(shares.begin() + q * per, shares.begin() + (q + 1) * per, 0));
  if (c.has_moe()) {
    SKY_CHECK(c.moe_intermediate_size >= per, "--tp {}: the expert width {} is narrower than the {} ranks that split it",
              T, c.moe_intermediate_size, per);
    s.expert_ffn = to_ranges(split_by_shares(c.moe_intermediate_size, member))[j];
    auto ex = split_by_shares(c.num_experts, groups);
    for (int q = 0; q < o.ep; q++)
      SKY_CHECK(ex[q] > 0, "--ep {} with --tp-shares {}: expert group {} gets no expert", o.ep, fmt::join(shares, ","), q);
    s.experts = to_ranges(ex)[g];
  }
  // A dense FFN (dense layers of a mixed model too) is split over every rank: all hold the same tokens.
  if (c.has_dense()) {
    SKY_CHECK(c.intermediate_size >= T, "--tp {}: the dense FFN width {} is narrower than the {} ranks that split it",
              T, c.intermediate_size, T);
    s.ffn = to_ranges(split_by_shares(c.intermediate_size, shares))[rank];
  }
  return s;
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

enum Kind : int32_t { kFinish = 0, kStep = 1, kHeartbeat = 2 };

// SKYMOE_TEST_HANG / SKYMOE_TEST_EXIT = RANK:STEP.
std::pair<int, int64_t> fault_env(const char* name) {
  int r = -1;
  long long s = -1;
  if (const char* v = std::getenv(name)) std::sscanf(v, "%d:%lld", &r, &s);
  return {r, s};
}

}  // namespace

void TpGroup::sum(float* x, size_t n) {
  auto t0 = Clock::now();
  comm_.all_reduce_sum(x, n);
  comm_s_ += since(t0);
}

// A message is a header {length} and then the payload; the first payload value is its kind.
void TpGroup::broadcast(std::vector<int32_t>& msg) {
  auto t0 = Clock::now();
  int64_t len = int64_t(msg.size());
  comm_.broadcast(&len, sizeof len, 0);
  msg.resize(size_t(len));
  comm_.broadcast(msg.data(), msg.size() * sizeof(int32_t), 0);
  comm_s_ += since(t0);
}

void TpGroup::fault_injection() {
  static const auto hang = fault_env("SKYMOE_TEST_HANG"), die = fault_env("SKYMOE_TEST_EXIT");
  if (rank() == hang.first && steps_ == hang.second) {
    fmt::print(stderr, "rank {}: SKYMOE_TEST_HANG: stops responding at step {}\n", rank(), steps_);
    std::this_thread::sleep_for(std::chrono::hours(1));
  }
  if (rank() == die.first && steps_ == die.second) {
    fmt::print(stderr, "rank {}: SKYMOE_TEST_EXIT: exits at step {}\n", rank(), steps_);
    std::fflush(stderr);
    std::_Exit(3);
  }
}

void TpGroup::announce(const std::vector<BatchRow>& rows) {
  if (!leader()) return;
  SKY_CHECK(!finished_, "tensor-parallel forward after the group finished");
  steps_++;
  fault_injection();
  // Per sequence: its id (the address of rank 0's cache, stable while it lives), the capacity a
  // new one needs, its length before this step and its new tokens.
  std::vector<int32_t> msg = {kStep, int32_t(rows.size())};
  for (const auto& r : rows) {
    const uint64_t id = uint64_t(reinterpret_cast<uintptr_t>(r.kv));
    msg.insert(msg.end(), {int32_t(id & 0xffffffffu), int32_t(id >> 32), r.kv->capacity, r.kv->len, r.n});
  }
  for (const auto& r : rows) msg.insert(msg.end(), r.tokens, r.tokens + r.n);
  broadcast(msg);
}

void TpGroup::heartbeat() {
  if (!leader() || finished_) return;
  std::vector<int32_t> msg = {kHeartbeat};
  broadcast(msg);
}

void TpGroup::finish() {
  if (!leader() || finished_) return;
  finished_ = true;
  std::vector<int32_t> msg = {kFinish};
  broadcast(msg);
}

void TpGroup::follow(const InferModel& m) {
  SKY_CHECK(!leader(), "rank 0 leads; it does not follow");
  // This rank's slice of every live sequence's KV cache. A sequence missing from a step has ended
  // on rank 0 (the engine runs every live sequence in every step), so it is dropped.
  std::unordered_map<uint64_t, SeqKV> seqs;
  BatchScratch scratch;
  std::vector<int32_t> msg;
  for (;;) {
    broadcast(msg);
    if (msg.at(0) == kFinish) return;
    if (msg[0] == kHeartbeat) continue;
    steps_++;
    fault_injection();
    const int nrows = msg.at(1);
    const int32_t* tok = msg.data() + 2 + size_t(nrows) * 5;
    std::unordered_map<uint64_t, SeqKV> live;
    std::vector<BatchRow> rows;
    for (int i = 0; i < nrows; i++) {
      const int32_t* d = msg.data() + 2 + size_t(i) * 5;
      const uint64_t id = uint64_t(uint32_t(d[0])) | (uint64_t(uint32_t(d[1])) << 32);
      const int cap = d[2], len = d[3], n = d[4];
      SeqKV& kv = live[id];
      if (len == 0) {
        kv.init(m.cfg, cap, m.kv_bf16);
      } else {
        auto it = seqs.find(id);
        SKY_CHECK(it != seqs.end() && it->second.len == len,
                  "rank {}: step {} continues a sequence at position {} whose cache this rank does not hold", rank(),
                  steps_, len);
        kv = std::move(it->second);
      }
      rows.push_back({&kv, tok, n});  // references into `live` stay valid as it grows
      tok += n;
    }
    batch_forward(m, rows, nullptr, scratch);
    seqs = std::move(live);
  }
}

}  // namespace sky
