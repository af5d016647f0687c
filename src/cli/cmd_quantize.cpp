#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "model/quantize.h"

namespace sky::cli {

int cmd_quantize(int argc, char** argv) {
  CLI::App app{"Quantize a model. --to fp8|bf16 rewrites a checkpoint's linear layers as FP8 E4M3 (with\n"
               "weight_scale tensors, Skywork's FP8 release layout) or BF16 safetensors; router, norms and\n"
               "embeddings keep their precision, the LM head goes to BF16 (or FP8 with --lm-head fp8).\n"
               "--to q8_0|q6_k|q4_k_m writes one GGUF file with llama.cpp's tensor-type mix for that file\n"
               "type (docs/gguf.md), reading the model one layer at a time. Every command loads the result."};
  app.name("skymoe quantize");
  std::string model, out, scale = "per-tensor";
  QuantizeOptions o;
  int threads = 0;
  app.add_option("--model", model, "input model: an HF-layout directory or a .gguf file")->required();
  app.add_option("--to", o.to, "fp8 | bf16 (safetensors directory) | q8_0 | q6_k | q4_k_m (GGUF file)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp8", "bf16", "q8_0", "q6_k", "q4_k_m"}));
  app.add_option("--scale", scale, "fp8 scales: per-tensor | per-channel")->capture_default_str()
      ->check(CLI::IsMember({"per-tensor", "per-channel"}));
  std::string lm_head = "bf16";
  app.add_option("--lm-head", lm_head, "with --to fp8: bf16 (Skywork's FP8 layout) | fp8 (fewer bytes per decoded token)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("--out", out, "output directory (fp8, bf16) or .gguf file")->required();
  app.add_option("--shard-gb", o.max_shard_gb, "shard size (fp8, bf16)")->capture_default_str()->check(positive_number());
  std::string tokenizer, name;
  bool no_tokenizer = false;
  app.add_option("--tokenizer", tokenizer, "GGUF: SentencePiece tokenizer.model (default: the model's own)");
  app.add_flag("--no-tokenizer", no_tokenizer, "GGUF: write no vocabulary (llama.cpp needs one to run)");
  app.add_option("--name", name, "GGUF: general.name (default: the model's name)");
  app.add_option("--threads", threads, "threads (0 = all cores)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  backend().set_threads(threads);
  const bool gguf = o.to != "fp8" && o.to != "bf16";
  // Flags of the other kind of output would be ignored silently; say so instead.
  for (const char* f : {"--scale", "--lm-head", "--shard-gb"})
    SKY_CHECK(!gguf || app.count(f) == 0, "{} applies to --to fp8/bf16 (safetensors), not --to {}", f, o.to);
  for (const char* f : {"--tokenizer", "--no-tokenizer", "--name"})
    SKY_CHECK(gguf || app.count(f) == 0, "{} applies to the GGUF outputs (--to q8_0|q6_k|q4_k_m), not --to {}", f, o.to);
  if (gguf) return write_gguf(model, out, o.to, tokenizer, no_tokenizer, name);

  o.per_channel = scale == "per-channel";
  o.lm_head_fp8 = lm_head == "fp8";
  SKY_CHECK(!o.lm_head_fp8 || o.to == "fp8", "--lm-head fp8 needs --to fp8");
  QuantizeReport r = quantize_checkpoint(model, out, o);
  fmt::print("quantized {} linear layers to {}{}: {:.1f} MiB -> {:.1f} MiB; wrote {}\n", r.tensors_quantized, o.to,
             o.to == "fp8" ? " (" + scale + " scales)" : "", r.bytes_in / 1048576.0, r.bytes_out / 1048576.0, out);
  return 0;
}

}  // namespace sky::cli
