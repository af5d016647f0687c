#pragma once
// Single-process training loop: micro-batches with gradient accumulation, AdamW, LR schedule,
// clipping, Skywork's adaptive aux-loss coefficients, periodic validation, atomic checkpoints,
// bit-for-bit resume, JSONL logging.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dist/mesh.h"
#include "io/token_data.h"
#include "moe/adaptive_alpha.h"
#include "moe/balance.h"
#include "moe/moe_layer.h"
#include "train/optimizer.h"
#include "backend/backend.h"
#include "train/schedule.h"

namespace sky {

struct TrainOptions {
  std::string model_dir;  // start from this checkpoint/model directory, or
  std::string config;     // from scratch: preset name or config.json
  std::string data, val_data;
  double val_fraction = 0.0;  // take validation from the end of --data (only when > 0)
  int eval_every = 0;         // steps (0 = only at the end, when validation data exists)
  int eval_batches = 8;
  int seq_len = 256, batch_size = 8, grad_accum = 1;
  int64_t steps = 100;
  LrSchedule schedule;  // lr, warmup, cosine, min_ratio (total is set from steps)
  AdamWOptions adam;
  double grad_clip = 1.0;
  // Load balancing (moe/balance.h): Skywork's aux loss with adaptive (default) or fixed
  // coefficients, DeepSeek-V3's auxiliary-loss-free selection bias, or none.
  Balance balance = Balance::AdaptiveAux;
  double balance_speed = 1e-3;  // aux-free: the bias moves by this much per step
  // The aux loss (its type is also the balance measure logged under aux-free and none, unweighted).
  AuxLossType aux = AuxLossType::Skywork;
  double aux_alpha = 0.01;
  double aux_xi = 0.2, aux_alpha_max = 0.01, aux_beta = 0.99;
  double z_loss = 0.0;
  double capacity_factor = 0.0;
  DropPolicy drop_policy = DropPolicy::Prob;
  DataOrder data_order = DataOrder::Shuffled;
  uint64_t seed = 0;
  int threads = 0;
  std::string device = "cpu";  // compute backend (backend/backend.h): cpu | ref
  // GEMM precision (bf16: mixed precision, f32 master weights and optimizer state).
  MatmulPrecision precision = MatmulPrecision::F32;
  std::string out_dir;
  int save_every = 0;  // 0 = only at the end
  int keep = 2;        // checkpoints kept (0 = all)
  std::string log_jsonl;
  std::string resume;
  int log_every = 10;  // plain-text lines when not on a terminal
  bool quiet = false;
  // Data parallelism over the MPI world (every rank takes its contiguous share of each micro-batch's
  // rows); zero = 1 shards the AdamW state across the ranks (ZeRO-1).
  int zero = 0;
  // Tensor, pipeline and expert parallelism (DP = processes / (TP x PP)).
  ParallelOptions par;
  double comm_timeout = 600;  // seconds a collective may wait before the job is aborted
};

struct StepLog {
  int64_t step = 0;
  double loss = 0, ce_loss = 0, aux_loss = 0, z_loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0;
  double val_loss = -1;  // < 0: not evaluated this step
  std::vector<double> drop_rate, alpha, aux_per_layer, entropy;
  std::vector<std::vector<int64_t>> expert_load;  // [layer][expert]
  // Per layer: load imbalance (max load - mean) / mean of this step (moe/balance.h max_violation),
  // and under aux-free the selection bias's range (max - min) used in this step (else empty).
  std::vector<double> max_vio, bias_range;
};

struct TrainResult {
  std::vector<StepLog> log;
  std::string final_checkpoint;
  double final_val_loss = -1;
  double tokens_per_s = 0;  // over the whole run (excluding evaluation and checkpoint writes)
};

void validate_train_options(const TrainOptions& o);  // throws naming the flag and value

// Runs training; `on_step` (optional) sees every step's log.
TrainResult train(const TrainOptions& o, const std::function<void(const StepLog&)>& on_step = {});

}  // namespace sky
