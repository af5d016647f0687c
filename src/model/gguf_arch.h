#pragma once
// The one table between skymoe's parameters (model/params.h ParamKind, the HF layouts) and
// llama.cpp's GGUF files: the architecture of each family, the tensor that holds each parameter,
// the rows whose order differs (RoPE pairs), DeepSeek's split kv_b, and the metadata key names.
// The reader (model/gguf_model.cpp) and the exporter (io/gguf_export.cpp) both go through it, so
// what one writes the other reads. Names and keys follow llama.cpp's src/llama-arch.cpp and the
// per-model loaders in src/models/ (docs/gguf.md has the table).
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/params.h"

namespace sky {

// llama.cpp's architecture (general.architecture) for a skymoe model type:
//   llama, skywork, skywork_moe, mixtral -> llama     qwen2_moe -> qwen2moe    qwen3_moe -> qwen3moe
//   olmoe -> olmoe    granitemoe, granitemoeshared -> granitemoe    deepseek_v2, deepseek_v3 -> deepseek2
std::string gguf_arch_of(const ModelConfig& c);
// The architectures the reader runs, for checks and error messages.
bool gguf_arch_known(const std::string& arch);
extern const char* const kGgufArchList;

// The GGUF tensor that holds parameter `kind` of layer `layer` (-1 for the embedding, final norm
// and head), e.g. "blk.3.attn_q.weight". Expert matrices name the merged tensor {cols, rows, E}
// (blk.3.ffn_gate_exps.weight); gguf_expert_tensor_name gives the per-expert form older llama
// files use (blk.3.ffn_gate.5.weight). DeepSeek's kv_b_proj is stored as attn_k_b and attn_v_b
// (below); gguf_tensor_name(WkvB) names the single attn_kv_b of older files.
std::string gguf_tensor_name(ParamKind kind, int layer = -1);
std::string gguf_expert_tensor_name(ParamKind kind, int layer, int expert);
std::string gguf_k_b_name(int layer);  // blk.N.attn_k_b.weight {qk_nope, kv_lora_rank, heads}
std::string gguf_v_b_name(int layer);  // blk.N.attn_v_b.weight {kv_lora_rank, v_head_dim, heads}

// Rows stored in another order: within each of `groups` blocks of `group_rows` rows, the `len`
// rows from `offset` are RoPE dimensions, in HF's rotate-half order (pairs i, i + len/2) in the
// model and in llama.cpp's adjacent-pair order (2i, 2i + 1) in the file. llama.cpp rotates
// adjacent pairs for llama, granitemoe and deepseek2; HF llama/granite rotate halves over each q/k
// head, and DeepSeek checkpoints with rope_interleave false rotate halves over the rope part.
struct RopeRows {
  int groups = 0;
  int64_t group_rows = 0, offset = 0, len = 0;
  bool any() const { return groups > 0; }
};
RopeRows gguf_rope_rows(const ModelConfig& c, ParamKind kind);
// Copies a matrix of groups * group_rows rows of `row_bytes` each from src to dst, reordering the
// RoPE rows: to_gguf, HF row k*len/2 + j goes to file row 2j + k; otherwise back.
void reorder_rope_rows(const void* src, void* dst, const RopeRows& r, size_t row_bytes, bool to_gguf);

// DeepSeek's kv_b_proj [heads * (qk_nope + v_head), kv_lora_rank] (each head's key rows, then its
// value rows) as llama.cpp's attn_k_b (each head's key rows transposed: [kv_lora_rank, qk_nope])
// and attn_v_b (each head's value rows: [v_head, kv_lora_rank]), and back.
void split_kv_b(const ModelConfig& c, const float* kv_b, float* k_b, float* v_b);
void join_kv_b(const ModelConfig& c, const float* k_b, const float* v_b, float* kv_b);

// Metadata keys under the architecture's prefix ("<arch>.<key>"), as llama-arch.cpp spells them.
namespace gguf_key {
inline constexpr const char* kContextLength = "context_length";
inline constexpr const char* kEmbeddingLength = "embedding_length";
inline constexpr const char* kBlockCount = "block_count";
inline constexpr const char* kVocabSize = "vocab_size";
inline constexpr const char* kFeedForwardLength = "feed_forward_length";
inline constexpr const char* kExpertFeedForwardLength = "expert_feed_forward_length";
inline constexpr const char* kExpertSharedFeedForwardLength = "expert_shared_feed_forward_length";
inline constexpr const char* kExpertCount = "expert_count";
inline constexpr const char* kExpertUsedCount = "expert_used_count";
inline constexpr const char* kExpertSharedCount = "expert_shared_count";
inline constexpr const char* kExpertGroupCount = "expert_group_count";
inline constexpr const char* kExpertGroupUsedCount = "expert_group_used_count";
inline constexpr const char* kExpertWeightsScale = "expert_weights_scale";
inline constexpr const char* kExpertWeightsNorm = "expert_weights_norm";
inline constexpr const char* kExpertGatingFunc = "expert_gating_func";  // 1 softmax, 2 sigmoid
inline constexpr const char* kLeadingDenseBlockCount = "leading_dense_block_count";
inline constexpr const char* kHeadCount = "attention.head_count";
inline constexpr const char* kHeadCountKv = "attention.head_count_kv";
inline constexpr const char* kKeyLength = "attention.key_length";
inline constexpr const char* kValueLength = "attention.value_length";
inline constexpr const char* kKeyLengthMla = "attention.key_length_mla";
inline constexpr const char* kValueLengthMla = "attention.value_length_mla";
inline constexpr const char* kQLoraRank = "attention.q_lora_rank";
inline constexpr const char* kKvLoraRank = "attention.kv_lora_rank";
inline constexpr const char* kRmsEps = "attention.layer_norm_rms_epsilon";
inline constexpr const char* kAttentionScale = "attention.scale";
inline constexpr const char* kEmbeddingScale = "embedding_scale";
inline constexpr const char* kResidualScale = "residual_scale";
inline constexpr const char* kLogitScale = "logit_scale";
inline constexpr const char* kRopeFreqBase = "rope.freq_base";
inline constexpr const char* kRopeDimensionCount = "rope.dimension_count";
inline constexpr const char* kRopeScalingType = "rope.scaling.type";
inline constexpr const char* kRopeScalingFactor = "rope.scaling.factor";
inline constexpr const char* kRopeScalingAttnFactor = "rope.scaling.attn_factor";
inline constexpr const char* kRopeScalingOrigCtx = "rope.scaling.original_context_length";
inline constexpr const char* kRopeYarnLogMul = "rope.scaling.yarn_log_multiplier";
inline constexpr const char* kRopeYarnBetaFast = "rope.scaling.yarn_beta_fast";
inline constexpr const char* kRopeYarnBetaSlow = "rope.scaling.yarn_beta_slow";
}  // namespace gguf_key

// How llama.cpp's deepseek2 scales YaRN (src/llama-context.cpp, src/models/deepseek2.cpp): with
// yarn_log_multiplier L (stored as 0.1 L) and rope.scaling.attn_factor a, cos and sin are scaled
// by a and the attention logits by (a * m(L))^2, m(x) = 1 + 0.1 x ln(factor). skymoe's RopeScaling
// scales cos/sin by rope_factor() and the logits by softmax_factor(); these convert between the two.
struct YarnGguf {
  double log_mul = 0;      // L, before the file's 0.1
  double attn_factor = 1;  // a
};
YarnGguf yarn_to_gguf(const RopeScaling& y);
// The RopeScaling (factor, original length and betas set by the caller) that runs as L and a do.
void yarn_from_gguf(const YarnGguf& g, RopeScaling& y);

}  // namespace sky
