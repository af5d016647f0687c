#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "moe/upcycle.h"

namespace sky::cli {

int cmd_upcycle(int argc, char** argv) {
  CLI::App app{"Upcycle a dense checkpoint into a Skywork-MoE (every expert starts as the dense FFN).\n"
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
  app.add_option("--top-k", o.top_k, "experts per token")->capture_default_str();
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
  Model dense = Model::load(from);
  Model moe = upcycle(dense, o);
  moe.save(out);
  fmt::print("upcycled {} ({:.1f}M params) -> {} experts, top-{}: {:.1f}M params ({:.1f}M active); wrote {}\n", from,
             dense.cfg.param_count() / 1e6, o.experts, o.top_k, moe.cfg.param_count() / 1e6,
             moe.cfg.active_param_count() / 1e6, out);
  return 0;
}

}  // namespace sky::cli
