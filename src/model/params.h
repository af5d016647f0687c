#pragma once
// The model's parameters live in one flat f32 buffer (weights, gradients and optimizer moments all
// share this layout), with a table of HF tensor names and offsets. Expert weights of a layer are
// contiguous ([E, I, H] for w1 and w3, [E, H, I] for w2) so grouped kernels can walk them.
#include <cstddef>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace sky {

struct ParamSpec {
  std::string name;  // HF tensor name, e.g. model.layers.0.self_attn.q_proj.weight
  Shape shape;
  size_t offset = 0;  // in floats, into the flat buffer
  bool decay = false;  // AdamW weight decay applies (2-D matrices only, not norms)
  size_t numel() const { return size_t(shape_numel(shape)); }
};

struct ParamLayout {
  std::vector<ParamSpec> specs;
  size_t total = 0;  // floats
  static ParamLayout build(const ModelConfig& cfg);
  const ParamSpec* find(const std::string& name) const;
};

// Named views of one flat buffer laid out by ParamLayout::build.
template <class T>
struct LayerView {
  T *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm;
  T *w_gate, *w_up, *w_down;    // dense FFN (null for MoE)
  T *router, *w1, *w3, *w2;     // MoE (null for dense)
};

template <class T>
struct ParamView {
  T* embed;
  T* final_norm;
  T* lm_head;
  std::vector<LayerView<T>> layers;
};

template <class T>
ParamView<T> param_view(const ModelConfig& cfg, T* base);

// Expert tensor names, e.g. model.layers.3.block_sparse_moe.experts.5.w1.weight
std::string expert_param_name(int layer, int expert, const char* w);

}  // namespace sky
