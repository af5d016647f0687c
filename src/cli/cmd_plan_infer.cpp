// `skymoe plan --inference`: memory per rank of multi-process inference for a split, and the
// --tp-shares that balance it (src/infer/infer_plan.h).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/infer_plan.h"

namespace sky::cli {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string join(const std::vector<int>& v) { return fmt::format("{}", fmt::join(v, ",")); }

double peak(const std::vector<InferMem>& mem) {
  double p = 0;
  for (const auto& m : mem) p = std::max(p, m.total());
  return p;
}

nlohmann::json mem_json(const std::vector<InferMem>& mem, const std::vector<int>& shares) {
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& m : mem) {
    const Shard& s = m.shard;
    ranks.push_back({{"rank", m.rank},
                     {"heads", s.q_heads.size},
                     {"kv_heads", s.kv_heads.size},
                     {"ffn_width", s.expert_ffn.size + s.ffn.size},
                     {"experts", s.experts.size},
                     {"kv_bytes_per_token", m.kv_bytes_per_token},
                     {"gib",
                      {{"attention", m.attention / kGiB},
                       {"experts", m.experts / kGiB},
                       {"replicated", m.replicated / kGiB},
                       {"lm_head", m.head / kGiB},
                       {"kv_cache", m.kv / kGiB},
                       {"total", m.total() / kGiB}}}});
  }
  return {{"tp_shares", join(shares)}, {"max_gib", peak(mem) / kGiB}, {"ranks", ranks}};
}

void print_split(const char* title, const std::vector<InferMem>& mem, const std::vector<int>& shares) {
  fmt::print("{} (--tp-shares {}): largest rank {:.2f} GiB\n", title, join(shares), peak(mem) / kGiB);
  fmt::print("  rank  heads  kv  ffn width  experts  attention  experts  replicated  lm head  kv cache    total GiB\n");
  for (const auto& m : mem) {
    const Shard& s = m.shard;
    fmt::print("  {:>4}  {:>5}  {:>2}  {:>9}  {:>7}  {:>9.2f}  {:>7.2f}  {:>10.2f}  {:>7.2f}  {:>8.2f}  {:>11.2f}\n", m.rank,
               s.q_heads.size, s.kv_heads.size, s.expert_ffn.size + s.ffn.size, s.experts.size, m.attention / kGiB,
               m.experts / kGiB, m.replicated / kGiB, m.head / kGiB, m.kv / kGiB, m.total() / kGiB);
  }
}

}  // namespace

int cmd_plan_inference(int argc, char** argv) {
  CLI::App app{
      "Plan multi-process inference: memory per rank (weights, KV cache) for a tensor-parallel split, and the\n"
      "--tp-shares that balance it when ranks differ (rank 0 also holds the LM head).\n"
      "  skymoe plan --inference --preset skywork-moe-146b --tp 8 --dtype fp8 --batch 16 --context 4096"};
  app.name("skymoe plan --inference");
  InferPlanRequest r;
  std::string model, shares;
  bool inference = false, json_out = false;
  double memory_gb = 0;
  app.add_flag("--inference", inference, "plan inference (this mode)");
  app.add_option("--preset,--config", model, "preset name or config.json")->required();
  app.add_option("--tp", r.tp.tp, "tensor-parallel ranks")->required()->check(positive_int());
  app.add_option("--tp-shares", shares, "evaluate this split (default: even) besides the balanced one");
  app.add_option("--ep", r.tp.ep, "expert-parallel groups (as for generate/serve)")->capture_default_str()
      ->check(positive_int());
  app.add_option("--dtype", r.dtype, "linear layers in memory: f32 | bf16 | fp8")->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  add_kv_dtype_flag(app, r.kv_dtype);
  app.add_option("--batch", r.batch, "sequences whose KV cache is held at once")->capture_default_str()
      ->check(positive_int());
  app.add_option("--context", r.context, "positions per sequence")->capture_default_str()->check(positive_int());
  app.add_option("--memory-gb", memory_gb, "memory per rank, GiB: say whether the splits fit")->check(positive_number());
  app.add_flag("--json", json_out, "print one JSON object");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  r.model = ModelConfig::resolve(model);
  if (!shares.empty()) {
    for (const auto& item : CLI::detail::split(shares, ',')) {
      char* end = nullptr;
      long x = std::strtol(item.c_str(), &end, 10);
      SKY_CHECK(!item.empty() && *end == 0 && x > 0 && x < (1 << 20), "--tp-shares: '{}' is not a positive integer", item);
      r.tp.shares.push_back(int(x));
    }
  }
  const auto given = infer_memory(r);
  const std::vector<int> given_shares = r.tp.shares.empty() ? std::vector<int>(size_t(r.tp.tp), 1) : r.tp.shares;
  InferPlanRequest b = r;
  b.tp.shares = balance_shares(r);
  const auto balanced = infer_memory(b);
  if (json_out) {
    nlohmann::json j = {{"model", model},          {"tp", r.tp.tp},           {"ep", r.tp.ep},
                        {"dtype", r.dtype},        {"batch", r.batch},        {"context", r.context},
                        {"split", mem_json(given, given_shares)}, {"balanced", mem_json(balanced, b.tp.shares)}};
    if (memory_gb > 0) j["memory_gib"] = memory_gb;
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  const ModelConfig& c = r.model;
  fmt::print("model {}: {} layers, {} heads / {} kv heads, {}, vocab {}; {} weights, KV cache for {} x {} "
             "positions ({})\n\n",
             model, c.num_layers, c.num_heads, c.num_kv_heads, c.ffn_summary(), c.vocab_size, r.dtype, r.batch,
             r.context, r.kv_dtype);
  print_split(r.tp.shares.empty() ? "even split" : "given split", given, given_shares);
  fmt::print("\n");
  print_split("balanced split", balanced, b.tp.shares);
  fmt::print("\nKV cache per position (rank 0): {:.0f} bytes{}\n", given[0].kv_bytes_per_token,
             c.mla() ? fmt::format(" (multi-head latent attention: a latent row of {} + {} values a layer, not keys and values)",
                                   c.kv_lora_rank, c.qk_rope_dim)
                     : "");
  fmt::print("replicated: f32 embedding, norms{}; rank 0 also holds the LM head ({}) and the final norm\n",
             c.has_moe() ? ", router" : "", r.dtype == "f32" ? "f32" : "bf16");
  if (memory_gb > 0)
    fmt::print("with {:.1f} GiB per rank: even/given split {}, balanced split {}\n", memory_gb,
               peak(given) / kGiB <= memory_gb ? "fits" : "does not fit",
               peak(balanced) / kGiB <= memory_gb ? "fits" : "does not fit");
  fmt::print("flags: --tp {} --tp-shares {}{}\n", r.tp.tp, join(b.tp.shares), r.tp.ep > 1 ? fmt::format(" --ep {}", r.tp.ep) : "");
  return 0;
}

}  // namespace sky::cli
