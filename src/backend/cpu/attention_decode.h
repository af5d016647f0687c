#pragma once
// Decode-step attention: one query row (every head) at position L - 1 against keys/values
// [0, L) of a KV cache (f32 or bf16) laid out [position][n_kv * hd], for heads [h0, h1) (out and q
// are [n_heads * hd]; only those heads' outputs are written). scores: scratch of (h1 - h0) * L
// floats. Single-threaded (callers run sequences or head ranges in parallel); a head's result
// does not depend on the range it is in or on what else is in the batch.
#include "backend/cpu/attention.h"

namespace sky {
void attend_one(float* out, const float* q, const KvView& kv, int L, int n_heads, int n_kv, int hd, float* scores,
                int h0, int h1);
}  // namespace sky
