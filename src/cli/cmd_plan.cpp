// `skymoe plan`: choose PP x TP x DP, the expert layout, ZeRO and the per-stage layer and recompute
// split for a model on a cluster (src/dist/planner.h; docs/planner.md explains the cost model).
#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/planner.h"

namespace sky::cli {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::vector<int> parse_counts(const std::string& s, const char* flag) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long x = std::strtol(item.c_str(), &end, 10);
    SKY_CHECK(!item.empty() && *end == 0 && x >= 0 && x <= 1 << 20, "{}: '{}' is not a non-negative integer", flag,
              item);
    v.push_back(int(x));
  }
  SKY_CHECK(!v.empty() && s.back() != ',', "{}: expected a comma-separated list like 5,5,5,5,4, got '{}'", flag, s);
  return v;
}

nlohmann::json split_json(const SplitPlan& sp, double tok_s_dev, double mfu) {
  nlohmann::json stages = nlohmann::json::array();
  for (auto& st : sp.stages)
    stages.push_back({{"layers", st.layers},
                      {"recompute", st.recompute},
                      {"memory_gib",
                       {{"params", st.mem.params / kGiB},
                        {"grads", st.mem.grads / kGiB},
                        {"optimizer", st.mem.optim / kGiB},
                        {"activations", st.mem.acts / kGiB},
                        {"reserve", st.mem.other / kGiB},
                        {"total", st.mem.total() / kGiB}}},
                      {"fwd_s", st.fwd_s},
                      {"bwd_s", st.bwd_s},
                      {"time_s", st.time_s()}});
  return {{"feasible", sp.feasible},
          {"pp_layers", sp.pp_layers()},
          {"recompute_layers", sp.recompute_layers()},
          {"stages", stages},
          {"slowest_stage_s", sp.stage_max_s},
          {"pipeline_s", sp.pipeline_s},
          {"dp_exposed_s", sp.dp_exposed_s},
          {"step_s", sp.step_s},
          {"bubble", sp.bubble},
          {"max_memory_gib", sp.max_mem / kGiB},
          {"tokens_per_s_per_device", tok_s_dev},
          {"mfu", mfu}};
}

std::string emit_flags(const ModelConfig& c, const LayoutPlan& lp) {
  const Layout& l = lp.layout;
  std::string s = fmt::format("--pp {} --tp {} --dp {}", l.pp, l.tp, l.dp);
  if (c.has_moe()) s += fmt::format(" --expert-layout {}", expert_layout_name(l.experts));
  return s + fmt::format(" --zero {} --pp-layers {} --recompute-layers {}", l.zero1 ? 1 : 0, lp.plan.pp_layers(),
                         lp.plan.recompute_layers());
}

void print_text(const PlanRequest& r, const std::string& model_name, const PlanResult& res, int top) {
  const ModelConfig& c = r.model;
  const Cluster& cl = r.cluster;
  const LayoutPlan& lp = res.best;
  const SplitPlan &p = lp.plan, &u = lp.uniform;
  const double tokens = double(r.batch.global_batch) * r.batch.seq_len;
  auto count = [](double n) { return n >= 1e9 ? fmt::format("{:.1f}B", n / 1e9) : fmt::format("{:.0f}M", n / 1e6); };
  fmt::print("model    {}: {} parameters ({} active per token), {} layers{}\n", model_name,
             count(c.param_count()), count(c.active_param_count()), c.num_layers,
             c.has_moe() ? fmt::format(", {} experts top-{}", c.num_experts, c.top_k) : "");
  fmt::print("cluster  {} devices ({} per node), {} GiB each, {:.3g} TFLOP/s achievable{}, {} GB/s in a node, {} GB/s "
             "across\n", cl.devices, cl.devices_per_node, cl.memory_gib, cl.tflops,
             cl.peak_tflops > 0 ? fmt::format(" (peak {})", cl.peak_tflops) : "", cl.intra_gbs, cl.inter_gbs);
  fmt::print("batch    {} sequences x {} tokens = {:.2f}M tokens a step; micro-batch {} -> {} micro-batches per "
             "pipeline\n", r.batch.global_batch, r.batch.seq_len, tokens / 1e6, r.batch.micro_batch, lp.micro_batches);
  if (!r.cal.note.empty()) fmt::print("profile  {}\n", r.cal.note);
  fmt::print("layout   {}{}\n\n", lp.layout.describe(c),
             res.searched > 1 ? fmt::format("  (best of {} valid layouts)", res.searched) : "");

  const bool given = !r.pp_layers.empty();
  fmt::print("{:>5} | {:<50} | {:<30}\n", "", given ? "given split" : "planned split", "uniform split");
  fmt::print("{:>5} | {:>6} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} | {:>6} {:>5} {:>6} {:>8}\n", "stage", "layers",
             "recmp", "param", "grad", "optim", "activ", "total", "time ms", "layers", "recmp", "total", "time ms");
  for (size_t s = 0; s < p.stages.size(); s++) {
    const StagePlan &a = p.stages[s], &b = u.stages[s];
    fmt::print("{:>5} | {:>6} {:>5} {:>6.1f} {:>6.1f} {:>6.1f} {:>6.1f} {:>6.1f} {:>8.1f} | {:>6} {:>5} {:>6.1f} "
               "{:>8.1f}{}\n", s, a.layers, a.recompute, a.mem.params / kGiB, a.mem.grads / kGiB, a.mem.optim / kGiB,
               a.mem.acts / kGiB, a.mem.total() / kGiB, a.time_s() * 1e3, b.layers, b.recompute, b.mem.total() / kGiB,
               b.time_s() * 1e3, b.mem.total() > cl.memory_gib * kGiB ? "  over cap" : "");
  }
  fmt::print("(memory in GiB per device incl. {} GiB reserve; time = forward + backward of one micro-batch)\n\n",
             cl.reserve_gib);
  auto row = [&](const char* name, const std::string& a, const std::string& b) {
    fmt::print("{:<32} {:>18} {:>18}\n", name, a, b);
  };
  auto f = [](const char* spec, double v) { return fmt::format(fmt::runtime(spec), v); };
  auto pct = [](double v) { return fmt::format("{:.1f}%", v * 100); };
  row("", given ? "given" : "planned", "uniform");
  row("slowest stage (ms)", f("{:.1f}", p.stage_max_s * 1e3), f("{:.1f}", u.stage_max_s * 1e3));
  row("pipeline (M+P-1) x slowest (s)", f("{:.3f}", p.pipeline_s), f("{:.3f}", u.pipeline_s));
  row("exposed DP sync + optimizer (s)", f("{:.3f}", p.dp_exposed_s), f("{:.3f}", u.dp_exposed_s));
  row("step time (s)", f("{:.3f}", p.step_s), f("{:.3f}", u.step_s));
  row("bubble", pct(p.bubble), pct(u.bubble));
  row("max memory (GiB)", f("{:.1f}", p.max_mem / kGiB),
      f("{:.1f}", u.max_mem / kGiB) + (u.feasible ? "" : " (over)"));
  row("tokens/s per device", f("{:.0f}", lp.tokens_per_s_per_device),
      u.feasible ? f("{:.0f}", lp.uniform_tokens_per_s_per_device) : "-");
  row("MFU", pct(lp.mfu), u.feasible ? pct(lp.uniform_mfu) : "-");
  if (u.feasible)
    fmt::print("\nplanned vs uniform: step time {:+.1f}%, bubble {:+.1f} points\n", (p.step_s / u.step_s - 1) * 100,
               (p.bubble - u.bubble) * 100);
  else
    fmt::print("\nthe uniform split does not fit in {} GiB even with every layer recomputed\n", cl.memory_gib);
  fmt::print("\nflags: {}\n", emit_flags(c, lp));

  if (res.candidates.size() > 1 && top > 1) {
    fmt::print("\nfastest layouts:\n{:<52} {:>9} {:>9} {:>8} {:>9}  {}\n", "layout", "step s", "tok/s/dev", "bubble",
               "max GiB", "split");
    for (int i = 0; i < std::min<int>(top, res.candidates.size()); i++) {
      const LayoutPlan& x = res.candidates[i];
      fmt::print("{:<52} {:>9.3f} {:>9.0f} {:>7.1f}% {:>9.1f}  {}\n", x.layout.describe(c), x.plan.step_s,
                 x.tokens_per_s_per_device, x.plan.bubble * 100, x.plan.max_mem / kGiB, x.plan.pp_layers());
    }
  }
}

}  // namespace

int cmd_plan(int argc, char** argv) {
  for (int i = 1; i < argc; i++)
    if (std::string(argv[i]) == "--inference") return cmd_plan_inference(argc, argv);
  CLI::App app{
      "Plan a parallel training layout: PP x TP x DP, expert layout (none|ep|etp|edp), ZeRO-1, and the layers and\n"
      "recomputed layers per pipeline stage that minimize the slowest stage under the memory cap (report B.2).\n"
      "Unfixed parts of the layout are searched. The cost model is described in docs/planner.md.\n"
      "`skymoe plan --inference ...` plans multi-process inference instead (memory per rank, --tp-shares).\n"
      "  skymoe plan --preset skywork-moe-146b --devices 1536 --memory-gb 80 --tflops 160 --peak-tflops 312 \\\n"
      "      --global-batch 3072 --seq-len 8192 --pp 12 --tp 4 --expert-layout edp --zero 1"};
  app.name("skymoe plan");
  PlanRequest r;
  std::string model, experts, pp_layers, recompute, profile;
  int pp = 0, tp = 0, dp = 0, zero = -1, top = 5;
  bool json_out = false;
  app.add_option("--preset,--config", model, "preset name or config.json")->required();
  app.add_option("--devices", r.cluster.devices, "devices in the cluster")->required()->check(positive_int());
  app.add_option("--devices-per-node", r.cluster.devices_per_node, "devices per node (TP stays inside one)")
      ->capture_default_str()->check(positive_int());
  app.add_option("--memory-gb", r.cluster.memory_gib, "memory per device, GiB")->capture_default_str()
      ->check(positive_number());
  app.add_option("--tflops", r.cluster.tflops, "achievable bf16 matmul TFLOP/s per device (optional with --profile)")
      ->check(positive_number());
  app.add_option("--peak-tflops", r.cluster.peak_tflops, "peak TFLOP/s per device for MFU (default: --tflops)")
      ->check(positive_number());
  app.add_option("--intra-gbs", r.cluster.intra_gbs, "collective bus bandwidth per device inside a node, GB/s")
      ->capture_default_str()->check(positive_number());
  app.add_option("--inter-gbs", r.cluster.inter_gbs, "collective bus bandwidth per device across nodes, GB/s")
      ->capture_default_str()->check(positive_number());
  app.add_option("--reserve-gb", r.cluster.reserve_gib, "memory per device kept for runtime, buffers, fragmentation")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--global-batch", r.batch.global_batch, "sequences per optimizer step")->required()
      ->check(positive_int());
  app.add_option("--micro-batch", r.batch.micro_batch, "sequences per micro-batch")->capture_default_str()
      ->check(positive_int());
  app.add_option("--seq-len", r.batch.seq_len, "tokens per sequence")->required()->check(positive_int());
  app.add_option("--pp", pp, "pipeline stages (default: searched)")->check(positive_int());
  app.add_option("--tp", tp, "tensor-parallel size (default: searched)")->check(positive_int());
  app.add_option("--dp", dp, "data-parallel size (default: devices / (PP x TP))")->check(positive_int());
  app.add_option("--expert-layout", experts, "none | ep | etp | edp (default: searched)")
      ->check(CLI::IsMember({"none", "ep", "etp", "edp"}));
  app.add_option("--zero", zero, "0 | 1: ZeRO-1 shards the optimizer state over DP (default: searched)")
      ->check(CLI::IsMember({0, 1}));
  app.add_option("--pp-layers", pp_layers, "evaluate this split (e.g. 5,5,5,5,4) instead of optimizing one");
  app.add_option("--recompute-layers", recompute, "with --pp-layers: recomputed layers per stage (default: fewest "
                 "that fit)");
  app.add_option("--profile", profile, "calibrate with the JSON of `skymoe bench train --json`");
  app.add_option("--top", top, "layouts listed after a search")->capture_default_str()->check(non_negative_int());
  app.add_flag("--json", json_out, "print one JSON object");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  r.model = ModelConfig::resolve(model);
  if (pp) r.pp = pp;
  if (tp) r.tp = tp;
  if (dp) r.dp = dp;
  if (!experts.empty()) r.experts = parse_expert_layout(experts);
  if (zero >= 0) r.zero1 = zero == 1;
  if (!pp_layers.empty()) r.pp_layers = parse_counts(pp_layers, "--pp-layers");
  if (!recompute.empty()) {
    SKY_CHECK(!pp_layers.empty(), "--recompute-layers needs --pp-layers");
    r.recompute_layers = parse_counts(recompute, "--recompute-layers");
  }
  if (!profile.empty()) {
    std::ifstream f(profile);
    SKY_CHECK(f.good(), "--profile: cannot read '{}'", profile);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (r.cluster.tflops <= 0) r.cluster.tflops = profile_tflops(text, profile);
    r.cal = calibrate(text, r.cluster.tflops, profile);
  }
  SKY_CHECK(r.cluster.tflops > 0, "--tflops is required (or --profile, which measures it)");

  PlanResult res = plan(r);
  const LayoutPlan& lp = res.best;
  if (json_out) {
    const Layout& l = lp.layout;
    nlohmann::json cands = nlohmann::json::array();
    for (int i = 0; i < std::min<int>(top, res.candidates.size()); i++) {
      const LayoutPlan& x = res.candidates[i];
      cands.push_back({{"layout", x.layout.describe(r.model)},
                       {"step_s", x.plan.step_s},
                       {"tokens_per_s_per_device", x.tokens_per_s_per_device},
                       {"max_memory_gib", x.plan.max_mem / kGiB},
                       {"pp_layers", x.plan.pp_layers()},
                       {"recompute_layers", x.plan.recompute_layers()}});
    }
    nlohmann::json j = {
        {"model", model},
        {"params", r.model.param_count()},
        {"active_params", r.model.active_param_count()},
        {"layout",
         {{"pp", l.pp}, {"tp", l.tp}, {"dp", l.dp}, {"expert_layout", expert_layout_name(l.experts)},
          {"ep", l.ep_size(r.model)}, {"zero", l.zero1 ? 1 : 0}}},
        {"micro_batches", lp.micro_batches},
        {"tokens_per_step", double(r.batch.global_batch) * r.batch.seq_len},
        {"plan", split_json(lp.plan, lp.tokens_per_s_per_device, lp.mfu)},
        {"uniform", split_json(lp.uniform, lp.uniform_tokens_per_s_per_device, lp.uniform_mfu)},
        {"flags", emit_flags(r.model, lp)},
        {"searched", res.searched},
        {"candidates", cands}};
    if (!r.cal.note.empty())
      j["calibration"] = {{"fwd_scale", r.cal.fwd_scale}, {"bwd_scale", r.cal.bwd_scale},
                          {"optimizer_s_per_param", r.cal.opt_s_per_param}, {"note", r.cal.note}};
    fmt::print("{}\n", j.dump(2));
  } else {
    print_text(r, model, res, top);
  }
  return 0;
}

}  // namespace sky::cli
