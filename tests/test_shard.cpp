// Shards of a model: splits, and that a shard's blocks hold exactly the whole model's values
// whether it is initialized or loaded.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/model.h"
#include "model/shard.h"
#include "ref.h"

using namespace sky;

TEST(Shard, SplitsAsEvenlyAsPossible) {
  EXPECT_EQ(split_even(36, 8), (std::vector<int>{5, 5, 5, 5, 4, 4, 4, 4}));
  EXPECT_EQ(split_even(24, 5), (std::vector<int>{5, 5, 5, 5, 4}));
  EXPECT_EQ(split_by_shares(36, {5, 5, 5, 5, 4, 4, 4, 4}), (std::vector<int>{5, 5, 5, 5, 4, 4, 4, 4}));
  EXPECT_EQ(split_by_shares(10, {1, 2, 2}), (std::vector<int>{2, 4, 4}));
  EXPECT_EQ(split_by_shares(7, {1, 1}), (std::vector<int>{4, 3}));
  EXPECT_THROW(split_by_shares(7, {1, 0}), Error);
}

TEST(Shard, AttentionSplitFollowsKvGroups) {
  ModelConfig c = ModelConfig::preset("skywork-moe-146b");  // 36 heads (MHA), width 12288
  Shard s;
  split_attention(c, 8, {}, 4, s);
  EXPECT_EQ(s.q_heads, (Range{20, 4}));  // 5,5,5,5 then 4s
  EXPECT_EQ(s.kv_heads, (Range{20, 4}));
  EXPECT_EQ(s.expert_ffn.size, 12288 / 8);
  ModelConfig g = ModelConfig::preset("tiny");  // 4 heads on 2 kv heads
  split_attention(g, 2, {}, 1, s);
  EXPECT_EQ(s.kv_heads, (Range{1, 1}));
  EXPECT_EQ(s.q_heads, (Range{2, 2}));
  EXPECT_THROW(split_attention(g, 3, {}, 0, s), Error);  // 2 kv heads cannot go to 3 ranks
}

static void expect_blocks_match(const Model& part, const Model& whole) {
  ASSERT_FALSE(part.layout.specs.empty());
  for (const ParamSpec& s : part.layout.specs) {
    const ParamSpec* w = whole.layout.find(s.name);
    ASSERT_NE(w, nullptr) << s.name;
    std::vector<float> block(s.numel());
    copy_block_from_full(s, whole.params.data() + w->offset, block.data());
    for (size_t i = 0; i < s.numel(); i++) ASSERT_EQ(part.params[s.offset + i], block[i]) << s.name << " at " << i;
  }
}

TEST(Shard, BlocksHoldTheWholeModelsValues) {
  ModelConfig c = ModelConfig::preset("tiny");
  Model whole = Model::random(c, 7);
  Shard s = Shard::full(c);
  s.layer_begin = 1;
  s.embed = false;
  split_attention(c, 2, {}, 1, s);
  s.experts = {1, 2};
  Model part = Model::random(c, 7, s);
  EXPECT_LT(part.layout.total, whole.layout.total / 2);
  EXPECT_EQ(part.layout.specs.back().kind, ParamKind::W2);  // experts stored last in a partial shard
  expect_blocks_match(part, whole);
  const std::string dir = skytest::temp_dir("shard");
  whole.save(dir);
  expect_blocks_match(Model::load(dir, s), whole);
  EXPECT_THROW(part.save(dir + "/x"), Error);
}
