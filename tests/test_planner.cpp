// The parallel-layout planner (src/dist/planner.h): the report's unbalanced-pipeline example, the
// 146B run on 1536 GPUs, memory accounting, and the errors a bad layout must give.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"
#include "dist/planner.h"
#include "ref.h"

using namespace sky;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Runs the CLI; exit status and everything it printed.
std::pair<int, std::string> run_cli(const std::string& args) {
  std::string out;
  FILE* p = popen((std::string(SKYMOE_BIN) + " " + args + " 2>&1").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// Costs in "layer units", as in the report's figure 6: every layer 1, the LM head + loss about one
// more layer on the last stage, the embedding a little on the first; memory no object.
CostModel report_example(int stages, double head_units, int micro_batches = 16) {
  CostModel cm;
  cm.num_layers = 24;
  cm.stages = stages;
  cm.micro_batches = micro_batches;
  cm.layer_fwd_s = 1.0 / 3, cm.layer_bwd_s = 2.0 / 3;
  cm.head_fwd_s = head_units / 3, cm.head_bwd_s = 2 * head_units / 3;
  cm.embed_fwd_s = 0.02, cm.embed_bwd_s = 0.04;
  return cm;
}

// A 24-layer dense model whose LM head + loss costs about one layer, on one device per stage.
ModelConfig model24() {
  ModelConfig c = ModelConfig::preset("train-dense");
  c.num_layers = 24, c.hidden_size = 1024, c.num_heads = c.num_kv_heads = 16, c.head_dim = 64;
  c.intermediate_size = c.moe_intermediate_size = 2816;
  c.vocab_size = 14560;  // 2*h*V + 5V ~ one layer's 29.9 MFLOP/token at seq 2048
  return c;
}

PlanRequest skywork_request() {
  PlanRequest r;
  r.model = ModelConfig::preset("skywork-moe-146b");
  r.cluster.devices = 1536, r.cluster.devices_per_node = 8, r.cluster.memory_gib = 80;
  r.cluster.tflops = 160, r.cluster.peak_tflops = 312, r.cluster.intra_gbs = 200, r.cluster.inter_gbs = 12.5;
  // Table 2: native sequence length 8192. The report gives no global batch; 3072 x 8192 = 25M tokens.
  r.batch.global_batch = 3072, r.batch.micro_batch = 1, r.batch.seq_len = 8192;
  r.pp = 12, r.tp = 4, r.experts = ExpertLayout::EDP, r.zero1 = true;
  return r;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

int sum(const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), 0); }
std::vector<int> layers_of(const SplitPlan& p) {
  std::vector<int> v;
  for (auto& s : p.stages) v.push_back(s.layers);
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// (1) Report appendix B.2: 24 layers, [6,6,6,6] -> [5,5,5,5,4].
// ---------------------------------------------------------------------------------------------

TEST(Planner, ReportExampleFiveStages) {
  // Five stages: the last one gets a layer less because it also pays LM head + loss.
  SplitPlan five = optimize_split(report_example(5, 1.0));
  ASSERT_TRUE(five.feasible);
  EXPECT_EQ(layers_of(five), (std::vector<int>{5, 5, 5, 5, 4}));
  EXPECT_EQ(five.pp_layers(), "5,5,5,5,4");
  EXPECT_EQ(five.recompute_layers(), "0,0,0,0,0");
  // Against the report's uniform 4-stage pipeline [6,6,6,6], whose last stage is 7 layer units: the
  // slowest stage and the bubble both shrink.
  SplitPlan four = evaluate_split(report_example(4, 1.0), {6, 6, 6, 6});
  EXPECT_NEAR(four.stage_max_s, 7.0, 0.01);
  EXPECT_NEAR(five.stage_max_s, 5.0 + 0.06, 1e-9);  // 5 layers + the embedding on stage 0
  EXPECT_LT(five.bubble, four.bubble);
  // Balanced stages: the only idle time left is the fill and drain, (P-1)/(M+P-1).
  EXPECT_NEAR(five.bubble, 4.0 / 20, 0.01);
}

TEST(Planner, ReportExampleFourStagesHeavyHead) {
  // With a head worth 1.5 layers, four stages cannot stay uniform: the planner moves a layer off
  // the last stage and beats [6,6,6,6] by about 7% in step time (~5 bubble points).
  CostModel cm = report_example(4, 1.5);
  SplitPlan plan = optimize_split(cm), uni = evaluate_split(cm, uniform_split(24, 4));
  EXPECT_EQ(layers_of(uni), (std::vector<int>{6, 6, 6, 6}));
  auto v = layers_of(plan);
  EXPECT_EQ(sum(v), 24);
  EXPECT_EQ(*std::min_element(v.begin(), v.end()), v.back()) << plan.pp_layers();
  EXPECT_LT(v.back(), 6);
  EXPECT_NEAR(plan.stage_max_s, 7.0, 1e-9);
  EXPECT_NEAR(uni.stage_max_s, 7.5, 1e-9);
  EXPECT_NEAR(plan.step_s / uni.step_s, 7.0 / 7.5, 1e-9);
  EXPECT_LT(plan.bubble, uni.bubble - 0.04);
}

TEST(Planner, ReportExampleFromAModel) {
  // The same situation from a real config: 24 layers whose LM head + loss FLOPs equal a layer's.
  ModelConfig c = model24();
  double ratio = head_fwd_flops_per_token(c) / layer_fwd_flops_per_token(c, 2048);
  EXPECT_NEAR(ratio, 1.0, 0.02);
  PlanRequest r;
  r.model = c;
  r.cluster.devices = 5, r.cluster.devices_per_node = 8, r.cluster.memory_gib = 80, r.cluster.tflops = 100;
  r.batch = {16, 1, 2048};
  r.pp = 5, r.tp = 1;
  PlanResult res = plan(r);
  EXPECT_EQ(res.best.plan.pp_layers(), "5,5,5,5,4");
  // Five stages on 24 layers cannot be uniform; the even split that puts the spare layers first
  // happens to be [5,5,5,5,4] too. Four stages: uniform [6,6,6,6] is beaten.
  r.cluster.devices = 4, r.pp = 4;
  r.model.vocab_size = 21800;  // head ~1.5 layers
  PlanResult four = plan(r);
  auto v = layers_of(four.best.plan);
  EXPECT_EQ(*std::min_element(v.begin(), v.end()), v.back()) << four.best.plan.pp_layers();
  EXPECT_EQ(four.best.uniform.pp_layers(), "6,6,6,6");
  EXPECT_LT(four.best.plan.step_s, four.best.uniform.step_s * 0.97);
  EXPECT_LT(four.best.plan.bubble, four.best.uniform.bubble);
}

TEST(Planner, RecomputeUnderTightMemory) {
  // Memory for 5 full layers x (P - s) micro-batches does not fit on early stages: they recompute,
  // and the optimizer recomputes as little as it can.
  CostModel cm = report_example(4, 1.0);
  cm.layer_static.params = 1;
  cm.layer_act = 10, cm.layer_ckpt_act = 1;
  cm.cap_bytes = 150;
  SplitPlan p = optimize_split(cm);
  ASSERT_TRUE(p.feasible);
  for (size_t s = 0; s < p.stages.size(); s++) {
    EXPECT_LE(p.stages[s].mem.total(), 150);
    if (p.stages[s].recompute > 0) {  // one fewer recomputed layer would not fit
      EXPECT_GT(stage_cost(cm, int(s), p.stages[s].layers, p.stages[s].recompute - 1).mem.total(), 150);
    }
  }
  EXPECT_GT(p.stages[0].recompute, 0);
  EXPECT_EQ(p.stages[3].recompute, 0);  // one micro-batch in flight
}

// ---------------------------------------------------------------------------------------------
// (2) Skywork-MoE 146B on 1536 A800-80G: PP 12, EDP with TP 4, DP 32, ZeRO-1 (report B.3).
// ---------------------------------------------------------------------------------------------

TEST(Planner, Skywork146BFits) {
  PlanRequest r = skywork_request();
  PlanResult res = plan(r);
  const LayoutPlan& lp = res.best;
  EXPECT_EQ(lp.layout.dp, 32);
  EXPECT_EQ(lp.layout.ep_size(r.model), 4);
  EXPECT_EQ(lp.micro_batches, 96);
  ASSERT_TRUE(lp.plan.feasible);
  ASSERT_EQ(lp.plan.stages.size(), 12u);
  EXPECT_EQ(sum(layers_of(lp.plan)), 52);
  for (auto& st : lp.plan.stages) {
    EXPECT_LE(st.mem.total(), 80 * kGiB);
    EXPECT_GE(st.layers, 1);
  }
  EXPECT_LE(lp.plan.step_s, lp.uniform.step_s * (1 + 1e-12));
  // A sanity range around the report's 690 tokens/s per GPU and 38% MFU.
  EXPECT_GT(lp.tokens_per_s_per_device, 400);
  EXPECT_LT(lp.tokens_per_s_per_device, 1200);
  EXPECT_GT(lp.mfu, 0.2);
  EXPECT_LT(lp.mfu, 0.6);

  // The CLI prints it, with the split as flags the trainer takes.
  auto [rc, out] = run_cli(
      "plan --preset skywork-moe-146b --devices 1536 --memory-gb 80 --tflops 160 --peak-tflops 312 "
      "--global-batch 3072 --seq-len 8192 --pp 12 --tp 4 --expert-layout edp --zero 1");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("--pp-layers " + lp.plan.pp_layers() + " --recompute-layers " + lp.plan.recompute_layers()),
            std::string::npos) << out;
  EXPECT_NE(out.find("uniform"), std::string::npos);
  auto [rcj, js] = run_cli(
      "plan --preset skywork-moe-146b --devices 1536 --memory-gb 80 --tflops 160 --global-batch 3072 "
      "--seq-len 8192 --pp 12 --tp 4 --expert-layout edp --zero 1 --json");
  ASSERT_EQ(rcj, 0) << js;
  auto j = nlohmann::json::parse(js);
  EXPECT_EQ(j["plan"]["pp_layers"], lp.plan.pp_layers());
  EXPECT_EQ(j["plan"]["stages"].size(), 12u);
  EXPECT_EQ(j["layout"]["expert_layout"], "edp");
  auto [rch, help] = run_cli("plan --help");
  EXPECT_EQ(rch, 0);
  EXPECT_NE(help.find("skymoe plan"), std::string::npos) << help;
}

TEST(Planner, SearchFindsAValidLayout) {
  PlanRequest r = skywork_request();
  r.pp.reset(), r.tp.reset(), r.experts.reset(), r.zero1.reset();
  PlanResult res = plan(r);
  EXPECT_GT(res.searched, 10);
  const Layout& l = res.best.layout;
  EXPECT_EQ(l.pp * l.tp * l.dp, 1536);
  EXPECT_LE(res.best.plan.max_mem, 80 * kGiB);
  // Whatever was found is a valid layout (EP = DP x TP, for one, rarely fits 16 experts).
  EXPECT_NO_THROW(validate_layout(r.model, r.cluster, r.batch, l));
  for (size_t i = 1; i < res.candidates.size(); i++)
    EXPECT_LE(res.candidates[i - 1].plan.step_s, res.candidates[i].plan.step_s * (1 + 1e-9));
}

// ---------------------------------------------------------------------------------------------
// (3) Memory accounting.
// ---------------------------------------------------------------------------------------------

TEST(Planner, ZeroOneShardsOptimizerOverDP) {
  ModelConfig c = model24();
  Cluster cl;
  cl.devices = 16, cl.tflops = 100;
  Batch b{64, 1, 2048};
  Layout no{2, 1, 8, ExpertLayout::None, false}, z1 = no;
  z1.zero1 = true;
  CostModel a = build_cost_model(c, cl, b, no), z = build_cost_model(c, cl, b, z1);
  EXPECT_NEAR(z.layer_static.optim, a.layer_static.optim / 8, 1e-6 * a.layer_static.optim);
  EXPECT_NEAR(z.embed_static.optim, a.embed_static.optim / 8, 1e-6 * a.embed_static.optim);
  EXPECT_EQ(z.layer_static.params, a.layer_static.params);
  EXPECT_EQ(z.layer_static.grads, a.layer_static.grads);
  // Bytes per parameter: bf16 weight, fp32 grad, 12 bytes of AdamW state (fp32 master, m, v).
  EXPECT_NEAR(a.layer_static.grads / a.layer_static.params, 2.0, 1e-12);
  EXPECT_NEAR(a.layer_static.optim / a.layer_static.params, 6.0, 1e-12);

  // One device, one stage: the parameters add up to the model's param_count().
  cl.devices = 1;
  CostModel one = build_cost_model(c, cl, {4, 1, 2048}, {1, 1, 1, ExpertLayout::None, false});
  double params = (one.num_layers * one.layer_static.params + one.embed_static.params + one.head_static.params) / 2;
  EXPECT_NEAR(params, double(c.param_count()), 1.0);

  // MoE under EDP: experts are copied across DP, so ZeRO-1 shards them over DP too; under EP they
  // are not copied and nothing is left to shard.
  ModelConfig m = ModelConfig::preset("skywork-moe-146b");
  Cluster big;
  big.devices = 1536, big.tflops = 160;
  Batch bb{3072, 1, 4096};
  CostModel e0 = build_cost_model(m, big, bb, {12, 4, 32, ExpertLayout::EDP, false});
  CostModel e1 = build_cost_model(m, big, bb, {12, 4, 32, ExpertLayout::EDP, true});
  EXPECT_NEAR(e1.layer_static.optim, e0.layer_static.optim / 32, 1e-6 * e0.layer_static.optim);
  // Per device: 4 of 16 whole experts + a quarter of attention, bf16.
  double per_layer = 4.0 * 3 * 4608 * 12288 + 4.0 * 4608 * 4608 / 4 + 2 * 4608 + 4608 * 16;
  EXPECT_NEAR(e0.layer_static.params, 2 * per_layer, 1e-9 * per_layer);
}

TEST(Planner, RecomputeAndInFlightActivations) {
  ModelConfig c = model24();
  Cluster cl;
  cl.devices = 4, cl.tflops = 100;
  CostModel cm = build_cost_model(c, cl, {32, 1, 2048}, {4, 1, 1, ExpertLayout::None, false});
  ASSERT_EQ(cm.micro_batches, 32);
  EXPECT_LT(cm.layer_ckpt_act, cm.layer_act / 5);  // a recomputed layer keeps only its input
  // Stage s keeps P - s micro-batches: 4, 3, 2, 1 (the last also its head's logits).
  for (int s = 0; s < 3; s++)
    EXPECT_NEAR(stage_cost(cm, s, 6, 0).mem.acts, (4 - s) * 6 * cm.layer_act, 1e-6);
  EXPECT_NEAR(stage_cost(cm, 3, 6, 0).mem.acts, 6 * cm.layer_act + cm.head_act, 1e-6);
  // Recompute lowers it: each recomputed layer keeps its input instead; one layer's full
  // activations are rebuilt at a time.
  double a0 = stage_cost(cm, 0, 6, 0).mem.acts;
  for (int r = 1; r <= 6; r++) {
    double ar = stage_cost(cm, 0, 6, r).mem.acts;
    EXPECT_NEAR(ar, 4 * ((6 - r) * cm.layer_act + r * cm.layer_ckpt_act) + cm.layer_act, 1e-6);
    EXPECT_LT(ar, a0);
    // and costs one more forward per recomputed layer
    EXPECT_NEAR(stage_cost(cm, 0, 6, r).bwd_s - stage_cost(cm, 0, 6, 0).bwd_s, r * cm.layer_fwd_s, 1e-12);
  }
  // Fewer micro-batches than stages: no stage holds more than M.
  CostModel few = build_cost_model(c, cl, {2, 1, 2048}, {4, 1, 1, ExpertLayout::None, false});
  EXPECT_NEAR(stage_cost(few, 0, 6, 0).mem.acts, 2 * 6 * few.layer_act, 1e-6);
}

TEST(Planner, ProfileCalibrationReproducesTheMeasuredStep) {
  // Single process at the profile's shape: the calibrated model predicts exactly the measured
  // forward, backward and optimizer seconds.
  std::string dir = skytest::temp_dir("plan-profile");
  std::string path = dir + "/p.json";
  std::ofstream(path) << R"({"preset":"train-moe","threads":2,"batch_size":8,"seq_len":256,"steps":3,
    "tokens_per_s":3000,"step_s":0.9,"forward_s":0.25,"backward_s":0.55,"optimizer_s":0.1})";
  std::ifstream f(path);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Calibration cal = calibrate(text, 0.2, path);
  ModelConfig c = ModelConfig::preset("train-moe");
  Cluster cl;
  cl.devices = 1, cl.tflops = 0.2;
  CostModel cm = build_cost_model(c, cl, {8, 8, 256}, {1, 1, 1, ExpertLayout::None, false}, cal);
  SplitPlan p = evaluate_split(cm, {8});
  EXPECT_NEAR(p.stages[0].fwd_s, 0.25, 1e-9);
  EXPECT_NEAR(p.stages[0].bwd_s, 0.55, 1e-9);
  EXPECT_NEAR(p.step_s, 0.9, 1e-9);
  // Without --tflops the profile's own achieved rate is used.
  double tf = profile_tflops(text, path);
  EXPECT_NEAR(tf, 8 * 256 * model_flops_per_token(c, 256) / 0.8 / 1e12, 1e-12);
  EXPECT_NE(error_of([&] { calibrate(R"({"forward_s":1})", 1, "x.json"); }).find("x.json"), std::string::npos);
  // The CLI takes it.
  auto [rc, out] = run_cli("plan --preset train-moe --devices 2 --global-batch 16 --seq-len 256 --micro-batch 8 "
                           "--profile " + path);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("scale fwd"), std::string::npos) << out;
}

// ---------------------------------------------------------------------------------------------
// (4) Bad layouts are rejected, saying why.
// ---------------------------------------------------------------------------------------------

TEST(Planner, BadLayoutsAreRejected) {
  auto expect = [](PlanRequest r, const std::string& needle) {
    std::string e = error_of([&] { plan(r); });
    EXPECT_NE(e.find(needle), std::string::npos) << "want '" << needle << "', got: " << e;
  };
  PlanRequest r = skywork_request();
  {
    PlanRequest x = r;
    x.dp = 30;
    expect(x, "PP 12 x TP 4 x DP 30 = 1440 devices, but --devices is 1536");
  }
  {
    PlanRequest x = r;
    x.experts = ExpertLayout::EP;  // EP = DP x TP = 128
    expect(x, "EP size 128 (= DP x TP) exceeds the model's 16 experts");
  }
  {
    PlanRequest x = r;
    x.experts = ExpertLayout::ETP;  // EP = DP = 32
    expect(x, "EP size 32 (= DP) exceeds the model's 16 experts");
  }
  {
    PlanRequest x = r;
    x.cluster.devices = 64 * 12, x.pp = 64, x.tp = 1;
    x.batch.global_batch = 12;
    expect(x, "PP 64 exceeds the model's 52 layers");
  }
  {
    PlanRequest x = r;
    x.cluster.devices_per_node = 48, x.cluster.devices = 48 * 12, x.tp = 48, x.batch.global_batch = 1;
    expect(x, "TP 48 exceeds the model's 36 attention heads");
  }
  {
    PlanRequest x = r;
    x.tp = 16;  // more than a node of 8
    x.cluster.devices = 16 * 12;
    expect(x, "TP 16 must stay inside a node");
  }
  {
    PlanRequest x = r;
    x.tp = 3;  // 36 heads split 12 each, but 3 ranks of an 8-GPU node would straddle nodes
    x.cluster.devices = 3 * 12 * 32;
    expect(x, "must divide --devices-per-node 8");
  }
  {
    PlanRequest x = r;
    x.batch.global_batch = 3000;
    expect(x, "--global-batch 3000 is not a multiple of DP 32 x --micro-batch 1");
  }
  {
    PlanRequest x = r;
    x.model = ModelConfig::preset("skywork-13b");
    x.batch.seq_len = 4096;
    expect(x, "--expert-layout edp needs an MoE model");
  }
  {
    PlanRequest x = r;
    x.pp_layers = std::vector<int>(12, 4);
    expect(x, "--pp-layers adds up to 48 layers; the model has 52");
  }
  // Uneven heads are fine for TP (DESIGN section 5): 36 heads over 8 ranks.
  {
    PlanRequest x = r;
    x.tp = 8, x.dp = 16;
    EXPECT_NO_THROW(plan(x));
  }
}

TEST(Planner, InfeasibleMemorySaysWhatIsNeeded) {
  PlanRequest r = skywork_request();
  r.cluster.memory_gib = 16;
  std::string e = error_of([&] { plan(r); });
  EXPECT_NE(e.find("does not fit in 16.0 GiB per device"), std::string::npos) << e;
  auto at = e.find("smallest memory that fits this layout is ");
  ASSERT_NE(at, std::string::npos) << e;
  double need = std::stod(e.substr(at + 41));
  EXPECT_GT(need, 16);
  // ... and it is the real threshold: a little more fits, a little less does not.
  r.cluster.memory_gib = need + 0.05;
  EXPECT_TRUE(plan(r).best.plan.feasible);
  r.cluster.memory_gib = need - 0.2;
  EXPECT_THROW(plan(r), Error);

  // A search that finds nothing says the least any layout would need.
  PlanRequest s = skywork_request();
  s.pp.reset(), s.tp.reset(), s.experts.reset(), s.zero1.reset();
  s.cluster.memory_gib = 2.5;
  e = error_of([&] { plan(s); });
  EXPECT_NE(e.find("no layout fits in 2.5 GiB per device: the smallest memory that fits is"), std::string::npos)
      << e;

  auto [rc, out] = run_cli("plan --preset skywork-moe-146b --devices 1536 --memory-gb 16 --tflops 160 "
                           "--global-batch 3072 --seq-len 8192 --pp 12 --tp 4 --expert-layout edp --zero 1");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("smallest memory that fits"), std::string::npos) << out;
  std::tie(rc, out) = run_cli("plan --preset skywork-moe-146b --devices 1536 --tflops 160 --global-batch 3072 "
                              "--seq-len 8192 --pp 12 --tp 4 --dp 30");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("but --devices is 1536"), std::string::npos) << out;
}

TEST(Planner, GivenSplitIsEvaluated) {
  // Any split is accepted: the planner evaluates [4,4,...,8] as given, recompute and all.
  PlanRequest r = skywork_request();
  r.pp_layers = {8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4};
  r.recompute_layers = {8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  PlanResult res = plan(r);
  EXPECT_EQ(res.best.plan.pp_layers(), "8,4,4,4,4,4,4,4,4,4,4,4");
  EXPECT_EQ(res.best.plan.recompute_layers(), "8,0,0,0,0,0,0,0,0,0,0,0");
  PlanResult opt = plan(skywork_request());
  EXPECT_GT(res.best.plan.step_s, opt.best.plan.step_s);
}
