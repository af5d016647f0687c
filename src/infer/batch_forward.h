#pragma once
// One forward pass over the new tokens of many sequences at once: a prefill chunk for a sequence
// that just joined, one token for each running sequence. Linear layers and experts run over all
// rows together (one read of each weight per step, shared by the batch); attention runs per
// sequence against its own KV cache.
#include <cstdint>
#include <vector>

#include "infer/infer_model.h"
#include "moe/moe_layer.h"
#include "backend/backend.h"

namespace sky {

// A sequence's KV cache: [layer][position][kv_dim] for keys and values, f32 or (half the memory
// and the bytes attention reads) bf16.
struct SeqKV {
  int capacity = 0;  // positions
  int len = 0;       // positions filled
  bool bf16 = false;
  std::vector<float> k, v;       // f32 cache
  std::vector<uint16_t> kh, vh;  // bf16 cache
  void init(const ModelConfig& c, int capacity, bool bf16 = false);
  // Stores n positions' keys and values (f32 rows of kv_dim) at pos of a layer.
  void put(const ModelConfig& c, int layer, int pos, const float* keys, const float* values, int n);
  // The layer's cache from position 0, as attention reads it.
  KvView view(const ModelConfig& c, int layer) const;
};

struct BatchRow {  // the new tokens of one sequence in this step
  SeqKV* kv;
  const int32_t* tokens;
  int n;
};

// Reusable buffers, grown on demand.
struct BatchScratch {
  std::vector<float> x, ln, q, k, v, ctx, tmp, rstd, logits_in;
  std::vector<float> h1, h3;  // dense FFN
  std::vector<int32_t> pos;
  std::vector<AttnSeq> attn;
  std::vector<const QWeight*> w1, w3, w2;  // the held experts of the layer being run
  MoeCache<float> moe;
};

// Runs the rows, appends their keys/values to each sequence's cache, and writes the logits of each
// sequence's last new token to logits[s * V]. all_logits (optional) gets [total rows, V].
void batch_forward(const InferModel& m, const std::vector<BatchRow>& rows, float* logits, BatchScratch& s,
                   float* all_logits = nullptr);

}  // namespace sky
