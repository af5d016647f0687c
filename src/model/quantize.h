#pragma once
// Checkpoint quantization: rewrites an HF-layout directory with its linear layers in FP8 E4M3
// (a `.weight_scale` F32 tensor beside each weight: shape [] per-tensor, [O, 1] per-channel — the
// layout of Skywork's FP8 release and vLLM) or BF16. Router, norms and embeddings stay as they are;
// the LM head goes to BF16 (or, on request, FP8 like the linear layers).
#include <set>
#include <string>

#include "model/config.h"

namespace sky {

struct QuantizeOptions {
  std::string to = "fp8";        // fp8 | bf16
  bool per_channel = false;      // fp8: one scale per output row instead of per tensor
  bool lm_head_fp8 = false;      // fp8: the LM head too (default: bf16, as Skywork's FP8 release)
  double max_shard_gb = 2.0;
};

struct QuantizeReport {
  size_t tensors_quantized = 0;
  double bytes_in = 0, bytes_out = 0;
};

QuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir, const QuantizeOptions& o);

// The tensors that quantize: attention projections, dense FFN, expert and shared-expert matrices.
std::set<std::string> quantizable_linears(const ModelConfig& c);

}  // namespace sky
