#include "train/trainer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "dist/communicator.h"
#include "io/checkpoint.h"
#include "model/gguf_model.h"
#include "model/params.h"
#include "model/transformer.h"
#include "train/pipeline.h"

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
  SKY_CHECK(std::isfinite(o.balance_speed) && o.balance_speed > 0, "--balance-speed must be finite and positive, got {}",
            o.balance_speed);
  SKY_CHECK(std::isfinite(o.z_loss) && o.z_loss >= 0, "--z-loss must be finite and >= 0, got {}", o.z_loss);
  SKY_CHECK(std::isfinite(o.capacity_factor), "--capacity-factor must be finite, got {}", o.capacity_factor);
  SKY_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "--val-fraction must be in [0, 1), got {}", o.val_fraction);
  SKY_CHECK(o.val_data.empty() || o.val_fraction == 0, "give --val-data or --val-fraction, not both");
  SKY_CHECK(o.save_every >= 0, "--save-every must be >= 0, got {}", o.save_every);
  SKY_CHECK(o.eval_every >= 0, "--eval-every must be >= 0, got {}", o.eval_every);
  SKY_CHECK(o.eval_batches > 0, "--eval-batches must be positive, got {}", o.eval_batches);
  SKY_CHECK(o.zero == 0 || o.zero == 1, "--zero must be 0 or 1, got {}", o.zero);
  SKY_CHECK(std::isfinite(o.comm_timeout) && o.comm_timeout > 0, "--comm-timeout must be positive, got {}",
            o.comm_timeout);
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
      double md = 0, mv = 0, br = 0;
      for (double d : s.drop_rate) md += d / std::max<size_t>(1, s.drop_rate.size());
      for (double v : s.max_vio) mv += v / std::max<size_t>(1, s.max_vio.size());
      for (double r : s.bias_range) br = std::max(br, r);
      // imb: mean over layers of (max load - mean) / mean; bias: the widest layer's bias range (aux-free).
      fmt::print(stderr, "step {}/{}  loss {:.4f}  ce {:.4f}  aux {:.5f}  lr {:.3g}  |g| {:.3f}  drop {:.4f}{}{}  {:.0f} tok/s{}\n",
                 s.step, total, s.loss, s.ce_loss, s.aux_loss, s.lr, s.grad_norm, md,
                 s.max_vio.empty() ? "" : fmt::format("  imb {:.3f}", mv),
                 s.bias_range.empty() ? "" : fmt::format("  bias {:.4f}", br), s.tokens_per_s,
                 s.val_loss >= 0 ? fmt::format("  val {:.4f}", s.val_loss) : "");
    }
  }
};

}  // namespace

namespace {

// A range of the flat parameter buffer whose gradients are summed over `group` (its replicas) and
// whose optimizer state is sharded over it under ZeRO-1. Null group: the range is unique to this rank.
struct Region {
  size_t begin = 0, end = 0;
  Communicator* group = nullptr;
  bool zero = false;
  size_t shard = 0, own_begin = 0, own_end = 0;  // owned (updated) part
  std::vector<size_t> counts;  // owned sizes of every rank of the group (ZeRO-1)
  FloatBuf scratch;            // the owned part's reduced gradient (MPI forbids overlapping buffers)
  std::unique_ptr<AdamW> opt;

  Region(const ParamLayout& layout, const AdamWOptions& adam, size_t b, size_t e, Communicator* g, bool z,
         Backend& be)
      : begin(b), end(e), group(g && g->size() > 1 ? g : nullptr), zero(z && group) {
    const size_t n = end - begin, parts = group ? group->size() : 1;
    shard = zero ? (n + parts - 1) / parts : n;
    for (size_t q = 0; q < parts; q++) {
      const size_t qb = std::min(end, begin + q * shard);
      counts.push_back(std::min(end, qb + shard) - qb);
    }
    own_begin = zero ? std::min(end, begin + group->rank() * shard) : begin;
    own_end = zero ? std::min(end, own_begin + shard) : end;
    if (zero) scratch = FloatBuf(own_end - own_begin);
    opt = std::make_unique<AdamW>(layout, adam, own_begin, own_end, be);
  }

  // Sums the replicas' gradients: all of them, or under ZeRO-1 only the owned part (reduce-scatter).
  void reduce(float* grads) {
    if (!group) return;
    if (!zero) return group->all_reduce_sum(grads + begin, end - begin);
    group->reduce_scatter_sum(grads + begin, scratch.data(), counts);
    std::memcpy(grads + own_begin, scratch.data(), (own_end - own_begin) * sizeof(float));
  }
  // The whole range into `full` (indexed like the flat buffer) on every replica, from each rank's
  // owned part (`own`, indexed from own_begin; it may already sit in `full`).
  void gather(const float* own, float* full) const {
    if (own != full + own_begin) std::memcpy(full + own_begin, own, (own_end - own_begin) * sizeof(float));
    if (zero) group->all_gather_in_place(full + begin, counts);
  }
  // Whether this rank counts the reduced gradient of its range in the global norm (one replica does).
  bool counts_in_norm() const { return zero || !group || group->rank() == 0; }
  size_t norm_begin() const { return zero ? own_begin : begin; }
  size_t norm_end() const { return zero ? own_end : end; }
};

// Sum of squares of g over [b, e), leaving out parameters that tensor-parallel ranks other than the
// first hold as replicas.
double sum_squares(const ParamLayout& layout, const float* g, size_t b, size_t e, bool skip_tp_replicas, Backend& be,
                   const ParamSpec* skip = nullptr) {
  if (skip) {  // [b, e) without skip's range
    const size_t s0 = std::clamp(skip->offset, b, e), s1 = std::clamp(skip->offset + skip->numel(), b, e);
    return (s0 > b ? sum_squares(layout, g, b, s0, skip_tp_replicas, be) : 0.0) +
           (e > s1 ? sum_squares(layout, g, s1, e, skip_tp_replicas, be) : 0.0);
  }
  if (!skip_tp_replicas) {
    double n = grad_norm(g + b, e - b, be);
    return n * n;
  }
  double sq = 0;
  for (const ParamSpec& s : layout.specs) {
    if (!s.tp_split() && !s.is_expert()) continue;
    const size_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.numel());
    if (lo >= hi) continue;
    double n = grad_norm(g + lo, hi - lo, be);
    sq += n * n;
  }
  return sq;
}

}  // namespace

TrainResult train(const TrainOptions& o_in, const std::function<void(const StepLog&)>& on_step) {
  TrainOptions o = o_in;
  validate_train_options(o);
  Backend& be = backend(o.device);
  be.set_threads(o.threads);
  be.set_matmul_precision(o.precision);
  set_collective_timeout(o.comm_timeout);
  Communicator& comm = world_comm();

  // The config first: the layout is checked against it before any weights are read.
  std::string resume_dir = o.resume.empty() ? "" : resolve_checkpoint(o.resume);
  ModelConfig cfg = !resume_dir.empty()   ? ModelConfig::load_file(resume_dir)
                    : !o.model_dir.empty() ? ModelConfig::load_file(o.model_dir)
                                           : ModelConfig::resolve(o.config);
  if (!resume_dir.empty() && (!o.config.empty() || !o.model_dir.empty())) {
    ModelConfig want = !o.config.empty() ? ModelConfig::resolve(o.config) : ModelConfig::load_file(o.model_dir);
    SKY_CHECK(want.to_hf_json() == cfg.to_hf_json(),
              "--resume {}: the checkpoint is a different model than {} (configs differ)", resume_dir,
              !o.config.empty() ? o.config : o.model_dir);
  }
  SKY_CHECK(o.seq_len <= cfg.max_position_embeddings, "--seq-len {} exceeds max_position_embeddings {}", o.seq_len,
            cfg.max_position_embeddings);
  Mesh mesh = Mesh::create(comm, o.par, cfg, o.batch_size);
  const bool leader = comm.rank() == 0;
  if (!leader) o.quiet = true;
  if (!o.quiet && comm.size() > 1) fmt::print(stderr, "layout: {}\n", mesh.describe());

  // This rank's shard: from the checkpoint being resumed, a model directory, or a fresh init (the
  // same values as the whole model's: init is deterministic for a seed).
  const Shard shard = mesh.shard(cfg);
  Model m = !resume_dir.empty()   ? Model::load(resume_dir, shard)
            : !o.model_dir.empty() ? Model::load(o.model_dir, shard)
                                   : Model::random(cfg, o.seed, shard);
  m.be = &be;

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
  // Every rank draws the same global micro-batch and keeps its data-parallel share of the rows.
  Batcher batcher(data, train_range, o.batch_size, o.seq_len, o.data_order, o.seed);
  const int B = o.batch_size, S = o.seq_len, L = cfg.num_layers, E = cfg.num_experts;
  const int B_local = B / mesh.dp, M = mesh.microbatches;

  // Gradient regions: the parameters replicated over data-parallel ranks, then the expert weights
  // when the expert layout makes them unique per rank.
  const size_t total = m.layout.total;
  std::vector<Region> regions;
  Communicator* experts_group = mesh.expert_replicas();
  if (m.layout.expert_begin < total && experts_group != mesh.dp_group.get()) {
    regions.emplace_back(m.layout, o.adam, 0, m.layout.expert_begin, mesh.dp_group.get(), o.zero != 0, be);
    regions.emplace_back(m.layout, o.adam, m.layout.expert_begin, total, experts_group, o.zero != 0, be);
  } else {
    regions.emplace_back(m.layout, o.adam, 0, total, mesh.dp_group.get(), o.zero != 0, be);
  }
  const ParamLayout full_layout = ParamLayout::build(cfg);

  // The aux loss is trained under adaptive-aux and aux; under aux-free and none its coefficients stay
  // 0 (its value is still logged, as a balance measure). aux-free's selection bias sits in the layers'
  // weights, so training and validation route with it.
  const bool aux_trained = (o.balance == Balance::AdaptiveAux || o.balance == Balance::Aux) && o.aux != AuxLossType::None;
  AdaptiveAlpha alpha(cfg.has_moe() ? L : 0, aux_trained ? o.aux_alpha : 0.0,
                      aux_trained && o.balance == Balance::AdaptiveAux, o.aux_xi, o.aux_alpha_max, o.aux_beta);
  SelectBias sbias(o.balance == Balance::AuxFree && cfg.has_moe() ? L : 0, E, o.balance_speed);
  // A DeepSeek-V3 checkpoint's e_score_correction_bias is this bias as far as its own training
  // took it: aux-free continues from there. Read from the source on every rank (not from the
  // rank's shard), so all ranks start from the same whole-model bias.
  if (!sbias.bias.empty() && cfg.router_bias && resume_dir.empty() && !o.model_dir.empty()) {
    const SafetensorsReader src = open_model_tensors(o.model_dir);
    for (int l = 0; l < L; l++)
      if (cfg.layer_is_moe(l)) {
        const Tensor b = src.get_checked(tensor_name(cfg, ParamKind::RouterBias, l), {int64_t(E)}).to_f32();
        std::copy(b.f32(), b.f32() + E, sbias.bias[size_t(l)].begin());
      }
  }
  int64_t step0 = 0;
  const json signature = run_signature(o, cfg, data.size());
  if (!resume_dir.empty()) {
    // Checkpoints hold the whole model's moments; each rank takes the blocks it holds.
    FloatBuf full_m(full_layout.total), full_v(full_layout.total), mine_m(total), mine_v(total);
    json st = load_checkpoint_state(resume_dir, full_m.data(), full_v.data(), full_layout.total);
    for (const ParamSpec& s : m.layout.specs) {
      const size_t g = full_layout.specs[s.index].offset;
      copy_block_from_full(s, full_m.data() + g, mine_m.data() + s.offset);
      copy_block_from_full(s, full_v.data() + g, mine_v.data() + s.offset);
    }
    for (Region& r : regions) {
      const size_t n = r.own_end - r.own_begin;
      std::memcpy(r.opt->m().data(), mine_m.data() + r.own_begin, n * sizeof(float));
      std::memcpy(r.opt->v().data(), mine_v.data() + r.own_begin, n * sizeof(float));
    }
    SKY_CHECK(st.contains("signature") && st["signature"] == signature,
              "--resume {}: the checkpoint was trained with other settings (model, --seq-len, --batch-size, "
              "--grad-accum, --data-order or data size differ): {} vs now {}",
              resume_dir, st.value("signature", json()).dump(), signature.dump());
    try {  // trainer_state.json is outside input: every field checked before it is used
      TrainerState ts = parse_trainer_state(st, alpha.alpha.size(), cfg.has_moe() ? size_t(E) : 0);
      step0 = ts.step;
      batcher.restore(ts.data);
      alpha.alpha = std::move(ts.alpha);
      // A checkpoint of another --balance has no bias: aux-free then starts from zeros.
      if (!sbias.bias.empty() && !ts.select_bias.empty()) sbias.bias = std::move(ts.select_bias);
    } catch (const Error& e) {
      fail("--resume {}: trainer_state.json: {}", resume_dir, e.what());
    }
    SKY_CHECK(step0 < o.steps, "--resume {}: the checkpoint is at step {}, not before --steps {}", resume_dir, step0,
              o.steps);
  }
  o.schedule.total = o.steps;
  // The MoE layers this rank runs select with their layer's bias (its storage never moves from here on).
  for (int l = 0; l < m.shard.num_layers() && !sbias.bias.empty(); l++)
    if (m.layer_weights[l].is_moe()) m.layer_weights[l].moe.select_bias = sbias.bias[m.shard.layer_begin + l].data();

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

  FloatBuf grads(total);
  Pipeline pipe(m, mesh, B_local, S);
  MoeOptions moe = moe_options(cfg, o.capacity_factor, o.drop_policy, o.aux);
  Communicator* dp_comm = mesh.dp > 1 ? mesh.dp_group.get() : nullptr;
  if (dp_comm) moe.reduce_stats = [dp_comm](double* d, size_t n) { dp_comm->all_reduce_sum(d, n); };
  moe.par = mesh.moe_parallel(cfg);
  MoeOptions eval_moe = moe_options(cfg, 0.0, DropPolicy::Prob, AuxLossType::None);
  eval_moe.par = moe.par;
  std::vector<int32_t> in(size_t(B) * S), tgt(size_t(B) * S), in_local(size_t(B_local) * S),
      tgt_local(size_t(B_local) * S);
  // Pipeline micro-batch i is global rows [i * B/M, (i + 1) * B/M); each data-parallel rank takes its
  // contiguous share of it, so any layout with M micro-batches sees the batches one process with
  // --pp-microbatches M sees (and with M = 1, each rank's share of the whole batch).
  auto take_local = [&]() {
    const int b = B_local / M;
    for (int i = 0; i < M; i++) {
      const size_t src = (size_t(i) * (B / M) + size_t(mesh.dp_rank) * b) * S, dst = size_t(i) * b * S, n = size_t(b) * S;
      std::copy(in.begin() + src, in.begin() + src + n, in_local.begin() + dst);
      std::copy(tgt.begin() + src, tgt.begin() + src + n, tgt_local.begin() + dst);
    }
  };
  const double mb_tokens = double(B) / M * S;  // tokens one micro-batch's loss averages over, all DP ranks
  const int nl = m.shard.num_layers(), l0 = m.shard.layer_begin, Lm = cfg.has_moe() ? L : 0;
  // Statistics only one rank of each replica set reports, so one world all-reduce sums them.
  const bool reports_tokens = mesh.tp_rank == 0;             // CE, drops, entropy, loads: per DP rank's tokens
  const bool reports_global = reports_tokens && mesh.dp_rank == 0;  // aux and z: already global
  StageStats st;
  Progress progress{isatty(2) != 0, o.quiet, std::max(1, o.log_every)};
  TrainResult result;
  std::string last_ckpt = resume_dir;
  double train_seconds = 0;
  int64_t train_tokens = 0;

  auto evaluate = [&]() -> double {
    const uint64_t nb = std::min<uint64_t>(sequential_batch_count(val_range.size(), B, S), uint64_t(o.eval_batches));
    if (nb == 0) return -1;
    double sum = 0;
    for (uint64_t k = 0; k < nb; k++) {
      sequential_batch(val_file, val_range, B, S, k, in.data(), tgt.data());
      take_local();
      const double ce = pipe.eval(in_local.data(), tgt_local.data(), B_local, eval_moe);
      if (reports_tokens) sum += ce;
    }
    comm.all_reduce_sum(&sum, 1);
    return sum / (double(nb) * B * S);
  };

  // The whole model, or (with several ranks) the whole model assembled on rank 0 from every
  // data-parallel-first rank's blocks. Collective.
  auto save = [&](int64_t step) {
    if (o.out_dir.empty()) return;
    json state = {{"step", step},         {"data", batcher.state()}, {"alpha", alpha.alpha},
                  {"signature", signature}, {"seed", o.seed},          {"aux", aux_name(o.aux)},
                  {"balance", to_string(o.balance)}};
    if (o.balance == Balance::AuxFree) {
      state["balance_speed"] = o.balance_speed;
      state["select_bias"] = sbias.bias;
      // A model that routes with a selection bias (DeepSeek-V3) keeps the trained one in its
      // checkpoint, where inference reads it.
      if (cfg.router_bias)
        for (int l = 0; l < m.shard.num_layers(); l++)
          if (float* b = m.w.layers[size_t(l)].router_bias)
            std::copy(sbias.bias[size_t(m.shard.layer_begin + l)].begin(),
                      sbias.bias[size_t(m.shard.layer_begin + l)].end(), b);
    }
    FloatBuf mom_m(total), mom_v(total);
    for (Region& r : regions) {
      r.gather(r.opt->m().data(), mom_m.data());
      r.gather(r.opt->v().data(), mom_v.data());
    }
    if (comm.size() == 1) {
      last_ckpt = save_checkpoint(o.out_dir, step, CheckpointData{&m, mom_m.data(), mom_v.data(), state}, o.keep);
      return;
    }
    const int tag = 1 << 20;
    if (leader) {
      Model full = Model::allocate(cfg, Shard::full(cfg));
      FloatBuf fm(full.layout.total), fv(full.layout.total);
      auto place = [&](const ParamLayout& lay, const float* p, const float* pm, const float* pv) {
        for (const ParamSpec& s : lay.specs) {
          const size_t g = full.layout.specs[s.index].offset;
          copy_block_to_full(s, p + s.offset, full.params.data() + g);
          copy_block_to_full(s, pm + s.offset, fm.data() + g);
          copy_block_to_full(s, pv + s.offset, fv.data() + g);
        }
      };
      place(m.layout, m.params.data(), mom_m.data(), mom_v.data());
      for (int pr = 0; pr < mesh.pp; pr++)
        for (int tr = 0; tr < mesh.tp; tr++)
          for (int dr = 0; dr < mesh.dp; dr++) {
            if (pr == 0 && tr == 0 && dr == 0) continue;
            const Shard sh = mesh.shard_of(cfg, pr, dr, tr);
            const bool unique_experts = experts_group == nullptr && cfg.has_moe();
            if (dr > 0 && !unique_experts) continue;  // a replica of dp rank 0's blocks
            ParamLayout lay = ParamLayout::build(cfg, sh);
            FloatBuf p(lay.total), pm(lay.total), pv(lay.total);
            const int src = mesh.world_rank(pr, dr, tr);
            comm.recv(p.data(), lay.total, src, tag);
            comm.recv(pm.data(), lay.total, src, tag + 1);
            comm.recv(pv.data(), lay.total, src, tag + 2);
            place(lay, p.data(), pm.data(), pv.data());
          }
      last_ckpt = save_checkpoint(o.out_dir, step, CheckpointData{&full, fm.data(), fv.data(), state}, o.keep);
    } else {
      if (mesh.dp_rank == 0 || (experts_group == nullptr && cfg.has_moe())) {
        comm.send(m.params.data(), total, 0, tag);
        comm.send(mom_m.data(), total, 0, tag + 1);
        comm.send(mom_v.data(), total, 0, tag + 2);
        comm.wait_sends();
      }
      last_ckpt = (std::filesystem::path(o.out_dir) / fmt::format("step-{:08d}", step)).string();
    }
    comm.barrier();  // the checkpoint is complete before any rank goes on
  };

  // Fault injection for the tests: SKYMOE_TEST_HANG=RANK:STEP makes that rank stop responding there.
  int hang_rank = -1, hang_step = -1;
  if (const char* h = std::getenv("SKYMOE_TEST_HANG")) std::sscanf(h, "%d:%d", &hang_rank, &hang_step);
  std::vector<double> red;
  // Tied embeddings under a pipeline split: the embedding both end stages hold (null otherwise).
  const ParamSpec* tied_embed = mesh.tied_group ? m.layout.find(tensor_name(m.cfg, ParamKind::Embed)) : nullptr;
  for (int64_t step = step0 + 1; step <= o.steps; step++) {
    if (comm.rank() == hang_rank && step == hang_step) std::this_thread::sleep_for(std::chrono::hours(1));
    auto t0 = std::chrono::steady_clock::now();
    StepLog s;
    s.step = step;
    s.alpha = alpha.alpha;
    for (size_t l = 0; l < sbias.bias.size(); l++) s.bias_range.push_back(sbias.range(l));
    LossWeights lw{alpha.alpha, o.z_loss};
    std::optional<StepScope> scope(std::in_place, be, int(std::min<int64_t>(int64_t(B) * S * o.grad_accum, 1 << 30)));
    be.zero(grads.data(), grads.size());
    st.reset(Lm ? nl : 0, E);
    for (int micro = 0; micro < o.grad_accum; micro++) {
      batcher.next(in.data(), tgt.data());
      take_local();
      pipe.step(in_local.data(), tgt_local.data(), grads.data(), moe, lw, 1.0 / (double(o.grad_accum) * M), mb_tokens, st);
    }
    // One world all-reduce gathers the step's statistics: CE sum, then per global layer dropped
    // count, entropy sum, aux sum, z sum and expert loads.
    const size_t per = 4 + size_t(E);
    red.assign(1 + size_t(Lm) * per, 0.0);
    if (reports_tokens) red[0] = st.ce_sum;
    for (int l = 0; l < (Lm ? nl : 0); l++) {
      double* r = red.data() + 1 + size_t(l0 + l) * per;
      if (reports_tokens) {
        r[0] = st.dropped[l];
        r[1] = st.entropy_sum[l];
        for (int e = 0; e < E; e++) r[4 + e] = st.load[l][e];
      }
      if (reports_global) {
        r[2] = st.aux[l];
        r[3] = st.z[l];
      }
    }
    comm.all_reduce_sum(red.data(), red.size());
    const double tokens = double(B) * S * o.grad_accum, passes = double(o.grad_accum) * M;
    s.ce_loss = red[0] / tokens;
    s.drop_rate.assign(Lm, 0.0);
    s.aux_per_layer.assign(Lm, 0.0);
    s.entropy.assign(Lm, 0.0);
    s.expert_load.assign(Lm, std::vector<int64_t>(E, 0));
    for (int l = 0; l < Lm; l++) {
      const double* r = red.data() + 1 + size_t(l) * per;
      s.drop_rate[l] = r[0] / (tokens * cfg.top_k);
      s.entropy[l] = r[1] / tokens;
      s.aux_per_layer[l] = r[2] / passes;
      s.aux_loss += alpha.alpha[l] * r[2] / passes;
      s.z_loss += o.z_loss * r[3] / passes;
      for (int e = 0; e < E; e++) s.expert_load[l][e] = int64_t(r[4 + e]);
    }
    s.max_vio.assign(Lm, 0.0);
    for (int l = 0; l < Lm; l++) s.max_vio[l] = max_violation(s.expert_load[l]);
    s.loss = s.ce_loss + s.aux_loss + s.z_loss;
    if (!std::isfinite(s.loss))
      fail("non-finite loss ({}) at step {}; stopping. {}", s.loss, step,
           last_ckpt.empty() ? "No checkpoint was written." : "The last good checkpoint is " + last_ckpt);

    // A tied model split into stages: the embedding's gradient is the sum of the first stage's
    // (lookups) and the last stage's (LM head); both then take the same update. The norm counts it once.
    if (tied_embed) mesh.tied_group->all_reduce_sum(grads.data() + tied_embed->offset, tied_embed->numel());
    // Sum the replicas' gradients, clip by the global norm, update the owned ranges, and (ZeRO-1)
    // share the updated parameters.
    double sq = 0;
    for (Region& r : regions) {
      r.reduce(grads.data());
      if (r.counts_in_norm()) sq += sum_squares(m.layout, grads.data(), r.norm_begin(), r.norm_end(),
                                                mesh.tp > 1 && mesh.tp_rank > 0, be,
                                                mesh.holds_tied_copy() ? tied_embed : nullptr);
    }
    comm.all_reduce_sum(&sq, 1);
    s.grad_norm = std::sqrt(sq);
    if (!std::isfinite(s.grad_norm))
      fail("non-finite gradient norm at step {}; stopping. {}", step,
           last_ckpt.empty() ? "No checkpoint was written." : "The last good checkpoint is " + last_ckpt);
    s.lr = o.schedule.at(step);
    for (Region& r : regions) {
      r.opt->update(m.params.data(), grads.data(), s.lr, step, clip_scale(s.grad_norm, o.grad_clip));
      if (r.zero) r.gather(m.params.data() + r.own_begin, m.params.data());
    }
    alpha.update(s.drop_rate);
    // The step's loads are global (the world all-reduce above), so every rank moves its bias alike.
    sbias.update(s.expert_load);
    scope.reset();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t toks = int64_t(B) * S * o.grad_accum;
    s.tokens_per_s = toks / secs;
    train_seconds += secs;
    train_tokens += toks;

    if (have_val && ((o.eval_every > 0 && step % o.eval_every == 0) || step == o.steps)) {
      s.val_loss = evaluate();
      result.final_val_loss = s.val_loss;
    }
    if (jsonl.is_open() && leader) {
      json j = {{"step", step},           {"loss", s.loss},       {"ce_loss", s.ce_loss},
                {"aux_loss", s.aux_loss}, {"z_loss", s.z_loss},   {"lr", s.lr},
                {"grad_norm", s.grad_norm}, {"tokens_per_s", s.tokens_per_s}, {"drop_rate", s.drop_rate},
                {"alpha", s.alpha},       {"aux_loss_per_layer", s.aux_per_layer},
                {"router_entropy", s.entropy}, {"expert_load", s.expert_load}, {"max_vio", s.max_vio}};
      if (!s.bias_range.empty()) j["bias_range"] = s.bias_range;
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
