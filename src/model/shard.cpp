#include "model/shard.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace sky {

std::vector<int> split_even(int n, int parts) { return split_by_shares(n, std::vector<int>(parts, 1)); }

std::vector<int> split_by_shares(int n, const std::vector<int>& shares) {
  SKY_CHECK(!shares.empty(), "split of {} into no parts", n);
  long total = 0;
  for (int s : shares) {
    SKY_CHECK(s > 0, "shares must be positive, got {}", s);
    total += s;
  }
  if (total == n) return shares;
  std::vector<int> out(shares.size());
  std::vector<std::pair<long, int>> rem;  // (remainder, index): largest remainders get the leftovers
  int given = 0;
  for (size_t i = 0; i < shares.size(); i++) {
    long num = long(n) * shares[i];
    out[i] = int(num / total);
    given += out[i];
    rem.push_back({num % total, int(i)});
  }
  std::stable_sort(rem.begin(), rem.end(), [](auto a, auto b) { return a.first > b.first; });
  for (int i = 0; given < n; i++, given++) out[rem[i].second]++;
  return out;
}

std::vector<Range> to_ranges(const std::vector<int>& sizes) {
  std::vector<Range> r;
  int b = 0;
  for (int s : sizes) {
    r.push_back({b, s});
    b += s;
  }
  return r;
}

bool tensor_parallel_supported(const ModelConfig& c) {
  // Granite-MoE: its multipliers apply after the partial sums, but no tensor-parallel run of it is
  // tested against one process yet.
  return c.qk_norm == QkNorm::None && c.shared_expert_size == 0 && !c.qkv_bias && !c.granite() && !c.mla();
}

Shard Shard::full(const ModelConfig& c) {
  Shard s;
  s.layer_begin = 0;
  s.layer_end = c.num_layers;
  s.q_heads = {0, c.num_heads};
  s.kv_heads = {0, c.num_kv_heads};
  s.ffn = {0, c.has_dense() ? c.intermediate_size : 0};
  s.experts = {0, c.has_moe() ? c.num_experts : 0};
  s.expert_ffn = {0, c.has_moe() ? c.moe_intermediate_size : 0};
  return s;
}

std::string Shard::describe() const {
  return fmt::format("layers [{}, {}){}{}, heads [{}, {}), kv heads [{}, {}), ffn [{}, {}), experts [{}, {}), "
                     "expert ffn [{}, {})",
                     layer_begin, layer_end, embed ? " +embed" : "", head ? " +head" : "", q_heads.begin,
                     q_heads.end(), kv_heads.begin, kv_heads.end(), ffn.begin, ffn.end(), experts.begin, experts.end(),
                     expert_ffn.begin, expert_ffn.end());
}

ModelConfig shard_config(const ModelConfig& c, const Shard& s) {
  ModelConfig l = c;
  l.num_heads = s.q_heads.size;
  l.num_kv_heads = s.kv_heads.size;
  l.intermediate_size = s.ffn.size;
  l.moe_intermediate_size = s.expert_ffn.size;
  return l;
}

void split_attention(const ModelConfig& c, int tp, const std::vector<int>& shares_in, int index, Shard& s) {
  SKY_CHECK(shares_in.empty() || int(shares_in.size()) == tp, "--tp-shares has {} values for --tp {}",
            shares_in.size(), tp);
  SKY_CHECK(tp == 1 || tensor_parallel_supported(c),
            "tensor parallelism does not support {} models yet (q/k biases, q/k norms, shared experts and multi-head "
            "latent attention are not split; Granite-MoE's multipliers are untested under it); use expert "
            "parallelism or one process",
            c.model_type);
  std::vector<int> shares = shares_in.empty() ? std::vector<int>(size_t(tp), 1) : shares_in;
  SKY_CHECK(index >= 0 && index < tp, "tensor-parallel index {} outside [0, {})", index, tp);
  SKY_CHECK(c.num_kv_heads >= tp,
            "tensor parallelism of {} needs at least {} kv heads; the model has {} (kv heads are not replicated)", tp,
            tp, c.num_kv_heads);
  const int group = c.num_heads / c.num_kv_heads;
  auto kv = to_ranges(split_by_shares(c.num_kv_heads, shares));
  for (int r = 0; r < tp; r++)
    SKY_CHECK(kv[r].size > 0, "tensor-parallel shares {} give rank {} no kv head (the model has {})",
              fmt::join(shares, ","), r, c.num_kv_heads);
  s.kv_heads = kv[index];
  s.q_heads = {kv[index].begin * group, kv[index].size * group};
  auto ffn_split = [&](int width, const char* what) {
    SKY_CHECK(width >= tp, "tensor parallelism of {} exceeds the {} {}", tp, what, width);
    return to_ranges(split_by_shares(width, shares))[index];
  };
  if (c.has_moe()) s.expert_ffn = ffn_split(c.moe_intermediate_size, "expert width (moe_intermediate_size)");
  if (c.has_dense()) s.ffn = ffn_split(c.intermediate_size, "dense FFN width (intermediate_size)");
}

}  // namespace sky
