#pragma once
// Multi-process inference (DESIGN.md section 5): tensor parallelism with non-uniform splits and
// optional expert parallelism, over one communicator group (MPI ranks).
//
// Each rank holds a slice of every layer: kv heads split by the shares or as evenly as possible
// (q heads follow their GQA group, o_proj by head), and each expert's (or the dense FFN's)
// intermediate width split by the same shares; with --ep M, the experts are spread over M groups
// of ranks instead (M = --tp: whole experts per rank). A rank's partial attention and FFN outputs
// are summed by one all-reduce each per layer. The embedding, norms and router are replicated;
// only rank 0 holds the final norm and LM head and computes logits.
//
// Rank 0 runs the engine (scheduling, sampling, the HTTP server). Before each forward it broadcasts
// the step (which sequences, their positions and new tokens) and every other rank runs the same
// forward on its slice (TpGroup::follow), keeping its own slice of each sequence's KV cache.
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "dist/communicator.h"
#include "infer/batch_forward.h"
#include "model/config.h"
#include "model/shard.h"

namespace sky {

struct TpOptions {
  int tp = 1;
  std::vector<int> shares;  // per rank; empty: as even as possible
  int ep = 1;               // expert groups: experts spread over ep groups of tp / ep ranks each
};

// Checks the options against the model and returns the slice of `rank`. Errors name the flag
// (--tp, --tp-shares, --ep), so they can be reported before any weight is read.
Shard tp_shard(const ModelConfig& c, const TpOptions& o, int rank);

class TpGroup {
 public:
  explicit TpGroup(Communicator& comm) : comm_(comm) {}
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  bool leader() const { return comm_.rank() == 0; }

  // Sums partial outputs over the group (timed).
  void sum(float* x, size_t n);
  // Rank 0, before every forward: tells the others what to run. No-op on the others.
  void announce(const std::vector<BatchRow>& rows);
  // Rank 0 while idle (a server between requests): keeps the others' waits under the collective
  // timeout, so only a real failure makes them give up.
  void heartbeat();
  // Rank 0: the others return from follow(). Idempotent.
  void finish();
  // Ranks other than 0: run the forwards rank 0 announces until it finishes.
  void follow(const InferModel& m);

  // Seconds spent in collectives (all-reduces and step broadcasts, waiting for slower ranks
  // included) and forwards run, since construction.
  double comm_seconds() const { return comm_s_; }
  int64_t steps() const { return steps_; }

 private:
  void broadcast(std::vector<int32_t>& msg);
  void fault_injection();  // SKYMOE_TEST_HANG / SKYMOE_TEST_EXIT=RANK:STEP (tests)

  Communicator& comm_;
  double comm_s_ = 0;
  int64_t steps_ = 0;
  bool finished_ = false;
};

}  // namespace sky
