#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "model/model.h"

namespace sky::cli {

int cmd_init(int argc, char** argv) {
  CLI::App app{"Create a randomly initialized model as an HF-layout directory (config.json + safetensors)."};
  app.name("skymoe init");
  std::string config, out, dtype = "F32";
  uint64_t seed = 0;
  double shard_gb = 2.0;
  int threads = 0;
  app.add_option("--config,--preset", config, "preset (tiny, tiny-dense, bench-moe, train-moe, train-dense, "
                                              "skywork-moe-146b, skywork-13b) or config.json / model directory")
      ->required();
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--dtype", dtype, "weight dtype to write: F32, BF16 or F16")->capture_default_str();
  app.add_option("--shard-gb", shard_gb, "split safetensors into shards of at most this size")
      ->capture_default_str()->check(positive_number());
  app.add_option("--threads", threads, "threads (0 = all cores)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  backend().set_threads(threads);
  DType dt = dtype_parse(dtype);
  SKY_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16, "--dtype {} (use F32, BF16 or F16; FP8 via `skymoe quantize`)", dtype);
  ModelConfig cfg = ModelConfig::resolve(config);
  fmt::print("initializing {} model: {:.1f}M parameters ({:.1f}M active per token)\n", cfg.model_type,
             cfg.param_count() / 1e6, cfg.active_param_count() / 1e6);
  Model m = Model::random(cfg, seed);
  m.save(out, dt, size_t(shard_gb * (1ull << 30)));
  fmt::print("wrote {}\n", out);
  return 0;
}

}  // namespace sky::cli
