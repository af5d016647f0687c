#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "model/quantize.h"

namespace sky::cli {

int cmd_quantize(int argc, char** argv) {
  CLI::App app{"Quantize a checkpoint's linear layers to FP8 E4M3 (with weight_scale tensors, Skywork's FP8\n"
               "release layout) or BF16. Router, norms and embeddings keep their precision; the LM head\n"
               "goes to BF16 (or FP8 with --lm-head fp8). Every command loads the result."};
  app.name("skymoe quantize");
  std::string model, out, scale = "per-tensor";
  QuantizeOptions o;
  int threads = 0;
  app.add_option("--model", model, "input model directory (HF layout)")->required();
  app.add_option("--to", o.to, "fp8 | bf16")->capture_default_str()->check(CLI::IsMember({"fp8", "bf16"}));
  app.add_option("--scale", scale, "fp8 scales: per-tensor | per-channel")->capture_default_str()
      ->check(CLI::IsMember({"per-tensor", "per-channel"}));
  std::string lm_head = "bf16";
  app.add_option("--lm-head", lm_head, "with --to fp8: bf16 (Skywork's FP8 layout) | fp8 (fewer bytes per decoded token)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--shard-gb", o.max_shard_gb, "shard size")->capture_default_str()->check(positive_number());
  app.add_option("--threads", threads, "threads (0 = all cores)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  backend().set_threads(threads);
  o.per_channel = scale == "per-channel";
  o.lm_head_fp8 = lm_head == "fp8";
  SKY_CHECK(!o.lm_head_fp8 || o.to == "fp8", "--lm-head fp8 needs --to fp8");
  QuantizeReport r = quantize_checkpoint(model, out, o);
  fmt::print("quantized {} linear layers to {}{}: {:.1f} MiB -> {:.1f} MiB; wrote {}\n", r.tensors_quantized, o.to,
             o.to == "fp8" ? " (" + scale + " scales)" : "", r.bytes_in / 1048576.0, r.bytes_out / 1048576.0, out);
  return 0;
}

}  // namespace sky::cli
