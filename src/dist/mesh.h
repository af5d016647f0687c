#pragma once
// The process mesh of a distributed run (DESIGN.md section 4): world = PP x DP x TP ranks, rank =
// (pp * DP + dp) * TP + tp, so a tensor-parallel group is a block of neighbouring ranks. The expert
// layout lays the expert groups over it:
//   none  experts replicated over DP; under TP each expert's width is split like the dense FFN
//   ep    whole experts spread over the DP x TP ranks of a stage (all-to-all dispatch)
//   etp   experts spread over DP (all-to-all), each split over TP
//   edp   whole experts spread over TP (no all-to-all: TP ranks hold the same tokens), replicated over DP
// Groups are made once here and passed explicitly.
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/expert_layout.h"
#include "model/shard.h"
#include "moe/moe_layer.h"

namespace sky {


struct ParallelOptions {
  int tp = 1, pp = 1;
  ExpertLayout experts = ExpertLayout::None;
  std::vector<int> pp_layers;  // layers per stage (empty: as even as possible)
  std::vector<int> recompute;  // layers recomputed in backward, per stage (empty: none)
  std::vector<int> tp_shares;  // relative head/width share per TP rank (empty: even)
  int pp_microbatches = 0;     // 1F1B micro-batches per micro-step (0: default)
};

// Parses "5,5,5,5,4" style lists, naming the flag in errors.
std::vector<int> parse_int_list(const std::string& s, const char* flag);

class Mesh {
 public:
  // Validates the layout against the world size, the model and the batch (every error names the
  // flag and value) and creates the groups. Collective over `world`.
  static Mesh create(Communicator& world, const ParallelOptions& o, const ModelConfig& cfg, int batch_size);
  // Checks only (no groups): usable before any rank does work.
  static void validate(int world_size, const ParallelOptions& o, const ModelConfig& cfg, int batch_size);

  int tp = 1, pp = 1, dp = 1;
  int rank = 0, tp_rank = 0, pp_rank = 0, dp_rank = 0;
  ParallelOptions opt;
  std::vector<int> stage_layers;  // per stage
  int microbatches = 1;           // 1F1B micro-batches per micro-step
  Communicator* world = nullptr;
  std::unique_ptr<Communicator> tp_group, dp_group, stage_group;
  // Tied embeddings under a pipeline split: the first stage's rank and the last stage's rank with
  // the same DP and TP coordinates, which both hold the embedding (null otherwise).
  std::unique_ptr<Communicator> tied_group;
  bool holds_tied_copy() const { return tied_group && pp_rank == pp - 1; }  // the last stage's copy

  Communicator* tp_comm() const { return tp > 1 ? tp_group.get() : nullptr; }
  int world_rank(int pp_r, int dp_r, int tp_r) const { return (pp_r * dp + dp_r) * tp + tp_r; }
  Shard shard(const ModelConfig& cfg) const { return shard_of(cfg, pp_rank, dp_rank, tp_rank); }
  Shard shard_of(const ModelConfig& cfg, int pp_r, int dp_r, int tp_r) const;
  // This rank's part in every MoE layer (pointers into this mesh's groups).
  MoeParallel moe_parallel(const ModelConfig& cfg) const;
  // The group over which expert-weight gradients are summed (null: each expert block is unique).
  Communicator* expert_replicas() const;
  int recompute_layers() const { return opt.recompute.empty() ? 0 : opt.recompute[pp_rank]; }
  std::string describe() const;
};

}  // namespace sky
