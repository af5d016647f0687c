#include "infer/infer_plan.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace sky {

std::vector<InferMem> infer_memory(const InferPlanRequest& r) {
  const ModelConfig& c = r.model;
  SKY_CHECK(r.dtype == "f32" || r.dtype == "bf16" || r.dtype == "fp8", "--dtype '{}' (expected f32, bf16 or fp8)",
            r.dtype);
  SKY_CHECK(r.batch > 0 && r.context > 0, "--batch and --context must be positive");
  const double es = r.dtype == "f32" ? 4 : r.dtype == "bf16" ? 2 : 1;
  const bool fp8 = r.dtype == "fp8";
  // A linear block [O, I]: its elements, plus one f32 scale per row under fp8.
  auto lin = [&](double O, double I) { return O * I * es + (fp8 ? O * 4 : 0); };
  const double H = c.hidden_size, hd = c.head_dim, V = c.vocab_size, L = c.num_layers;
  std::vector<InferMem> out;
  for (int rank = 0; rank < r.tp.tp; rank++) {
    InferMem m;
    m.rank = rank;
    m.shard = tp_shard(c, r.tp, rank);
    const Shard& s = m.shard;
    const double q = s.q_heads.size * hd, kv = s.kv_heads.size * hd;
    m.attention = L * (lin(q, H) + 2 * lin(kv, H) + lin(H, q));
    if (c.mla()) {  // (tensor parallelism is refused for MLA: one rank)
      const double rq = c.q_lora_rank, kr = c.kv_lora_rank, qd = c.q_dim();
      const double qproj = rq > 0 ? lin(rq, H) + lin(qd, rq) + rq * 4 : lin(qd, H);
      m.attention = L * (qproj + lin(kr + c.qk_rope_dim, H) + kr * 4 +
                         lin(double(c.num_heads) * (c.qk_nope_dim + c.v_head_dim), kr) + lin(H, c.o_dim()));
    }
    const double Lm = c.num_moe_layers(), Ld = L - Lm;
    const double we = s.expert_ffn.size, wd = s.ffn.size;
    m.experts = Lm * s.experts.size * (2 * lin(we, H) + lin(H, we)) + Ld * (2 * lin(wd, H) + lin(H, wd));
    m.replicated = Lm * c.num_experts * H * 4;  // router
    m.replicated += V * H * 4 + L * 2 * H * 4;  // f32 embedding and layer norms
    if (s.head) m.head = V * H * (r.dtype == "f32" ? 4 : 2) + H * 4;  // the LM head stays bf16 or better
    const double kv_values = c.mla() ? double(c.kv_cache_width()) : 2 * kv;  // keys and values, or the latent
    m.kv_bytes_per_token = L * kv_values * (r.kv_dtype == "bf16" ? 2 : 4);
    m.kv = double(r.batch) * r.context * m.kv_bytes_per_token;
    out.push_back(m);
  }
  return out;
}

std::vector<int> balance_shares(const InferPlanRequest& r) {
  // Shares in units of 1/64 of an even share: heads and the FFN / expert width follow them (by
  // largest remainder), so units much finer than a head let the width even out what heads cannot.
  // Local search from the even split: move units from the largest rank to another while that
  // lowers the ranks' memory, largest first (compared as a sorted list, so ties at the top resolve
  // one rank at a time).
  const int T = r.tp.tp;
  InferPlanRequest q = r;
  auto cost = [&](const std::vector<int>& sh) {
    q.tp.shares = sh;
    std::vector<double> t;
    for (const auto& m : infer_memory(q)) t.push_back(m.total());
    std::sort(t.rbegin(), t.rend());
    return t;
  };
  auto largest = [&](const std::vector<int>& sh) {
    q.tp.shares = sh;
    auto mem = infer_memory(q);
    return int(std::max_element(mem.begin(), mem.end(), [](auto& a, auto& b) { return a.total() < b.total(); }) -
               mem.begin());
  };
  std::vector<int> shares(size_t(T), 64);
  auto best = cost(shares);
  for (bool improved = true; improved;) {
    improved = false;
    const int p = largest(shares);
    for (int d : {32, 16, 8, 4, 2, 1}) {
      for (int j = 0; j < T && !improved; j++) {
        if (j == p || shares[p] <= d) continue;
        shares[p] -= d;
        shares[j] += d;
        try {
          auto c = cost(shares);
          if (c < best) best = c, improved = true;
        } catch (const Error&) {  // a rank without a kv head or an expert: not a split
        }
        if (!improved) shares[p] += d, shares[j] -= d;
      }
      if (improved) break;
    }
  }
  int g = 0;
  for (int x : shares) g = std::gcd(g, x);
  for (int& x : shares) x /= g;
  return shares;
}
}  // namespace sky
