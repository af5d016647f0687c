#pragma once
// Sparse upcycling (Skywork-MoE report section 3): a dense checkpoint becomes an MoE whose experts
// all start as copies of the dense FFN (gate_proj -> w1, up_proj -> w3, down_proj -> w2); attention,
// norms, embeddings and LM head are copied; the router is freshly initialized N(0, router_std).
//
// Fine-grained upcycling (granularity G > 1, as Qwen1.5-MoE was made from Qwen-1.8B): the dense FFN
// of width I is cut along its intermediate dimension into G slices of width I/G, and expert e
// becomes slice j = e mod G of copy c = e / G (E must be a multiple of G: E/G copies):
//   w1[e] = gate_proj rows [j I/G, (j+1) I/G),  w3[e] = up_proj rows (the same),
//   w2[e] = G * down_proj columns [j I/G, (j+1) I/G).
// The SwiGLU FFN is a sum over its intermediate units, so FFN(x) = sum_j slice_j(x). The factor G
// on w2 makes up for the router's weights: with top-(k G) renormalized weights, a token that selects
// k whole copies, each copy's G slices scoring alike (g_c), gives each slice of copy c the weight
// g_c / S, S = G sum_c' g_c' (the selected
// copies' scores), so the copies add up to sum_c (g_c / sum_c' g_c') FFN(x) = FFN(x) exactly (the
// invariant tests/test_train.cpp checks). Top-(k G) over slices keeps the compute of top-k over
// whole FFNs (the CLI's default when --top-k is not given).
#include <cstdint>

#include "model/model.h"

namespace sky {

struct UpcycleOptions {
  int experts = 8;
  int top_k = 2;
  bool logits_norm = true;
  double gate_norm_std = 1.0;
  double router_std = 0.02;
  double expert_noise = 0.0;  // relative Gaussian noise: w += noise * std(w) * N(0, 1), per expert
  int reinit_experts = 0;     // this many experts (the last ones) re-initialized N(0, 0.02) instead of copied
  int granularity = 1;        // G: slices of the dense FFN per copy (experts of width I / G)
  uint64_t seed = 0;
};

Model upcycle(const Model& dense, const UpcycleOptions& o);

}  // namespace sky
