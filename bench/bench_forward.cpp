// Prefill throughput of the forward pass on the `bench-moe` preset (DESIGN.md section 9), with a
// memory-bandwidth probe taken in the same run (section 10: bandwidth on these machines switches
// between levels every few minutes, so a figure means little without one beside it).
//
//   OMP_NUM_THREADS=2 ./build/bench_forward [--preset bench-moe] [--prompt 512] [--reps 5] [--json]
//
// Times (a) the engine's batch_forward (f32 weights) over a fresh KV cache: one prompt of P tokens, logits of the last token
// only -- what `skymoe generate` pays before its first token -- and (b) the batch forward() with
// B=1, T=P and no targets (logits of every position, as eval computes them). Reports the median of
// --reps runs after one untimed run of each. Weights come from Model::random (heap, not mmapped);
// every weight is read once before timing so none is paged out.
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <vector>

#include "backend/cpu/membw.h"
#include "core/rng.h"
#include "backend/cpu/threads.h"
#include "infer/batch_forward.h"
#include "model/transformer.h"

using namespace sky;
using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds this process has used (all threads). Against wall time it shows whether the threads
// really had their cores: the 2-core machines are shared, and a busy neighbour halves a figure.
static double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Reads every float once (all threads); the sum keeps the compiler from skipping the reads.
static double touch(const float* p, size_t n) {
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (size_t i = 0; i < n; i += 16) s += p[i];  // one read per 64-byte line is enough to fault it in
  return s;
}

int main(int argc, char** argv) {
  CLI::App app{"Forward-pass prefill throughput on bench-moe, with a same-run memory bandwidth probe."};
  std::string preset = "bench-moe";
  int prompt = 512, reps = 5, threads = 0;
  bool json_out = false;
  app.add_option("--preset", preset, "model preset")->capture_default_str();
  app.add_option("--prompt", prompt, "prompt length in tokens")->capture_default_str();
  app.add_option("--reps", reps, "timed repetitions (median reported)")->capture_default_str();
  app.add_option("--threads", threads, "threads (0 = OMP_NUM_THREADS or all cores)");
  app.add_flag("--json", json_out, "print one JSON object on stdout (the human line goes to stderr)");
  CLI11_PARSE(app, argc, argv);
  set_threads(threads);

  ModelConfig cfg = ModelConfig::preset(preset);
  if (prompt < 1 || prompt > cfg.max_position_embeddings || reps < 1) {
    fmt::print(stderr, "bench_forward: --prompt must be in [1, {}] and --reps >= 1\n", cfg.max_position_embeddings);
    return 2;
  }
  auto t0 = Clock::now();
  Model m = Model::random(cfg, 1);
  const double init_s = seconds_since(t0);

  std::vector<int32_t> toks(prompt);
  Rng rng(7);
  for (auto& t : toks) t = int32_t(rng.below(cfg.vocab_size));

  // Bandwidth probe buffer: 1 GiB, well past any cache; filled so its pages are real.
    const double bw_before = sky::read_bandwidth_gbs(size_t(1) << 30, 5);

  // Warm-up: read every weight, then one untimed run of each path (allocations, first-touch of
  // activation buffers, OpenBLAS thread start-up).
  volatile double keep = touch(m.params.data(), m.layout.total);
  (void)keep;
  std::vector<float> logits(cfg.vocab_size);
  const MoeOptions moe = moe_options(cfg, 0.0, DropPolicy::Prob, AuxLossType::None);
  Activations acts;
  const InferModel im = InferModel::from_model(m, DType::F32);
  BatchScratch scratch;
  auto run_cached = [&] {
    SeqKV kv;
    kv.init(im.cfg, prompt);
    auto t = Clock::now();
    batch_forward(im, {{&kv, toks.data(), prompt}}, logits.data(), scratch);
    return seconds_since(t);
  };
  auto run_batch = [&] {
    auto t = Clock::now();
    forward(m, acts, toks.data(), nullptr, 1, prompt, moe);
    return seconds_since(t);
  };
  run_cached();
  run_batch();

  std::vector<double> cached_s, batch_s;
  const double cpu0 = process_cpu_seconds();
  const auto wall0 = Clock::now();
  for (int r = 0; r < reps; r++) {
    cached_s.push_back(run_cached());
    batch_s.push_back(run_batch());
  }
  const double cpu_share = (process_cpu_seconds() - cpu0) / (seconds_since(wall0) * num_threads());
  const double bw_after = sky::read_bandwidth_gbs(size_t(1) << 30, 5);

  const double cached_tps = prompt / median(cached_s), batch_tps = prompt / median(batch_s);
  // Matmul work per token: 2 FLOPs per active weight (LM head counted once per token in the batch
  // path, once per prompt in the cached path; attention scores left out).
  const double active = double(cfg.active_param_count());
  const std::string human = fmt::format(
      "{} prefill {} tokens, {} threads: batch_forward {:.1f} tok/s ({:.3f} s), forward B=1 {:.1f} tok/s ({:.3f} s); "
      "~{:.1f} GFLOP/s batch; read bandwidth {:.1f} / {:.1f} GB/s (before/after); threads had {:.0f}% of their cores; "
      "weights f32 on heap ({:.2f} GB, not mmapped)",
      preset, prompt, num_threads(), cached_tps, median(cached_s), batch_tps, median(batch_s),
      2 * active * batch_tps / 1e9, bw_before, bw_after, 100 * cpu_share, m.layout.total * 4.0 / 1e9);
  if (json_out) {
    fmt::print(stderr, "{}\n", human);
    nlohmann::json j = {{"bench", "forward_prefill"},
                        {"preset", preset},
                        {"prompt_tokens", prompt},
                        {"threads", num_threads()},
                        {"reps", reps},
                        {"cached_tokens_per_s", cached_tps},
                        {"cached_seconds", cached_s},
                        {"batch_tokens_per_s", batch_tps},
                        {"batch_seconds", batch_s},
                        {"params_total", cfg.param_count()},
                        {"params_active", cfg.active_param_count()},
                        {"read_bandwidth_gbs_before", bw_before},
                        {"read_bandwidth_gbs_after", bw_after},
                        {"cpu_share", cpu_share},
                        {"weights_mmapped", false},
                        {"weights_dtype", "F32"},
                        {"init_seconds", init_s}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("{}\n", human);
  }
  return 0;
}
