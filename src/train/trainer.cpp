#include "train/trainer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/threads.h"
#include "io/checkpoint.h"
#include "model/transformer.h"

namespace sky {

using json = nlohmann::json;
namespace fs = std::filesystem;

static const char* aux_name(AuxLossType t) {
  return t == AuxLossType::Skywork ? "skywork" : t == AuxLossType::Switch ? "switch" : "none";
}

void validate_train_options(const TrainOptions& o) {
  SKY_CHECK(!o.data.empty(), "--data is required");
  SKY_CHECK(!o.model_dir.empty() || !o.config.empty() || !o.resume.empty(), "give --model, --config or --resume");
  SKY_CHECK(o.model_dir.empty() || o.config.empty(), "give either --model or --config, not both");
  SKY_CHECK(o.seq_len > 0, "--seq-len must be positive, got {}", o.seq_len);
  SKY_CHECK(o.batch_size > 0, "--batch-size must be positive, got {}", o.batch_size);
  SKY_CHECK(o.grad_accum > 0, "--grad-accum must be positive, got {}", o.grad_accum);
  SKY_CHECK(o.steps > 0, "--steps must be positive, got {}", o.steps);
  SKY_CHECK(std::isfinite(o.schedule.lr) && o.schedule.lr > 0, "--lr must be positive, got {}", o.schedule.lr);
  SKY_CHECK(o.schedule.warmup >= 0, "--warmup must be >= 0, got {}", o.schedule.warmup);
  SKY_CHECK(o.schedule.min_ratio >= 0 && o.schedule.min_ratio <= 1, "--min-lr-ratio must be in [0, 1], got {}",
            o.schedule.min_ratio);
  SKY_CHECK(o.adam.beta1 >= 0 && o.adam.beta1 < 1, "--beta1 must be in [0, 1), got {}", o.adam.beta1);
  SKY_CHECK(o.adam.beta2 >= 0 && o.adam.beta2 < 1, "--beta2 must be in [0, 1), got {}", o.adam.beta2);
  // Infinities are rejected too: each one would only surface later as a non-finite loss (or, for
  // --eps, as a run that silently never moves).
  SKY_CHECK(std::isfinite(o.adam.eps) && o.adam.eps > 0, "--eps must be finite and positive, got {}", o.adam.eps);
  SKY_CHECK(std::isfinite(o.adam.weight_decay) && o.adam.weight_decay >= 0,
            "--weight-decay must be finite and >= 0, got {}", o.adam.weight_decay);
  SKY_CHECK(std::isfinite(o.grad_clip) && o.grad_clip >= 0, "--grad-clip must be finite and >= 0 (0 = off), got {}",
            o.grad_clip);
  SKY_CHECK(std::isfinite(o.aux_alpha) && o.aux_alpha >= 0, "--aux-alpha must be finite and >= 0, got {}",
            o.aux_alpha);
  SKY_CHECK(std::isfinite(o.aux_xi) && o.aux_xi >= 0 && std::isfinite(o.aux_alpha_max) && o.aux_alpha_max >= 0,
            "--aux-xi and --aux-alpha-max must be finite and >= 0, got {} and {}", o.aux_xi, o.aux_alpha_max);
  SKY_CHECK(o.aux_beta >= 0 && o.aux_beta <= 1, "--aux-beta must be in [0, 1], got {}", o.aux_beta);
  SKY_CHECK(std::isfinite(o.z_loss) && o.z_loss >= 0, "--z-loss must be finite and >= 0, got {}", o.z_loss);
  SKY_CHECK(std::isfinite(o.capacity_factor), "--capacity-factor must be finite, got {}", o.capacity_factor);
  SKY_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "--val-fraction must be in [0, 1), got {}", o.val_fraction);
  SKY_CHECK(o.val_data.empty() || o.val_fraction == 0, "give --val-data or --val-fraction, not both");
  SKY_CHECK(o.save_every >= 0, "--save-every must be >= 0, got {}", o.save_every);
  SKY_CHECK(o.eval_every >= 0, "--eval-every must be >= 0, got {}", o.eval_every);
  SKY_CHECK(o.eval_batches > 0, "--eval-batches must be positive, got {}", o.eval_batches);
}

// The options that must not change across a resume for the run to continue bit-for-bit.
static json run_signature(const TrainOptions& o, const ModelConfig& cfg, uint64_t data_tokens) {
  return {{"config", cfg.to_hf_json()},  {"seq_len", o.seq_len},    {"batch_size", o.batch_size},
          {"grad_accum", o.grad_accum},  {"data_tokens", data_tokens}, {"data_order", to_string(o.data_order)}};
}

namespace {

struct Progress {
  bool tty, quiet;
  int every;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  void step(const StepLog& s, int64_t total) {
    if (quiet) return;
    if (tty) {
      const int width = 24;
      int filled = int(width * s.step / std::max<int64_t>(total, 1));
      std::string bar(filled, '#');
      bar.resize(width, '.');
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      fmt::print(stderr, "\r[{}] step {}/{}  loss {:.4f}  {:.0f} tok/s  {:.0f}s ", bar, s.step, total, s.loss,
                 s.tokens_per_s, el);
      if (s.step == total) fmt::print(stderr, "\n");
    } else if (s.step % every == 0 || s.step == total || s.step == 1) {
      double md = 0;
      for (double d : s.drop_rate) md += d / std::max<size_t>(1, s.drop_rate.size());
      fmt::print(stderr, "step {}/{}  loss {:.4f}  ce {:.4f}  aux {:.5f}  lr {:.3g}  |g| {:.3f}  drop {:.4f}  {:.0f} tok/s{}\n",
                 s.step, total, s.loss, s.ce_loss, s.aux_loss, s.lr, s.grad_norm, md, s.tokens_per_s,
                 s.val_loss >= 0 ? fmt::format("  val {:.4f}", s.val_loss) : "");
    }
  }
};

}  // namespace

static double evaluate(const Model& m, Activations& A, const TokenFile& f, TokenRange r, int B, int S, int max_batches) {
  uint64_t nb = std::min<uint64_t>(sequential_batch_count(r.size(), B, S), uint64_t(max_batches));
  if (nb == 0) return -1;
  std::vector<int32_t> in(size_t(B) * S), tgt(size_t(B) * S);
  MoeOptions moe = moe_options(m.cfg, 0.0, DropPolicy::Prob, AuxLossType::None);
  double sum = 0;
  for (uint64_t k = 0; k < nb; k++) {
    sequential_batch(f, r, B, S, k, in.data(), tgt.data());
    sum += forward(m, A, in.data(), tgt.data(), B, S, moe);
  }
  return sum / nb;
}

TrainResult train(const TrainOptions& o_in, const std::function<void(const StepLog&)>& on_step) {
  TrainOptions o = o_in;
  validate_train_options(o);
  set_threads(o.threads);

  // Model: from a checkpoint being resumed, a model directory, or a fresh init.
  std::string resume_dir = o.resume.empty() ? "" : resolve_checkpoint(o.resume);
  Model m;
  if (!resume_dir.empty()) {
    m = Model::load(resume_dir);
    if (!o.config.empty() || !o.model_dir.empty()) {
      ModelConfig want = !o.config.empty() ? ModelConfig::resolve(o.config) : ModelConfig::load_file(o.model_dir);
      SKY_CHECK(want.to_hf_json() == m.cfg.to_hf_json(),
                "--resume {}: the checkpoint is a different model than {} (configs differ)", resume_dir,
                !o.config.empty() ? o.config : o.model_dir);
    }
  } else if (!o.model_dir.empty()) {
    m = Model::load(o.model_dir);
  } else {
    m = Model::random(ModelConfig::resolve(o.config), o.seed);
  }
  const ModelConfig& cfg = m.cfg;
  SKY_CHECK(o.seq_len <= cfg.max_position_embeddings, "--seq-len {} exceeds max_position_embeddings {}", o.seq_len,
            cfg.max_position_embeddings);

  // Data.
  TokenFile data = TokenFile::open(o.data, cfg.vocab_size);
  TokenRange train_range = data.all(), val_range{};
  TokenFile val_file = data;
  bool have_val = false;
  if (o.val_fraction > 0) {
    DataSplit sp = split_tail(data.size(), o.val_fraction, o.seq_len);
    train_range = sp.train;
    val_range = sp.val;
    have_val = true;
  } else if (!o.val_data.empty()) {
    val_file = TokenFile::open(o.val_data, cfg.vocab_size);
    val_range = val_file.all();
    have_val = true;
  }
  Batcher batcher(data, train_range, o.batch_size, o.seq_len, o.data_order, o.seed);

  AdamW opt(m.layout, o.adam);
  AdaptiveAlpha alpha(cfg.is_moe() ? cfg.num_layers : 0, o.aux == AuxLossType::None ? 0.0 : o.aux_alpha,
                      o.aux_adaptive && o.aux != AuxLossType::None, o.aux_xi, o.aux_alpha_max, o.aux_beta);
  int64_t step0 = 0;
  const json signature = run_signature(o, cfg, data.size());
  if (!resume_dir.empty()) {
    json st = load_checkpoint_state(resume_dir, opt.m().data(), opt.v().data(), m.layout.total);
    SKY_CHECK(st.contains("signature") && st["signature"] == signature,
              "--resume {}: the checkpoint was trained with other settings (model, --seq-len, --batch-size, "
              "--grad-accum, --data-order or data size differ): {} vs now {}",
              resume_dir, st.value("signature", json()).dump(), signature.dump());
    step0 = st.at("step").get<int64_t>();
    batcher.restore(st.at("data").get<DataPosition>());
    alpha.alpha = st.at("alpha").get<std::vector<double>>();
    SKY_CHECK(step0 < o.steps, "--resume {}: the checkpoint is at step {}, not before --steps {}", resume_dir, step0,
              o.steps);
  }
  o.schedule.total = o.steps;

  std::ofstream jsonl;
  if (!o.log_jsonl.empty()) {
    // On resume, keep the log's lines up to the checkpoint's step: steps a stopped run logged after
    // its last checkpoint are redone and must not appear twice.
    std::string kept;
    if (step0 > 0) {
      std::ifstream old(o.log_jsonl);
      for (std::string line; std::getline(old, line);) {
        json j = json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.is_object() && j.value("step", int64_t(0)) <= step0) kept += line + "\n";
      }
    }
    jsonl.open(o.log_jsonl, std::ios::trunc);
    jsonl << kept;
    SKY_CHECK(jsonl.good(), "--log-jsonl: cannot write '{}'", o.log_jsonl);
  }

  FloatBuf grads(m.layout.total);
  Activations acts, eval_acts;
  const MoeOptions moe = moe_options(cfg, o.capacity_factor, o.drop_policy, o.aux);
  const int B = o.batch_size, S = o.seq_len, L = cfg.num_layers, E = cfg.num_experts;
  std::vector<int32_t> in(size_t(B) * S), tgt(size_t(B) * S);
  Progress progress{isatty(2) != 0, o.quiet, std::max(1, o.log_every)};
  TrainResult result;
  std::string last_ckpt = resume_dir;
  double train_seconds = 0;
  int64_t train_tokens = 0;

  auto save = [&](int64_t step) {
    if (o.out_dir.empty()) return;
    json st = {{"step", step}, {"data", batcher.state()}, {"alpha", alpha.alpha}, {"signature", signature},
               {"seed", o.seed}, {"aux", aux_name(o.aux)}};
    CheckpointData cd{&m, opt.m().data(), opt.v().data(), st};
    last_ckpt = save_checkpoint(o.out_dir, step, cd, o.keep);
  };

  for (int64_t step = step0 + 1; step <= o.steps; step++) {
    auto t0 = std::chrono::steady_clock::now();
    StepLog s;
    s.step = step;
    s.drop_rate.assign(cfg.is_moe() ? L : 0, 0.0);
    s.aux_per_layer.assign(s.drop_rate.size(), 0.0);
    s.entropy.assign(s.drop_rate.size(), 0.0);
    s.expert_load.assign(s.drop_rate.size(), std::vector<int64_t>(E, 0));
    s.alpha = alpha.alpha;
    LossWeights lw{alpha.alpha, o.z_loss};
    std::memset(grads.data(), 0, grads.size() * sizeof(float));
    for (int micro = 0; micro < o.grad_accum; micro++) {
      batcher.next(in.data(), tgt.data());
      double ce = forward(m, acts, in.data(), tgt.data(), B, S, moe);
      double aux_w = 0, z = 0;
      for (int l = 0; l < (cfg.is_moe() ? L : 0); l++) {
        const MoeCache<float>& c = acts.layers[l].moe;
        aux_w += alpha.alpha[l] * c.aux_loss;
        z += c.z_loss;
        s.drop_rate[l] += c.disp.drop_rate() / o.grad_accum;
        s.aux_per_layer[l] += c.aux_loss / o.grad_accum;
        s.entropy[l] += c.entropy / o.grad_accum;
        for (int e = 0; e < E; e++) s.expert_load[l][e] += c.disp.load[e];
      }
      const double total = ce + aux_w + o.z_loss * z;
      if (!std::isfinite(total))
        fail("non-finite loss ({}) at step {} (micro-batch {}); stopping. {}", total, step, micro + 1,
             last_ckpt.empty() ? "No checkpoint was written." : "The last good checkpoint is " + last_ckpt);
      s.ce_loss += ce / o.grad_accum;
      s.aux_loss += aux_w / o.grad_accum;
      s.z_loss += o.z_loss * z / o.grad_accum;
      backward(m, acts, grads.data(), moe, lw, 1.0 / o.grad_accum);
    }
    s.loss = s.ce_loss + s.aux_loss + s.z_loss;
    s.grad_norm = clip_grad_norm(grads.data(), grads.size(), o.grad_clip);
    if (!std::isfinite(s.grad_norm))
      fail("non-finite gradient norm at step {}; stopping. {}", step,
           last_ckpt.empty() ? "No checkpoint was written." : "The last good checkpoint is " + last_ckpt);
    s.lr = o.schedule.at(step);
    opt.update(m.params.data(), grads.data(), s.lr, step);
    alpha.update(s.drop_rate);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t toks = int64_t(B) * S * o.grad_accum;
    s.tokens_per_s = toks / secs;
    train_seconds += secs;
    train_tokens += toks;

    if (have_val && ((o.eval_every > 0 && step % o.eval_every == 0) || step == o.steps)) {
      s.val_loss = evaluate(m, eval_acts, val_file, val_range, B, S, o.eval_batches);
      result.final_val_loss = s.val_loss;
    }
    if (jsonl.is_open()) {
      json j = {{"step", step},           {"loss", s.loss},       {"ce_loss", s.ce_loss},
                {"aux_loss", s.aux_loss}, {"z_loss", s.z_loss},   {"lr", s.lr},
                {"grad_norm", s.grad_norm}, {"tokens_per_s", s.tokens_per_s}, {"drop_rate", s.drop_rate},
                {"alpha", s.alpha},       {"aux_loss_per_layer", s.aux_per_layer},
                {"router_entropy", s.entropy}, {"expert_load", s.expert_load}};
      if (s.val_loss >= 0) j["val_loss"] = s.val_loss;
      jsonl << j.dump() << "\n";
      jsonl.flush();
    }
    progress.step(s, o.steps);
    if (on_step) on_step(s);
    result.log.push_back(std::move(s));
    if ((o.save_every > 0 && step % o.save_every == 0) || step == o.steps) save(step);
  }
  result.final_checkpoint = last_ckpt;
  result.tokens_per_s = train_seconds > 0 ? train_tokens / train_seconds : 0;
  return result;
}

}  // namespace sky
