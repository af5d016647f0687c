#pragma once
// One engine step: the new tokens of many sequences at once (a prefill chunk for a sequence that
// just joined, one token for each running sequence) through the decoder (model/decoder.h). Linear
// layers and experts run over all rows together (one read of each weight per step, shared by the
// batch); attention runs per sequence against its own KV cache.
#include <cstdint>
#include <vector>

#include "infer/infer_model.h"
#include "model/decoder.h"

namespace sky {

// Reusable buffers, grown on demand.
struct BatchScratch {
  std::vector<float> x, ln, rstd, logits_in;
  std::vector<int32_t> pos;
  std::vector<const QWeight*> w1, w3, w2;  // the held experts of the layer being run
  LayerActs layer;                         // every layer runs in the same buffers
};

// Runs the rows, appends their keys/values to each sequence's cache, and writes the logits of each
// sequence's last new token to logits[s * V]. all_logits (optional) gets [total rows, V].
void batch_forward(const InferModel& m, const std::vector<BatchRow>& rows, float* logits, BatchScratch& s,
                   float* all_logits = nullptr);

}  // namespace sky
