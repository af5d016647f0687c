#pragma once
// Causal scaled-dot-product attention with grouped KV heads (GQA: query head h reads KV head
// h / (n_heads / n_kv_heads)). Layouts: q, out [B, T, n_heads*hd]; k, v [B, T, n_kv*hd].
#include <cstdint>

#include "backend/backend.h"

namespace sky {

// att [B, n_heads, T, T] receives the softmax probabilities (saved for backward; upper triangle 0).
template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, int B, int Tn, int n_heads,
                       int n_kv, int hd);
// Accumulates dq, dk, dv.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* att,
                        int B, int Tn, int n_heads, int n_kv, int hd);

// Inference with a KV cache: n new query rows at positions start..start+n-1 of one sequence;
// kcache/vcache [>= start+n, n_kv*hd] already hold the keys/values of positions 0..start+n-1.
// Row i attends to positions 0..start+i. Heads and blocks of 64 query rows run in parallel, each
// with per-thread buffers; `scratch` is no longer used (kept for existing callers).
void attention_cached(float* out, const float* q, const float* kcache, const float* vcache, int start, int n,
                      int n_heads, int n_kv, int hd, float* scratch);

// The same for many sequences (batched decoding, a prefill beside running sequences) in one
// parallel region over every (sequence, head, row block).
void attention_cached_batch(const AttnSeq* seqs, int count, int n_heads, int n_kv, int hd);

}  // namespace sky
