// Multi-process inference under mpirun (oversubscribed, tiny models): tensor-parallel splits (even,
// GQA, uneven heads, explicit shares), expert parallelism, fp8 and bf16 weights all give the greedy
// tokens and logits of one process; a rank that hangs or dies makes the server answer 503 and the
// job end; bad flags are refused before any weight is read.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "model/config.h"
#include "ref.h"

using json = nlohmann::json;

static std::string dir;
static const std::string bin = SKYMOE_BIN;

static int run(const std::string& args, std::string* out = nullptr) { return skytest::shell(args, out); }

static std::string mpirun(int np, const std::string& env = "", const std::string& wrap = "") {
  return "OMP_NUM_THREADS=1 " + env + " " + wrap + " mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS " +
         (env.empty() ? "" : "-x " + env.substr(0, env.find('=')) + " ") + "-np " + std::to_string(np) + " ";
}

static std::vector<float> read_floats(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

struct Gen {
  std::vector<int> tokens;
  std::vector<float> logits;
};

// Greedy generation of 8 tokens; `launch` is "" (one process) or an mpirun prefix.
static Gen generate(const std::string& model, const std::string& launch, const std::string& flags, const std::string& tag) {
  const std::string lf = dir + "/" + tag + ".logits";
  std::string out;
  const int rc = run(launch + bin + " generate --model " + dir + "/" + model +
                         " --prompt-ids 1,17,42,99,7 --max-tokens 8 --json --logits-out " + lf + " " + flags,
                     &out);
  EXPECT_EQ(rc, 0) << out;
  Gen g;
  if (rc != 0) return g;
  auto j = json::parse(out.substr(out.find('{')));
  g.tokens = j["generated_ids"].get<std::vector<int>>();
  g.logits = read_floats(lf);
  return g;
}

class TpInfer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = skytest::temp_dir("tpinfer");
    // 5 heads (5 kv heads) and an expert width of 40: nothing divides by 2 or 3.
    sky::ModelConfig odd = sky::ModelConfig::preset("tiny");
    odd.hidden_size = 80;
    odd.num_heads = odd.num_kv_heads = 5;
    odd.head_dim = 16;
    odd.intermediate_size = odd.moe_intermediate_size = 40;
    std::ofstream(dir + "/odd.json") << odd.to_hf_json().dump(2);
    // GQA: 6 heads in 3 kv groups.
    sky::ModelConfig gqa = odd;
    gqa.hidden_size = 96;
    gqa.num_heads = 6;
    gqa.num_kv_heads = 3;
    std::ofstream(dir + "/gqa.json") << gqa.to_hf_json().dump(2);
    // Dense, 3 kv heads, FFN width 50.
    sky::ModelConfig dense = sky::ModelConfig::preset("tiny-dense");
    dense.hidden_size = 48;
    dense.num_heads = dense.num_kv_heads = 3;
    dense.head_dim = 16;
    dense.intermediate_size = dense.moe_intermediate_size = 50;
    std::ofstream(dir + "/dense.json") << dense.to_hf_json().dump(2);
    // Mixed: layer 0 dense (width 50), layer 1 MoE (experts of width 40), tied embeddings.
    sky::ModelConfig mixed = odd;
    mixed.first_dense_layers = 1;
    mixed.intermediate_size = 50;
    mixed.tie_word_embeddings = true;
    std::ofstream(dir + "/mixed.json") << mixed.to_hf_json().dump(2);
    for (std::string m : {"odd", "gqa", "dense", "mixed"})
      ASSERT_EQ(run(bin + " init --config " + dir + "/" + m + ".json --out " + dir + "/" + m + " --seed 5"), 0);
    ASSERT_EQ(run(bin + " quantize --model " + dir + "/odd --to fp8 --scale per-channel --out " + dir + "/odd-fp8"), 0);
    ASSERT_EQ(run(bin + " init --config " + dir + "/odd.json --out " + dir + "/odd-bf16 --seed 5 --dtype BF16"), 0);
  }

  // The run under mpirun matches the one-process run: same greedy tokens, logits within `tol`.
  static void expect_match(const std::string& model, int np, const std::string& flags, double tol = 1e-5) {
    const std::string tag = model + "-" + std::to_string(np) + flags;
    Gen one = generate(model, "", "", model + "-single");
    Gen many = generate(model, mpirun(np), flags, std::to_string(std::hash<std::string>{}(tag)));
    ASSERT_FALSE(one.tokens.empty());
    EXPECT_EQ(one.tokens, many.tokens) << tag;
    ASSERT_EQ(one.logits.size(), many.logits.size()) << tag;
    double worst = 0, scale = 0;
    for (size_t i = 0; i < one.logits.size(); i++) {
      worst = std::max(worst, double(std::fabs(one.logits[i] - many.logits[i])));
      scale = std::max(scale, double(std::fabs(one.logits[i])));
    }
    EXPECT_LT(worst, tol) << tag << " (largest logit " << scale << ")";
    EXPECT_GT(scale, 0.05) << "logits too small to compare";
  }
};

TEST_F(TpInfer, EvenSplitMatchesOneProcess) {
  expect_match("gqa", 3, "--tp 3");  // one kv head (two q heads) per rank
  expect_match("dense", 3, "");      // --tp defaults to the number of processes
}

TEST_F(TpInfer, UnevenSplitsMatchOneProcess) {
  expect_match("odd", 2, "--tp 2");                   // heads 3 + 2, width 20 + 20
  expect_match("odd", 3, "--tp 3");                   // heads 2 + 2 + 1, width 14 + 13 + 13
  expect_match("odd", 2, "--tp 2 --tp-shares 1,4");   // heads 1 + 4, width 8 + 32
  expect_match("gqa", 2, "--tp 2");                   // kv heads 2 + 1: q heads 4 + 2
  expect_match("dense", 2, "--tp 2 --tp-shares 2,1");  // dense FFN width 33 + 17
}

TEST_F(TpInfer, MixedLayersAndTiedEmbeddingsMatchOneProcess) {
  expect_match("mixed", 2, "--tp 2");          // dense width 25 + 25, expert width 20 + 20
  expect_match("mixed", 2, "--tp 2 --ep 2");  // dense layer split over both ranks, experts 2 + 2
}

TEST_F(TpInfer, ExpertParallelMatchesOneProcess) {
  expect_match("odd", 2, "--tp 2 --ep 2");  // whole experts: 2 + 2
  expect_match("odd", 4, "--tp 4 --ep 2");  // 2 groups of 2 experts, each expert's width over 2 ranks
  expect_match("odd", 3, "--tp 3 --ep 3 --tp-shares 2,1,1");  // experts 2 + 1 + 1
}

TEST_F(TpInfer, Fp8AndBf16MatchOneProcess) {
  // Stored fp8 (per-row scales) and bf16: every rank uses the stored bytes of its block, so only
  // the order of the sums differs.
  expect_match("odd-fp8", 2, "--tp 2", 1e-4);
  expect_match("odd-fp8", 3, "--tp 3 --ep 3", 1e-4);
  expect_match("odd-bf16", 2, "--tp 2 --tp-shares 3,2", 1e-4);
}

TEST_F(TpInfer, BadFlagsAreRefusedBeforeLoading) {
  auto refused = [&](int np, const std::string& flags, const std::string& msg) {
    std::string out;
    // Every rank checks the flags against config.json before reading a weight.
    EXPECT_NE(run(mpirun(np) + bin + " generate --model " + dir + "/odd --prompt-ids 1 " + flags, &out), 0);
    EXPECT_NE(out.find(msg), std::string::npos) << flags << ":\n" << out;
  };
  refused(2, "--tp-shares 1,2,3", "--tp-shares has 3 values but --tp is 2");
  refused(2, "--tp 3", "--tp 3 but 2 processes were started");
  refused(2, "--ep 3", "--ep 3 must divide --tp 2");
  refused(2, "--tp-shares 0,1", "--tp-shares: '0' is not a positive integer");
  std::string out;
  EXPECT_NE(run(bin + " generate --model " + dir + "/odd --prompt-ids 1 --ep 2", &out), 0);
  EXPECT_NE(out.find("--ep 2 must divide --tp 1"), std::string::npos) << out;
  EXPECT_NE(run(bin + " plan --inference --preset tiny --tp 3", &out), 0);
  EXPECT_NE(out.find("--tp 3 exceeds the model's 2 kv heads"), std::string::npos) << out;
  EXPECT_NE(run(bin + " plan --inference --preset tiny --tp 2 --ep 8", &out), 0);
  EXPECT_NE(out.find("--ep 8 exceeds the model's 4 experts"), std::string::npos) << out;
}

TEST_F(TpInfer, BenchReportsCommunicationShare) {
  std::string out;
  ASSERT_EQ(run(mpirun(2) + bin + " bench infer --model " + dir + "/odd-fp8 --dtype auto --prompt 16 --decode 4 " +
                    "--batches 1,4 --batch-steps 2 --json",
                &out),
            0)
      << out;
  auto j = json::parse(out.substr(out.find('{')));
  EXPECT_EQ(j["tp"], 2);
  for (const char* k : {"prefill", "decode"}) {
    EXPECT_GT(j["comm_fraction"][k].get<double>(), 0.0);
    EXPECT_LT(j["comm_fraction"][k].get<double>(), 1.0);
  }
  EXPECT_TRUE(j["comm_fraction"]["batched"].contains("4"));
  EXPECT_GT(j["batched_tokens_per_s"]["4"].get<double>(), 0.0);
}

// A server over 2 ranks where rank 1 fails at its 3rd step: the request in flight gets 503 and the
// whole job ends (non-zero), within the collective timeout, instead of hanging.
static void serve_with_failure(const std::string& env) {
  const int port = 18500 + int(std::hash<std::string>{}(env) % 400);
  const std::string log = dir + "/serve-" + env.substr(0, env.find('=')) + ".log";
  std::thread server([&] {
    std::string out;
    int rc = run(mpirun(2, env, "timeout 60") + bin + " serve --model " + dir + "/odd --port " + std::to_string(port) +
                     " --comm-timeout 3",
                 &out);
    std::ofstream(log) << out << "\nrc=" << rc << "\n";
  });
  std::string health, reply;
  for (int i = 0; i < 200 && health.find("ok") == std::string::npos; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    run("curl -s localhost:" + std::to_string(port) + "/health", &health);
  }
  EXPECT_NE(health.find("ok"), std::string::npos) << health;
  // Two steps work, the third fails.
  auto t0 = std::chrono::steady_clock::now();
  run("curl -s -w ' HTTP %{http_code}' localhost:" + std::to_string(port) +
          "/v1/completions -d '{\"prompt\":[1,5,9],\"max_tokens\":6,\"temperature\":0}'",
      &reply);
  EXPECT_NE(reply.find("HTTP 503"), std::string::npos) << reply;
  server.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 30) << "the job took too long to end";
  std::ifstream f(log);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("rc=0"), std::string::npos) << text;
  EXPECT_EQ(text.find("rc=124"), std::string::npos) << "hung until `timeout` killed it:\n" << text;
}

TEST_F(TpInfer, HungRankMakesServerAnswer503AndExit) { serve_with_failure("SKYMOE_TEST_HANG=1:3"); }

TEST_F(TpInfer, DeadRankMakesServerAnswer503AndExit) { serve_with_failure("SKYMOE_TEST_EXIT=1:3"); }
