#pragma once
// The part of a model one process holds (DESIGN.md sections 4-5): a range of layers (pipeline
// stage), whether it holds the embedding and the LM head, a slice of the attention heads and of the
// FFN width (tensor parallelism), and a set of experts each with a slice of its width (expert
// layouts). The default is the whole model. Parameter names stay the global HF names, so a shard
// loads from and saves to ordinary checkpoints.
#include <string>
#include <vector>

#include "model/config.h"

namespace sky {

// Whether tensor parallelism can split this model: not yet for q/k biases, q/k norms (a per-head
// norm's weight gradient would need a sum over the group; a whole-projection norm spans every
// head) or shared experts (computed whole on every rank and summed tp times).
bool tensor_parallel_supported(const ModelConfig& c);

struct Range {
  int begin = 0, size = 0;
  int end() const { return begin + size; }
  bool operator==(const Range&) const = default;
};

// n split into parts as evenly as possible, larger parts first: 36 over 8 -> 5,5,5,5,4,4,4,4.
std::vector<int> split_even(int n, int parts);
// n split in proportion to `shares` (largest remainder; shares summing to n are taken as they are).
std::vector<int> split_by_shares(int n, const std::vector<int>& shares);
// The ranges of consecutive parts of the given sizes.
std::vector<Range> to_ranges(const std::vector<int>& sizes);

struct Shard {
  int layer_begin = 0, layer_end = 0;
  bool embed = true, head = true;
  Range q_heads, kv_heads;  // attention heads held (q heads follow their kv groups under GQA)
  Range ffn;                // dense FFN: slice of the intermediate dimension
  Range experts;            // MoE: experts held (global ids)
  Range expert_ffn;         // MoE: slice of each held expert's intermediate dimension

  static Shard full(const ModelConfig& c);
  int num_layers() const { return layer_end - layer_begin; }
  bool is_full(const ModelConfig& c) const { return *this == full(c); }
  bool operator==(const Shard&) const = default;
  std::string describe() const;
};

// The config of the slice a shard holds: its heads, kv heads and FFN / expert width (the expert
// count stays the model's: the router scores every expert).
ModelConfig shard_config(const ModelConfig& c, const Shard& s);

// Tensor-parallel slice of rank `index` among `tp` ranks (shares empty: even split, else tp shares):
// kv heads split by the shares (q heads follow, num_heads / num_kv_heads per kv head), the dense
// FFN width likewise. Throws when a rank would get no kv head.
void split_attention(const ModelConfig& c, int tp, const std::vector<int>& shares, int index, Shard& s);

}  // namespace sky
