#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "io/checkpoint.h"
#include "io/json_input.h"
#include "train/trainer.h"

namespace sky::cli {

using json = nlohmann::json;

int cmd_train(int argc, char** argv) {
  CLI::App app{"Train a dense or MoE model (Skywork router techniques; load balancing by Skywork's adaptive aux loss\n"
               "or DeepSeek-V3's auxiliary-loss-free bias). One process by default; under `mpirun -np N` the N\n"
               "processes train on the same global batch with DP = N / (TP x PP)."};
  app.name("skymoe train");
  TrainOptions o;
  std::string lr_schedule = "cosine", aux = "skywork", adaptive = "on", policy = "prob", order = "shuffled",
              balance = "adaptive-aux";
  app.add_option("--model", o.model_dir, "start from this model/checkpoint directory");
  app.add_option("--config", o.config, "start from scratch: preset name or config.json");
  app.add_option("--data", o.data, "training tokens (flat uint32 file)")->required();
  app.add_option("--val-data", o.val_data, "validation tokens (separate file)");
  app.add_option("--val-fraction", o.val_fraction, "hold out this fraction of the end of --data for validation");
  app.add_option("--eval-every", o.eval_every, "validate every N steps (0 = at the end)")->capture_default_str();
  app.add_option("--eval-batches", o.eval_batches, "validation batches")->capture_default_str();
  app.add_option("--seq-len", o.seq_len, "sequence length")->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "sequences per micro-batch")->capture_default_str();
  app.add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")->capture_default_str();
  app.add_option("--steps", o.steps, "optimizer steps")->capture_default_str();
  app.add_option("--lr", o.schedule.lr, "peak learning rate")->capture_default_str();
  app.add_option("--lr-schedule", lr_schedule, "constant | cosine")->capture_default_str()
      ->check(CLI::IsMember({"constant", "cosine"}));
  app.add_option("--min-lr-ratio", o.schedule.min_ratio, "cosine floor as a fraction of --lr")->capture_default_str();
  app.add_option("--warmup", o.schedule.warmup, "linear warm-up steps")->capture_default_str();
  app.add_option("--weight-decay", o.adam.weight_decay, "AdamW decoupled weight decay (2-D weights only)")->capture_default_str();
  app.add_option("--beta1", o.adam.beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--beta2", o.adam.beta2, "AdamW beta2")->capture_default_str();
  app.add_option("--eps", o.adam.eps, "AdamW epsilon")->capture_default_str();
  app.add_option("--grad-clip", o.grad_clip, "global-norm clipping (0 = off)")->capture_default_str();
  app.add_option("--balance", balance,
                 "adaptive-aux | aux | aux-free | none: load balancing. adaptive-aux: Skywork's aux loss with per-layer "
                 "adaptive coefficients; aux: the same with the fixed --aux-alpha; aux-free: DeepSeek-V3's "
                 "auxiliary-loss-free balancing (a per-expert bias on the routing scores for selection only, moved by "
                 "--balance-speed per step toward equal loads; no aux loss); none: no balancing")
      ->capture_default_str()->check(CLI::IsMember({"adaptive-aux", "aux", "aux-free", "none"}));
  app.add_option("--balance-speed", o.balance_speed, "aux-free: bias update speed gamma (b += gamma * sign(mean load - load))")
      ->capture_default_str();
  app.add_option("--aux-loss", aux, "skywork | switch | none (under aux-free and none: only logged, not trained)")
      ->capture_default_str()->check(CLI::IsMember({"skywork", "switch", "none"}));
  app.add_option("--aux-alpha", o.aux_alpha, "initial (adaptive) or fixed aux-loss coefficient")->capture_default_str();
  app.add_option("--aux-adaptive", adaptive, "on | off: Skywork's per-layer adaptive coefficients (off = --balance aux)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--aux-xi", o.aux_xi, "adaptive: xi (alpha_hat = min(xi * drop_rate, alpha_max))")->capture_default_str();
  app.add_option("--aux-alpha-max", o.aux_alpha_max, "adaptive: alpha_max")->capture_default_str();
  app.add_option("--aux-beta", o.aux_beta, "adaptive: moving-average beta")->capture_default_str();
  app.add_option("--z-loss", o.z_loss, "router z-loss coefficient (0 = off)")->capture_default_str();
  app.add_option("--capacity-factor", o.capacity_factor, "expert capacity factor (0 = dropless)")->capture_default_str();
  app.add_option("--drop-policy", policy, "prob | position: which assignments keep a full expert's slots")
      ->capture_default_str()->check(CLI::IsMember({"prob", "position"}));
  app.add_option("--data-order", order, "shuffled | sequential")->capture_default_str()
      ->check(CLI::IsMember({"shuffled", "sequential"}));
  app.add_option("--seed", o.seed, "seed (init and data order)")->capture_default_str();
  app.add_option("--threads", o.threads, "threads (0 = all cores)");
  add_device_flag(app, o.device);
  std::string precision = "f32";
  app.add_option("--precision", precision, "f32 | bf16: GEMM precision (bf16: mixed precision with f32 master weights; needs AVX512-BF16)")
      ->capture_default_str();
  app.add_option("--out", o.out_dir, "run directory for checkpoints (step-N/, latest)");
  app.add_option("--save-every", o.save_every, "checkpoint every N steps (0 = at the end)")->capture_default_str();
  app.add_option("--keep", o.keep, "checkpoints to keep (0 = all)")->capture_default_str();
  app.add_option("--log-jsonl", o.log_jsonl, "write one JSON object per step to this file");
  app.add_option("--log-every", o.log_every, "plain-text progress every N steps (off a terminal)")->capture_default_str();
  app.add_option("--resume", o.resume, "continue from a checkpoint (or a run directory's latest)");
  app.add_flag("--quiet", o.quiet, "no progress output");
  app.add_option("--zero", o.zero, "under mpirun: 1 shards the optimizer state across data-parallel ranks (ZeRO-1)")
      ->capture_default_str();
  std::string layout = "none", pp_layers, recompute, tp_shares;
  app.add_option("--tp", o.par.tp, "tensor-parallel size (attention heads and FFN width split; uneven allowed)")
      ->capture_default_str();
  app.add_option("--pp", o.par.pp, "pipeline-parallel stages (1F1B schedule)")->capture_default_str();
  app.add_option("--expert-layout", layout, "none | ep | etp | edp: how experts are spread (see README)")
      ->capture_default_str();
  app.add_option("--pp-layers", pp_layers, "layers per pipeline stage, e.g. 5,5,5,5,4 (default: even split)");
  app.add_option("--recompute-layers", recompute, "layers recomputed in backward per stage, e.g. 2,1,1,0,0");
  app.add_option("--pp-microbatches", o.par.pp_microbatches,
                 "1F1B micro-batches per micro-step (0 = as many as the local batch allows, up to 2 x PP)")
      ->capture_default_str();
  app.add_option("--comm-timeout", o.comm_timeout,
                 "seconds a collective may wait for the other ranks before the whole job stops with a message")
      ->capture_default_str();
  app.add_option("--tp-shares", tp_shares, "relative share of heads and FFN width per TP rank, e.g. 5,5,4");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  // A resumed run's shape is in its checkpoint: flags not given take it from there.
  if (!o.resume.empty()) {
    const json state = read_json_file(resolve_checkpoint(o.resume) + "/trainer_state.json");
    RunShape shape;
    try {
      shape = parse_run_shape(state);
    } catch (const Error& e) {
      fail("--resume {}: trainer_state.json: {}", o.resume, e.what());
    }
    auto adopt = [&](const char* flag, const auto& saved, auto& value) {
      if (app.get_option(flag)->count() == 0 && saved) value = *saved;
    };
    adopt("--seq-len", shape.seq_len, o.seq_len);
    adopt("--batch-size", shape.batch_size, o.batch_size);
    adopt("--grad-accum", shape.grad_accum, o.grad_accum);
    adopt("--data-order", shape.data_order, order);
    // The balancing too (a resume that silently switched it would not continue the run).
    if (app.count("--balance") == 0 && app.count("--aux-adaptive") == 0) {
      if (auto it = state.find("balance"); it != state.end() && it->is_string()) balance = it->get<std::string>();
      if (auto it = state.find("balance_speed"); it != state.end() && it->is_number() && app.count("--balance-speed") == 0)
        o.balance_speed = it->get<double>();
    }
  }
  // --aux-adaptive predates --balance: off means --balance aux; the aux-loss settings apply only to
  // the modes that train that loss, --balance-speed only to aux-free.
  if (app.count("--balance") == 0 && adaptive == "off") balance = "aux";
  o.balance = parse_balance(balance);
  const bool aux_mode = o.balance == Balance::AdaptiveAux || o.balance == Balance::Aux;
  if (app.count("--aux-adaptive"))
    SKY_CHECK(aux_mode && (adaptive == "on") == (o.balance == Balance::AdaptiveAux),
              "--aux-adaptive {} contradicts --balance {} (adaptive-aux is --aux-adaptive on, aux is off)", adaptive,
              balance);
  for (const char* flag : {"--aux-alpha", "--aux-xi", "--aux-alpha-max", "--aux-beta"})
    SKY_CHECK(aux_mode || app.count(flag) == 0, "{} applies to --balance adaptive-aux or aux, not {}", flag, balance);
  SKY_CHECK(o.balance == Balance::AuxFree || app.count("--balance-speed") == 0,
            "--balance-speed applies to --balance aux-free, not {}", balance);
  o.precision = parse_matmul_precision(precision);
  o.schedule.cosine = lr_schedule == "cosine";
  o.aux = aux == "skywork" ? AuxLossType::Skywork : aux == "switch" ? AuxLossType::Switch : AuxLossType::None;
  o.drop_policy = policy == "prob" ? DropPolicy::Prob : DropPolicy::Position;
  o.data_order = parse_data_order(order);
  o.par.experts = parse_expert_layout(layout);
  if (!pp_layers.empty()) o.par.pp_layers = parse_int_list(pp_layers, "--pp-layers");
  if (!recompute.empty()) o.par.recompute = parse_int_list(recompute, "--recompute-layers");
  if (!tp_shares.empty()) o.par.tp_shares = parse_int_list(tp_shares, "--tp-shares");
  TrainResult r = train(o);
  if (world_comm().rank() != 0) return 0;  // one summary for the whole job
  const StepLog& last = r.log.back();
  fmt::print("trained to step {}: loss {:.4f} (ce {:.4f}){}; {:.0f} tokens/s\n", last.step, last.loss, last.ce_loss,
             r.final_val_loss >= 0 ? fmt::format(", val {:.4f}", r.final_val_loss) : "", r.tokens_per_s);
  if (!r.final_checkpoint.empty()) fmt::print("checkpoint: {}\n", r.final_checkpoint);
  return 0;
}

}  // namespace sky::cli
