#pragma once
// Parallel-layout planner (DESIGN.md section 4, report appendix B.2): for a model, a cluster and a batch,
// pick PP x TP x DP, the expert layout and ZeRO, then the layers and recomputed layers per pipeline stage
// that minimize the slowest stage under the memory cap. Pure arithmetic: nothing here runs a model.
// docs/planner.md describes the cost model and its assumptions.
#include <optional>
#include <string>
#include <vector>

#include "dist/expert_layout.h"
#include "model/config.h"

namespace sky {

// Where the experts live (report B.1). None: every expert split across the TP ranks like a dense FFN.

struct Cluster {
  int devices = 8;
  int devices_per_node = 8;
  double memory_gib = 80;   // per device
  double tflops = 0;        // achievable dense bf16 matmul rate per device
  double peak_tflops = 0;   // MFU denominator; 0 = tflops
  double intra_gbs = 200;   // per-device bus bandwidth of a collective inside a node (GB/s)
  double inter_gbs = 12.5;  // ... across nodes
  double reserve_gib = 2;   // per device: runtime context, communication buffers, fragmentation
};

struct Batch {
  int global_batch = 0;  // sequences per optimizer step
  int micro_batch = 1;   // sequences per micro-batch
  int seq_len = 0;
};

struct Layout {
  int pp = 1, tp = 1, dp = 1;
  ExpertLayout experts = ExpertLayout::None;
  bool zero1 = false;
  int ep_size(const ModelConfig& c) const;  // ranks one layer's experts are spread over
  std::string describe(const ModelConfig& c) const;
};

// Per-phase factors measured from `skymoe bench train --json` (see calibrate()).
struct Calibration {
  double fwd_scale = 1, bwd_scale = 1;  // measured / FLOP-model time
  double opt_s_per_param = 0;           // AdamW seconds per parameter updated (0 = not modelled)
  std::string note;                     // human-readable description, empty when uncalibrated
};

struct Mem {
  double params = 0, grads = 0, optim = 0, acts = 0, other = 0;  // bytes
  double total() const { return params + grads + optim + acts + other; }
  Mem& operator+=(const Mem& o);
};
Mem operator*(double k, const Mem& m);

// Everything the split search needs about one layout, per device and per micro-batch. Built from a
// model by build_cost_model(); tests may fill it by hand.
struct CostModel {
  int num_layers = 0, stages = 1, micro_batches = 1;
  double cap_bytes = 0;
  // Seconds for one micro-batch: compute plus the collectives on the layer's critical path (TP, EP).
  double layer_fwd_s = 0, layer_bwd_s = 0;
  double embed_fwd_s = 0, embed_bwd_s = 0;  // first stage
  double head_fwd_s = 0, head_bwd_s = 0;    // last stage: final norm, LM head, loss
  double p2p_s = 0;                         // one activation (or its gradient) between neighbouring stages
  // Static memory (params, grads, optimizer state) per layer / embedding / head, and the fixed reserve.
  Mem layer_static, embed_static, head_static;
  double reserve_bytes = 0;
  // Activation bytes kept for one micro-batch: a full layer, a recomputed layer (its input only),
  // and the last stage's head (logits for the loss backward).
  double layer_act = 0, layer_ckpt_act = 0, head_act = 0;
  // DP gradient synchronisation: seconds of all-reduce per layer / embedding / head; ZeRO-1 splits it
  // into a reduce-scatter and an all-gather of the updated parameters.
  double layer_dp_s = 0, embed_dp_s = 0, head_dp_s = 0;
  bool zero1 = false;
  // Optimizer seconds per layer / embedding / head on one device (0 unless calibrated).
  double layer_opt_s = 0, embed_opt_s = 0, head_opt_s = 0;
};

struct StagePlan {
  int layers = 0, recompute = 0;
  Mem mem;
  double fwd_s = 0, bwd_s = 0;  // per micro-batch, recompute counted in bwd_s
  double time_s() const { return fwd_s + bwd_s; }
};

struct SplitPlan {
  bool feasible = false;
  std::vector<StagePlan> stages;
  double stage_max_s = 0;    // slowest stage, fwd+bwd per micro-batch
  double pipeline_s = 0;     // (M + P - 1) * stage_max_s
  double dp_exposed_s = 0;   // gradient sync + optimizer not hidden behind the pipeline
  double step_s = 0;
  double bubble = 0;         // idle share of device time in the pipelined part
  double max_mem = 0;
  std::string pp_layers() const;         // "5,5,5,5,4"
  std::string recompute_layers() const;  // "2,1,1,0,0"
};

// One stage's memory and time for `layers` layers of which `recompute` are recomputed.
StagePlan stage_cost(const CostModel& cm, int stage, int layers, int recompute);
// The fewest recomputed layers that fit the cap, or -1 when even full recompute does not.
int min_recompute(const CostModel& cm, int stage, int layers);
// Evaluates a given split (recompute -1 = the fewest that fit); fills step time, bubble, exposed DP.
SplitPlan evaluate_split(const CostModel& cm, const std::vector<int>& layers, std::vector<int> recompute = {});
// Minimizes the slowest stage under the cap; among equally fast splits, the least exposed gradient
// sync, then the least recompute, then the most even memory.
SplitPlan optimize_split(const CostModel& cm);
// As even as possible, the extra layers on the first stages (what a split blind to the ends does).
std::vector<int> uniform_split(int layers, int stages);
// The smallest per-device memory cap under which some split fits (every layer recomputed if needed).
double min_memory_bytes(const CostModel& cm);

// Per-token forward FLOPs (whole model, no parallelism, no recompute) of one layer and of the head.
double layer_fwd_flops_per_token(const ModelConfig& c, int seq_len);
double head_fwd_flops_per_token(const ModelConfig& c);
// Model FLOPs per token for MFU: 3 x forward (matmuls + causal attention + LM head), no recompute.
double model_flops_per_token(const ModelConfig& c, int seq_len);

// Throws sky::Error naming the first thing wrong with this layout for this model/cluster/batch.
void validate_layout(const ModelConfig& c, const Cluster& cl, const Batch& b, const Layout& l);
CostModel build_cost_model(const ModelConfig& c, const Cluster& cl, const Batch& b, const Layout& l,
                           const Calibration& cal = {});

// Calibration from one `skymoe bench train --json` object. The profile's own model (its "preset") is
// predicted on one device at the profile's batch and sequence; fwd/bwd scales are measured over
// predicted. `tflops` is the rate that prediction uses (the planner's --tflops).
Calibration calibrate(const std::string& profile_json, double tflops, const std::string& source);
// The model FLOP rate the profile achieved (forward + backward), for --profile without --tflops.
double profile_tflops(const std::string& profile_json, const std::string& source);

struct PlanRequest {
  ModelConfig model;
  Cluster cluster;
  Batch batch;
  // Fixed parts of the layout; unset ones are searched.
  std::optional<int> pp, tp, dp;
  std::optional<ExpertLayout> experts;
  std::optional<bool> zero1;
  std::vector<int> pp_layers, recompute_layers;  // a given split to evaluate instead of optimizing
  Calibration cal;
};

struct LayoutPlan {
  Layout layout;
  int micro_batches = 0;
  SplitPlan plan, uniform;
  double tokens_per_s_per_device = 0, mfu = 0;
  double uniform_tokens_per_s_per_device = 0, uniform_mfu = 0;
};

struct PlanResult {
  LayoutPlan best;
  std::vector<LayoutPlan> candidates;  // feasible layouts searched, fastest first (best included)
  int searched = 0;                    // valid layouts tried
};

// Plans one layout (all of it fixed) or searches the unfixed parts. Throws sky::Error when a fixed
// layout is invalid or when nothing fits, saying the smallest memory per device that would.
PlanResult plan(const PlanRequest& r);
LayoutPlan plan_layout(const PlanRequest& r, const Layout& l);

}  // namespace sky
