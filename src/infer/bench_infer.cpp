#include "infer/bench_infer.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/parallel.h"
#include "core/rng.h"
#include "infer/batch_forward.h"
#include "infer/tp.h"

namespace sky {

using Clock = std::chrono::steady_clock;
static double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

static std::vector<int32_t> random_tokens(int n, int V, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(r.below(V));
  return t;
}

// The matrix bytes of a weight (its scales live in another buffer: QWeight::bytes() counts both).
static double touch(const QWeight& w) {
  return w.data ? touch_bytes(w.data, size_t(w.O) * w.row_bytes()) : 0.0;
}

void warm_weights(const InferModel& m) {
  double s = touch(m.lm_head);
  for (const auto& L : m.layers) {
    for (const QWeight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.gate, &L.up, &L.down}) s += touch(*w);
    for (size_t e = 0; e < L.w1.size(); e++)
      for (const QWeight* w : {&L.w1[e], &L.w3[e], &L.w2[e]}) s += touch(*w);
  }
  static volatile double sink;
  sink = s;
  (void)sink;
}

// Expected distinct experts a batch of b tokens touches per layer with top-k of E (uniform routing).
static double expected_experts(int E, int k, int b) {
  return E * (1.0 - std::pow(1.0 - double(k) / E, b));
}

nlohmann::json bench_infer(const InferModel& m, const InferBenchOptions& o) {
  const ModelConfig& c = m.cfg;
  const int V = c.vocab_size;
  auto say = [&](const std::string& s) { if (!o.quiet) fmt::print(stderr, "{}\n", s); };
  const int tp = m.tp ? m.tp->size() : 1;
  say(fmt::format("bench infer: {} layers, hidden {}, {} experts top-{}, weights {} ({:.2f} GB{}, {}), {}{}",
                  c.num_layers, c.hidden_size, c.num_experts, c.top_k, m.weight_dtype, m.total_weight_bytes() / 1e9,
                  tp > 1 ? " on rank 0" : "", m.mmapped ? "memory-mapped" : "in memory", m.be->describe(),
                  tp > 1 ? fmt::format(", tensor parallel over {} ranks", tp) : ""));
  // Share of a phase's wall time rank 0 spends in collectives (waiting for slower ranks included).
  auto comm_s = [&] { return m.tp ? m.tp->comm_seconds() : 0.0; };
  nlohmann::json comm = nlohmann::json::object(), comm_batched = nlohmann::json::object();
  warm_weights(m);
  const double bw_before = m.be->memory_bandwidth_gbs(size_t(1) << 30, 5);
  BatchScratch s;
  std::vector<float> logits(size_t(std::max(64, *std::max_element(o.batches.begin(), o.batches.end()))) * V);

  // Prefill: one sequence, the whole prompt in one forward.
  auto prompt = random_tokens(o.prompt, V, 1);
  std::vector<double> pf;
  double pf_comm = 0;
  for (int r = 0; r < o.reps + 1; r++) {
    SeqKV kv;
    kv.init(c, o.prompt + 1, m.kv_bf16);
    auto t0 = Clock::now();
    const double c0 = comm_s();
    batch_forward(m, {{&kv, prompt.data(), o.prompt}}, logits.data(), s);
    if (r > 0) pf.push_back(since(t0));  // the first pass sizes the scratch buffers
    if (r > 0) pf_comm += comm_s() - c0;
  }
  comm["prefill"] = pf_comm / std::accumulate(pf.begin(), pf.end(), 0.0);
  std::sort(pf.begin(), pf.end());
  const double prefill_tps = o.prompt / pf[pf.size() / 2];
  say(fmt::format("  prefill {} tokens: {:.1f} tokens/s", o.prompt, prefill_tps));

  // Batch-1 decode after a short prompt.
  // (its own 16 tokens: --prompt may be shorter)
  const auto short_prompt = random_tokens(16, V, 2);
  SeqKV kv;
  kv.init(c, 16 + o.decode, m.kv_bf16);
  batch_forward(m, {{&kv, short_prompt.data(), 16}}, logits.data(), s);
  int32_t tok = 1;
  auto t0 = Clock::now();
  double c0 = comm_s();
  for (int i = 0; i < o.decode; i++) {
    batch_forward(m, {{&kv, &tok, 1}}, logits.data(), s);
    tok = int32_t(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
  }
  const double decode_tps = o.decode / since(t0);
  comm["decode"] = (comm_s() - c0) / since(t0);
  const double bytes_tok = m.decode_weight_bytes_per_token();
  const double achieved = bytes_tok * decode_tps / 1e9;
  say(fmt::format("  decode batch 1: {:.1f} tokens/s, {:.1f} MB/token -> {:.1f} GB/s", decode_tps, bytes_tok / 1e6, achieved));

  // Batched decode: b sequences, one token each per step.
  nlohmann::json batched = nlohmann::json::object(), roofline = nlohmann::json::object();
  double expert_bytes = 0, shared_bytes = bytes_tok;
  const int moe_layers = c.num_moe_layers();
  if (moe_layers > 0) {
    int l0 = 0;
    while (!c.layer_is_moe(l0)) l0++;
    const auto& L0 = m.layers[l0];
    const int e0 = m.shard.experts.begin;
    expert_bytes = double(L0.w1[e0].bytes() + L0.w3[e0].bytes() + L0.w2[e0].bytes());
    shared_bytes = bytes_tok - moe_layers * c.top_k * expert_bytes * m.shard.experts.size / c.num_experts;
  }
  const double bw = std::max(bw_before, 1e-9);
  for (int b : o.batches) {
    std::vector<SeqKV> kvs(b);
    std::vector<std::vector<int32_t>> toks(b);
    std::vector<BatchRow> rows;
    for (int i = 0; i < b; i++) {
      kvs[i].init(c, 8 + o.batch_steps + 1, m.kv_bf16);
      toks[i] = random_tokens(8, V, 100 + i);
      rows.push_back({&kvs[i], toks[i].data(), 8});
    }
    batch_forward(m, rows, logits.data(), s);  // prefill the short prompts
    std::vector<int32_t> next(b, 1);
    for (int i = 0; i < b; i++) rows[i] = {&kvs[i], &next[i], 1};
    auto t1 = Clock::now();
    c0 = comm_s();
    for (int st = 0; st < o.batch_steps; st++) {
      batch_forward(m, rows, logits.data(), s);
      for (int i = 0; i < b; i++)
        next[i] = int32_t(std::max_element(logits.begin() + size_t(i) * V, logits.begin() + size_t(i + 1) * V) -
                          (logits.begin() + size_t(i) * V));
    }
    const double tps = double(b) * o.batch_steps / since(t1);
    comm_batched[std::to_string(b)] = (comm_s() - c0) / since(t1);
    // Roofline: a step reads the shared weights once plus every expert the batch touches.
    const double step_bytes =
        moe_layers > 0 ? shared_bytes + moe_layers * expected_experts(c.num_experts, c.top_k, b) * expert_bytes *
                                            m.shard.experts.size / c.num_experts
                       : bytes_tok;
    const double roof = b * bw * 1e9 / step_bytes;
    batched[std::to_string(b)] = tps;
    roofline[std::to_string(b)] = roof;
    say(fmt::format("  decode batch {}: {:.1f} tokens/s ({:.0f}% of the {:.1f} tokens/s bandwidth roofline)", b, tps,
                    100 * tps / roof, roof));
  }
  const double bw_after = m.be->memory_bandwidth_gbs(size_t(1) << 30, 5);
  say(fmt::format("  memory bandwidth (read, same run): {:.1f} GB/s before, {:.1f} GB/s after; decode reached {:.0f}%",
                  bw_before, bw_after, 100 * achieved / std::max(bw_before, bw_after)));
  comm["batched"] = comm_batched;
  if (tp > 1)
    say(fmt::format("  time in collectives (rank 0): prefill {:.0f}%, decode {:.0f}%", 100 * comm["prefill"].get<double>(),
                    100 * comm["decode"].get<double>()));
  return {{"weight_dtype", m.weight_dtype},
          {"tp", tp},
          {"comm_fraction", comm},
          {"mmapped", m.mmapped},
          {"threads", m.be->num_threads()},
          {"device", m.be->describe()},
          {"prefill_tokens", o.prompt},
          {"prefill_tokens_per_s", prefill_tps},
          {"decode_tokens_per_s", decode_tps},
          {"decode_weight_bytes_per_token", bytes_tok},
          {"decode_achieved_gbs", achieved},
          {"memory_bandwidth_gbs", std::max(bw_before, bw_after)},
          {"memory_bandwidth_gbs_before", bw_before},
          {"memory_bandwidth_gbs_after", bw_after},
          {"batched_tokens_per_s", batched},
          {"batched_roofline_tokens_per_s", roofline}};
}

}  // namespace sky
