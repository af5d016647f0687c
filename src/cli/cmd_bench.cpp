// `skymoe bench train`: training throughput (forward + backward + AdamW) on synthetic tokens.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "infer/bench_infer.h"
#include "io/atomic_file.h"
#include "model/transformer.h"
#include "backend/backend.h"
#include "train/optimizer.h"

namespace sky::cli {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int bench_train(Backend& be, const std::string& preset, int seq, int batch, int steps, int warmup, bool json_out,
                const std::string& profile, const std::string& precision) {
  be.set_matmul_precision(parse_matmul_precision(precision));
  ModelConfig cfg = ModelConfig::resolve(preset);
  SKY_CHECK(seq <= cfg.max_position_embeddings, "--seq-len {} exceeds max_position_embeddings {}", seq,
            cfg.max_position_embeddings);
  if (!json_out)
    fmt::print(stderr, "bench train: {} ({:.1f}M params, {:.1f}M active), B={} S={}, {}, {} GEMMs\n", preset,
               cfg.param_count() / 1e6, cfg.active_param_count() / 1e6, batch, seq, be.describe(), precision);
  Model m = Model::random(cfg, 1);
  m.be = &be;
  AdamW opt(m.layout, AdamWOptions{}, 0, 0, be);
  FloatBuf grads(m.layout.total);
  Activations acts;
  MoeOptions moe = moe_options(cfg, 0.0, DropPolicy::Prob, AuxLossType::Skywork);
  LossWeights lw{std::vector<double>(cfg.num_layers, 0.01), 0.0};
  Rng rng(7);
  std::vector<int32_t> in(size_t(batch) * seq), tgt(in.size());
  std::vector<double> t_fwd, t_bwd, t_opt, t_step;
  for (int s = 0; s < warmup + steps; s++) {
    for (size_t i = 0; i < in.size(); i++) in[i] = int32_t(rng.below(cfg.vocab_size));
    for (size_t i = 0; i < in.size(); i++) tgt[i] = i + 1 < in.size() ? in[i + 1] : in[0];
    std::optional<StepScope> scope(std::in_place, be, batch * seq);  // as the trainer's steps
    auto t0 = Clock::now();
    be.zero(grads.data(), grads.size());
    forward(m, acts, in.data(), tgt.data(), batch, seq, moe);
    double f = since(t0);
    auto t1 = Clock::now();
    backward(m, acts, grads.data(), moe, lw, 1.0);
    double b = since(t1);
    auto t2 = Clock::now();
    const double norm = grad_norm(grads.data(), grads.size(), be);
    opt.update(m.params.data(), grads.data(), 1e-4, s + 1, clip_scale(norm, 1.0));
    double o = since(t2);
    double all = since(t0);
    scope.reset();
    if (s >= warmup) {
      t_fwd.push_back(f);
      t_bwd.push_back(b);
      t_opt.push_back(o);
      t_step.push_back(all);
    }
    if (!json_out)
      fmt::print(stderr, "  step {}{}: {:.2f}s (fwd {:.2f} bwd {:.2f} opt {:.2f}) {:.0f} tok/s\n", s + 1,
                 s < warmup ? " (warm-up)" : "", all, f, b, o, in.size() / all);
  }
  auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  const double tok = double(in.size());
  // Model FLOPs per token: 6 x active matmul params, plus causal attention (QK^T and AV, fwd+bwd).
  const double flops_tok = 6.0 * cfg.active_param_count() + 6.0 * cfg.num_layers * seq * cfg.q_dim();
  const double tps = tok / med(t_step);
  nlohmann::json j = {{"preset", preset},
                      {"threads", be.num_threads()},
                      {"device", be.name()},
                      {"precision", precision},
                      {"batch_size", batch},
                      {"seq_len", seq},
                      {"steps", steps},
                      {"tokens_per_s", tps},
                      {"step_s", med(t_step)},
                      {"forward_s", med(t_fwd)},
                      {"backward_s", med(t_bwd)},
                      {"optimizer_s", med(t_opt)},
                      {"model_gflops_per_s", tps * flops_tok / 1e9}};
  if (!profile.empty()) {
    write_text_atomic(profile, j.dump(2) + "\n");
    if (!json_out) fmt::print(stderr, "profile written to {} (use with skymoe plan --profile)\n", profile);
  }
  if (json_out)
    fmt::print("{}\n", j.dump());
  else
    fmt::print("train {}: {:.0f} tokens/s (step {:.2f}s: forward {:.2f}, backward {:.2f}, optimizer {:.2f}); "
               "{:.0f} model GFLOP/s\n", preset, tps, med(t_step), med(t_fwd), med(t_bwd), med(t_opt),
               tps * flops_tok / 1e9);
  return 0;
}

// Collective bandwidth over the MPI world, as nccl-tests reports it: bus bandwidth = bytes moved per
// rank / time, where a ring all-reduce moves 2(n-1)/n of the buffer and all-gather, reduce-scatter
// and all-to-all (n-1)/n. The figure `skymoe plan --intra-gbs` wants for this machine.
int bench_comm(const std::vector<double>& sizes_mb, int reps, bool json_out) {
  Communicator& w = world_comm();
  const int n = w.size();
  SKY_CHECK(n > 1, "bench comm measures collectives between processes: run it under mpirun -np 2 or more");
  nlohmann::json rows = nlohmann::json::array();
  for (double mb : sizes_mb) {
    SKY_CHECK(mb > 0, "--sizes-mb: sizes must be positive, got {}", mb);
    const size_t floats = std::max<size_t>(n, size_t(mb * 1e6 / 4) / n * n);
    FloatBuf a(floats), b(floats);
    for (size_t i = 0; i < floats; i++) a[i] = 1.0f;
    auto time = [&](auto&& op) {
      op();  // warm-up
      w.barrier();
      auto t0 = Clock::now();
      for (int r = 0; r < reps; r++) op();
      w.barrier();
      return since(t0) / reps;
    };
    const double bytes = floats * 4.0, ring = double(n - 1) / n;
    const double t_ar = time([&] { w.all_reduce_sum(a.data(), floats); });
    const double t_ag = time([&] { w.all_gather(a.data(), b.data(), floats / n); });
    const double t_rs = time([&] { w.reduce_scatter_sum(a.data(), b.data(), std::vector<size_t>(n, floats / n)); });
    const double t_a2a = time([&] { w.all_to_all_v(a.data(), std::vector<size_t>(n, floats / n), b.data(),
                                                   std::vector<size_t>(n, floats / n)); });
    nlohmann::json row = {{"mb", bytes / 1e6},
                          {"all_reduce_gbs", 2 * ring * bytes / t_ar / 1e9},
                          {"all_gather_gbs", ring * bytes / t_ag / 1e9},
                          {"reduce_scatter_gbs", ring * bytes / t_rs / 1e9},
                          {"all_to_all_gbs", ring * bytes / t_a2a / 1e9}};
    rows.push_back(row);
    if (!json_out && w.rank() == 0)
      fmt::print("{:>9.1f} MB  all-reduce {:6.2f} GB/s  all-gather {:6.2f}  reduce-scatter {:6.2f}  all-to-all {:6.2f}\n",
                 bytes / 1e6, row["all_reduce_gbs"].get<double>(), row["all_gather_gbs"].get<double>(),
                 row["reduce_scatter_gbs"].get<double>(), row["all_to_all_gbs"].get<double>());
  }
  if (json_out && w.rank() == 0) fmt::print("{}\n", nlohmann::json{{"ranks", n}, {"bus_bandwidth", rows}}.dump());
  return 0;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  CLI::App app{"Benchmarks.\n  mpirun -np 2 skymoe bench comm   collective bus bandwidth between processes\n  skymoe bench train --preset train-moe   training tokens/s (forward, backward, AdamW)\n  skymoe bench infer --preset bench-moe --dtype fp8   prefill/decode/batched tokens/s vs memory bandwidth"};
  app.name("skymoe bench");
  app.require_subcommand(1);
  auto* tr = app.add_subcommand("train", "training throughput on synthetic tokens");
  std::string preset = "train-moe";
  int seq = 256, batch = 8, steps = 3, warmup = 1, threads = 0;
  bool json_out = false;
  tr->add_option("--preset,--config", preset, "preset or config.json")->capture_default_str();
  tr->add_option("--seq-len", seq, "sequence length")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--batch-size", batch, "sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--steps", steps, "timed steps (median reported)")->capture_default_str()->check(CLI::PositiveNumber);
  tr->add_option("--warmup-steps", warmup, "untimed steps first")->capture_default_str()->check(CLI::NonNegativeNumber);
  tr->add_option("--threads", threads, "threads (0 = all cores)");
  std::string device = "cpu";
  add_device_flag(*tr, device);
  tr->add_flag("--json", json_out, "print one JSON object");
  std::string profile, precision = "f32";
  tr->add_option("--precision", precision, "f32 | bf16 GEMMs (bf16: mixed precision, needs AVX512-BF16)")->capture_default_str();
  tr->add_option("--profile", profile, "also write the measured profile (JSON) to this file, for skymoe plan --profile");
  auto* inf = app.add_subcommand("infer", "prefill, decode and batched decode throughput vs memory bandwidth");
  std::string model, ipreset, dtype = "fp8";
  InferBenchOptions io;
  bool ijson = false;
  int ithreads = 0;
  inf->add_option("--model", model, "model directory (HF layout)");
  inf->add_option("--preset", ipreset, "random model of this preset instead (e.g. bench-moe)");
  inf->add_option("--dtype", dtype, "f32 | bf16 | fp8 | auto (as stored; --model only)")->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16", "fp8", "auto"}));
  inf->add_option("--prompt", io.prompt, "prefill tokens")->capture_default_str()->check(positive_int());
  inf->add_option("--decode", io.decode, "batch-1 decode tokens")->capture_default_str()->check(positive_int());
  inf->add_option("--batches", io.batches, "batch sizes for batched decode")->capture_default_str()->delimiter(',');
  inf->add_option("--batch-steps", io.batch_steps, "decode steps per batch size")->capture_default_str()
      ->check(positive_int());
  std::string lm_head = "auto", kv_dtype = "f32";
  add_lm_head_flag(*inf, lm_head);
  add_kv_dtype_flag(*inf, kv_dtype);
  inf->add_option("--threads", ithreads, "threads (0 = all cores)");
  add_device_flag(*inf, device);
  inf->add_flag("--json", ijson, "print one JSON object");
  TpFlags tpf;
  add_tp_flags(*inf, tpf);
  auto* cm = app.add_subcommand("comm", "collective bus bandwidth between MPI processes (run under mpirun)");
  std::vector<double> sizes_mb = {1, 16, 256};
  int reps = 5;
  bool cjson = false;
  cm->add_option("--sizes-mb", sizes_mb, "buffer sizes in MB")->capture_default_str()->delimiter(',');
  cm->add_option("--reps", reps, "timed repetitions per size")->capture_default_str()->check(CLI::PositiveNumber);
  cm->add_flag("--json", cjson, "print one JSON object");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (cm->parsed()) return bench_comm(sizes_mb, reps, cjson);
  Backend& be = backend(device);
  if (tr->parsed()) {
    be.set_threads(threads);
    return bench_train(be, preset, seq, batch, steps, warmup, json_out, profile, precision);
  }
  be.set_threads(ithreads);
  SKY_CHECK(model.empty() != ipreset.empty(), "bench infer: give exactly one of --model DIR or --preset NAME");
  for (int b : io.batches) SKY_CHECK(b > 0, "--batches: batch sizes must be positive, got {}", b);
  io.quiet = ijson;
  InferModel m;
  if (!model.empty()) {
    m = load_infer_model(model, {dtype, true, lm_head, kv_dtype}, tpf);
  } else {
    SKY_CHECK(dtype != "auto", "--dtype auto needs --model");
    ModelConfig cfg = ModelConfig::resolve(ipreset);
    std::shared_ptr<TpGroup> tp;
    Shard shard = tp_setup(cfg, tpf, false, tp);
    if (!ijson && world_comm().rank() == 0)
      fmt::print(stderr, "initializing a random {} model ({:.0f}M parameters)...\n", ipreset, cfg.param_count() / 1e6);
    // Each rank makes only its own blocks (the values the whole model would have there). Under
    // tensor parallelism fp8's per-row scales are then per block row: --model keeps the stored ones.
    Model src = Model::random(cfg, 1, shard);
    auto to_dtype = [](const std::string& s) { return s == "f32" ? DType::F32 : s == "bf16" ? DType::BF16 : DType::F8_E4M3; };
    m = InferModel::from_model(src, to_dtype(dtype), true,
                               lm_head == "auto" ? std::optional<DType>() : std::optional<DType>(to_dtype(lm_head)));
    m.tp = tp;
    m.kv_bf16 = kv_dtype == "bf16";
  }
  m.be = &be;
  if (m.tp && !m.tp->leader()) {  // rank 0 runs the benchmark, this rank its slice of every forward
    warm_weights(m);
    m.tp->follow(m);
    return 0;
  }
  nlohmann::json j = bench_infer(m, io);
  if (m.tp) m.tp->finish();
  if (ijson) fmt::print("{}\n", j.dump());
  return 0;
}

}  // namespace sky::cli
