#pragma once
// Decode-step attention: one query row (every head) at position L - 1 against keys/values
// [0, L) of a KV cache (f32 or bf16) laid out [position][n_kv * hd]. out, q: [n_heads * hd]. scores: scratch of
// n_heads * L floats. Single-threaded (callers run sequences in parallel); the result does not
// depend on what else is in the batch.
#include "ops/attention.h"

namespace sky {
void attend_one(float* out, const float* q, const KvView& kv, int L, int n_heads, int n_kv, int hd, float* scores);
}  // namespace sky
