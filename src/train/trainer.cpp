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
#include "dist/communicator.h"
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
  SKY_CHECK(o.zero == 0 || o.zero == 1, "--zero must be 0 or 1, got {}", o.zero);
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

  // Model: from a checkpoint being resumed, a model directory, or a fresh init (the same on every
  // rank: init is deterministic for a seed).
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

  // Data parallelism: every rank draws the same global micro-batch and keeps its contiguous rows.
  Communicator& comm = world_comm();
  const int dp = comm.size(), rank = comm.rank();
  SKY_CHECK(o.batch_size % dp == 0, "--batch-size {} is not divisible by the {} data-parallel ranks", o.batch_size, dp);
  const int B_local = o.batch_size / dp;
  // ZeRO-1: rank r owns parameters [r * shard, (r + 1) * shard) of the flat buffer (the last shard
  // is short); buffers that are all-gathered are padded to dp * shard.
  const size_t total = m.layout.total;
  const size_t shard = o.zero ? (total + dp - 1) / dp : total;
  const size_t own_begin = o.zero ? std::min(total, rank * shard) : 0;
  const size_t own_end = o.zero ? std::min(total, own_begin + shard) : total;
  const bool leader = rank == 0;
  if (!leader) o.quiet = true;

  AdamW opt(m.layout, o.adam, own_begin, own_end);
  AdaptiveAlpha alpha(cfg.is_moe() ? cfg.num_layers : 0, o.aux == AuxLossType::None ? 0.0 : o.aux_alpha,
                      o.aux_adaptive && o.aux != AuxLossType::None, o.aux_xi, o.aux_alpha_max, o.aux_beta);
  int64_t step0 = 0;
  const json signature = run_signature(o, cfg, data.size());
  if (!resume_dir.empty()) {
    FloatBuf full_m(total), full_v(total);
    json st = load_checkpoint_state(resume_dir, full_m.data(), full_v.data(), total);
    std::memcpy(opt.m().data(), full_m.data() + own_begin, (own_end - own_begin) * sizeof(float));
    std::memcpy(opt.v().data(), full_v.data() + own_begin, (own_end - own_begin) * sizeof(float));
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
  if (!o.log_jsonl.empty() && leader) {
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

  FloatBuf grads(o.zero ? shard * dp : total);
  Activations acts, eval_acts;
  MoeOptions moe = moe_options(cfg, o.capacity_factor, o.drop_policy, o.aux);
  if (dp > 1) moe.reduce_stats = [&comm](double* d, size_t n) { comm.all_reduce_sum(d, n); };
  const int B = o.batch_size, S = o.seq_len, L = cfg.num_layers, E = cfg.num_experts;
  std::vector<int32_t> in(size_t(B) * S), tgt(size_t(B) * S);
  const int32_t* in_local = in.data() + size_t(rank) * B_local * S;
  const int32_t* tgt_local = tgt.data() + size_t(rank) * B_local * S;
  const double global_tokens = double(B) * S;
  // Per micro-batch statistics summed over ranks: CE sum, then per layer dropped count, entropy
  // sum and expert loads.
  std::vector<double> red;
  Progress progress{isatty(2) != 0, o.quiet, std::max(1, o.log_every)};
  TrainResult result;
  std::string last_ckpt = resume_dir;
  double train_seconds = 0;
  int64_t train_tokens = 0;

  auto save = [&](int64_t step) {
    if (o.out_dir.empty()) return;
    json st = {{"step", step}, {"data", batcher.state()}, {"alpha", alpha.alpha}, {"signature", signature},
               {"seed", o.seed}, {"aux", aux_name(o.aux)}};
    // The checkpoint holds the full moments whatever the layout, so any layout can resume it.
    FloatBuf full_m, full_v;
    const float *pm = opt.m().data(), *pv = opt.v().data();
    if (o.zero && dp > 1) {
      full_m = FloatBuf(shard * dp);
      full_v = FloatBuf(shard * dp);
      FloatBuf mine(shard);
      std::memcpy(mine.data(), opt.m().data(), (own_end - own_begin) * sizeof(float));
      comm.all_gather(mine.data(), full_m.data(), shard);
      std::memset(mine.data(), 0, shard * sizeof(float));
      std::memcpy(mine.data(), opt.v().data(), (own_end - own_begin) * sizeof(float));
      comm.all_gather(mine.data(), full_v.data(), shard);
      pm = full_m.data();
      pv = full_v.data();
    }
    if (leader) {
      CheckpointData cd{&m, pm, pv, st};
      last_ckpt = save_checkpoint(o.out_dir, step, cd, o.keep);
    } else {
      last_ckpt = (std::filesystem::path(o.out_dir) / fmt::format("step-{:08d}", step)).string();
    }
    comm.barrier();  // the checkpoint is complete before any rank goes on
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
      const double ce_local = forward(m, acts, in_local, tgt_local, B_local, S, moe);
      const int Lm = cfg.is_moe() ? L : 0;
      red.assign(1 + size_t(Lm) * (2 + E), 0.0);
      red[0] = ce_local * B_local * S;
      for (int l = 0; l < Lm; l++) {
        const MoeCache<float>& c = acts.layers[l].moe;
        double* r = red.data() + 1 + size_t(l) * (2 + E);
        r[0] = double(c.disp.dropped);
        r[1] = c.entropy * B_local * S;
        for (int e = 0; e < E; e++) r[2 + e] = c.disp.load[e];
      }
      if (dp > 1) comm.all_reduce_sum(red.data(), red.size());
      const double ce = red[0] / global_tokens;
      double aux_w = 0, z = 0;
      for (int l = 0; l < Lm; l++) {
        const MoeCache<float>& c = acts.layers[l].moe;  // aux and z losses are already global
        const double* r = red.data() + 1 + size_t(l) * (2 + E);
        aux_w += alpha.alpha[l] * c.aux_loss;
        z += c.z_loss;
        s.drop_rate[l] += r[0] / (global_tokens * cfg.top_k) / o.grad_accum;
        s.aux_per_layer[l] += c.aux_loss / o.grad_accum;
        s.entropy[l] += r[1] / global_tokens / o.grad_accum;
        for (int e = 0; e < E; e++) s.expert_load[l][e] += int64_t(r[2 + e]);
      }
      const double total = ce + aux_w + o.z_loss * z;
      if (!std::isfinite(total))
        fail("non-finite loss ({}) at step {} (micro-batch {}); stopping. {}", total, step, micro + 1,
             last_ckpt.empty() ? "No checkpoint was written." : "The last good checkpoint is " + last_ckpt);
      s.ce_loss += ce / o.grad_accum;
      s.aux_loss += aux_w / o.grad_accum;
      s.z_loss += o.z_loss * z / o.grad_accum;
      backward(m, acts, grads.data(), moe, lw, 1.0 / o.grad_accum, global_tokens);
    }
    s.loss = s.ce_loss + s.aux_loss + s.z_loss;
    // Each rank holds its rows' share of the gradient: sum them (all-reduce), or under ZeRO-1 only
    // into the shard each rank updates (reduce-scatter), then all-gather the updated parameters.
    if (dp > 1 && !o.zero) comm.all_reduce_sum(grads.data(), total);
    if (dp > 1 && o.zero) {
      FloatBuf mine(shard);  // MPI forbids overlapping send and receive buffers
      comm.reduce_scatter_sum(grads.data(), mine.data(), std::vector<size_t>(dp, shard));
      std::memcpy(grads.data() + own_begin, mine.data(), (own_end - own_begin) * sizeof(float));
    }
    float* g_own = grads.data() + own_begin;
    const size_t n_own = own_end - own_begin;
    double sq = grad_norm(g_own, n_own);
    sq *= sq;
    if (o.zero && dp > 1) comm.all_reduce_sum(&sq, 1);
    s.grad_norm = std::sqrt(sq);
    if (!std::isfinite(s.grad_norm))
      fail("non-finite gradient norm at step {}; stopping. {}", step,
           last_ckpt.empty() ? "No checkpoint was written." : "The last good checkpoint is " + last_ckpt);
    scale_for_clip(g_own, n_own, s.grad_norm, o.grad_clip);
    s.lr = o.schedule.at(step);
    opt.update(m.params.data(), grads.data(), s.lr, step);
    if (o.zero && dp > 1) {
      FloatBuf gathered(shard * dp), mine(shard);
      std::memcpy(mine.data(), m.params.data() + own_begin, n_own * sizeof(float));
      comm.all_gather(mine.data(), gathered.data(), shard);
      std::memcpy(m.params.data(), gathered.data(), total * sizeof(float));
    }
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
    if (jsonl.is_open() && leader) {
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
