// --device ref against --device cpu through the CLI: the reference backend (plain loops, double
// accumulation) trains, evaluates and generates the same model with the same results within float
// tolerance -- for a dense model, an MoE with capacity dropping, and dense and MoE layers mixed.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/token_data.h"
#include "model/config.h"
#include "ref.h"

using json = nlohmann::json;

namespace {

std::string dir;

std::string run(const std::string& args) {
  std::string out;
  const int rc = skytest::shell(std::string(SKYMOE_BIN) + " " + args, &out);
  EXPECT_EQ(rc, 0) << args << "\n" << out;
  return out;
}

std::vector<json> log_of(const std::string& name) {
  std::vector<json> v;
  std::ifstream f(dir + "/" + name + ".jsonl");
  for (std::string line; std::getline(f, line);) v.push_back(json::parse(line));
  return v;
}

class Device : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    dir = skytest::temp_dir("device");
    sky::Rng r(5);
    std::vector<uint32_t> t(6000);
    for (auto& x : t) x = uint32_t(r.below(256));
    sky::write_token_file(dir + "/tok.bin", t);
    sky::ModelConfig mixed = sky::ModelConfig::preset("tiny");
    mixed.num_layers = 3;
    mixed.first_dense_layers = 1;
    mixed.intermediate_size = 40;
    mixed.moe_intermediate_size = 24;
    mixed.tie_word_embeddings = true;
    std::ofstream(dir + "/mixed.json") << mixed.to_hf_json().dump(2);
  }
  // The config flag of each case; MoE runs drop with capacity factor 1.0. "auxfree": the router
  // selects with auxiliary-loss-free balancing's bias (moved fast, so it matters within 5 steps).
  static std::string config(const std::string& c) {
    if (c == "dense") return "tiny-dense";
    if (c == "moe") return "tiny --capacity-factor 1.0 --aux-alpha 0.01";
    if (c == "auxfree") return "tiny --capacity-factor 1.0 --balance aux-free --balance-speed 0.05";
    return dir + "/mixed.json --capacity-factor 1.0 --aux-alpha 0.01";
  }
};

TEST_P(Device, TrainEvalGenerateMatchCpu) {
  const std::string c = GetParam();
  auto train = [&](const std::string& dev) {
    run("train --config " + config(c) + " --data " + dir + "/tok.bin --seq-len 16 --batch-size 4 --steps 5 --lr 3e-3 " +
        "--warmup 1 --z-loss 0.001 --quiet --device " + dev + " --out " + dir + "/" + c + "-" + dev +
        " --log-jsonl " + dir + "/" + c + "-" + dev + ".jsonl");
    return log_of(c + "-" + dev);
  };
  auto cpu = train("cpu"), ref = train("ref");
  ASSERT_EQ(cpu.size(), 5u);
  ASSERT_EQ(ref.size(), 5u);
  for (size_t i = 0; i < cpu.size(); i++) {
    const double a = cpu[i]["loss"].get<double>(), b = ref[i]["loss"].get<double>();
    EXPECT_NEAR(a, b, 1e-5 * std::fabs(b)) << c << " step " << i + 1;
    EXPECT_EQ(cpu[i]["expert_load"], ref[i]["expert_load"]) << c << " step " << i + 1;
    EXPECT_EQ(cpu[i]["drop_rate"], ref[i]["drop_rate"]) << c << " step " << i + 1;
    if (c == "auxfree") {
      EXPECT_EQ(cpu[i]["bias_range"], ref[i]["bias_range"]) << c << " step " << i + 1;
    }
  }
  if (c == "auxfree") {
    EXPECT_GT(cpu.back()["bias_range"][0].get<double>(), 0.0);
  }
  if (c != "dense") {
    EXPECT_GT(cpu.back()["drop_rate"][cpu.back()["drop_rate"].size() - 1].get<double>(), 0.0);
  }

  const std::string model = dir + "/" + c + "-cpu/step-00000005";
  auto eval = [&](const std::string& dev) {
    return json::parse(run("eval --model " + model + " --data " + dir + "/tok.bin --seq-len 16 --batch-size 2 " +
                           "--batches 3 --json --device " + dev))["loss"].get<double>();
  };
  const double ea = eval("cpu"), eb = eval("ref");
  EXPECT_NEAR(ea, eb, 1e-5 * eb) << c;

  auto generate = [&](const std::string& dev) {
    const std::string out = run("generate --model " + model + " --prompt-ids 1,5,9,12 --max-tokens 12 --json " +
                                "--device " + dev);
    return json::parse(out.substr(out.find('{')))["generated_ids"];
  };
  EXPECT_EQ(generate("cpu"), generate("ref")) << c;
}

INSTANTIATE_TEST_SUITE_P(Configs, Device, ::testing::Values("dense", "moe", "mixed", "auxfree"));

TEST(DeviceFlag, UnknownDeviceNamesTheChoices) {
  std::string out;
  EXPECT_NE(skytest::shell(std::string(SKYMOE_BIN) + " eval --model x --data y --seq-len 4 --device tpu", &out), 0);
  EXPECT_NE(out.find("--device 'tpu'"), std::string::npos) << out;
  EXPECT_NE(out.find("cpu, ref"), std::string::npos) << out;
  EXPECT_THROW(sky::backend("gpu"), sky::Error);
  EXPECT_STREQ(sky::backend("ref").name(), "ref");
}

}  // namespace
