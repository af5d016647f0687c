// Tensor-parallel inference pieces that need no mpirun: the shard each rank gets, expert-parallel
// dispatch trimming, and the inference memory plan.
#include <gtest/gtest.h>

#include "infer/infer_plan.h"
#include "infer/tp.h"
#include "moe/dispatch.h"

using namespace sky;

static ModelConfig odd() {
  ModelConfig c = ModelConfig::preset("tiny");
  c.hidden_size = 80;
  c.num_heads = c.num_kv_heads = 5;
  c.head_dim = 16;
  c.intermediate_size = c.moe_intermediate_size = 40;
  return c;
}

TEST(TpShard, HeadsAndWidthFollowTheShares) {
  const ModelConfig c = odd();
  Shard s0 = tp_shard(c, {3, {}, 1}, 0), s2 = tp_shard(c, {3, {}, 1}, 2);
  EXPECT_EQ(s0.kv_heads, (Range{0, 2}));
  EXPECT_EQ(s2.kv_heads, (Range{4, 1}));
  EXPECT_EQ(s0.expert_ffn, (Range{0, 14}));
  EXPECT_EQ(s2.expert_ffn, (Range{27, 13}));
  EXPECT_TRUE(s0.head);
  EXPECT_FALSE(s2.head);  // only rank 0 computes logits
  Shard a = tp_shard(c, {2, {1, 4}, 1}, 1);
  EXPECT_EQ(a.kv_heads, (Range{1, 4}));
  EXPECT_EQ(a.expert_ffn, (Range{8, 32}));
  // GQA: q heads follow their kv group.
  ModelConfig g = c;
  g.num_heads = 6;
  g.num_kv_heads = 3;
  EXPECT_EQ(tp_shard(g, {2, {}, 1}, 1).q_heads, (Range{4, 2}));
  // 36 heads on 8 ranks: 5,5,5,5,4,4,4,4.
  ModelConfig sky = ModelConfig::preset("skywork-moe-146b");
  EXPECT_EQ(tp_shard(sky, {8, {}, 1}, 3).kv_heads, (Range{15, 5}));
  EXPECT_EQ(tp_shard(sky, {8, {}, 1}, 4).kv_heads, (Range{20, 4}));
}

TEST(TpShard, ExpertParallelGroups) {
  const ModelConfig c = odd();  // 4 experts
  Shard a = tp_shard(c, {4, {}, 2}, 3);  // group 1 of 2 ranks: experts 2-3, second half of the width
  EXPECT_EQ(a.experts, (Range{2, 2}));
  EXPECT_EQ(a.expert_ffn, (Range{20, 20}));
  Shard b = tp_shard(c, {2, {}, 2}, 0);  // whole experts
  EXPECT_EQ(b.experts, (Range{0, 2}));
  EXPECT_EQ(b.expert_ffn, (Range{0, 40}));
}

TEST(TpShard, BadOptionsNameTheFlag) {
  const ModelConfig c = odd();
  auto msg = [&](TpOptions o) {
    try {
      tp_shard(c, o, 0);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(msg({2, {1, 2, 3}, 1}).find("--tp-shares has 3 values but --tp is 2"), std::string::npos);
  EXPECT_NE(msg({6, {}, 1}).find("--tp 6 exceeds the model's 5 kv heads"), std::string::npos);
  EXPECT_NE(msg({2, {}, 8}).find("--ep 8 exceeds the model's 4 experts"), std::string::npos);
  EXPECT_NE(msg({3, {}, 2}).find("--ep 2 must divide --tp 3"), std::string::npos);
  EXPECT_NE(msg({2, {1, 20}, 1}).find("give rank 0 no kv head"), std::string::npos);
  EXPECT_NE(msg({2, {}, 2}).find("accepted"), std::string::npos);
}

TEST(InferPlan, MemoryAndBalance) {
  InferPlanRequest r;
  r.model = ModelConfig::preset("bench-moe");
  r.tp = {3, {}, 1};
  r.dtype = "fp8";
  r.batch = 1;
  r.context = 1024;
  auto mem = infer_memory(r);
  ASSERT_EQ(mem.size(), 3u);
  EXPECT_GT(mem[0].head, 0);
  EXPECT_EQ(mem[1].head, 0);
  // Every expert weight is held once over the ranks (fp8 bytes + one f32 scale per row).
  const ModelConfig& c = r.model;
  double experts = 0;
  for (auto& m : mem) experts += m.experts;
  const double I = c.intermediate_size, H = c.hidden_size;
  EXPECT_NEAR(experts, c.num_layers * c.num_experts * (3 * I * H + (2 * I + 3 * H) * 4), 1.0);
  // Rank 0 also holds the LM head: the balanced split gives it less and lowers the largest rank.
  auto shares = balance_shares(r);
  ASSERT_EQ(shares.size(), 3u);
  EXPECT_LT(shares[0], shares[1]);
  InferPlanRequest b = r;
  b.tp.shares = shares;
  double before = 0, after = 0;
  for (auto& m : mem) before = std::max(before, m.total());
  for (auto& m : infer_memory(b)) after = std::max(after, m.total());
  EXPECT_LT(after, before);
  // A bf16 KV cache holds each position in half the bytes.
  InferPlanRequest h = r;
  h.kv_dtype = "bf16";
  const auto half = infer_memory(h);
  for (size_t i = 0; i < mem.size(); i++) EXPECT_DOUBLE_EQ(half[i].kv * 2, mem[i].kv);
  EXPECT_GT(mem[0].kv, 0);
}
