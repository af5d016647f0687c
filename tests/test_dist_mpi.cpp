// Data-parallel training under mpirun (oversubscribed on this machine, tiny models): the same
// global batch gives the same losses and the same model as one process, with and without ZeRO-1,
// and a checkpoint written under one layout resumes under another.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/token_data.h"
#include "model/model.h"
#include "ref.h"

using json = nlohmann::json;

static std::string dir;

static int run(const std::string& args, std::string* out = nullptr) {
  std::string cmd = args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string s;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) s.append(buf, n);
  int rc = pclose(p);
  if (out) *out = s;
  if (rc != 0) std::fprintf(stderr, "command failed (%d): %s\n%s\n", rc, args.c_str(), s.c_str());
  return rc;
}

static std::string mpirun(int np) {
  return "OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -np " + std::to_string(np) +
         " ";
}

static std::string train_args(const std::string& name, int steps, const std::string& extra = "") {
  return std::string(SKYMOE_BIN) + " train --config tiny --data " + dir + "/tok.bin --seq-len 16 --batch-size 4" +
         " --steps " + std::to_string(steps) + " --lr 2e-3 --warmup 2 --aux-alpha 0.01 --z-loss 0.001 --quiet" +
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
