#pragma once
// Model -> GGUF in the layout of llama.cpp's architecture for its family (llama for dense Llama,
// Mixtral and Skywork; qwen2moe, qwen3moe, olmoe, granitemoe, deepseek2), as llama.cpp's
// convert_hf_to_gguf.py writes it; names and keys from model/gguf_arch.h, which the reader shares.
// The vocabulary: a SentencePiece model as "llama", a tokenizer.json byte-level BPE as "gpt2"
// (io/gguf_vocab.h). docs/gguf.md.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/gguf_quant_mix.h"

namespace sky {

struct Model;
class Tokenizer;

struct GgufExportOptions {
  GgufFileType type = GgufFileType::F16;
  std::string name;  // general.name
  // Called once per tensor just before it is converted and written (index, count, name, type, ne).
  std::function<void(size_t, size_t, const std::string&, gguf::TensorType, const std::vector<int64_t>&)> progress;
  // Called for each warning as it arises (also collected in the report).
  std::function<void(const std::string&)> warn;
};

struct GgufExportReport {
  size_t tensors = 0, kv = 0;
  size_t count_f32 = 0, count_f16 = 0, count_q8_0 = 0;
  std::map<gguf::TensorType, size_t> type_counts;  // tensors written in each type
  uint64_t values = 0, data_bytes = 0;              // all tensors' values and their encoded bytes
  uint64_t file_bytes = 0;
  int vocab = 0;  // tokens written (0 without a tokenizer)
  std::vector<std::string> warnings;
};

// Writes `m` (and `tok`'s vocabulary) to out_path atomically. Norms and the router stay f32; the
// other weight matrices take the type gguf_tensor_type chooses for opt.type (llama.cpp's mix for
// q4_k_m; a fallback type, warned, for rows that do not fit the chosen type's blocks).
// `tok` may be null: the file then has no tokenizer metadata, which llama.cpp needs (warned). What
// GGUF cannot express is a sky::Error before anything is written; what llama.cpp's architecture
// runs differently from skymoe (e.g. a qwen2moe dense layer) is written and warned.
GgufExportReport export_gguf(const Model& m, const Tokenizer* tok, const std::string& out_path,
                             const GgufExportOptions& opt);
// The same from an HF model directory, read one layer at a time: memory holds one layer (or the
// embedding and LM head) in f32, not the whole model.
GgufExportReport export_gguf(const std::string& model_dir, const Tokenizer* tok, const std::string& out_path,
                             const GgufExportOptions& opt);

// Q/K rows reordered from HF's rotate-half RoPE layout to llama.cpp's interleaved-pair layout:
// within each head of `head_dim` rows, new row 2j+k = old row k*head_dim/2 + j (k in {0,1}).
// w is [n_heads * head_dim, cols] row-major.
std::vector<float> permute_qk_rows(const float* w, int n_heads, int head_dim, int64_t cols);

}  // namespace sky
