#pragma once
// Which GGUF tensor type each weight matrix gets, for each file type `export gguf --type` and
// `quantize --to` write: llama.cpp's llama_tensor_get_type rules (src/llama-quant.cpp) for the mixes
// skymoe writes, so a Q4_K_M file from skymoe has the tensor types llama-quantize would choose.
// docs/gguf.md has the table.
#include <cstdint>
#include <string>

#include "core/block_quant.h"

namespace sky {

enum class GgufFileType { F32, F16, Q8_0, Q6_K, Q4_K_M };
GgufFileType parse_gguf_file_type(const std::string& s);  // "f32" | "f16" | "q8_0" | "q6_k" | "q4_k_m"
const char* gguf_file_type_name(GgufFileType t);          // the spelling parse accepts
// general.file_type: llama.cpp's llama_ftype (ALL_F32 0, MOSTLY_F16 1, Q8_0 7, Q4_K_M 15, Q6_K 18).
uint32_t gguf_llama_ftype(GgufFileType t);

// What the policy needs to know about the model.
struct GgufMixModel {
  int n_layers = 0;
  int n_experts = 0;     // 0 or 1: dense
  bool tied_embeddings = false;  // no output.weight: token_embd is also the LM head
};

struct GgufTensorChoice {
  BlockType type;      // what is written
  BlockType wanted;    // what the mix asked for; differs when the row length forced a fallback
  bool fell_back() const { return type != wanted; }
};

// The type of weight tensor `name` (GGUF name, e.g. "blk.3.ffn_down_exps.weight") in layer `layer`
// (-1 outside the blocks) whose rows are `row` values long (ne[0]). Norms and routers
// (ffn_gate_inp*) are F32 in every mix. When the row length is not a multiple of the chosen type's
// block, llama.cpp's fallback applies: q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, and f16 where
// not even 32 divides the row.
GgufTensorChoice gguf_tensor_type(GgufFileType ft, const std::string& name, int layer, int64_t row,
                                  const GgufMixModel& m);

}  // namespace sky
