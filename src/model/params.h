#pragma once
// The model's parameters live in one flat f32 buffer (weights, gradients and optimizer moments all
// share this layout), with a table of HF tensor names and offsets. Expert weights of a layer are
// contiguous ([E, I, H] for w1 and w3, [E, H, I] for w2) so grouped kernels can walk them.
// A layout may cover only a shard of the model (model/shard.h): each spec then names the global
// tensor and the block of it that is held (rows [row0, row0 + shape[0]), columns [col0, ...)).
#include <cstddef>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/shard.h"

namespace sky {

enum class ParamKind {
  Embed, AttnNorm, Wq, Wk, Wv, Wo, FfnNorm, Gate, Up, Down, Router, W1, W3, W2, FinalNorm, Head,
  BiasQ, BiasK, BiasV,                  // q/k/v biases (Qwen2-MoE)
  QNorm, KNorm,                         // q/k RMSNorm weights (Qwen3-MoE per head, OLMoE whole)
  SharedGate, SharedUp, SharedDown,     // the shared expert's SwiGLU
  SharedRouter,                         // its sigmoid gate [1, H] (Qwen2-MoE)
  WqA, QANorm, WqB,                     // MLA queries through a low-rank latent (DeepSeek q_lora_rank)
  WkvA, KvANorm, WkvB,                  // MLA: [c_kv | k_pe] = kv_a x; per-head k_nope, v = kv_b norm(c_kv)
  RouterBias                            // DeepSeek-V3's e_score_correction_bias [E] (selection only)
};

// Where a parameter lives in a checkpoint file: a whole tensor (most), or rows [row0, row0 + rows)
// of a stored tensor read as a matrix [numel / last dim, last dim]: experts stored stacked, as
// Granite-MoE's input_linear [E, 2I, H] (expert e's gate rows at e * 2I, its up rows at e * 2I + I)
// and output_linear [E, H, I] (rows e * H). Loading reads just those rows (and the rows of a
// per-row weight_scale); saving writes the stacked tensor back whole. Any family that stacks its
// experts this way (or another row layout) only names it in stored_at().
struct StoredAt {
  std::string name;  // the tensor in the file
  Shape shape;       // its shape
  int64_t row0 = 0;
  // The stored tensor's rows (numel / last dim; a vector is one row).
  int64_t rows() const { return shape.size() >= 2 ? shape_numel(shape) / shape.back() : 1; }
  // True when the parameter of `param_shape` is the whole stored tensor.
  bool whole(const Shape& param_shape) const { return row0 == 0 && shape == param_shape; }
};

struct ParamSpec {
  std::string name;  // HF tensor name, e.g. model.layers.0.self_attn.q_proj.weight (stacked: see `stored`)
  Shape shape;       // of the block held
  size_t offset = 0;  // in floats, into the flat buffer
  bool decay = false;  // AdamW weight decay applies (2-D matrices only, not norms)
  ParamKind kind = ParamKind::Embed;
  int layer = -1;        // global layer index (-1: embedding, final norm, head)
  int expert = -1;       // global expert index for expert weights
  int index = 0;         // position in the full model's layout (seeds the random init)
  Shape full_shape;      // of the whole tensor
  int64_t row0 = 0, col0 = 0;  // where the block starts in the whole tensor
  StoredAt stored;             // where the whole tensor is in a checkpoint file
  size_t numel() const { return size_t(shape_numel(shape)); }
  bool is_expert() const { return kind == ParamKind::W1 || kind == ParamKind::W3 || kind == ParamKind::W2; }
  // Split across tensor-parallel ranks (attention and dense FFN matrices); the other non-expert
  // parameters are replicated on every tensor-parallel rank.
  bool tp_split() const {
    return kind == ParamKind::Wq || kind == ParamKind::Wk || kind == ParamKind::Wv || kind == ParamKind::Wo ||
           kind == ParamKind::Gate || kind == ParamKind::Up || kind == ParamKind::Down || kind == ParamKind::BiasQ ||
           kind == ParamKind::BiasK || kind == ParamKind::BiasV;
  }
};

struct ParamLayout {
  std::vector<ParamSpec> specs;
  size_t total = 0;  // floats
  bool tied = false;  // tie_word_embeddings: no lm_head.weight; the head's view is the embedding
  size_t expert_begin = 0;  // expert weights of a partial shard are stored last: [expert_begin, total)
  static ParamLayout build(const ModelConfig& cfg);
  static ParamLayout build(const ModelConfig& cfg, const Shard& shard);
  const ParamSpec* find(const std::string& name) const;
};

// Named views of one flat buffer laid out by ParamLayout::build. layers[i] is the shard's i-th layer.
template <class T>
struct LayerView {
  T *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm;
  T *w_gate, *w_up, *w_down;    // dense FFN (null in an MoE layer)
  T *router, *w1, *w3, *w2;     // MoE (null in a dense layer)
  T *bq, *bk, *bv, *q_norm, *k_norm;                    // null unless the family has them
  T *sh_gate, *sh_up, *sh_down, *sh_router;             // shared expert (MoE layers)
  T *wq_a, *q_a_norm, *wq_b, *wkv_a, *kv_a_norm, *wkv_b;  // MLA (wq: q_proj without q_lora_rank)
  T* router_bias;                                        // selection bias (MoE layers of DeepSeek-V3)
};

template <class T>
struct ParamView {
  T* embed = nullptr;  // null when the shard does not hold it
  T* final_norm = nullptr;
  T* lm_head = nullptr;
  std::vector<LayerView<T>> layers;
};

template <class T>
ParamView<T> param_view(const ModelConfig& cfg, T* base);
template <class T>
ParamView<T> param_view(const ParamLayout& layout, int layer_begin, int num_layers, T* base);

// Copies between a whole tensor and a spec's block of it.
void copy_block_from_full(const ParamSpec& s, const float* full, float* block);
void copy_block_to_full(const ParamSpec& s, const float* block, float* full);

// The one table of tensor names (the HF layouts): the name of parameter `kind` of a layer (and an
// expert), e.g. model.layers.3.block_sparse_moe.experts.5.w1.weight (Mixtral, Skywork) or
// model.layers.3.mlp.experts.5.gate_proj.weight (Qwen-MoE, OLMoE). Training, checkpoints,
// inference loading and quantization all name tensors through it.
// Stacked experts (ModelConfig::stacked_experts) get names that say where they are stored, e.g.
// model.layers.3.block_sparse_moe.input_linear.weight[5][0:512] (rows 0..511 of expert 5's slab).
std::string tensor_name(const ModelConfig& c, ParamKind kind, int layer = -1, int expert = -1);
// Where parameter `kind` of a layer (and an expert), of shape `shape`, is stored.
StoredAt stored_at(const ModelConfig& c, ParamKind kind, int layer, int expert, const Shape& shape);

}  // namespace sky
