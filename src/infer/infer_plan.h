#pragma once
// Memory per rank of multi-process inference (infer/tp.h) and the split that balances it: every
// rank holds its slice of attention and of the experts (or FFN), the f32 embedding, norms and
// router, and its slice of the KV cache; rank 0 also holds the final norm and the LM head.
#include <string>
#include <vector>

#include "infer/tp.h"

namespace sky {

struct InferMem {
  int rank = 0;
  Shard shard;
  double attention = 0, experts = 0, replicated = 0, head = 0, kv = 0;  // bytes
  // KV cache bytes one position of one sequence takes on this rank, all layers: 2 x kv heads x head
  // dim per layer, or under multi-head latent attention one latent row of kv_lora_rank + qk_rope_dim.
  double kv_bytes_per_token = 0;
  double weights() const { return attention + experts + replicated + head; }
  double total() const { return weights() + kv; }
};

struct InferPlanRequest {
  ModelConfig model;
  TpOptions tp;
  std::string dtype = "fp8";  // linear layers: f32 | bf16 | fp8 (per-row scales; the LM head then bf16)
  std::string kv_dtype = "f32";  // KV cache: f32 | bf16
  int batch = 16;             // sequences whose KV cache is held at once
  int context = 4096;         // positions per sequence
};

// Per rank, for the request's split (tp.shares, or even when empty).
std::vector<InferMem> infer_memory(const InferPlanRequest& r);
// Shares (one per rank) that minimize the largest rank's memory: small units of share are handed
// out one at a time to the rank that stays smallest with it.
std::vector<int> balance_shares(const InferPlanRequest& r);

}  // namespace sky
