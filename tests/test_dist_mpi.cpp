// Data-parallel training under mpirun (oversubscribed on this machine, tiny models): the same
// global batch gives the same losses and the same model as one process, with and without ZeRO-1,
// and a checkpoint written under one layout resumes under another.
#include <gtest/gtest.h>

#include <cmath>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/token_data.h"
#include "model/config.h"
#include "model/model.h"
#include "ref.h"

using json = nlohmann::json;

static std::string dir;

static int run(const std::string& args, std::string* out = nullptr) {
  std::string s;
  const int rc = skytest::shell(args, &s);
  if (out) *out = s;
  if (rc != 0) std::fprintf(stderr, "command failed (%d): %s\n%s\n", rc, args.c_str(), s.c_str());
  return rc;
}

static std::string mpirun(int np) {
  return "OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -np " + std::to_string(np) +
         " ";
}

static std::string train_args(const std::string& name, int steps, const std::string& extra = "",
                              const std::string& config = "tiny") {
  const std::string batch = extra.find("--batch-size") == std::string::npos ? " --batch-size 4" : "";
  // --aux-alpha is an error under --balance aux-free (no aux loss to weigh).
  const std::string aux = extra.find("--balance aux-free") == std::string::npos ? " --aux-alpha 0.01" : "";
  return std::string(SKYMOE_BIN) + " train --config " + config + " --data " + dir + "/tok.bin --seq-len 16" + batch +
         " --steps " + std::to_string(steps) + " --lr 2e-3 --warmup 2" + aux + " --z-loss 0.001 --quiet" +
         " --grad-clip 0.5 --out " + dir + "/" + name + " --log-jsonl " + dir + "/" + name + ".jsonl " + extra;
}

static std::vector<json> log_of(const std::string& name) {
  std::vector<json> v;
  std::ifstream f(dir + "/" + name + ".jsonl");
  for (std::string line; std::getline(f, line);) v.push_back(json::parse(line));
  return v;
}

static void expect_same_run(const std::string& a, const std::string& b) {
  auto la = log_of(a), lb = log_of(b);
  ASSERT_EQ(la.size(), lb.size());
  ASSERT_FALSE(la.empty());
  for (size_t i = 0; i < la.size(); i++) {
    EXPECT_NEAR(la[i]["loss"].get<double>(), lb[i]["loss"].get<double>(), 1e-5) << a << " vs " << b << " step " << i + 1;
    EXPECT_NEAR(la[i]["aux_loss"].get<double>(), lb[i]["aux_loss"].get<double>(), 1e-7);
    EXPECT_NEAR(la[i]["grad_norm"].get<double>(), lb[i]["grad_norm"].get<double>(), 1e-4);
    EXPECT_EQ(la[i]["expert_load"], lb[i]["expert_load"]);
  }
  sky::Model ma = sky::Model::load(dir + "/" + a + "/step-00000005");
  sky::Model mb = sky::Model::load(dir + "/" + b + "/step-00000005");
  double worst = 0;
  for (size_t i = 0; i < ma.layout.total; i++) worst = std::max(worst, double(std::fabs(ma.params[i] - mb.params[i])));
  EXPECT_LT(worst, 2e-5) << a << " vs " << b;
}

class Dist : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = skytest::temp_dir("dist");
    sky::Rng r(3);
    std::vector<uint32_t> t(20000);
    for (auto& x : t) x = uint32_t(r.below(256));
    sky::write_token_file(dir + "/tok.bin", t);
    ASSERT_EQ(run(train_args("single", 5)), 0);
    // A model whose 3 heads and 3 layers split unevenly over 2 ranks.
    sky::ModelConfig odd = sky::ModelConfig::preset("tiny");
    odd.hidden_size = 48;
    odd.num_heads = odd.num_kv_heads = 3;
    odd.head_dim = 16;
    odd.num_layers = 3;
    odd.intermediate_size = odd.moe_intermediate_size = 40;
    std::ofstream(dir + "/odd.json") << odd.to_hf_json().dump(2);
    // Wide experts: the gradient buffer (~400k floats) is above the size where large all-reduces
    // and reduce-scatters run as a ring of point-to-point transfers (src/dist/mpi_comm.cpp).
    sky::ModelConfig wide = sky::ModelConfig::preset("tiny");
    wide.intermediate_size = wide.moe_intermediate_size = 320;
    std::ofstream(dir + "/wide.json") << wide.to_hf_json().dump(2);
    // Layer 0 dense (its own width), layers 1-2 MoE with narrower experts.
    sky::ModelConfig mixed = sky::ModelConfig::preset("tiny");
    mixed.num_layers = 3;
    mixed.first_dense_layers = 1;
    mixed.intermediate_size = 40;
    mixed.moe_intermediate_size = 24;
    std::ofstream(dir + "/kinds.json") << mixed.to_hf_json().dump(2);
    mixed.tie_word_embeddings = true;
    std::ofstream(dir + "/tied.json") << mixed.to_hf_json().dump(2);
  }
  static std::string tied() { return dir + "/tied.json"; }
  static std::string mixed() { return dir + "/kinds.json"; }
  static std::string odd() { return dir + "/odd.json"; }
  // The one-process run with `extra` flags, made once.
  static void single(const std::string& name, const std::string& extra, const std::string& config = "tiny") {
    if (!std::filesystem::exists(dir + "/" + name + "/latest")) {
      ASSERT_EQ(run(train_args(name, 5, extra, config)), 0);
    }
  }
};

TEST_F(Dist, DataParallelMatchesOneProcess) {
  ASSERT_EQ(run(mpirun(2) + train_args("dp2", 5)), 0);
  expect_same_run("single", "dp2");
}

TEST_F(Dist, ZeroOneMatchesOneProcess) {
  ASSERT_EQ(run(mpirun(2) + train_args("zero2", 5, "--zero 1")), 0);
  expect_same_run("single", "zero2");
  ASSERT_EQ(run(mpirun(4) + train_args("zero4", 5, "--zero 1")), 0);
  expect_same_run("single", "zero4");
}

TEST_F(Dist, RingCollectivesMatchOneProcess) {
  const std::string wide = dir + "/wide.json";
  single("wide", "--batch-size 6", wide);
  // All-reduce over 3 ranks (the last chunk takes the remainder), reduce-scatter under ZeRO-1.
  ASSERT_EQ(run(mpirun(3) + train_args("wide_dp3", 5, "--batch-size 6", wide)), 0);
  expect_same_run("wide", "wide_dp3");
  ASSERT_EQ(run(mpirun(2) + train_args("wide_zero2", 5, "--batch-size 6 --zero 1", wide)), 0);
  expect_same_run("wide", "wide_zero2");
}

TEST_F(Dist, CheckpointResumesUnderAnotherLayout) {
  // 3 steps under ZeRO-1 on 2 ranks (the cosine schedule still spans 5 steps), then one process
  // continues to step 5: the same run as the single-process one.
  ASSERT_EQ(run(mpirun(2) + train_args("mixed", 5, "--zero 1 --save-every 1") + " --keep 0"), 0);
  std::filesystem::remove_all(dir + "/mixed/step-00000004");
  std::filesystem::remove_all(dir + "/mixed/step-00000005");
  ASSERT_EQ(run(train_args("mixed", 5, "--resume " + dir + "/mixed/step-00000003")), 0);
  expect_same_run("single", "mixed");
}

TEST_F(Dist, BadLayoutIsRejectedBeforeWork) {
  std::string out;
  EXPECT_NE(run(mpirun(3) + train_args("bad", 5), &out), 0);
  EXPECT_NE(out.find("not divisible by the 3 data-parallel ranks"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad/latest"));
}

TEST_F(Dist, TensorParallelMatchesOneProcess) {
  ASSERT_EQ(run(mpirun(2) + train_args("tp2", 5, "--tp 2")), 0);
  expect_same_run("single", "tp2");
  // Dense FFN split, GQA (4 heads on 2 kv heads: one kv head per rank).
  single("dense", "", "tiny-dense");
  ASSERT_EQ(run(mpirun(2) + train_args("dense_tp2", 5, "--tp 2", "tiny-dense")), 0);
  expect_same_run("dense", "dense_tp2");
}

TEST_F(Dist, UnevenTensorParallelMatchesOneProcess) {
  single("odd", "", odd());
  ASSERT_EQ(run(mpirun(2) + train_args("odd_tp2", 5, "--tp 2", odd())), 0);  // heads 2 + 1
  expect_same_run("odd", "odd_tp2");
  ASSERT_EQ(run(mpirun(2) + train_args("odd_shares", 5, "--tp 2 --tp-shares 1,2", odd())), 0);  // heads 1 + 2
  expect_same_run("odd", "odd_shares");
  ASSERT_EQ(run(mpirun(3) + train_args("odd_tp3", 5, "--tp 3", odd())), 0);
  expect_same_run("odd", "odd_tp3");
}

TEST_F(Dist, PipelineMatchesOneProcess) {
  // 4 rows per micro-step: PP 2 defaults to 4 micro-batches, which one process reproduces with
  // --pp-microbatches 4 (the aux loss is per micro-batch).
  single("single_m4", "--pp-microbatches 4");
  ASSERT_EQ(run(mpirun(2) + train_args("pp2", 5, "--pp 2")), 0);
  expect_same_run("single_m4", "pp2");
  single("odd_m4", "--pp-microbatches 4", odd());
  ASSERT_EQ(run(mpirun(2) + train_args("odd_pp2", 5, "--pp 2 --pp-layers 2,1 --recompute-layers 1,1", odd())), 0);
  expect_same_run("odd_m4", "odd_pp2");
  ASSERT_EQ(run(mpirun(3) + train_args("odd_pp3", 5, "--pp 3 --recompute-layers 0,1,0", odd())), 0);
  expect_same_run("odd_m4", "odd_pp3");
}

TEST_F(Dist, ExpertLayoutsMatchOneProcess) {
  ASSERT_EQ(run(mpirun(2) + train_args("ep2", 5, "--expert-layout ep")), 0);
  expect_same_run("single", "ep2");
  ASSERT_EQ(run(mpirun(4) + train_args("ep4", 5, "--expert-layout ep --tp 2")), 0);  // EP over DP x TP
  expect_same_run("single", "ep4");
  ASSERT_EQ(run(mpirun(4) + train_args("etp4", 5, "--expert-layout etp --tp 2 --zero 1")), 0);
  expect_same_run("single", "etp4");
  ASSERT_EQ(run(mpirun(4) + train_args("edp4", 5, "--expert-layout edp --tp 2")), 0);
  expect_same_run("single", "edp4");
}

TEST_F(Dist, MixedDenseAndMoeLayersMatchOneProcess) {
  single("kinds", "", mixed());
  ASSERT_EQ(run(mpirun(2) + train_args("kinds_tp2", 5, "--tp 2", mixed())), 0);
  expect_same_run("kinds", "kinds_tp2");
  ASSERT_EQ(run(mpirun(4) + train_args("kinds_ep4", 5, "--expert-layout ep --tp 2", mixed())), 0);
  expect_same_run("kinds", "kinds_ep4");
  single("kinds_m4", "--pp-microbatches 4", mixed());
  ASSERT_EQ(run(mpirun(2) + train_args("kinds_pp2", 5, "--pp 2 --pp-layers 1,2", mixed())), 0);
  expect_same_run("kinds_m4", "kinds_pp2");
}

// Tied embeddings split into stages: the last stage's copy of the embedding (its LM head) and the
// first stage's get the summed gradient and stay equal; counted once in the norm.
TEST_F(Dist, TiedEmbeddingsUnderPipelineMatchOneProcess) {
  single("tied_m4", "--pp-microbatches 4", tied());
  ASSERT_EQ(run(mpirun(2) + train_args("tied_pp2", 5, "--pp 2 --pp-layers 2,1", tied())), 0);
  expect_same_run("tied_m4", "tied_pp2");
  ASSERT_EQ(run(mpirun(4) + train_args("tied_pp2tp2", 5, "--pp 2 --tp 2 --zero 1", tied())), 0);
  expect_same_run("tied_m4", "tied_pp2tp2");
}

TEST_F(Dist, CombinedLayoutMatchesOneProcess) {
  // PP 2 x DP 2 x EDP 2 (TP 2) with ZeRO-1: 2 rows per DP rank, so 2 micro-batches.
  single("single_m2", "--pp-microbatches 2");
  ASSERT_EQ(run(mpirun(8) + train_args("combined", 5, "--pp 2 --tp 2 --expert-layout edp --zero 1")), 0);
  expect_same_run("single_m2", "combined");
}

TEST_F(Dist, CheckpointMovesBetweenModelParallelLayouts) {
  // Steps 1-3 under PP 2 x TP 2, steps 4-5 under EP on 2 ranks: the same run as one process.
  single("single_m2b", "--pp-microbatches 2 --save-every 1 --keep 0");
  ASSERT_EQ(run(mpirun(4) + train_args("moved", 5, "--pp 2 --tp 2 --pp-microbatches 2 --save-every 1") + " --keep 0"), 0);
  std::filesystem::remove_all(dir + "/moved/step-00000004");
  std::filesystem::remove_all(dir + "/moved/step-00000005");
  ASSERT_EQ(run(mpirun(2) + train_args("moved", 5, "--expert-layout ep --pp-microbatches 2 --resume " + dir +
                                                      "/moved/step-00000003")),
            0);
  expect_same_run("single_m2b", "moved");
}

// Auxiliary-loss-free balancing: each step's expert loads are summed over every rank (DP, EDP, the
// pipeline's stages) before the bias moves, so every rank holds the same bias, selects as one
// process does, and the checkpoint's bias is one process's.
static void expect_same_bias(const std::string& a, const std::string& b) {
  expect_same_run(a, b);
  auto la = log_of(a), lb = log_of(b);
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); i++) EXPECT_EQ(la[i]["bias_range"], lb[i]["bias_range"]) << "step " << i + 1;
  EXPECT_GT(la.back()["bias_range"][0].get<double>(), 0.0);
  auto state = [](const std::string& name) {
    return json::parse(std::ifstream(dir + "/" + name + "/step-00000005/trainer_state.json"));
  };
  EXPECT_EQ(state(a).at("select_bias"), state(b).at("select_bias"));
}

TEST_F(Dist, AuxFreeBalancingMatchesOneProcess) {
  const std::string af = "--balance aux-free --balance-speed 0.02";
  single("auxfree", af);
  ASSERT_EQ(run(mpirun(2) + train_args("auxfree_dp2", 5, af + " --zero 1")), 0);
  expect_same_bias("auxfree", "auxfree_dp2");
  ASSERT_EQ(run(mpirun(4) + train_args("auxfree_edp4", 5, af + " --expert-layout edp --tp 2")), 0);  // DP 2 x EDP 2
  expect_same_bias("auxfree", "auxfree_edp4");
  single("auxfree_m4", af + " --pp-microbatches 4");
  ASSERT_EQ(run(mpirun(2) + train_args("auxfree_pp2", 5, af + " --pp 2")), 0);
  expect_same_bias("auxfree_m4", "auxfree_pp2");
}

TEST_F(Dist, HungRankStopsEveryRankWithAMessage) {
  std::string out;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_NE(run("SKYMOE_TEST_HANG=1:2 " + mpirun(2) + "-x SKYMOE_TEST_HANG " +
                    train_args("hang", 5, "--pp 2 --comm-timeout 3"),
                &out),
            0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(out.find("did not complete within 3 s; another rank probably failed"), std::string::npos) << out;
  EXPECT_LT(secs, 60) << "the job should stop soon after the timeout";
}

TEST_F(Dist, BadModelParallelLayoutsAreRejected) {
  std::string out;
  EXPECT_NE(run(mpirun(2) + train_args("bad2", 5, "--tp 3"), &out), 0);
  EXPECT_NE(out.find("does not divide the 2 processes"), std::string::npos) << out;
  EXPECT_NE(run(mpirun(3) + train_args("bad2", 5, "--pp 3"), &out), 0);
  EXPECT_NE(out.find("--pp 3 exceeds the model's 2 layers"), std::string::npos) << out;
  EXPECT_NE(run(mpirun(8) + train_args("bad2", 5, "--expert-layout ep --tp 2"), &out), 0);
  EXPECT_NE(out.find("more than the 4 experts"), std::string::npos) << out;
  EXPECT_NE(run(mpirun(2) + train_args("bad2", 5, "--pp 2 --pp-layers 1,2"), &out), 0);
  EXPECT_NE(out.find("--pp-layers adds up to 3 layers; the model has 2"), std::string::npos) << out;
  EXPECT_NE(run(train_args("bad2", 5, "--expert-layout xyz"), &out), 0);
  EXPECT_NE(out.find("xyz"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad2/latest"));
}
