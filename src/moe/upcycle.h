#pragma once
// Sparse upcycling (Skywork-MoE report section 3): a dense checkpoint becomes an MoE whose experts
// all start as copies of the dense FFN (gate_proj -> w1, up_proj -> w3, down_proj -> w2); attention,
// norms, embeddings and LM head are copied; the router is freshly initialized N(0, router_std).
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
  uint64_t seed = 0;
};

Model upcycle(const Model& dense, const UpcycleOptions& o);

}  // namespace sky
