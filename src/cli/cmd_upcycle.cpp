#include <fmt/format.h>

#include <algorithm>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "moe/upcycle.h"

namespace sky::cli {

int cmd_upcycle(int argc, char** argv) {
  CLI::App app{"Upcycle a dense checkpoint into a Skywork-MoE (every expert starts as the dense FFN, or with\n"
               "--granularity G as one of G slices of it along the intermediate dimension, as Qwen1.5-MoE was made).\n"
               "Rule of thumb from the Skywork-MoE report: upcycle when the MoE training budget is well\n"
               "below the dense model's; train from scratch at >= 2x that budget."};
  app.name("skymoe upcycle");
  std::string from, out;
  UpcycleOptions o;
  int threads = 0;
  std::string lnorm = "on";
  app.add_option("--from", from, "dense model directory (HF layout)")->required();
  app.add_option("--out", out, "output MoE directory")->required();
  app.add_option("--experts", o.experts, "number of experts")->capture_default_str();
  app.add_option("--top-k", o.top_k, "experts per token [default: 2 x --granularity, the compute of top-2 whole FFNs]");
  app.add_option("--granularity", o.granularity,
                 "G: cut the dense FFN (width I) into G slices of width I/G; expert e is slice e mod G of copy e / G, "
                 "its down projection scaled by G (--experts must be a multiple of G)")
      ->capture_default_str();
  app.add_option("--logits-norm", lnorm, "on | off: gating logit normalization")->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--gate-norm-std", o.gate_norm_std, "lambda of the logit normalization")->capture_default_str();
  app.add_option("--router-std", o.router_std, "router init std")->capture_default_str();
  app.add_option("--expert-noise", o.expert_noise, "relative Gaussian noise added to copied experts (0 = exact copies)")
      ->capture_default_str();
  app.add_option("--reinit-experts", o.reinit_experts, "re-initialize this many experts instead of copying")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed for router init and noise")->capture_default_str();
  app.add_option("--threads", threads, "threads (0 = all cores)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  backend().set_threads(threads);
  o.logits_norm = lnorm == "on";
  const bool top_k_given = app.count("--top-k") > 0;
  if (!top_k_given) o.top_k = std::min(2 * o.granularity, o.experts);
  Model dense = Model::load(from);
  Model moe = upcycle(dense, o);
  moe.save(out);
  fmt::print("upcycled {} ({:.1f}M params) -> {} experts, top-{}: {:.1f}M params ({:.1f}M active); wrote {}\n", from,
             dense.cfg.param_count() / 1e6, o.experts, o.top_k, moe.cfg.param_count() / 1e6,
             moe.cfg.active_param_count() / 1e6, out);
  if (o.granularity > 1)
    fmt::print("fine-grained: {} copies of the dense FFN, each cut into {} experts of width {} (expert e = slice e mod {} "
               "of copy e / {}, down projection x{}); top-{} {}\n",
               o.experts / o.granularity, o.granularity, moe.cfg.moe_intermediate_size, o.granularity, o.granularity,
               o.granularity, o.top_k,
               top_k_given ? fmt::format("as given (top-{} keeps the compute of top-2 whole FFNs)", 2 * o.granularity)
                           : fmt::format("by default, 2 x {}: the compute of top-2 whole FFNs (set --top-k to change it)",
                                         o.granularity));
  return 0;
}

}  // namespace sky::cli
