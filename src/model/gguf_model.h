#pragma once
// GGUF files as a model source: llama.cpp's architectures for the families skymoe runs, mapped onto
// ModelConfig and the HF tensor names of model/params.h, so every loader (Model::load,
// InferModel::load, info, quantize, export) reads a .gguf file like a model directory.
//
//   general.architecture   skymoe model_type
//   llama                  llama (dense) or mixtral (with <arch>.expert_count): experts per expert
//                          (blk.N.ffn_gate.E.weight) or merged (blk.N.ffn_gate_exps.weight {H, I, E});
//                          q/k rows un-permuted back to HF's rotate-half order
//   qwen2moe               qwen2_moe (q/k/v biases, shared expert and its sigmoid gate)
//   qwen3moe               qwen3_moe (per-head q/k norms)
//   olmoe                  olmoe (whole-projection q/k norms)
//   granitemoe             granitemoe / granitemoeshared (shared MLP as ffn_*_shexp; Granite's
//                          multipliers from its scale keys; stacked experts assembled)
//   deepseek2              deepseek_v2 / deepseek_v3 by the gating function (latent attention,
//                          attn_k_b + attn_v_b joined into kv_b_proj, exp_probs_b, groups, YaRN)
// Tensor names, row orders and key names come from model/gguf_arch.h, shared with the exporter.
// Hyper-parameters come from <arch>.block_count, .embedding_length, .attention.head_count(_kv),
// .attention.key_length, .rope.freq_base, .attention.layer_norm_rms_epsilon, .context_length,
// .feed_forward_length, .expert_feed_forward_length, .expert_shared_feed_forward_length,
// .expert_count, .expert_used_count, .expert_weights_norm, .expert_gating_func,
// .expert_weights_scale, .leading_dense_block_count and deepseek2's MLA keys; the vocabulary size
// and tied embeddings from the tensors; which layers are MoE from the routers present. What skymoe
// cannot run (another architecture, RoPE scaling outside deepseek2's YaRN, partial rotary dims, an
// unknown tensor, a type it cannot decode) is a sky::Error naming the key, tensor or type.
#include <string>

#include "io/gguf_reader.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace sky {

// True when `path` is a regular file starting with the GGUF magic.
bool is_gguf_file(const std::string& path);

ModelConfig gguf_model_config(const gguf::File& f);
// The model's tensors under HF names (shapes as params.h lays them out). Plain types (F32, F16,
// BF16) are views into the map; block types decode to F32 on get() and keep their stored form for
// blocks(). Every expected tensor is checked (present, shape, type decodable) before returning.
SafetensorsReader gguf_model_tensors(const std::string& path);
SafetensorsReader gguf_model_tensors(const gguf::File& f, const ModelConfig& cfg);

// SafetensorsReader::open(path), or gguf_model_tensors(path) for a GGUF file.
SafetensorsReader open_model_tensors(const std::string& path);

}  // namespace sky
