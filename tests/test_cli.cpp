// End-to-end checks of the `skymoe` binary (the foundation issue's acceptance): the real executable
// runs on HF-layout directories this test writes itself, and its answers are compared with the
// independent float64 reference (tests/model_ref.cpp). Bad input must end in a clean, non-zero exit
// whose message names the file, field or value -- never a crash.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/dtype.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "io/token_data.h"
#include "model/config.h"
#include "model/params.h"
#include "model_ref.h"
#include "ref.h"

extern char** environ;

namespace fs = std::filesystem;
using json = nlohmann::json;
using sky::DType;
using sky::ModelConfig;

namespace {

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

struct RunResult {
  int code = -1;    // exit status when the process exited normally
  int signal = 0;   // the signal that killed it, else 0
  std::string out, err;
  // For assertion messages.
  std::string describe() const {
    return "exit " + std::to_string(code) + (signal ? " signal " + std::to_string(signal) : "") + "\nstdout: " +
           out + "\nstderr: " + err;
  }
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Spawns SKYMOE_BIN directly (no shell: no quoting, and a signal shows up as a signal rather than
// as a shell's 128+n exit code), stdout and stderr captured through files.
RunResult run(const std::vector<std::string>& args) {
  static const std::string io_dir = skytest::temp_dir("cli-io");
  const std::string out_path = io_dir + "/stdout", err_path = io_dir + "/stderr";
  std::vector<std::string> full = {SKYMOE_BIN};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  RunResult r;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = std::string("posix_spawn failed: ") + std::strerror(rc);
    return r;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

// Runs, expects success, returns stdout parsed as JSON.
json run_json(const std::vector<std::string>& args) {
  RunResult r = run(args);
  EXPECT_EQ(r.code, 0) << r.describe();
  try {
    return json::parse(r.out);
  } catch (const json::exception& e) {
    ADD_FAILURE() << "stdout is not JSON: " << e.what() << "\n" << r.describe();
    return json::object();
  }
}

// A clean failure: exited (no signal), non-zero, below the 128+n range a shell uses for signals,
// and stderr contains every one of `needles`.
void expect_clean_failure(const std::vector<std::string>& args, const std::vector<std::string>& needles) {
  RunResult r = run(args);
  std::string cmd;
  for (auto& a : args) cmd += " " + a;
  EXPECT_EQ(r.signal, 0) << "crashed:" << cmd << "\n" << r.describe();
  EXPECT_GT(r.code, 0) << "should fail:" << cmd << "\n" << r.describe();
  EXPECT_LT(r.code, 128) << cmd << "\n" << r.describe();
  for (auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "stderr lacks '" << n << "':" << cmd << "\n" << r.describe();
}

// ---------------------------------------------------------------------------------------------
// Writing HF-layout model directories
// ---------------------------------------------------------------------------------------------

// How each tensor is stored. FP8 means F8_E4M3 plus a per-tensor F32 `.weight_scale` (and an
// `.input_scale`, as vLLM-style FP8 releases carry; the loader must ignore it).
using DtypeRule = std::function<DType(const std::string& name, const sky::Shape& shape)>;

DType all_f32(const std::string&, const sky::Shape&) { return DType::F32; }

struct Written {
  std::vector<double> params;  // the values the files really hold (after rounding), in ParamLayout order
};

// Random weights at a scale (0.3) where attention, routing and every expert matter; norms near 1.
// Writes config.json (given verbatim, as an HF release would have it) and the tensors in `shards`
// files (1: model.safetensors; more: model-0000i-of-0000N.safetensors + index).
Written write_model_dir(const std::string& dir, const ModelConfig& cfg, const json& config_json, uint64_t seed,
                        const DtypeRule& rule, int shards = 1) {
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << config_json.dump(2);
  sky::ParamLayout layout = sky::ParamLayout::build(cfg);
  auto r = skytest::randn(layout.total, seed);
  Written w;
  w.params.resize(layout.total);
  sky::NamedTensors tensors;
  for (auto& s : layout.specs) {
    const size_t n = s.numel();
    std::vector<float> x(n);
    for (size_t i = 0; i < n; i++) x[i] = float(s.shape.size() == 1 ? 1.0 + 0.2 * r[s.offset + i] : 0.3 * r[s.offset + i]);
    const DType dt = rule(s.name, s.shape);
    sky::Tensor t = sky::Tensor::empty(dt, s.shape);
    if (dt == DType::F8_E4M3) {
      float amax = 0;
      for (float v : x) amax = std::max(amax, std::fabs(v));
      const float scale = amax / 448.0f;
      for (size_t i = 0; i < n; i++) {
        uint8_t q = sky::f32_to_e4m3(x[i] / scale);
        t.as<uint8_t>()[i] = q;
        w.params[s.offset + i] = double(sky::e4m3_to_f32(q) * scale);  // float product, as a loader computes it
      }
      const std::string base = s.name.substr(0, s.name.size() - std::strlen(".weight"));
      sky::Tensor sc = sky::Tensor::empty(DType::F32, {});  // scalar, like Skywork's FP8 checkpoint
      *sc.f32() = scale;
      sky::Tensor in_sc = sky::Tensor::empty(DType::F32, {});
      *in_sc.f32() = 1.0f;
      tensors.emplace_back(base + ".weight_scale", sc);
      tensors.emplace_back(base + ".input_scale", in_sc);
    } else {
      sky::convert_from_f32(dt, x.data(), t.data, n);
      std::vector<float> back(n);
      sky::convert_to_f32(dt, t.data, back.data(), n);
      for (size_t i = 0; i < n; i++) w.params[s.offset + i] = back[i];
    }
    tensors.emplace_back(s.name, t);
  }
  if (shards == 1) {
    sky::write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    return w;
  }
  // Round-robin so every shard mixes tensor kinds (and dtypes).
  std::vector<sky::NamedTensors> parts(shards);
  for (size_t i = 0; i < tensors.size(); i++) parts[i % shards].push_back(tensors[i]);
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  size_t total = 0;
  for (int k = 0; k < shards; k++) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, shards);
    sky::write_safetensors(dir + "/" + name, parts[k], {{"format", "pt"}});
    for (auto& [tn, t] : parts[k]) {
      index["weight_map"][tn] = name;
      total += t.nbytes();
    }
  }
  index["metadata"]["total_size"] = total;
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2);
  return w;
}

// Random tokens, written through the engine's token-file writer.
std::vector<uint32_t> write_tokens(const std::string& path, size_t n, int vocab, uint64_t seed) {
  sky::Rng rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = uint32_t(rng.below(vocab));
  sky::write_token_file(path, t);
  return t;
}

// The documented batch rule, evaluated with the float64 reference: batch k reads B*S+1 tokens from
// k*B*S; row b's inputs are chunk[b*S, b*S+S), targets the same shifted by one. Mean over batches.
double reference_eval_loss(const ModelConfig& cfg, const std::vector<double>& params, const std::vector<uint32_t>& toks,
                           int B, int S, int batches) {
  double sum = 0;
  for (int k = 0; k < batches; k++) {
    const size_t base = size_t(k) * B * S;
    std::vector<int32_t> in, tgt;
    for (int b = 0; b < B; b++)
      for (int s = 0; s < S; s++) {
        in.push_back(int32_t(toks[base + size_t(b) * S + s]));
        tgt.push_back(int32_t(toks[base + size_t(b) * S + s + 1]));
      }
    skytest::RefOut ref = skytest::ref_forward(cfg, params, in, B, S);
    sum += skytest::ref_loss(cfg, ref.logits, tgt);
  }
  return sum / batches;
}

// Hand-built configs (not parsed by the engine) so a config.json the engine misreads shows up as a
// loss mismatch. The JSON beside each one is what a Hugging Face release would ship.
ModelConfig base_cfg(const char* type, int experts, int top_k, int heads, int kv) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.head_dim = 32 / heads;
  c.intermediate_size = c.moe_intermediate_size = 24;
  c.num_experts = experts;
  c.top_k = top_k;
  c.rope_theta = 500.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 64;
  return c;
}

ModelConfig skywork_cfg() {
  ModelConfig c = base_cfg("skywork_moe", 4, 2, 4, 4);
  c.logits_norm = true;
  c.gate_norm_std = 1.5;
  return c;
}

json skywork_json() {
  // Shaped like Skywork-MoE-Base's config.json: num_experts is a list, top-2 implicit.
  return json::parse(R"({
    "architectures": ["SkyworkForCausalLM"], "model_type": "skywork_moe",
    "vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 24,
    "num_experts": [4], "moe_expert_interval": 1, "moe_use_logits_norm": true, "moe_gate_norm_std": 1.5,
    "rope_theta": 500.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
    "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2
  })");
}

ModelConfig mixtral_cfg() { return base_cfg("mixtral", 4, 2, 4, 2); }  // GQA: 4 query heads, 2 KV heads

json mixtral_json() {
  return json::parse(R"({
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
    "vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24,
    "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
    "rope_theta": 500.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "sliding_window": null,
    "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "float32"
  })");
}

ModelConfig llama_cfg() { return base_cfg("llama", 0, 2, 4, 2); }

json llama_json() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24,
    "rope_theta": 500.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
    "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "float32"
  })");
}

// Evaluates `dir` through the CLI and checks loss and token count against the reference.
void check_eval(const std::string& dir, const ModelConfig& cfg, const std::vector<double>& params, int B, int S,
                int N) {
  const std::string data = dir + "-tokens.bin";
  // A few tokens more than N batches need, so --batches really limits the run.
  auto toks = write_tokens(data, size_t(N) * B * S + 1 + S + 3, cfg.vocab_size, 77);
  json j = run_json({"eval", "--model", dir, "--data", data, "--seq-len", std::to_string(S), "--batch-size",
                     std::to_string(B), "--batches", std::to_string(N), "--json"});
  ASSERT_TRUE(j.contains("loss")) << j.dump();
  const double want = reference_eval_loss(cfg, params, toks, B, S, N);
  const double got = j["loss"].get<double>();
  EXPECT_NEAR(got, want, 1e-5 * want) << dir << " relative error " << std::fabs(got - want) / want;
  EXPECT_EQ(j["tokens"].get<uint64_t>(), uint64_t(N) * B * S);
  EXPECT_EQ(j["batches"].get<uint64_t>(), uint64_t(N));
}

// Every 2-D weight in BF16, except that embeddings use F16 and norms stay F32: mixed dtypes.
DType mixed_bf16(const std::string& name, const sky::Shape& shape) {
  if (shape.size() == 1) return DType::F32;
  if (name == "model.embed_tokens.weight") return DType::F16;
  return DType::BF16;
}

// Skywork's FP8 release: attention and expert matrices in E4M3; router, norms, embeddings, head not.
DType fp8_rule(const std::string& name, const sky::Shape& shape) {
  const bool quant = name.find("self_attn") != std::string::npos || name.find(".experts.") != std::string::npos;
  return quant ? DType::F8_E4M3 : shape.size() == 1 ? DType::F32 : DType::BF16;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = skytest::temp_dir("cli"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);  // keep the evidence when something failed
  }
  std::string path(const std::string& rel) const { return dir_ + "/" + rel; }
  std::string dir_;
};

// ---------------------------------------------------------------------------------------------
// 1. eval gives the reference loss on HF directories
// ---------------------------------------------------------------------------------------------

TEST_F(Cli, EvalSkyworkMoeShardedBf16) {
  ModelConfig c = skywork_cfg();
  Written w = write_model_dir(path("skywork"), c, skywork_json(), 11, mixed_bf16, 3);
  ASSERT_TRUE(fs::exists(path("skywork/model-00003-of-00003.safetensors")));
  check_eval(path("skywork"), c, w.params, 2, 8, 3);
}

TEST_F(Cli, EvalMixtralGqa) {
  ModelConfig c = mixtral_cfg();
  Written w = write_model_dir(path("mixtral"), c, mixtral_json(), 12, all_f32);
  check_eval(path("mixtral"), c, w.params, 3, 5, 2);
}

TEST_F(Cli, EvalDenseLlama) {
  ModelConfig c = llama_cfg();
  Written w = write_model_dir(path("llama"), c, llama_json(), 13, all_f32, 2);
  check_eval(path("llama"), c, w.params, 2, 7, 2);
}

TEST_F(Cli, EvalFp8PerTensorScales) {
  ModelConfig c = skywork_cfg();
  Written w = write_model_dir(path("fp8"), c, skywork_json(), 14, fp8_rule, 2);
  check_eval(path("fp8"), c, w.params, 2, 6, 2);
}

// --per-token: one JSON line per scored position, the target's log-probability under the float64
// reference, before the summary; their mean negative is the loss.
TEST_F(Cli, EvalPerTokenLogprobs) {
  ModelConfig c = llama_cfg();
  Written w = write_model_dir(path("llama"), c, llama_json(), 16, all_f32);
  const int B = 2, S = 5;
  auto toks = write_tokens(path("t.bin"), size_t(B) * S + 1, c.vocab_size, 3);
  RunResult r = run({"eval", "--model", path("llama"), "--data", path("t.bin"), "--seq-len", std::to_string(S),
                     "--batch-size", std::to_string(B), "--per-token", "--json"});
  ASSERT_EQ(r.code, 0) << r.describe();
  std::vector<json> lines;
  std::istringstream in(r.out);
  for (std::string l; std::getline(in, l);) lines.push_back(json::parse(l));
  ASSERT_EQ(lines.size(), size_t(B) * S + 1);
  std::vector<int32_t> ids;
  for (int b = 0; b < B; b++)
    for (int s = 0; s < S; s++) ids.push_back(int32_t(toks[size_t(b) * S + s]));
  skytest::RefOut ref = skytest::ref_forward(c, w.params, ids, B, S);
  double sum = 0;
  for (int i = 0; i < B * S; i++) {
    const json& l = lines[i];
    EXPECT_EQ(l["batch"], 0);
    EXPECT_EQ(l["row"], i / S);
    EXPECT_EQ(l["pos"], i % S);
    const int32_t target = int32_t(toks[size_t(i) + 1]);
    EXPECT_EQ(l["target"], target);
    const double* x = ref.logits.data() + size_t(i) * c.vocab_size;
    double mx = *std::max_element(x, x + c.vocab_size), z = 0;
    for (int k = 0; k < c.vocab_size; k++) z += std::exp(x[k] - mx);
    EXPECT_NEAR(l["logprob"].get<double>(), x[target] - mx - std::log(z), 1e-4) << i;
    sum -= l["logprob"].get<double>();
  }
  EXPECT_NEAR(lines.back()["loss"].get<double>(), sum / (B * S), 1e-5);
}

// --batches 0 (the default) evaluates every full batch: floor((n - 1) / (B*S)).
TEST_F(Cli, EvalDefaultsToEveryFullBatch) {
  ModelConfig c = llama_cfg();
  Written w = write_model_dir(path("llama"), c, llama_json(), 15, all_f32);
  auto toks = write_tokens(path("t.bin"), 2 * 4 * 3 + 1 + 5, c.vocab_size, 1);  // 3 full batches of 2x4, 5 spare
  json j = run_json({"eval", "--model", path("llama"), "--data", path("t.bin"), "--seq-len", "4", "--batch-size", "2",
                     "--json"});
  EXPECT_EQ(j["batches"], 3);
  EXPECT_EQ(j["tokens"], 24);
  const double want = reference_eval_loss(c, w.params, toks, 2, 4, 3);
  EXPECT_NEAR(j["loss"].get<double>(), want, 1e-5 * want);
}

// ---------------------------------------------------------------------------------------------
// 2. init, info, generate
// ---------------------------------------------------------------------------------------------

// Parameter counts from the dimensions, written out here rather than taken from ModelConfig.
int64_t expected_total(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  const int64_t attn = H * H * 2 + 2 * H * int64_t(c.num_kv_heads) * c.head_dim;
  const int64_t ffn = E ? E * 3 * H * I + E * H : 3 * H * I;
  return 2 * V * H + H + c.num_layers * (attn + ffn + 2 * H);
}
int64_t expected_active(const ModelConfig& c) {
  // Per token: one embedding row, the whole LM head, attention, the router and top-k experts.
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  const int64_t attn = H * H * 2 + 2 * H * int64_t(c.num_kv_heads) * c.head_dim;
  const int64_t ffn = E ? c.top_k * 3 * H * I + E * H : 3 * H * I;
  return V * H + H + H + c.num_layers * (attn + ffn + 2 * H);
}

// Reads an all-F32 model directory's weights in ParamLayout order.
std::vector<double> read_params(const std::string& dir, const ModelConfig& c) {
  sky::SafetensorsReader r = sky::SafetensorsReader::open(dir);
  sky::ParamLayout layout = sky::ParamLayout::build(c);
  std::vector<double> p(layout.total);
  for (auto& s : layout.specs) {
    sky::Tensor t = r.get_checked(s.name, s.shape).to_f32();
    for (size_t i = 0; i < s.numel(); i++) p[s.offset + i] = t.f32()[i];
  }
  return p;
}

std::vector<int> ids_of(const json& j) { return j.get<std::vector<int>>(); }

TEST_F(Cli, InitInfoAndGreedyGenerateMatchReference) {
  const std::string dir = path("tiny");
  RunResult init = run({"init", "--preset", "tiny", "--out", dir, "--seed", "3"});
  ASSERT_EQ(init.code, 0) << init.describe();

  // The preset's dimensions: skywork_moe, vocab 256, hidden 64, 2 layers, 4 heads (2 KV), 4 experts
  // of width 96, top-2.
  ModelConfig c = base_cfg("skywork_moe", 4, 2, 4, 2);
  c.vocab_size = 256;
  c.hidden_size = 64;
  c.head_dim = 16;
  c.intermediate_size = c.moe_intermediate_size = 96;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.logits_norm = true;
  c.gate_norm_std = 1.0;
  const int64_t total = expected_total(c), active = expected_active(c);

  json info = run_json({"info", dir, "--json", "--tensors"});
  EXPECT_EQ(info["params_total"].get<int64_t>(), total);
  EXPECT_EQ(info["params_active"].get<int64_t>(), active);
  EXPECT_EQ(info["bytes_by_dtype"]["F32"].get<int64_t>(), 4 * total);  // what is on disk, all F32
  int64_t numel = 0;
  for (auto& t : info["tensors"]) {
    int64_t n = 1;
    for (auto d : t["shape"]) n *= d.get<int64_t>();
    numel += n;
  }
  EXPECT_EQ(numel, total);
  EXPECT_EQ(info["config"]["num_experts"], json::array({4}));
  RunResult human = run({"info", dir});
  ASSERT_EQ(human.code, 0) << human.describe();
  char line[128];
  std::snprintf(line, sizeof line, "%.2fM total, %.2fM active per token", total / 1e6, active / 1e6);
  EXPECT_NE(human.out.find(line), std::string::npos) << human.out;

  // Greedy generation: 8 ids, deterministic, and the argmax chain of the float64 reference.
  const std::vector<std::string> gen = {"generate", "--model", dir, "--prompt-ids", "1,5,9", "--max-tokens", "8",
                                        "--json"};
  json g1 = run_json(gen), g2 = run_json(gen);
  auto ids = ids_of(g1["generated_ids"]);
  ASSERT_EQ(ids.size(), 8u);
  for (int t : ids) EXPECT_TRUE(t >= 0 && t < c.vocab_size) << t;
  EXPECT_EQ(g1, g2);
  EXPECT_EQ(ids_of(g1["prompt_ids"]), (std::vector<int>{1, 5, 9}));

  const std::vector<double> P = read_params(dir, c);
  std::vector<int32_t> seq = {1, 5, 9};
  for (int step = 0; step < 8; step++) {
    auto ref = skytest::ref_forward(c, P, seq, 1, int(seq.size()));
    const double* last = ref.logits.data() + (seq.size() - 1) * c.vocab_size;
    int best = 0, second = -1;
    for (int v = 1; v < c.vocab_size; v++) {
      if (last[v] > last[best]) { second = best; best = v; }
      else if (second < 0 || last[v] > last[second]) second = v;
    }
    // An f32 engine may legitimately break a near-tie the other way; past one, stop comparing.
    if (last[best] - last[second] < 1e-4) {
      GTEST_LOG_(INFO) << "near-tie at step " << step << "; compared the first " << step << " tokens";
      break;
    }
    ASSERT_EQ(ids[step], best) << "step " << step;
    seq.push_back(best);
  }

  // Sampling: the same seed gives the same tokens; another seed other tokens.
  auto sample = [&](const char* seed) {
    return run_json({"generate", "--model", dir, "--prompt-ids", "1,5,9", "--max-tokens", "8", "--temperature", "0.8",
                     "--seed", seed, "--json"})["generated_ids"];
  };
  json s1 = sample("1");
  EXPECT_EQ(s1, sample("1"));
  EXPECT_NE(s1, sample("2"));
  for (int t : ids_of(s1)) EXPECT_TRUE(t >= 0 && t < c.vocab_size) << t;
}

// ---------------------------------------------------------------------------------------------
// 3. upcycle keeps the function (experts are exact copies, noise off)
// ---------------------------------------------------------------------------------------------

// A prompt shorter than the 16 tokens batch-1 decode starts from once read past its end.
TEST_F(Cli, BenchInferWithAShortPrompt) {
  json j = run_json({"bench", "infer", "--preset", "tiny", "--prompt", "4", "--decode", "2", "--batches", "2",
                     "--batch-steps", "1", "--threads", "1", "--json"});
  EXPECT_EQ(j["prefill_tokens"], 4);
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["batched_tokens_per_s"]["2"].get<double>(), 0.0);
}

TEST_F(Cli, UpcycledModelHasTheDenseLoss) {
  ASSERT_EQ(run({"init", "--preset", "tiny-dense", "--out", path("dense"), "--seed", "5"}).code, 0);
  RunResult up = run({"upcycle", "--from", path("dense"), "--out", path("moe"), "--experts", "4", "--top-k", "2",
                      "--seed", "7"});
  ASSERT_EQ(up.code, 0) << up.describe();
  json info = run_json({"info", path("moe"), "--json"});
  EXPECT_EQ(info["config"]["model_type"], "skywork_moe");
  EXPECT_EQ(info["config"]["num_experts"], json::array({4}));

  write_tokens(path("t.bin"), 2 * 2 * 16 + 1, 256, 9);
  auto loss = [&](const std::string& m) {
    return run_json({"eval", "--model", m, "--data", path("t.bin"), "--seq-len", "16", "--batch-size", "2", "--json"})
        ["loss"].get<double>();
  };
  const double dense = loss(path("dense")), moe = loss(path("moe"));
  EXPECT_NEAR(moe, dense, 1e-5 * dense);
}

// A config.json that mixes dense and MoE layers with their own widths and ties the embeddings
// (DeepSeek's first_k_dense_replace, moe_intermediate_size) runs through every command.
TEST_F(Cli, MixedLayersAndTiedEmbeddingsThroughEveryCommand) {
  json j = mixtral_json();
  j["num_hidden_layers"] = 3;
  j["first_k_dense_replace"] = 1;
  j["intermediate_size"] = 40;
  j["moe_intermediate_size"] = 16;
  j["tie_word_embeddings"] = true;
  const ModelConfig c = ModelConfig::from_hf_json(j, "mixed");
  Written w = write_model_dir(path("mixed"), c, j, 21, all_f32);
  check_eval(path("mixed"), c, w.params, 2, 6, 2);

  json info = run_json({"info", path("mixed"), "--json", "--tensors"});
  EXPECT_EQ(info["params_total"].get<int64_t>(), c.param_count());
  RunResult text = run({"info", path("mixed")});
  EXPECT_NE(text.out.find("dense layers 0 (width 40); 2 MoE layers: 4 experts of width 16"), std::string::npos)
      << text.describe();
  EXPECT_NE(text.out.find("tied embeddings"), std::string::npos) << text.describe();

  write_tokens(path("t.bin"), 4000, c.vocab_size, 5);
  RunResult tr = run({"train", "--config", path("mixed/config.json"), "--data", path("t.bin"), "--seq-len", "8",
                      "--batch-size", "2", "--steps", "3", "--capacity-factor", "1.0", "--out", path("run"),
                      "--quiet"});
  ASSERT_EQ(tr.code, 0) << tr.describe();
  const std::string ckpt = path("run/step-00000003");
  EXPECT_FALSE(fs::exists(ckpt + "/lm_head.weight"));
  json cfg = json::parse(std::ifstream(ckpt + "/config.json"));
  EXPECT_EQ(cfg["first_k_dense_replace"], 1);
  EXPECT_EQ(cfg["moe_intermediate_size"], 16);
  EXPECT_EQ(cfg["tie_word_embeddings"], true);
  json gen = run_json({"generate", "--model", ckpt, "--prompt-ids", "1,2,3", "--max-tokens", "4", "--json"});
  EXPECT_EQ(gen["generated_ids"].size(), 4u) << gen.dump();
  RunResult q = run({"quantize", "--model", ckpt, "--to", "fp8", "--out", path("fp8")});
  ASSERT_EQ(q.code, 0) << q.describe();
  json gen8 = run_json({"generate", "--model", path("fp8"), "--prompt-ids", "1,2,3", "--max-tokens", "4", "--json"});
  EXPECT_EQ(gen8["generated_ids"].size(), 4u) << gen8.dump();
  // GGUF's llama architecture has no per-layer FFN kind: a clear refusal, not a wrong file.
  RunResult g = run({"export", "gguf", "--model", ckpt, "--out", path("m.gguf"), "--no-tokenizer"});
  EXPECT_NE(g.code, 0);
  EXPECT_NE(g.err.find("GGUF export"), std::string::npos) << g.describe();
}

// A Granite-MoE checkpoint transformers made (tests/data/hf/granitemoe: stacked experts, tied
// embeddings, every multiplier away from 1) through the commands: eval gives transformers' loss,
// generate its greedy tokens; train writes a checkpoint in Granite's own layout (stacked experts,
// no lm_head, the multipliers in config.json) that generates and quantizes; GGUF export reads back
// with the same tokens; tensor parallelism refuses, naming the family.
TEST_F(Cli, GraniteMoeThroughEveryCommand) {
  const std::string hf = std::string(SKYMOE_TEST_DATA) + "/hf/granitemoe";
  const sky::SafetensorsReader ref = sky::SafetensorsReader::open(hf + "/reference.safetensors");
  auto ints = [&](const std::string& name) {
    sky::Tensor t = ref.get(name).to_f32();
    return std::vector<int>(t.f32(), t.f32() + t.numel());
  };
  const std::vector<int> ids = ints("ids"), greedy = ints("greedy");
  const double loss = ref.get("loss").to_f32().f32()[0];
  sky::write_token_file(path("ids.bin"), std::vector<uint32_t>(ids.begin(), ids.end()));

  json info = run_json({"info", hf, "--json", "--tensors"});
  EXPECT_EQ(info["config"]["model_type"], "granitemoe");
  EXPECT_EQ(info["params_total"].get<int64_t>(), ModelConfig::load_file(hf).param_count());
  json ev = run_json({"eval", "--model", hf, "--data", path("ids.bin"), "--seq-len", std::to_string(ids.size() - 1),
                      "--json"});
  EXPECT_NEAR(ev["loss"].get<double>(), loss, 1e-4 * loss) << ev.dump();
  std::string prompt;
  for (int i = 0; i < 6; i++) prompt += (i ? "," : "") + std::to_string(ids[i]);
  json gen = run_json({"generate", "--model", hf, "--prompt-ids", prompt, "--max-tokens",
                       std::to_string(greedy.size()), "--json"});
  EXPECT_EQ(gen["generated_ids"].get<std::vector<int>>(), greedy) << gen.dump();

  write_tokens(path("t.bin"), 2000, ModelConfig::load_file(hf).vocab_size, 5);
  RunResult tr = run({"train", "--model", hf, "--data", path("t.bin"), "--seq-len", "8", "--batch-size", "2",
                      "--steps", "2", "--out", path("run"), "--quiet"});
  ASSERT_EQ(tr.code, 0) << tr.describe();
  const std::string ckpt = path("run/step-00000002");
  const sky::SafetensorsReader saved = sky::SafetensorsReader::open(ckpt);
  EXPECT_EQ(saved.names(), sky::SafetensorsReader::open(hf).names());
  EXPECT_EQ(saved.info("model.layers.1.block_sparse_moe.input_linear.weight").shape, (sky::Shape{8, 24, 32}));
  json cfg = json::parse(std::ifstream(ckpt + "/config.json"));
  EXPECT_EQ(cfg["model_type"], "granitemoe");
  EXPECT_EQ(cfg["embedding_multiplier"], 0.5);
  EXPECT_EQ(cfg["attention_multiplier"], 0.25);
  EXPECT_EQ(cfg["residual_multiplier"], 1.5);
  EXPECT_EQ(cfg["logits_scaling"], 2.5);
  json gen2 = run_json({"generate", "--model", ckpt, "--prompt-ids", prompt, "--max-tokens", "4", "--json"});
  EXPECT_EQ(gen2["generated_ids"].size(), 4u) << gen2.dump();
  RunResult q = run({"quantize", "--model", ckpt, "--to", "fp8", "--out", path("fp8")});
  ASSERT_EQ(q.code, 0) << q.describe();
  EXPECT_EQ(sky::SafetensorsReader::open(path("fp8")).info("model.layers.0.block_sparse_moe.output_linear.weight").dtype,
            DType::F8_E4M3);
  json gen8 = run_json({"generate", "--model", path("fp8"), "--prompt-ids", prompt, "--max-tokens", "4", "--json"});
  EXPECT_EQ(gen8["generated_ids"].size(), 4u) << gen8.dump();

  // Exported as llama.cpp's granitemoe and read back: transformers' greedy tokens.
  RunResult g = run({"export", "gguf", "--model", hf, "--out", path("m.gguf"), "--no-tokenizer", "--type", "f32"});
  ASSERT_EQ(g.code, 0) << g.describe();
  json gg = run_json({"generate", "--model", path("m.gguf"), "--prompt-ids", prompt, "--max-tokens",
                      std::to_string(greedy.size()), "--json"});
  EXPECT_EQ(gg["generated_ids"].get<std::vector<int>>(), greedy) << gg.dump();
  RunResult p = run({"plan", "--config", hf, "--devices", "8", "--tp", "2", "--global-batch", "16", "--seq-len", "64",
                     "--tflops", "100"});
  EXPECT_NE(p.code, 0);
  EXPECT_NE(p.err.find("granitemoe"), std::string::npos) << p.describe();
}

// DeepSeek-V3 (multi-head latent attention, shared experts, a dense first layer, V3's router)
// through every command: a fixture transformers made, a training run from its config, the
// checkpoint generating, quantized, exported to GGUF and read back; the planner states the latent cache.
TEST_F(Cli, DeepseekThroughEveryCommand) {
  const std::string fx = std::string(SKYMOE_TEST_DATA) + "/hf/deepseek_v3";
  const ModelConfig c = ModelConfig::load_file(fx);
  RunResult text = run({"info", fx});
  ASSERT_EQ(text.code, 0) << text.describe();
  EXPECT_NE(text.out.find("multi-head latent"), std::string::npos) << text.describe();
  EXPECT_NE(text.out.find("noaux_tc"), std::string::npos) << text.describe();
  write_tokens(path("t.bin"), 4000, c.vocab_size, 5);
  json ev = run_json({"eval", "--model", fx, "--data", path("t.bin"), "--seq-len", "8", "--batch-size", "2", "--json"});
  EXPECT_GT(ev["loss"].get<double>(), 0.0);
  RunResult tr = run({"train", "--config", fx + "/config.json", "--data", path("t.bin"), "--seq-len", "8",
                      "--batch-size", "2", "--steps", "3", "--out", path("run"), "--quiet"});
  ASSERT_EQ(tr.code, 0) << tr.describe();
  const std::string ckpt = path("run/step-00000003");
  json cfg = json::parse(std::ifstream(ckpt + "/config.json"));
  EXPECT_EQ(cfg["model_type"], "deepseek_v3");
  EXPECT_EQ(cfg["kv_lora_rank"], c.kv_lora_rank);
  json gen = run_json({"generate", "--model", ckpt, "--prompt-ids", "1,2,3", "--max-tokens", "4", "--json"});
  EXPECT_EQ(gen["generated_ids"].size(), 4u) << gen.dump();
  RunResult q = run({"quantize", "--model", ckpt, "--to", "fp8", "--out", path("fp8")});
  ASSERT_EQ(q.code, 0) << q.describe();
  json gen8 = run_json({"generate", "--model", path("fp8"), "--prompt-ids", "1,2,3", "--max-tokens", "4", "--json"});
  EXPECT_EQ(gen8["generated_ids"].size(), 4u) << gen8.dump();
  // Exported as llama.cpp's deepseek2 and read back: the same greedy tokens.
  RunResult g = run({"export", "gguf", "--model", ckpt, "--out", path("m.gguf"), "--no-tokenizer", "--type", "f32"});
  ASSERT_EQ(g.code, 0) << g.describe();
  json gg = run_json({"generate", "--model", path("m.gguf"), "--prompt-ids", "1,2,3", "--max-tokens", "4", "--json"});
  EXPECT_EQ(gg["generated_ids"], gen["generated_ids"]) << gg.dump();
  json plan = run_json({"plan", "--inference", "--config", fx + "/config.json", "--tp", "1", "--json"});
  EXPECT_EQ(plan["split"]["ranks"][0]["kv_bytes_per_token"].get<double>(),
            4.0 * c.num_layers * (c.kv_lora_rank + c.qk_rope_dim))
      << plan.dump();
}

// ---------------------------------------------------------------------------------------------
// 4. bad input: clean failures that say what is wrong
// ---------------------------------------------------------------------------------------------

std::string read_bytes(const std::string& p) { return slurp(p); }
void write_bytes(const std::string& p, const std::string& b) { std::ofstream(p, std::ios::binary) << b; }

// Rewrites a safetensors header in place (data section unchanged; offsets are relative to it).
void edit_header(const std::string& file, const std::function<void(json&)>& edit) {
  std::string b = read_bytes(file);
  uint64_t n = 0;
  std::memcpy(&n, b.data(), 8);
  json h = json::parse(b.substr(8, n));
  edit(h);
  std::string text = h.dump();
  uint64_t m = text.size();
  std::string out(reinterpret_cast<const char*>(&m), 8);
  write_bytes(file, out + text + b.substr(8 + n));
}

class CliBadInput : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
    cfg_ = llama_cfg();
    model_ = path("m");
    write_model_dir(model_, cfg_, llama_json(), 21, all_f32);
    data_ = path("t.bin");
    write_tokens(data_, 40, cfg_.vocab_size, 3);
    st_ = model_ + "/model.safetensors";
  }
  // eval with everything valid except what the test broke; `set` replaces or adds flags.
  std::vector<std::string> eval(const std::map<std::string, std::string>& set = {}) const {
    std::map<std::string, std::string> flags = {
        {"--model", model_}, {"--data", data_}, {"--seq-len", "4"}, {"--batch-size", "2"}};
    for (auto& [k, v] : set) flags[k] = v;
    std::vector<std::string> a = {"eval"};
    for (auto& [k, v] : flags) a.insert(a.end(), {k, v});
    return a;
  }
  void set_config(const std::function<void(json&)>& edit) {
    json j = llama_json();
    edit(j);
    std::ofstream(model_ + "/config.json") << j.dump();
  }
  ModelConfig cfg_;
  std::string model_, data_, st_;
};

TEST_F(CliBadInput, TruncatedSafetensors) {
  std::string b = read_bytes(st_);
  write_bytes(st_, b.substr(0, b.size() / 2));
  expect_clean_failure(eval(), {"model.safetensors", "data_offsets", "past the data section"});
}

TEST_F(CliBadInput, CorruptHeaderLength) {
  std::string b = read_bytes(st_);
  const uint64_t huge = 0x7fffffffffffull;
  std::memcpy(b.data(), &huge, 8);
  write_bytes(st_, b);
  expect_clean_failure(eval(), {"model.safetensors", "header length", std::to_string(huge)});
  // A length that fits the limit but not the file.
  const uint64_t big = b.size();
  std::memcpy(b.data(), &big, 8);
  write_bytes(st_, b);
  expect_clean_failure(eval(), {"model.safetensors", "exceeds the file size"});
}

TEST_F(CliBadInput, OffsetsOutOfRange) {
  edit_header(st_, [](json& h) {
    auto& o = h["model.norm.weight"]["data_offsets"];
    o[1] = o[1].get<uint64_t>() + 1000000;
  });
  expect_clean_failure(eval(), {"model.safetensors", "model.norm.weight", "data_offsets"});
}

TEST_F(CliBadInput, OverlappingTensors) {
  // Two [H] F32 norms made to share bytes.
  edit_header(st_, [](json& h) {
    h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] =
        h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  expect_clean_failure(eval(), {"model.safetensors", "overlap", "model.layers.0.input_layernorm.weight",
                                "model.layers.0.post_attention_layernorm.weight"});
}

TEST_F(CliBadInput, WrongShapeForAName) {
  // q_proj written as [H, H/2] with consistent offsets: a well-formed file, the wrong model.
  ModelConfig c = cfg_;
  sky::ParamLayout L = sky::ParamLayout::build(c);
  sky::NamedTensors ts;
  for (auto& s : L.specs) {
    sky::Shape shape = s.name == "model.layers.1.self_attn.q_proj.weight" ? sky::Shape{32, 16} : s.shape;
    ts.emplace_back(s.name, sky::Tensor::zeros(DType::F32, shape));
  }
  sky::write_safetensors(st_, ts);
  expect_clean_failure(eval(), {"model.layers.1.self_attn.q_proj.weight", "[32, 32]", "[32, 16]"});
}

TEST_F(CliBadInput, WrongDtypeForAName) {
  sky::ParamLayout L = sky::ParamLayout::build(cfg_);
  sky::NamedTensors ts;
  for (auto& s : L.specs)
    ts.emplace_back(s.name, sky::Tensor::zeros(s.name == "lm_head.weight" ? DType::I64 : DType::F32, s.shape));
  sky::write_safetensors(st_, ts);
  expect_clean_failure(eval(), {"lm_head.weight", "I64"});
}

TEST_F(CliBadInput, MissingTensor) {
  sky::ParamLayout L = sky::ParamLayout::build(cfg_);
  sky::NamedTensors ts;
  for (auto& s : L.specs)
    if (s.name != "model.layers.1.mlp.down_proj.weight") ts.emplace_back(s.name, sky::Tensor::zeros(DType::F32, s.shape));
  sky::write_safetensors(st_, ts);
  expect_clean_failure(eval(), {"missing tensor", "model.layers.1.mlp.down_proj.weight"});
}

TEST_F(CliBadInput, ShardMissingFromIndex) {
  ModelConfig c = skywork_cfg();
  write_model_dir(path("sh"), c, skywork_json(), 22, all_f32, 2);
  fs::remove(path("sh/model-00002-of-00002.safetensors"));
  expect_clean_failure(eval({{"--model", path("sh")}}), {"model-00002-of-00002.safetensors"});
}

TEST_F(CliBadInput, ConfigMissingField) {
  set_config([](json& j) { j.erase("hidden_size"); });
  expect_clean_failure(eval(), {"config.json", "missing field 'hidden_size'"});
}

TEST_F(CliBadInput, ConfigNegativeValue) {
  set_config([](json& j) { j["num_hidden_layers"] = -2; });
  expect_clean_failure(eval(), {"config.json", "num_hidden_layers", "-2"});
}

TEST_F(CliBadInput, ConfigHeadsDoNotDivideHidden) {
  set_config([](json& j) { j["num_attention_heads"] = 5; j["num_key_value_heads"] = 5; });
  expect_clean_failure(eval(), {"config.json", "hidden_size 32", "num_attention_heads 5"});
}

TEST_F(CliBadInput, ConfigTopKAboveExperts) {
  ModelConfig c = mixtral_cfg();
  write_model_dir(path("mx"), c, mixtral_json(), 23, all_f32);
  json j = mixtral_json();
  j["num_experts_per_tok"] = 5;
  std::ofstream(path("mx/config.json")) << j.dump();
  expect_clean_failure(eval({{"--model", path("mx")}}), {"config.json", "top-k 5", "experts 4"});
}

TEST_F(CliBadInput, ConfigMalformedJson) {
  write_bytes(model_ + "/config.json", "{\"model_type\": \"llama\", \"vocab_size\": 61,");
  expect_clean_failure(eval(), {"config.json", "not valid JSON"});
}

TEST_F(CliBadInput, TokenIdAtOrAboveVocab) {
  std::vector<uint32_t> t(40, 1);
  t[17] = uint32_t(cfg_.vocab_size);  // 61: one past the last id
  sky::write_token_file(data_, t);
  expect_clean_failure(eval(), {data_, "index 17", "61"});
}

TEST_F(CliBadInput, TokenFileNotWholeUint32s) {
  write_bytes(data_, std::string(4 * 20 + 3, '\0'));
  expect_clean_failure(eval(), {data_, "83 bytes", "multiple of 4"});
}

TEST_F(CliBadInput, MissingOrUnreadablePaths) {
  expect_clean_failure(eval({{"--model", path("no-such-model")}}), {"no-such-model"});
  expect_clean_failure(eval({{"--data", path("no-such-data.bin")}}), {"no-such-data.bin"});
  // A directory is not readable as a token file; a file is not a model directory. (Permission bits
  // would not stop root, so these stand in for "unreadable".)
  expect_clean_failure(eval({{"--data", dir_}}), {dir_, "not a regular file"});
  expect_clean_failure(eval({{"--model", data_}}), {data_});
  expect_clean_failure({"info", path("nowhere")}, {"nowhere"});
}

TEST_F(CliBadInput, BadCliValues) {
  expect_clean_failure(eval({{"--seq-len", "0"}}), {"--seq-len: must be a positive integer, got '0'"});
  expect_clean_failure(eval({{"--batch-size", "-1"}}), {"--batch-size: must be a positive integer, got '-1'"});
  expect_clean_failure(eval({{"--seq-len", "abc"}}), {"--seq-len: must be a positive integer, got 'abc'"});
  expect_clean_failure(eval({{"--batches", "-2"}}), {"--batches: must be a non-negative integer, got '-2'"});
  expect_clean_failure(eval({{"--batches", "100"}}), {"--batches 100", data_, "only 4 full batches"});
  expect_clean_failure(eval({{"--seq-len", "65"}}), {"--seq-len 65", "max_position_embeddings 64"});
  // 40 tokens hold no 4x16 batch (65 needed): the error says so rather than evaluating nothing.
  expect_clean_failure(eval({{"--batch-size", "4"}, {"--seq-len", "16"}}), {data_, "40 tokens", "65"});
  auto gen = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"generate", "--model", model_};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_clean_failure(gen({"--prompt-ids", "1,x"}), {"--prompt-ids", "'x'"});
  expect_clean_failure(gen({"--prompt-ids", "1,,2"}), {"--prompt-ids", "''"});
  expect_clean_failure(gen({"--prompt-ids", "1,61"}), {"--prompt-ids", "61"});
  expect_clean_failure(gen({"--prompt-ids", "1", "--top-p", "2"}), {"top-p", "2"});
  expect_clean_failure(gen({"--prompt-ids", "1", "--temperature", "-1"}), {"temperature", "-1"});
  expect_clean_failure(gen({"--prompt-ids", "1", "--max-tokens", "-3"}), {"--max-tokens: must be a positive integer, got '-3'"});
  expect_clean_failure(gen({"--prompt-ids", "1", "--max-tokens", "100"}), {"--max-tokens (100)", "max_position_embeddings"});
  expect_clean_failure(gen({"--max-tokens", "2"}), {"--prompt-ids"});  // required flag missing
  expect_clean_failure({"eval", "--model", model_, "--seq-len", "4"}, {"--data"});
  expect_clean_failure({"frobnicate"}, {"unknown command 'frobnicate'"});
  expect_clean_failure({"init", "--preset", "huge", "--out", path("x")}, {"huge"});
  expect_clean_failure({"init", "--preset", "tiny", "--out", path("x"), "--dtype", "F8_E4M3"}, {"--dtype", "F8_E4M3"});
  expect_clean_failure({"init", "--preset", "tiny", "--out", path("x"), "--shard-gb", "0"},
                       {"--shard-gb: must be a positive number, got '0'"});
}

// Every subcommand answers --help with exit 0 (and the bare binary with a usage text).
TEST(CliHelp, EverySubcommandHasHelp) {
  for (const char* c : {"init", "info", "eval", "generate", "upcycle", "train"}) {
    RunResult r = run({c, "--help"});
    EXPECT_EQ(r.code, 0) << c << "\n" << r.describe();
    EXPECT_NE(r.out.find("skymoe " + std::string(c)), std::string::npos) << r.out;
  }
  RunResult r = run({});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("usage: skymoe"), std::string::npos);
}

}  // namespace
