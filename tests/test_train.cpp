// Training checks:
//  1. backward() of whole models against central finite differences of the float64 reference objective;
//  2. a 5-step train() run against a float64 re-implementation of the whole training step;
//  3. bit-for-bit resume, and a killed run never leaving a corrupt `latest`;
//  4. the upcycling invariants (coarse and fine-grained); 5. Skywork's adaptive aux-loss coefficients
//  (eq. 7-8) and auxiliary-loss-free balancing; 6. the errors a user can provoke, through the
//  library and through the CLI.
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>
#include <nlohmann/json.hpp>

#include "backend/cpu/matmul.h"  // the CPU backend's bf16 GEMM switch
#include "core/error.h"
#include "core/rng.h"
#include "io/checkpoint.h"
#include "io/token_data.h"
#include "model/transformer.h"
#include "moe/adaptive_alpha.h"
#include "moe/balance.h"
#include "moe/upcycle.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "model_ref.h"
#include "ref.h"

using namespace sky;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// MoE with GQA (6 query heads on 2 KV heads), logit normalization with lambda != 1, 5 experts top-2.
ModelConfig tiny_moe() {
  ModelConfig c = ModelConfig::preset("tiny");
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.intermediate_size = c.moe_intermediate_size = 10;
  c.num_experts = 5;
  c.top_k = 2;
  c.logits_norm = true;
  c.gate_norm_std = 1.3;
  c.rope_theta = 500.0;
  return c;
}

ModelConfig tiny_dense() {
  ModelConfig c = tiny_moe();
  c.model_type = "llama";
  c.num_experts = 0;
  c.logits_norm = false;
  return c;
}

// Small enough for finite differences over every parameter (~1.7k) at every step of a training run.
ModelConfig micro_moe() {
  ModelConfig c = ModelConfig::preset("tiny");  // skywork_moe, 2 layers
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.num_heads = 2;
  c.num_kv_heads = 1;  // GQA
  c.head_dim = 4;
  c.intermediate_size = c.moe_intermediate_size = 6;
  c.num_experts = 4;
  c.top_k = 2;
  c.logits_norm = true;
  c.gate_norm_std = 1.0;
  c.max_position_embeddings = 64;
  return c;
}

// Random params at a larger scale than init (matrices N(0, scale), norms 1 + 0.2 N(0, 1)) so that
// router, experts and attention all shape the loss and gradients are well above float32 noise.
Model random_model(const ModelConfig& c, uint64_t seed, double scale = 0.3) {
  Model m = Model::random(c, seed);
  auto r = skytest::randn(m.layout.total, seed + 99, scale);
  for (auto& s : m.layout.specs)
    for (size_t i = 0; i < s.numel(); i++)
      m.params[s.offset + i] =
          s.shape.size() == 1 ? float(1.0 + 0.2 * r[s.offset + i] / scale) : float(r[s.offset + i]);
  return m;
}

std::vector<double> params_f64(const Model& m) {
  return std::vector<double>(m.params.data(), m.params.data() + m.layout.total);
}

std::vector<uint32_t> random_tokens(size_t n, int V, uint64_t seed) {
  Rng r(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = uint32_t(r.below(V));
  return t;
}

// Random tokens cut into rows of S (batches of B rows) that never give two tokens the same hidden
// state: no token repeats its predecessor, and the B rows of a batch start with different tokens.
// (A sequence opening "a a ..." gives positions 0 and 1 identical states -- attention then averages
// equal values -- and so do equal first tokens of two rows. Their router probabilities tie exactly,
// and which one a full expert drops is decided by rounding noise, differently in float32 and
// float64; a reference comparison is meaningless there, and finite differences jump.)
std::vector<uint32_t> tie_free_tokens(size_t n, int V, int B, int S, uint64_t seed) {
  Rng r(seed);
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; i++) {
    bool ok;
    do {
      t[i] = uint32_t(r.below(V));
      ok = i == 0 || t[i] != t[i - 1];
      if (i % S == 0)
        for (size_t j = 1; j <= (i / S) % B; j++) ok = ok && t[i] != t[i - j * S];
    } while (!ok);
  }
  return t;
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

using skytest::error_of;

// Runs the CLI binary; returns its exit status and everything it printed (stdout and stderr).
struct CliResult {
  int rc = -1;
  std::string out;
};
CliResult run_cli(const std::string& args) {
  const std::string cmd = std::string(SKYMOE_BIN) + " " + args + " 2>&1";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. Whole-model gradient check.
//
// The engine (float32) differentiates mean CE + sum_l alpha_l aux_l + z * sum_l zloss_l; the
// reference evaluates the same objective in float64 at the same (float-valued) parameters, so
// central differences with h = 1e-5 are accurate to ~1e-9, far below the float32 error of the
// engine's gradient (~1e-6 relative). Tolerance: |engine - fd| <= 1e-3 |fd| + 1e-6 -- the absolute
// part covers entries whose gradient is ~0, where float32 rounding of O(1) intermediates dominates.

static void check_model_gradients(const ModelConfig& c, int B, int T, double cf, const std::vector<double>& alpha,
                                  double z, uint64_t seed) {
  Model m = random_model(c, seed);
  auto toks = tie_free_tokens(size_t(B) * T + 1, c.vocab_size, B, T, seed + 1);
  std::vector<int32_t> in(toks.begin(), toks.end() - 1), tgt(toks.begin() + 1, toks.end());
  const MoeOptions moe = moe_options(c, cf, DropPolicy::Prob, AuxLossType::Skywork);
  Activations A;
  double engine_total = forward(m, A, in.data(), tgt.data(), B, T, moe);
  for (int l = 0; l < c.num_layers; l++) {
    if (!c.layer_is_moe(l)) continue;
    ASSERT_GT(A.layers[l].moe.disp.drop_rate(), 0.0) << "capacity dropping should be active in layer " << l;
    engine_total += alpha[l] * A.layers[l].moe.aux_loss + z * A.layers[l].moe.z_loss;
  }
  std::vector<float> g(m.layout.total, 0.0f);
  backward(m, A, g.data(), moe, LossWeights{alpha, z}, 1.0);

  auto P = params_f64(m);
  auto objective = [&] { return skytest::ref_objective(c, P, in, tgt, B, T, cf, alpha, z); };
  // Same function on both sides (the z-loss term included), before comparing its derivatives.
  ASSERT_NEAR(engine_total, objective(), 1e-5 * std::fabs(engine_total));

  Rng pick(seed + 2);
  int checked = 0;
  for (const ParamSpec& s : m.layout.specs) {
    std::vector<size_t> idx = {0, s.numel() - 1};
    for (int j = 0; j < 4; j++) idx.push_back(pick.below(s.numel()));
    for (size_t i : idx) {
      const size_t o = s.offset + i;
      const double fd = skytest::numeric_grad(objective, &P[o], 1, 1e-5)[0];
      EXPECT_NEAR(g[o], fd, 1e-3 * std::fabs(fd) + 1e-6) << s.name << "[" << i << "]";
      checked++;
    }
  }
  EXPECT_GE(checked, 6 * int(m.layout.specs.size()));
}

TEST(GradCheck, MoeModelMatchesFiniteDifferences) {
  // Logit norm on, GQA, capacity 0.6 (drops ~30% of assignments), per-layer alphas of different size,
  // z-loss on. The alphas are larger than in training so the aux gradient is not lost in the CE one.
  check_model_gradients(tiny_moe(), 2, 7, 0.6, {0.3, 0.7}, 0.05, 1);
}

TEST(GradCheck, MoeWithoutLogitNormMatchesFiniteDifferences) {
  ModelConfig c = tiny_moe();
  c.logits_norm = false;
  check_model_gradients(c, 2, 6, 0.7, {0.5, 0.2}, 0.02, 2);
}

TEST(GradCheck, MixedLayersAndTiedEmbeddingsMatchFiniteDifferences) {
  // Layer 0 dense (width 7), layers 1-2 MoE (width 5), tied embeddings: the embedding's gradient
  // gets both the lookup's and the LM head's part. alpha[0] belongs to the dense layer and is unused.
  ModelConfig c = tiny_moe();
  c.num_layers = 3;
  c.first_dense_layers = 1;
  c.intermediate_size = 7;
  c.moe_intermediate_size = 5;
  c.tie_word_embeddings = true;
  check_model_gradients(c, 2, 7, 0.6, {0.9, 0.3, 0.7}, 0.05, 4);
}

TEST(GradCheck, SigmoidRouterWithoutRenormalizationMatchesFiniteDifferences) {
  ModelConfig c = tiny_moe();
  c.router_sigmoid = true;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.5;
  check_model_gradients(c, 2, 6, 0.7, {0.4, 0.6}, 0.03, 5);
}

TEST(GradCheck, DenseModelMatchesFiniteDifferences) { check_model_gradients(tiny_dense(), 2, 7, 0.0, {}, 0.0, 3); }

// ---------------------------------------------------------------------------------------------
// 2. Training acceptance: train() against a float64 re-implementation of every piece of a step.

namespace {

// LR schedule (train/schedule.h): linear warm-up from lr/warmup at step 1 to lr at step `warmup`,
// then cosine from lr to min_ratio * lr at the last step.
double ref_lr(double lr, int64_t warmup, int64_t total, double min_ratio, int64_t step) {
  if (step <= warmup) return lr * double(step) / double(warmup);
  const double progress = double(step - warmup) / double(total - warmup), lo = lr * min_ratio;
  return lo + 0.5 * (lr - lo) * (1.0 + std::cos(M_PI * progress));
}

// Sequential batch k (token_data.h): B rows of S tokens starting at k*B*S, targets shifted by one.
void ref_sequential_batch(const std::vector<uint32_t>& toks, int B, int S, uint64_t k, std::vector<int32_t>& in,
                          std::vector<int32_t>& tgt) {
  in.resize(size_t(B) * S);
  tgt.resize(size_t(B) * S);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < S; t++) {
      const size_t src = k * B * S + size_t(b) * S + t;
      in[size_t(b) * S + t] = int32_t(toks[src]);
      tgt[size_t(b) * S + t] = int32_t(toks[src + 1]);
    }
}

}  // namespace

TEST(Train, FiveStepsMatchFloat64Reference) {
  const ModelConfig c = micro_moe();
  const int B = 2, S = 5, accum = 2, steps = 5, L = c.num_layers;
  const std::string dir = skytest::temp_dir("train-ref");

  // An HF-layout Skywork-MoE directory, sharded into several safetensors files.
  Model m0 = random_model(c, 21);
  m0.save(dir + "/model", DType::F32, 2048);
  ASSERT_TRUE(fs::exists(dir + "/model/model.safetensors.index.json"));
  // 7 full sequential batches: the 10 micro-batches of the run wrap into a second epoch.
  const std::vector<uint32_t> toks = tie_free_tokens(7 * B * S + 1, c.vocab_size, B, S, 22);
  write_token_file(dir + "/train.bin", toks);
  const uint64_t batches_per_epoch = 7;

  TrainOptions o;
  o.model_dir = dir + "/model";
  o.data = dir + "/train.bin";
  o.seq_len = S;
  o.batch_size = B;
  o.grad_accum = accum;
  o.steps = steps;
  o.schedule.lr = 1e-2;
  o.schedule.warmup = 2;
  o.schedule.cosine = true;
  o.schedule.min_ratio = 0.1;
  // PyTorch's default eps 1e-8. Adam's step is lr * m / (sqrt(v) + eps), ~lr * sign(g) at step 1, so
  // an entry whose gradient were ~1e-8 would have its step's sign set by float32 rounding; no entry
  // of this model is that small (gradients are exactly 0 or >> 1e-6: the worst final-weight error
  // over 8 seeds tried was 2e-4 lr). If one ever is, raise eps to 1e-6 to make the step continuous.
  o.adam = AdamWOptions{0.9, 0.95, 1e-8, 0.1};
  o.grad_clip = 0.5;  // below the gradient norms of this model: clipping is active (checked below)
  o.aux = AuxLossType::Skywork;
  o.aux_alpha = 0.02;
  o.balance = Balance::AdaptiveAux;
  // Capacity 0.8 keeps at most 16 of 20 assignments per micro-batch, so d >= 0.2 and xi * d >= 0.02:
  // with alpha_max 0.03 some steps clip alpha_hat and some do not; beta 0.6 makes alpha move visibly.
  o.aux_xi = 0.1;
  o.aux_alpha_max = 0.03;
  o.aux_beta = 0.6;
  o.z_loss = 0.01;
  o.capacity_factor = 0.8;
  o.data_order = DataOrder::Sequential;
  o.out_dir = dir + "/run";
  o.log_jsonl = dir + "/log.jsonl";
  o.quiet = true;
  const TrainResult r = train(o);
  ASSERT_EQ(r.log.size(), size_t(steps));

  // The reference run, all in double.
  std::vector<double> p = params_f64(m0);
  const size_t n = p.size();
  std::vector<double> mom(n, 0.0), vel(n, 0.0), alpha(L, o.aux_alpha);
  std::vector<bool> decay(n, false);  // AdamW weight decay: 2-D weights only
  for (const ParamSpec& s : m0.layout.specs)
    for (size_t i = 0; i < s.numel(); i++) decay[s.offset + i] = s.shape.size() == 2;
  int clipped_steps = 0;
  bool alpha_hat_clipped = false, alpha_hat_unclipped = false;
  for (int step = 1; step <= steps; step++) {
    const StepLog& s = r.log[step - 1];
    SCOPED_TRACE("step " + std::to_string(step));
    std::vector<double> grad(n, 0.0), drop(L, 0.0);
    double loss = 0, aux_term = 0, z_term = 0;
    for (int micro = 0; micro < accum; micro++) {
      std::vector<int32_t> in, tgt;
      ref_sequential_batch(toks, B, S, (uint64_t(step - 1) * accum + micro) % batches_per_epoch, in, tgt);
      auto objective = [&] { return skytest::ref_objective(c, p, in, tgt, B, S, o.capacity_factor, alpha, o.z_loss); };
      skytest::RefOut out;
      loss += skytest::ref_objective(c, p, in, tgt, B, S, o.capacity_factor, alpha, o.z_loss, &out) / accum;
      for (int l = 0; l < L; l++) {
        drop[l] += out.drop_rates[l] / accum;
        aux_term += alpha[l] * out.aux[l] / accum;
        z_term += o.z_loss * out.zloss[l] / accum;
      }
      // The gradient of the mean over micro-batches, by central differences over every parameter.
      const std::vector<double> fd = skytest::numeric_grad(objective, p.data(), n, 1e-6);
      for (size_t i = 0; i < n; i++) grad[i] += fd[i] / accum;
    }
    // clip_grad_norm_ as in PyTorch: scale by max_norm / (norm + 1e-6) when that is below 1.
    double norm = 0;
    for (double g : grad) norm += g * g;
    norm = std::sqrt(norm);
    const double coef = o.grad_clip / (norm + 1e-6);
    if (coef < 1) {
      clipped_steps++;
      for (double& g : grad) g *= coef;
    }
    // torch.optim.AdamW: p *= 1 - lr*wd; m, v moving averages; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    const double lr = ref_lr(o.schedule.lr, o.schedule.warmup, steps, o.schedule.min_ratio, step);
    const double b1 = o.adam.beta1, b2 = o.adam.beta2;
    const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
    for (size_t i = 0; i < n; i++) {
      if (decay[i]) p[i] *= 1 - lr * o.adam.weight_decay;
      mom[i] = b1 * mom[i] + (1 - b1) * grad[i];
      vel[i] = b2 * vel[i] + (1 - b2) * grad[i] * grad[i];
      p[i] -= lr / bc1 * mom[i] / (std::sqrt(vel[i]) / std::sqrt(bc2) + o.adam.eps);
    }

    // What the engine logged for this step (alpha: the value the step's loss used).
    EXPECT_EQ(s.step, step);
    EXPECT_NEAR(s.loss, loss, 1e-5 * loss);
    EXPECT_NEAR(s.aux_loss, aux_term, 1e-5 * aux_term);
    EXPECT_NEAR(s.z_loss, z_term, 1e-5 * z_term);
    EXPECT_NEAR(s.lr, lr, 1e-15);
    EXPECT_NEAR(s.grad_norm, norm, 1e-4 * norm);
    for (int l = 0; l < L; l++) {
      EXPECT_NEAR(s.drop_rate[l], drop[l], 1e-12) << "layer " << l;
      EXPECT_NEAR(s.alpha[l], alpha[l], 1e-12) << "layer " << l;
    }
    // Eq. 7-8 with this step's drop rates; the next step uses the result.
    for (int l = 0; l < L; l++) {
      double hat = o.aux_xi * drop[l];
      (hat > o.aux_alpha_max ? alpha_hat_clipped : alpha_hat_unclipped) = true;
      hat = std::min(hat, o.aux_alpha_max);
      alpha[l] = o.aux_beta * alpha[l] + (1 - o.aux_beta) * hat;
    }
  }
  EXPECT_GT(clipped_steps, 0) << "gradient clipping never engaged";
  EXPECT_TRUE(alpha_hat_clipped && alpha_hat_unclipped) << "both branches of min(xi d, alpha_max) should be seen";
  EXPECT_NE(r.log.back().alpha[0], o.aux_alpha) << "alpha should have moved";

  // Final weights: float32 engine vs float64 reference. Adam steps are ~lr in size, so a difference
  // of 1e-3 lr means the engine took the same steps up to float32 rounding of the gradients.
  Model fin = Model::load(r.final_checkpoint);
  double worst = 0;
  std::string worst_name;
  for (const ParamSpec& s : fin.layout.specs)
    for (size_t i = 0; i < s.numel(); i++) {
      const double d = std::fabs(double(fin.params[s.offset + i]) - p[s.offset + i]);
      if (d > worst) worst = d, worst_name = s.name + "[" + std::to_string(i) + "]";
    }
  EXPECT_LE(worst, 1e-3 * o.schedule.lr) << "worst at " << worst_name;
  // ... while the run moved weights by over 2 lr (~2.7 lr is the most 5 steps of this schedule allow).
  EXPECT_GT(skytest::max_abs_diff(params_f64(fin).data(), params_f64(m0).data(), n), 2 * o.schedule.lr);

  // The JSONL log holds the same per-step values.
  std::ifstream f(o.log_jsonl);
  std::string line;
  int lines = 0;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    ASSERT_LT(lines, steps);
    EXPECT_EQ(j.at("step").get<int64_t>(), lines + 1);
    EXPECT_DOUBLE_EQ(j.at("loss").get<double>(), r.log[lines].loss);
    EXPECT_EQ(j.at("drop_rate").get<std::vector<double>>(), r.log[lines].drop_rate);
    lines++;
  }
  EXPECT_EQ(lines, steps);
  fs::remove_all(dir);
}

// The global gradient norm sets the clip coefficient, so bit-for-bit resume needs it to be a pure
// function of the gradient. An OpenMP reduction is not: libgomp adds the threads' partial sums in
// arrival order, which with 3+ threads changes the last bits from call to call. Checked here as
// "the same bits on 1 and 2 threads" (which the reduction also failed), so the test needs no more
// threads than this machine's 2 cores.
TEST(Optimizer, GradNormIsDeterministicAndClipsLikePyTorch) {
  auto r = skytest::randn(200000, 61, 1e-3);
  std::vector<float> g(r.begin(), r.end());
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = grad_norm(g.data(), g.size());
  omp_set_num_threads(2);
  for (int rep = 0; rep < 20; rep++) ASSERT_EQ(grad_norm(g.data(), g.size()), one);
  omp_set_num_threads(saved);
  double ss = 0;
  for (float x : g) ss += double(x) * x;
  EXPECT_NEAR(one, std::sqrt(ss), 1e-12 * one);

  // clip_grad_norm_: untouched below max_norm, scaled by max_norm / (norm + 1e-6) above it.
  std::vector<float> c = g;
  EXPECT_EQ(clip_grad_norm(c.data(), c.size(), 2 * one), one);
  EXPECT_EQ(c, g);
  EXPECT_EQ(clip_grad_norm(c.data(), c.size(), 0.5 * one), one);
  for (size_t i = 0; i < c.size(); i += 997) EXPECT_FLOAT_EQ(c[i], float(g[i] * (0.5 * one / (one + 1e-6))));
}

// ---------------------------------------------------------------------------------------------
// 3. Resume equivalence and crash-safe checkpoints.

namespace {

struct Killed {};  // thrown from on_step to stop a run as a kill would

TrainOptions resume_options(const std::string& data, const std::string& out) {
  TrainOptions o;
  o.config = "tiny";  // from scratch: the init seed is part of what must carry over
  o.seed = 7;
  o.data = data;
  o.seq_len = 8;
  o.batch_size = 2;
  o.grad_accum = 2;
  o.steps = 6;
  o.schedule.lr = 3e-3;
  o.schedule.warmup = 2;
  o.grad_clip = 0.5;
  o.aux_alpha = 0.002;  // below alpha_max (0.01), so drops pull it up
  o.aux_beta = 0.9;     // alpha changes every step: it must be restored, not re-initialized
  o.capacity_factor = 1.0;
  o.z_loss = 1e-3;
  o.data_order = DataOrder::Shuffled;
  o.out_dir = out;
  o.quiet = true;
  return o;
}

}  // namespace

// trainer_state.json is outside input: each of these once crashed, read past a buffer or was taken
// as it came (an empty or short alpha, a data epoch of -1 = the batcher's "no permutation yet",
// a negative or 1e300 step, a `latest` naming a directory outside the run).
TEST(Resume, CorruptTrainerStateIsNamed) {
  const std::string dir = skytest::temp_dir("resume-bad");
  write_token_file(dir + "/train.bin", random_tokens(81, 256, 31));
  TrainOptions o = resume_options(dir + "/train.bin", dir + "/run");
  o.steps = 2;
  o.save_every = 2;
  train(o);
  const std::string ckpt = resolve_checkpoint(dir + "/run"), sp = ckpt + "/trainer_state.json";
  const json good = json::parse(std::ifstream(sp));
  TrainOptions res = o;
  res.steps = 4;
  res.resume = dir + "/run";
  auto expect = [&](const std::function<void(json&)>& edit, const std::string& needle) {
    json st = good;
    edit(st);
    std::ofstream(sp) << st.dump();
    const std::string msg = error_of([&] { train(res); });
    EXPECT_TRUE(contains(msg, needle) && contains(msg, "trainer_state.json")) << needle << ": " << msg;
  };
  expect([](json& j) { j["alpha"] = json::array(); }, "'alpha' holds 0 values, expected 2");
  expect([](json& j) { j["alpha"] = {0.01}; }, "'alpha' holds 1 values");
  expect([](json& j) { j["alpha"] = {0.01, -1.0}; }, "'alpha' holds -1");
  expect([](json& j) { j["data"]["epoch"] = -1; }, "'epoch' must be a count, got -1");
  expect([](json& j) { j["step"] = -3; }, "'step' must be a non-negative integer, got -3");
  expect([](json& j) { j["step"] = 1e300; }, "'step' must be a non-negative integer");
  expect([](json& j) { j.erase("alpha"); }, "alpha");
  // Not an object: the settings check's message once called value() on it, a JSON exception.
  expect([](json& j) { j = json::array(); }, "not a JSON object");
  std::ofstream(sp) << good.dump();
  std::ofstream(dir + "/run/latest") << "../../etc\n";
  const std::string msg = error_of([&] { train(res); });
  EXPECT_TRUE(contains(msg, "not a checkpoint directory of this run")) << msg;
  fs::remove_all(dir);
}

// Re-saving a step once removed its directory before the new one was renamed in: a crash (or a
// reader) in between found no checkpoint under that name. A watcher checks it is never missing.
TEST(Resume, ResaveNeverLeavesTheStepMissing) {
  const std::string dir = skytest::temp_dir("resave");
  const Model m = Model::random(ModelConfig::preset("tiny"), 1);
  std::vector<float> moments(m.layout.total, 0.0f);
  const CheckpointData d{&m, moments.data(), moments.data(), json{{"step", 1}}};
  const std::string state = save_checkpoint(dir, 1, d, 0) + "/trainer_state.json";
  std::atomic<bool> done{false};
  std::atomic<int64_t> looks{0}, missing{0};
  std::thread watch([&] {
    for (; !done; looks++)
      if (!fs::exists(state)) missing++;
  });
  for (int i = 0; i < 30; i++) save_checkpoint(dir, 1, d, 0);
  done = true;
  watch.join();
  EXPECT_EQ(missing, 0) << "of " << looks << " looks";
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "step-00000001"}));  // nothing left over
  fs::remove_all(dir);
}

TEST(Resume, ContinuesBitForBit) {
  const std::string dir = skytest::temp_dir("resume");
  // 10 windows of 9 tokens; 4 windows per step, so the 6 steps cross two epoch boundaries (a new
  // permutation each) and the resume point (after 12 windows) sits inside the second epoch.
  write_token_file(dir + "/train.bin", random_tokens(81, 256, 31));

  TrainOptions full = resume_options(dir + "/train.bin", dir + "/full");
  full.save_every = 1;
  full.keep = 0;
  const TrainResult a = train(full);
  ASSERT_EQ(a.log.size(), 6u);

  // The same run, killed during step 4 (after step 3's checkpoint), then resumed from its run dir.
  TrainOptions part = resume_options(dir + "/train.bin", dir + "/part");
  part.save_every = 3;
  EXPECT_THROW(train(part, [](const StepLog& s) { if (s.step == 4) throw Killed{}; }), Killed);
  EXPECT_EQ(resolve_checkpoint(dir + "/part"), (fs::path(dir) / "part" / "step-00000003").string());
  TrainOptions res = part;
  res.resume = dir + "/part";
  const TrainResult b = train(res);

  // Steps 4-6 are bit-identical to the uninterrupted run's.
  auto expect_same_tail = [&](const TrainResult& r) {
    ASSERT_EQ(r.log.size(), 3u);
    for (int i = 0; i < 3; i++) {
      const StepLog &x = a.log[3 + i], &y = r.log[i];
      SCOPED_TRACE("step " + std::to_string(x.step));
      EXPECT_EQ(y.step, x.step);
      EXPECT_EQ(y.loss, x.loss);
      EXPECT_EQ(y.ce_loss, x.ce_loss);
      EXPECT_EQ(y.grad_norm, x.grad_norm);
      EXPECT_EQ(y.lr, x.lr);
      EXPECT_EQ(y.alpha, x.alpha);
      EXPECT_EQ(y.drop_rate, x.drop_rate);
    }
  };
  expect_same_tail(b);
  // So are they when branching off the uninterrupted run's own step-3 checkpoint (named directly).
  TrainOptions branch = resume_options(dir + "/train.bin", dir + "/branch");
  branch.resume = dir + "/full/step-00000003";
  expect_same_tail(train(branch));
  EXPECT_GT(a.log[3].alpha[0], 0.0);
  EXPECT_NE(a.log[3].alpha[0], full.aux_alpha) << "alpha should have moved before the resume point";

  // Final weights, optimizer moments and trainer state are identical.
  const std::string ca = a.final_checkpoint, cb = b.final_checkpoint;
  Model ma = Model::load(ca), mb = Model::load(cb);
  ASSERT_EQ(ma.layout.total, mb.layout.total);
  const size_t n = ma.layout.total;
  size_t diff = 0;
  for (size_t i = 0; i < n; i++) diff += ma.params[i] != mb.params[i];
  EXPECT_EQ(diff, 0u) << "weights differ in " << diff << " of " << n << " entries";
  std::vector<float> am(n), av(n), bm(n), bv(n);
  const json sa = load_checkpoint_state(ca, am.data(), av.data(), n);
  const json sb = load_checkpoint_state(cb, bm.data(), bv.data(), n);
  EXPECT_EQ(am, bm);
  EXPECT_EQ(av, bv);
  EXPECT_EQ(sa.at("data"), sb.at("data"));
  EXPECT_EQ(sa.at("alpha"), sb.at("alpha"));
  EXPECT_EQ(sa.at("step"), 6);

  // A run killed while writing a checkpoint leaves its temporary directory behind; `latest` still
  // names the last complete checkpoint, which loads.
  const fs::path run = fs::path(dir) / "part", stale = run / ".tmp-step-00000007";
  fs::create_directories(stale);
  fs::copy_file(run / "step-00000006" / "config.json", stale / "config.json");
  std::ofstream(stale / "model.safetensors") << "trunc";  // a half-written shard
  EXPECT_EQ(resolve_checkpoint(run.string()), (run / "step-00000006").string());
  EXPECT_NO_THROW(Model::load(resolve_checkpoint(run.string())));
  // The next save of that step replaces the leftover instead of tripping over it.
  TrainOptions more = part;
  more.resume = run.string();
  more.steps = 7;
  EXPECT_EQ(train(more).final_checkpoint, (run / "step-00000007").string());
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_EQ(resolve_checkpoint(run.string()), (run / "step-00000007").string());
  EXPECT_NO_THROW(Model::load((run / "step-00000007").string()));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 4. Upcycling: with all experts copies of the dense FFN and top-k weights summing to 1, the MoE
// computes the dense function whatever the router does (dropless, as at inference).

static void check_upcycle_invariant(bool logits_norm) {
  const ModelConfig dc = tiny_dense();
  Model dense = random_model(dc, 41);
  UpcycleOptions uo;
  uo.experts = 4;
  uo.top_k = 2;
  uo.logits_norm = logits_norm;
  uo.router_std = 0.5;  // a router far from uniform, so the invariant does not rest on equal weights
  uo.seed = 3;
  Model moe = upcycle(dense, uo);
  ASSERT_TRUE(moe.cfg.has_moe());
  EXPECT_EQ(moe.cfg.logits_norm, logits_norm);

  const int B = 2, T = 9, N = B * T;
  auto toks = random_tokens(N + 1, dc.vocab_size, 42);
  std::vector<int32_t> in(toks.begin(), toks.end() - 1), tgt(toks.begin() + 1, toks.end());
  Activations Ad, Am;
  const double ld = forward(dense, Ad, in.data(), tgt.data(), B, T, moe_options(dense.cfg));
  const double lm = forward(moe, Am, in.data(), tgt.data(), B, T, moe_options(moe.cfg));
  EXPECT_NEAR(lm, ld, 1e-5 * ld);
  EXPECT_LE(skytest::max_err_ratio(Am.logits.data(), skytest::to_double(Ad.logits).data(), Ad.logits.size(), 1e-5,
                                   1e-5),
            1.0);
  // Why it holds: every expert is a bit-exact copy, and the kept top-k weights sum to 1.
  const size_t HI = size_t(dc.hidden_size) * dc.intermediate_size;
  for (int l = 0; l < dc.num_layers; l++) {
    for (int e = 0; e < uo.experts; e++) {
      EXPECT_TRUE(std::equal(dense.w.layers[l].w_gate, dense.w.layers[l].w_gate + HI, moe.w.layers[l].w1 + e * HI));
      EXPECT_TRUE(std::equal(dense.w.layers[l].w_up, dense.w.layers[l].w_up + HI, moe.w.layers[l].w3 + e * HI));
      EXPECT_TRUE(std::equal(dense.w.layers[l].w_down, dense.w.layers[l].w_down + HI, moe.w.layers[l].w2 + e * HI));
    }
    const auto& w = Am.layers[l].moe.topk_w;
    for (int t = 0; t < N; t++) EXPECT_NEAR(w[2 * t] + w[2 * t + 1], 1.0, 1e-6);
  }

  // Noise on the experts breaks the equality.
  uo.expert_noise = 0.05;
  Model noisy = upcycle(dense, uo);
  Activations An;
  const double ln = forward(noisy, An, in.data(), tgt.data(), B, T, moe_options(noisy.cfg));
  EXPECT_GT(std::fabs(ln - ld), 1e-4);
}

TEST(Upcycle, DroplessForwardEqualsDenseWithLogitNorm) { check_upcycle_invariant(true); }
TEST(Upcycle, DroplessForwardEqualsDenseWithoutLogitNorm) { check_upcycle_invariant(false); }

// Fine-grained upcycling: expert e = slice e mod G of the dense FFN (width I/G), its down projection
// times G. With noise off and a router under which every token selects whole copies (the G slices
// of a copy share one router row, copies far apart), the MoE computes the dense function exactly:
// FFN(x) = sum_j slice_j(x), and the renormalized weights of a copy's slices sum to that copy's
// share. A router that picks the same slice of two copies instead gives something else (the test
// can fail), and so would a wrong slice mapping or a missing factor G.
static void check_fine_grained_upcycle(int G, int copies_per_token, bool logits_norm) {
  const ModelConfig dc = tiny_dense();  // intermediate 10
  Model dense = random_model(dc, 41);
  UpcycleOptions uo;
  uo.granularity = G;
  uo.experts = 3 * G;  // three copies
  uo.top_k = copies_per_token * G;
  uo.logits_norm = logits_norm;
  uo.seed = 3;
  Model moe = upcycle(dense, uo);
  const int H = dc.hidden_size, I = dc.intermediate_size, Is = I / G, E = uo.experts;
  ASSERT_EQ(moe.cfg.moe_intermediate_size, Is);
  ASSERT_EQ(moe.cfg.top_k, copies_per_token * G);
  // The mapping, entry by entry (a power-of-two G scales exactly).
  for (int l = 0; l < dc.num_layers; l++)
    for (int e = 0; e < E; e++) {
      const int j = e % G;
      const auto& D = dense.w.layers[l];
      const auto& M = moe.w.layers[l];
      for (int i = 0; i < Is; i++)
        for (int h = 0; h < H; h++) {
          ASSERT_EQ(M.w1[(size_t(e) * Is + i) * H + h], D.w_gate[(size_t(j) * Is + i) * H + h]);
          ASSERT_EQ(M.w3[(size_t(e) * Is + i) * H + h], D.w_up[(size_t(j) * Is + i) * H + h]);
          ASSERT_EQ(M.w2[(size_t(e) * H + h) * Is + i], float(G) * D.w_down[size_t(h) * I + j * Is + i]);
        }
    }
  const int B = 2, T = 9, N = B * T;
  auto toks = random_tokens(N + 1, dc.vocab_size, 42);
  std::vector<int32_t> in(toks.begin(), toks.end() - 1), tgt(toks.begin() + 1, toks.end());
  Activations Ad;
  forward(dense, Ad, in.data(), tgt.data(), B, T, moe_options(dense.cfg));
  // The router: one random row per copy, shared by its G slices (logits of a few units: copies score
  // apart, and a token's second copy still weighs in).
  auto route = [&](Model& m, const std::function<int(int)>& row_of) {
    for (int l = 0; l < dc.num_layers; l++) {
      const auto rows = skytest::randn(size_t(3) * H, 77 + l, 0.6);
      for (int e = 0; e < E; e++)
        for (int h = 0; h < H; h++) m.w.layers[l].router[size_t(e) * H + h] = float(rows[size_t(row_of(e)) * H + h]);
    }
  };
  route(moe, [&](int e) { return e / G; });
  Activations Am;
  forward(moe, Am, in.data(), tgt.data(), B, T, moe_options(moe.cfg));
  // Every token selected whole copies: k G experts, each copy's G slices all there.
  for (int l = 0; l < dc.num_layers; l++)
    for (int t = 0; t < N; t++) {
      std::vector<int> count(3, 0), slices(3, 0);
      for (int s = 0; s < uo.top_k; s++) {
        const int e = Am.layers[l].moe.topk_idx[size_t(t) * uo.top_k + s];
        count[e / G]++;
        slices[e / G] |= 1 << (e % G);
      }
      for (int c = 0; c < 3; c++)
        ASSERT_TRUE(count[c] == 0 || (count[c] == G && slices[c] == (1 << G) - 1)) << "layer " << l << " token " << t;
    }
  EXPECT_LE(skytest::max_err_ratio(Am.logits.data(), skytest::to_double(Ad.logits).data(), Ad.logits.size(), 1e-5,
                                   1e-5),
            1.0);
  // Control: experts of equal slice index share a row instead (G > 1), so a token's picks repeat
  // slices and miss others: the output is no longer the dense one.
  if (G > 1) {
    route(moe, [&](int e) { return e % G; });
    Activations Ac;
    forward(moe, Ac, in.data(), tgt.data(), B, T, moe_options(moe.cfg));
    EXPECT_GT(skytest::max_err_ratio(Ac.logits.data(), skytest::to_double(Ad.logits).data(), Ad.logits.size(), 1e-5,
                                     1e-5),
              100.0);
  }
}

TEST(Upcycle, FineGrainedEqualsDenseWhenWholeCopiesAreSelected) {
  for (bool norm : {true, false}) {
    SCOPED_TRACE(norm ? "logit norm" : "plain softmax");
    check_fine_grained_upcycle(2, 1, norm);  // top-2 of 6 experts of width 5
    check_fine_grained_upcycle(2, 2, norm);  // top-4: two copies per token
    check_fine_grained_upcycle(1, 1, norm);  // G = 1 is the coarse upcycling
  }
}

TEST(Upcycle, FineGrainedRefusesWidthsThatDoNotSplit) {
  Model dense = random_model(tiny_dense(), 41);  // intermediate 10
  UpcycleOptions uo;
  uo.granularity = 3;
  uo.experts = 6;
  uo.top_k = 6;
  std::string msg = error_of([&] { upcycle(dense, uo); });
  EXPECT_TRUE(contains(msg, "--granularity 3") && contains(msg, "intermediate size 10")) << msg;
  uo.granularity = 2;
  uo.experts = 5;
  uo.top_k = 4;
  msg = error_of([&] { upcycle(dense, uo); });
  EXPECT_TRUE(contains(msg, "--experts 5") && contains(msg, "--granularity 2")) << msg;
  // Through the CLI: --top-k defaults to 2 G, and the user is told.
  const std::string dir = skytest::temp_dir("upcycle-fg");
  dense.save(dir + "/dense");
  CliResult r = run_cli("upcycle --from " + dir + "/dense --out " + dir + "/moe --experts 8 --granularity 2");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "top-4") && contains(r.out, "set --top-k")) << r.out;
  const ModelConfig got = ModelConfig::load_file(dir + "/moe");
  EXPECT_EQ(got.top_k, 4);
  EXPECT_EQ(got.moe_intermediate_size, 5);
  r = run_cli("upcycle --from " + dir + "/dense --out " + dir + "/moe3 --experts 6 --granularity 3");
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(contains(r.out, "intermediate size 10")) << r.out;
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 5. Adaptive aux-loss coefficients: alpha_hat = min(xi d, alpha_max); alpha <- beta alpha + (1-beta) alpha_hat.

TEST(AdaptiveAlpha, FollowsEquations7And8) {
  // xi = 0.2, alpha_max = 0.01, beta = 0.9: alpha_hat clips for drop rates above alpha_max / xi = 0.05.
  AdaptiveAlpha a(2, 0.01, true, 0.2, 0.01, 0.9);
  const std::vector<std::vector<double>> drops = {{0.02, 0.30}, {0.10, 0.05}, {0.0, 0.01}, {0.049, 0.0}};
  // Worked by hand:
  //  layer 0: d=0.02  -> hat 0.004           -> 0.9*0.01    + 0.1*0.004  = 0.0094
  //           d=0.10  -> hat 0.02, clipped 0.01 -> 0.9*0.0094 + 0.1*0.01 = 0.00946
  //           d=0     -> hat 0               -> 0.9*0.00946              = 0.008514
  //           d=0.049 -> hat 0.0098          -> 0.9*0.008514 + 0.00098   = 0.0086426
  //  layer 1: d=0.30  -> hat 0.06, clipped 0.01 -> 0.01 (unclipped would give 0.015)
  //           d=0.05  -> hat exactly alpha_max -> 0.01
  //           d=0.01  -> hat 0.002           -> 0.009 + 0.0002           = 0.0092
  //           d=0     -> hat 0               -> 0.9*0.0092               = 0.00828
  const std::vector<std::vector<double>> want = {
      {0.0094, 0.01}, {0.00946, 0.01}, {0.008514, 0.0092}, {0.0086426, 0.00828}};
  for (size_t s = 0; s < drops.size(); s++) {
    a.update(drops[s]);
    for (int l = 0; l < 2; l++) EXPECT_NEAR(a.alpha[l], want[s][l], 1e-15) << "update " << s + 1 << " layer " << l;
  }
  // Fixed mode: the coefficient never moves.
  AdaptiveAlpha f(2, 0.003, false, 0.2, 0.01, 0.9);
  for (auto& d : drops) f.update(d);
  EXPECT_EQ(f.alpha, std::vector<double>(2, 0.003));
}

TEST(AdaptiveAlpha, FixedModeKeepsAlphaInTraining) {
  const std::string dir = skytest::temp_dir("alpha-fixed");
  random_model(micro_moe(), 5).save(dir + "/model");
  write_token_file(dir + "/train.bin", random_tokens(61, 13, 6));
  TrainOptions o;
  o.model_dir = dir + "/model";
  o.data = dir + "/train.bin";
  o.seq_len = 5;
  o.batch_size = 2;
  o.steps = 3;
  o.capacity_factor = 0.8;  // tokens are dropped, which would move an adaptive alpha
  o.aux_alpha = 0.02;
  o.balance = Balance::Aux;
  o.quiet = true;
  for (const StepLog& s : train(o).log) {
    EXPECT_GT(s.drop_rate[0], 0.0);
    EXPECT_EQ(s.alpha, std::vector<double>(2, 0.02)) << "step " << s.step;
  }
  fs::remove_all(dir);
}

// Auxiliary-loss-free balancing: b_e <- b_e + speed * sign(mean load - load_e) per layer, from the
// step's loads; a layer without load (dense, or no tokens) keeps its bias.
TEST(AuxFree, BiasFollowsTheUpdateRule) {
  SelectBias b(2, 4, 0.01);
  b.update({{10, 2, 4, 0}, {0, 0, 0, 0}});  // mean 4: expert 0 over, 1 and 3 under, 2 even
  EXPECT_EQ(b.bias[0], (std::vector<float>{-0.01f, 0.01f, 0.0f, 0.01f}));
  EXPECT_EQ(b.bias[1], std::vector<float>(4, 0.0f));
  b.update({{3, 3, 3, 3}, {1, 0, 0, 0}});  // even: no move; layer 1 now has load (mean 0.25)
  EXPECT_EQ(b.bias[0], (std::vector<float>{-0.01f, 0.01f, 0.0f, 0.01f}));
  EXPECT_EQ(b.bias[1], (std::vector<float>{-0.01f, 0.01f, 0.01f, 0.01f}));
  b.update({{0, 9, 2, 1}, {1, 0, 0, 0}});  // mean 3
  // Each move is one rounding of bias + speed in double to float.
  EXPECT_EQ(b.bias[0], (std::vector<float>{float(double(-0.01f) + 0.01), float(double(0.01f) - 0.01), 0.01f,
                                           float(double(0.01f) + 0.01)}));
  EXPECT_NEAR(b.range(0), 0.02, 1e-9);
  EXPECT_NEAR(b.range(1), 0.04, 1e-9);
  EXPECT_EQ(max_violation({10, 2, 4, 0}), 1.5);  // (10 - 4) / 4
  EXPECT_EQ(max_violation({3, 3, 3, 3}), 0.0);
  EXPECT_EQ(max_violation({0, 0}), 0.0);
  EXPECT_EQ(parse_balance("aux-free"), Balance::AuxFree);
  EXPECT_TRUE(contains(error_of([] { parse_balance("auxfree"); }), "adaptive-aux, aux, aux-free, none"));
}

namespace {

// A tiny MoE whose router starts strongly skewed: 8 experts, top-2, router rows scaled up, so
// unbalanced training keeps a clear imbalance that balancing has to remove.
TrainOptions skewed_options(const std::string& dir) {
  ModelConfig c = tiny_moe();
  c.num_layers = 2;
  c.num_experts = 8;
  c.max_position_embeddings = 64;
  Model m = random_model(c, 11, 0.3);
  m.save(dir + "/model");
  write_token_file(dir + "/train.bin", random_tokens(20000, c.vocab_size, 12));
  TrainOptions o;
  o.model_dir = dir + "/model";
  o.data = dir + "/train.bin";
  o.seq_len = 32;
  o.batch_size = 8;
  o.steps = 40;
  o.schedule.lr = 1e-3;
  o.schedule.warmup = 0;
  o.quiet = true;
  return o;
}

// Loads summed over a run's last `n` steps, per layer: their imbalance (max - mean) / mean.
double tail_imbalance(const TrainResult& r, size_t n) {
  double worst = 0;
  for (size_t l = 0; l < r.log.back().expert_load.size(); l++) {
    std::vector<int64_t> sum(r.log.back().expert_load[l].size(), 0);
    for (size_t i = r.log.size() - n; i < r.log.size(); i++)
      for (size_t e = 0; e < sum.size(); e++) sum[e] += r.log[i].expert_load[l][e];
    worst = std::max(worst, max_violation(sum));
  }
  return worst;
}

}  // namespace

// Training with aux-free balancing evens out the experts' loads over the steps, where the same run
// without balancing stays skewed; both start from the same routing (the bias is 0 at step 1).
TEST(AuxFree, TrainingLowersLoadImbalance) {
  const std::string dir = skytest::temp_dir("auxfree");
  TrainOptions o = skewed_options(dir);
  o.balance = Balance::None;
  const TrainResult none = train(o);
  o.balance = Balance::AuxFree;
  o.balance_speed = 0.01;
  const TrainResult af = train(o);
  ASSERT_EQ(none.log.size(), af.log.size());
  EXPECT_EQ(none.log[0].expert_load, af.log[0].expert_load);  // step 1 routes alike
  EXPECT_EQ(none.log[0].loss, af.log[0].loss);
  EXPECT_EQ(af.log[0].aux_loss, 0.0);                         // no aux loss is trained
  EXPECT_GT(af.log.back().aux_per_layer[0], 0.0);             // ... but its value is logged
  const double first = tail_imbalance(none, 1), base = tail_imbalance(none, 10), bal = tail_imbalance(af, 10);
  SCOPED_TRACE(testing::Message() << "imbalance: step 1 " << first << ", last 10 steps: none " << base << ", aux-free "
                                  << bal);
  EXPECT_GT(base, 0.3);        // the unbalanced run stays skewed
  EXPECT_LT(bal, 0.5 * base);  // the balanced one is much more even
  EXPECT_LT(bal, 0.15);
  // The bias moved (range logged per layer) and max_vio is logged for both.
  EXPECT_GT(af.log.back().bias_range[0], 0.05);
  EXPECT_TRUE(none.log.back().bias_range.empty());
  EXPECT_EQ(af.log.back().max_vio.size(), 2u);
  fs::remove_all(dir);
}

// DeepSeek-V3 checkpoints carry the selection bias their own training reached
// (e_score_correction_bias): aux-free continues from it, and the saved model carries the new one.
TEST(AuxFree, DeepseekV3ContinuesFromItsCorrectionBias) {
  const std::string dir = skytest::temp_dir("auxfree-v3");
  const std::string src = std::string(SKYMOE_TEST_DATA) + "/hf/deepseek_v3";
  write_token_file(dir + "/train.bin", random_tokens(200, 96, 5));
  TrainOptions o = resume_options(dir + "/train.bin", dir + "/out");
  o.config.clear();
  o.model_dir = src;
  o.steps = 1;
  o.grad_accum = 1;
  o.aux_alpha = 0.0;
  o.balance = Balance::AuxFree;
  o.balance_speed = 0.25;  // far above the fixture's biases, so a reset to 0 could not pass
  const TrainResult r = train(o);
  const Model before = Model::load(src), after = Model::load(r.final_checkpoint);
  const size_t n = after.layout.total;
  std::vector<float> m(n), v(n);
  const json st = load_checkpoint_state(r.final_checkpoint, m.data(), v.data(), n);
  const ModelConfig& c = before.cfg;
  int checked = 0;
  for (int l = 0; l < c.num_layers; l++) {
    if (!c.layer_is_moe(l)) continue;
    const float* b0 = before.w.layers[size_t(l)].router_bias;
    const float* b1 = after.w.layers[size_t(l)].router_bias;
    ASSERT_TRUE(b0 && b1);
    for (int e = 0; e < c.num_experts; e++) {
      const double step = double(b1[e]) - double(b0[e]);  // one update: +-speed, or 0 at the mean load
      EXPECT_TRUE(std::abs(std::abs(step) - 0.25) < 1e-6 || std::abs(step) < 1e-6)
          << "layer " << l << " expert " << e << ": " << b0[e] << " -> " << b1[e];
      EXPECT_FLOAT_EQ(st.at("select_bias")[size_t(l)][size_t(e)].get<float>(), b1[e]);
      checked++;
    }
  }
  EXPECT_GT(checked, 0);
  fs::remove_all(dir);
}

// A killed aux-free run resumes bit for bit: the bias is in trainer_state.json.
TEST(Resume, AuxFreeContinuesBitForBit) {
  const std::string dir = skytest::temp_dir("resume-auxfree");
  write_token_file(dir + "/train.bin", random_tokens(81, 256, 31));
  TrainOptions full = resume_options(dir + "/train.bin", dir + "/full");
  full.balance = Balance::AuxFree;
  full.balance_speed = 0.02;
  const TrainResult a = train(full);
  TrainOptions part = full;
  part.out_dir = dir + "/part";
  part.save_every = 3;
  EXPECT_THROW(train(part, [](const StepLog& s) { if (s.step == 4) throw Killed{}; }), Killed);
  TrainOptions res = part;
  res.resume = dir + "/part";
  const TrainResult b = train(res);
  ASSERT_EQ(b.log.size(), 3u);
  EXPECT_GT(a.log[3].bias_range[0], 0.0) << "the bias should have moved before the resume point";
  for (int i = 0; i < 3; i++) {
    const StepLog &x = a.log[3 + i], &y = b.log[i];
    SCOPED_TRACE("step " + std::to_string(x.step));
    EXPECT_EQ(y.loss, x.loss);
    EXPECT_EQ(y.grad_norm, x.grad_norm);
    EXPECT_EQ(y.expert_load, x.expert_load);
    EXPECT_EQ(y.bias_range, x.bias_range);
    EXPECT_EQ(y.drop_rate, x.drop_rate);
  }
  const size_t n = Model::load(a.final_checkpoint).layout.total;
  std::vector<float> m(n), v(n);
  const json sa = load_checkpoint_state(a.final_checkpoint, m.data(), v.data(), n);
  const json sb = load_checkpoint_state(b.final_checkpoint, m.data(), v.data(), n);
  EXPECT_EQ(sa.at("select_bias"), sb.at("select_bias"));
  EXPECT_EQ(sa.at("balance"), "aux-free");
  // A broken bias is named.
  const std::string sp = resolve_checkpoint(dir + "/part") + "/trainer_state.json";
  json st = json::parse(std::ifstream(sp));
  st["select_bias"][1] = {0.0, 1e300};
  std::ofstream(sp) << st.dump();
  TrainOptions more = res;
  more.steps = 7;
  const std::string msg = error_of([&] { train(more); });
  EXPECT_TRUE(contains(msg, "'select_bias'[1] must be a list of 4 numbers") && contains(msg, "trainer_state.json"))
      << msg;
  st["select_bias"][1] = {0.0, 1e300, 0.0, 0.0};
  std::ofstream(sp) << st.dump();
  EXPECT_TRUE(contains(error_of([&] { train(more); }), "'select_bias'[1] holds 1e+300"));
  fs::remove_all(dir);
}

// `train --resume` without --balance continues with the checkpoint's balancing and speed (switching
// silently to the default adaptive aux loss would not continue the run).
TEST(Resume, BalanceComesFromTheCheckpoint) {
  const std::string dir = skytest::temp_dir("resume-balance");
  write_token_file(dir + "/train.bin", random_tokens(400, 256, 3));
  const std::string base = "train --config tiny --quiet --seq-len 8 --batch-size 2 --data " + dir + "/train.bin --out " +
                           dir + "/run";
  CliResult a = run_cli(base + " --steps 2 --balance aux-free --balance-speed 0.03");
  ASSERT_EQ(a.rc, 0) << a.out;
  CliResult b = run_cli(base + " --steps 3 --resume " + dir + "/run");
  ASSERT_EQ(b.rc, 0) << b.out;
  const json st = json::parse(std::ifstream(resolve_checkpoint(dir + "/run") + "/trainer_state.json"));
  EXPECT_EQ(st.at("step"), 3);
  EXPECT_EQ(st.at("balance"), "aux-free");
  EXPECT_EQ(st.at("balance_speed"), 0.03);
  // Three steps of 0.03: every bias entry is a multiple of 0.03 up to 0.09 in size, and some moved.
  double widest = 0;
  for (const auto& row : st.at("select_bias"))
    for (const auto& v : row) widest = std::max(widest, std::fabs(v.get<double>()));
  EXPECT_GT(widest, 0.02);
  EXPECT_LT(widest, 0.0901);
  // An explicit --balance on resume wins (and the bias of an aux-free checkpoint is then unused).
  CliResult c = run_cli(base + " --steps 4 --balance adaptive-aux --resume " + dir + "/run");
  ASSERT_EQ(c.rc, 0) << c.out;
  const json st4 = json::parse(std::ifstream(resolve_checkpoint(dir + "/run") + "/trainer_state.json"));
  EXPECT_EQ(st4.at("balance"), "adaptive-aux");
  EXPECT_FALSE(st4.contains("select_bias"));
  fs::remove_all(dir);
}

// bf16 GEMMs (--precision bf16): the losses follow the f32 run's within bf16 rounding, yet differ from
// it (the bf16 path really ran), and a rerun gives the same bits (resume stays exact).
TEST(MixedPrecision, Bf16TracksF32AndIsDeterministic) {
  if (!matmul_bf16_supported()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  const std::string dir = skytest::temp_dir("bf16");
  write_token_file(dir + "/train.bin", random_tokens(4000, 256, 9));
  TrainOptions o;
  o.config = "tiny";
  o.data = dir + "/train.bin";
  o.seq_len = 32;
  o.batch_size = 4;
  o.steps = 6;
  o.schedule.lr = 3e-3;
  o.schedule.warmup = 0;
  o.quiet = true;
  const TrainResult f32 = train(o);
  o.precision = MatmulPrecision::BF16;
  const TrainResult a = train(o), b = train(o);
  o.precision = MatmulPrecision::F32;
  bool differs = false;
  for (size_t s = 0; s < f32.log.size(); s++) {
    EXPECT_NEAR(a.log[s].loss, f32.log[s].loss, 0.01 * f32.log[s].loss) << "step " << s + 1;
    EXPECT_EQ(a.log[s].loss, b.log[s].loss) << "step " << s + 1;
    EXPECT_EQ(a.log[s].grad_norm, b.log[s].grad_norm) << "step " << s + 1;
    differs |= a.log[s].loss != f32.log[s].loss;
  }
  EXPECT_TRUE(differs);
  EXPECT_LT(a.log.back().loss, a.log.front().loss);  // it still learns
  EXPECT_EQ(matmul_precision(), MatmulPrecision::BF16);
  set_matmul_precision(MatmulPrecision::F32);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input: a clear sky::Error from the library, a non-zero exit and the message from the CLI.

namespace {

// A training-options skeleton over the `tiny` preset that is valid apart from what a test changes.
TrainOptions tiny_options(const std::string& data) {
  TrainOptions o;
  o.config = "tiny";
  o.data = data;
  o.seq_len = 4;
  o.batch_size = 2;
  o.steps = 2;
  o.quiet = true;
  return o;
}

const char* kTinyFlags = "--config tiny --seq-len 4 --batch-size 2 --quiet";

}  // namespace

// The CPU backend may run a training step on one thread or two (its step governor drops to one
// while another process holds a core), so a run must give the same bits whatever the team: the
// products are cut into blocks by shape, not by thread. 512 rows a step: every product has several blocks.
TEST(Determinism, SameBitsOnOneThreadOrTwo) {
  const std::string dir = skytest::temp_dir("team");
  write_token_file(dir + "/train.bin", random_tokens(8000, 256, 5));
  TrainOptions o = tiny_options(dir + "/train.bin");
  o.seq_len = 64;
  o.batch_size = 8;
  o.steps = 3;
  o.capacity_factor = 1.0;
  o.threads = 1;
  const TrainResult one = train(o);
  o.threads = 2;
  const TrainResult two = train(o);
  ASSERT_EQ(one.log.size(), two.log.size());
  for (size_t s = 0; s < one.log.size(); s++) {
    EXPECT_EQ(one.log[s].loss, two.log[s].loss) << "step " << s + 1;
    EXPECT_EQ(one.log[s].grad_norm, two.log[s].grad_norm) << "step " << s + 1;
  }
  fs::remove_all(dir);
}

// --resume once made you repeat --seq-len and --batch-size (the checkpoint knows them): without
// them the resumed run stopped on a settings mismatch.
TEST(Resume, ShapeComesFromTheCheckpoint) {
  const std::string dir = skytest::temp_dir("resume-shape");
  write_token_file(dir + "/train.bin", random_tokens(400, 256, 3));
  const std::string base = "train --config tiny --quiet --data " + dir + "/train.bin --out " + dir + "/run";
  CliResult a = run_cli(base + " --seq-len 8 --batch-size 3 --grad-accum 2 --steps 2");
  ASSERT_EQ(a.rc, 0) << a.out;
  CliResult b = run_cli(base + " --steps 3 --resume " + dir + "/run");
  EXPECT_EQ(b.rc, 0) << b.out;
  EXPECT_TRUE(contains(b.out, "trained to step 3")) << b.out;
  fs::remove_all(dir);
}

// The adopted shape was read with get<int>(): 2^32 + 8 wrapped to 8, 1e300 was an undefined
// conversion, and a state that is not an object threw a JSON exception naming no file.
TEST(Resume, CorruptSignatureIsNamed) {
  const std::string dir = skytest::temp_dir("resume-sig");
  write_token_file(dir + "/train.bin", random_tokens(400, 256, 3));
  const std::string base = "train --config tiny --quiet --data " + dir + "/train.bin --out " + dir + "/run";
  CliResult a = run_cli(base + " --seq-len 8 --batch-size 3 --steps 2");
  ASSERT_EQ(a.rc, 0) << a.out;
  const std::string sp = resolve_checkpoint(dir + "/run") + "/trainer_state.json";
  const json good = json::parse(std::ifstream(sp));
  auto expect = [&](const json& st, const std::string& needle) {
    std::ofstream(sp) << st.dump();
    CliResult b = run_cli(base + " --steps 3 --resume " + dir + "/run");
    EXPECT_NE(b.rc, 0);
    EXPECT_TRUE(contains(b.out, needle) && contains(b.out, "trainer_state.json")) << needle << ": " << b.out;
  };
  json st = good;
  st["signature"]["seq_len"] = (uint64_t(1) << 32) + 8;
  expect(st, "signature.seq_len must be a positive integer, got 4294967304");
  st["signature"]["seq_len"] = 1e300;
  expect(st, "signature.seq_len must be a positive integer, got 1e+300");
  st = good;
  st["signature"]["batch_size"] = 0;
  expect(st, "signature.batch_size must be a positive integer, got 0");
  st = good;
  st["signature"]["data_order"] = 3;
  expect(st, "signature.data_order must be a string");
  expect(json::array({1}), "not a JSON object");
  fs::remove_all(dir);
}

TEST(BadInput, DataLengthNotAMultipleOf4) {
  const std::string dir = skytest::temp_dir("bad-len"), data = dir + "/odd.bin";
  std::ofstream(data, std::ios::binary) << std::string(4 * 30 + 3, '\1');
  std::string msg = error_of([&] { train(tiny_options(data)); });
  EXPECT_TRUE(contains(msg, "123 bytes, not a multiple of 4") && contains(msg, data)) << msg;
  CliResult r = run_cli(std::string("train ") + kTinyFlags + " --steps 2 --data " + data);
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(contains(r.out, "not a multiple of 4") && contains(r.out, data)) << r.out;
  fs::remove_all(dir);
}

TEST(BadInput, TokenIdOutsideVocabulary) {
  const std::string dir = skytest::temp_dir("bad-vocab"), data = dir + "/oov.bin";
  auto toks = random_tokens(60, 256, 51);
  toks[17] = 256;  // the tiny preset's vocab is 256
  write_token_file(data, toks);
  std::string msg = error_of([&] { train(tiny_options(data)); });
  EXPECT_TRUE(contains(msg, "token 256 at index 17") && contains(msg, "vocab size 256")) << msg;
  CliResult r = run_cli(std::string("train ") + kTinyFlags + " --steps 2 --data " + data);
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(contains(r.out, "token 256 at index 17")) << r.out;
  fs::remove_all(dir);
}

TEST(BadInput, ResumeFromAnotherModelNamesBoth) {
  const std::string dir = skytest::temp_dir("bad-resume"), data = dir + "/train.bin";
  write_token_file(data, random_tokens(60, 256, 52));
  TrainOptions o = tiny_options(data);
  o.out_dir = dir + "/run";
  const std::string ckpt = train(o).final_checkpoint;
  // Another model: same preset, different width.
  ModelConfig other = ModelConfig::preset("tiny");
  other.hidden_size = 32;
  other.head_dim = 8;
  const std::string other_path = dir + "/other.json";
  std::ofstream(other_path) << other.to_hf_json().dump();

  TrainOptions r = tiny_options(data);
  r.config = other_path;
  r.resume = dir + "/run";
  r.steps = 4;
  std::string msg = error_of([&] { train(r); });
  EXPECT_TRUE(contains(msg, ckpt) && contains(msg, other_path)) << msg;
  CliResult c = run_cli("train --data " + data + " --seq-len 4 --batch-size 2 --steps 4 --quiet --resume " + dir +
                        "/run --config " + other_path);
  EXPECT_NE(c.rc, 0);
  EXPECT_TRUE(contains(c.out, ckpt) && contains(c.out, other_path)) << c.out;
  fs::remove_all(dir);
}

TEST(BadInput, NonFiniteLossStopsAtLastGoodCheckpoint) {
  const std::string dir = skytest::temp_dir("nonfinite"), data = dir + "/train.bin";
  write_token_file(data, random_tokens(60, 256, 53));
  // Adam moves every weight by ~lr per step: with lr 1e30 step 1 still computes a finite loss, but the
  // weights it leaves overflow float32 products in step 2's forward pass.
  TrainOptions o = tiny_options(data);
  o.steps = 5;
  o.schedule.lr = 1e30;
  o.adam.weight_decay = 0;
  o.grad_clip = 0;
  o.out_dir = dir + "/run";
  o.save_every = 1;
  const std::string good = (fs::path(o.out_dir) / "step-00000001").string();
  std::string msg = error_of([&] { train(o); });
  EXPECT_TRUE(contains(msg, "non-finite")) << msg;
  EXPECT_TRUE(contains(msg, "last good checkpoint is " + good)) << msg;
  // That checkpoint is complete, is what `latest` names, and loads.
  EXPECT_EQ(resolve_checkpoint(o.out_dir), good);
  Model m = Model::load(good);
  std::vector<float> am(m.layout.total), av(m.layout.total);
  EXPECT_EQ(load_checkpoint_state(good, am.data(), av.data(), m.layout.total).at("step"), 1);
  // Through the CLI: non-zero exit with the same message.
  CliResult r = run_cli(std::string("train ") + kTinyFlags + " --steps 5 --lr 1e30 --weight-decay 0 --grad-clip 0 " +
                        "--save-every 1 --data " + data + " --out " + dir + "/cli");
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(contains(r.out, "non-finite") && contains(r.out, "step-00000001")) << r.out;
  fs::remove_all(dir);
}

TEST(BadInput, InvalidFlagValuesNameTheFlag) {
  const std::string dir = skytest::temp_dir("bad-flags"), data = dir + "/train.bin";
  write_token_file(data, random_tokens(60, 256, 54));
  const std::string base = std::string("train --config tiny --seq-len 4 --steps 1 --quiet --data ") + data;
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--lr", "-1"},
           {"--batch-size", "0"},
           {"--aux-loss", "bogus"},
           {"--capacity-factor", "nan"},
           {"--min-lr-ratio", "-0.5"},  // once accepted: the cosine tail then ran with a negative LR
           {"--z-loss", "inf"}}) {       // once accepted: reported later as a non-finite loss
    CliResult r = run_cli(base + " " + flag + " " + value);
    EXPECT_NE(r.rc, 0) << flag << " " << value;
    EXPECT_TRUE(contains(r.out, flag)) << flag << " " << value << ": " << r.out;
  }
  // Balancing flags that do not apply to the chosen --balance are errors, not ignored.
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"--balance aux-free --aux-alpha 0.02", "--aux-alpha applies to --balance adaptive-aux or aux"},
           {"--balance none --aux-beta 0.5", "--aux-beta applies"},
           {"--balance-speed 0.01", "--balance-speed applies to --balance aux-free"},
           {"--balance aux --aux-adaptive on", "--aux-adaptive on contradicts --balance aux"},
           {"--balance aux-free --balance-speed 0", "--balance-speed must be finite and positive"},
           {"--balance sideways", "--balance"}}) {
    CliResult r = run_cli(base + " " + args);
    EXPECT_NE(r.rc, 0) << args;
    EXPECT_TRUE(contains(r.out, needle)) << args << ": " << r.out;
  }
  // The library checks the same values (the CLI's parser rejects --aux-loss itself).
  TrainOptions o = tiny_options(data);
  o.schedule.lr = -1;
  EXPECT_TRUE(contains(error_of([&] { train(o); }), "--lr")) << error_of([&] { train(o); });
  o = tiny_options(data);
  o.batch_size = 0;
  EXPECT_TRUE(contains(error_of([&] { train(o); }), "--batch-size"));
  o = tiny_options(data);
  o.capacity_factor = NAN;
  EXPECT_TRUE(contains(error_of([&] { train(o); }), "--capacity-factor"));
  fs::remove_all(dir);
}
