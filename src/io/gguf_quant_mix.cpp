#include "io/gguf_quant_mix.h"

#include "core/error.h"

namespace sky {

GgufFileType parse_gguf_file_type(const std::string& s) {
  if (s == "f32") return GgufFileType::F32;
  if (s == "f16") return GgufFileType::F16;
  if (s == "q8_0") return GgufFileType::Q8_0;
  if (s == "q6_k") return GgufFileType::Q6_K;
  if (s == "q4_k_m") return GgufFileType::Q4_K_M;
  fail("GGUF type '{}' is not one of: f32, f16, q8_0, q6_k, q4_k_m", s);
}

const char* gguf_file_type_name(GgufFileType t) {
  switch (t) {
    case GgufFileType::F32: return "f32";
    case GgufFileType::F16: return "f16";
    case GgufFileType::Q8_0: return "q8_0";
    case GgufFileType::Q6_K: return "q6_k";
    case GgufFileType::Q4_K_M: return "q4_k_m";
  }
  return "?";
}

uint32_t gguf_llama_ftype(GgufFileType t) {
  switch (t) {
    case GgufFileType::F32: return 0;
    case GgufFileType::F16: return 1;
    case GgufFileType::Q8_0: return 7;
    case GgufFileType::Q4_K_M: return 15;
    case GgufFileType::Q6_K: return 18;
  }
  return 0;
}

namespace {

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between.
bool use_more_bits(int layer, int n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

// llama.cpp's tensor_type_fallback, for the types these mixes choose.
BlockType fallback(BlockType t, int64_t row) {
  if (row % block_values(t) == 0) return t;
  switch (t) {
    case BlockType::Q4_K: t = BlockType::Q5_0; break;
    case BlockType::Q5_K: t = BlockType::Q5_1; break;
    case BlockType::Q6_K: t = BlockType::Q8_0; break;
    default: break;
  }
  return row % block_values(t) == 0 ? t : BlockType::F16;
}

}  // namespace

GgufTensorChoice gguf_tensor_type(GgufFileType ft, const std::string& name, int layer, int64_t row,
                                  const GgufMixModel& m) {
  // llama.cpp quantizes only weights: norms, biases and the expert router stay f32
  // (tensor_allows_quantization; its converter writes the router f32 too).
  const bool weight = name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
  if (!weight || has(name, "_norm.") || has(name, "ffn_gate_inp")) return {BlockType::F32, BlockType::F32};
  if (ft == GgufFileType::F32) return {BlockType::F32, BlockType::F32};
  if (ft == GgufFileType::F16) return {BlockType::F16, BlockType::F16};

  const BlockType base = ft == GgufFileType::Q8_0 ? BlockType::Q8_0
                         : ft == GgufFileType::Q6_K ? BlockType::Q6_K
                                                    : BlockType::Q4_K;
  const bool q4_k_m = ft == GgufFileType::Q4_K_M;
  // Mixtral-like models (exactly 8 experts): llama.cpp spends more bits on attention, which is a
  // small part of such a model.
  const bool eight_experts = m.n_experts == 8;
  BlockType t = base;
  if (name == "output.weight" || (m.tied_embeddings && name == "token_embd.weight")) {
    // The LM head: q6_K unless the mix is q8_0 already, q8_0 where rows do not fit 256-blocks.
    t = row % block_values(base) != 0 ? BlockType::Q8_0 : base == BlockType::Q8_0 ? base : BlockType::Q6_K;
  } else if (name == "token_embd.weight") {
    t = base;  // only a row is read per token; the mix's own type
  } else if (has(name, "attn_v.") || has(name, "attn_qkv.") || has(name, "attn_kv_b.")) {
    if (q4_k_m && use_more_bits(layer, m.n_layers)) t = BlockType::Q6_K;
    if (eight_experts) t = BlockType::Q8_0;
  } else if (has(name, "attn_k.")) {
    if (eight_experts) t = BlockType::Q8_0;
  } else if (has(name, "ffn_down")) {  // dense, experts (_exps) and shared expert (_shexp)
    if (q4_k_m && use_more_bits(layer, m.n_layers)) t = BlockType::Q6_K;
  } else if (has(name, "attn_output.")) {
    if (q4_k_m && eight_experts) t = BlockType::Q5_K;
  }
  return {fallback(t, row), t};
}

}  // namespace sky
