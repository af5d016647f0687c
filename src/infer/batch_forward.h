#pragma once
// One engine step: the new tokens of many sequences at once (a prefill chunk for a sequence that
// just joined, one token for each running sequence) through the decoder (model/decoder.h). Linear
// layers and experts run over all rows together (one read of each weight per step, shared by the
// batch); attention runs per sequence against its own KV cache.
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/infer_model.h"
#include "model/decoder.h"

namespace sky {

// Reusable buffers, grown on demand.
struct BatchScratch {
  std::vector<float> x, ln, rstd, logits_in, row_logits;
  std::vector<int32_t> pos;
  std::vector<const QWeight*> w1, w3, w2;  // the held experts of the layer being run
  LayerActs layer;                         // every layer runs in the same buffers
};

// The logits of the other rows of some sequences (prompt log-probabilities: every prompt position
// predicts the next prompt token). fn(sequence, row, logits[V]) sees each row of the sequences
// marked in `want` but the last (whose logits go to `logits` as usual), in order. The rows go
// through the LM head a block at a time, so memory stays a block's, not the prompt's, and a step
// without marked sequences pays nothing.
struct RowLogits {
  std::vector<uint8_t> want;  // per sequence of `rows`; empty = none
  std::function<void(int seq, int row, const float* logits)> fn;
};

// Runs the rows, appends their keys/values to each sequence's cache, and writes the logits of each
// sequence's last new token to logits[s * V]. all_logits (optional) gets [total rows, V].
void batch_forward(const InferModel& m, const std::vector<BatchRow>& rows, float* logits, BatchScratch& s,
                   float* all_logits = nullptr, const RowLogits* row_logits = nullptr);

}  // namespace sky
