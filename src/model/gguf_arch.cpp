#include "model/gguf_arch.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace sky {

const char* const kGgufArchList = "llama (dense, or with experts as Mixtral), qwen2moe, qwen3moe, olmoe, granitemoe, deepseek2";

std::string gguf_arch_of(const ModelConfig& c) {
  const std::string& t = c.model_type;
  if (t == "qwen2_moe") return "qwen2moe";
  if (t == "qwen3_moe") return "qwen3moe";
  if (t == "olmoe") return "olmoe";
  if (c.granite()) return "granitemoe";  // granitemoeshared too: its shared MLP is ffn_*_shexp there
  if (c.deepseek()) return "deepseek2";
  return "llama";  // llama, skywork, skywork_moe, mixtral
}

bool gguf_arch_known(const std::string& a) {
  return a == "llama" || a == "qwen2moe" || a == "qwen3moe" || a == "olmoe" || a == "granitemoe" || a == "deepseek2";
}

namespace {

// The part of the name after "blk.N." (layer tensors) or the whole name (the others).
const char* base_name(ParamKind kind) {
  using K = ParamKind;
  switch (kind) {
    case K::Embed: return "token_embd.weight";
    case K::FinalNorm: return "output_norm.weight";
    case K::Head: return "output.weight";
    case K::AttnNorm: return "attn_norm.weight";
    case K::Wq: return "attn_q.weight";
    case K::Wk: return "attn_k.weight";
    case K::Wv: return "attn_v.weight";
    case K::Wo: return "attn_output.weight";
    case K::BiasQ: return "attn_q.bias";
    case K::BiasK: return "attn_k.bias";
    case K::BiasV: return "attn_v.bias";
    case K::QNorm: return "attn_q_norm.weight";
    case K::KNorm: return "attn_k_norm.weight";
    case K::FfnNorm: return "ffn_norm.weight";
    case K::Gate: return "ffn_gate.weight";
    case K::Up: return "ffn_up.weight";
    case K::Down: return "ffn_down.weight";
    case K::Router: return "ffn_gate_inp.weight";
    case K::RouterBias: return "exp_probs_b.bias";
    case K::W1: return "ffn_gate_exps.weight";
    case K::W3: return "ffn_up_exps.weight";
    case K::W2: return "ffn_down_exps.weight";
    case K::SharedGate: return "ffn_gate_shexp.weight";
    case K::SharedUp: return "ffn_up_shexp.weight";
    case K::SharedDown: return "ffn_down_shexp.weight";
    case K::SharedRouter: return "ffn_gate_inp_shexp.weight";
    case K::WqA: return "attn_q_a.weight";
    case K::QANorm: return "attn_q_a_norm.weight";
    case K::WqB: return "attn_q_b.weight";
    case K::WkvA: return "attn_kv_a_mqa.weight";
    case K::KvANorm: return "attn_kv_a_norm.weight";
    case K::WkvB: return "attn_kv_b.weight";
  }
  fail("GGUF: no tensor name for parameter kind {}", int(kind));
}

}  // namespace

std::string gguf_tensor_name(ParamKind kind, int layer) {
  return layer < 0 ? std::string(base_name(kind)) : fmt::format("blk.{}.{}", layer, base_name(kind));
}

std::string gguf_expert_tensor_name(ParamKind kind, int layer, int expert) {
  const char* what = kind == ParamKind::W1 ? "ffn_gate" : kind == ParamKind::W3 ? "ffn_up" : "ffn_down";
  return fmt::format("blk.{}.{}.{}.weight", layer, what, expert);
}

std::string gguf_k_b_name(int layer) { return fmt::format("blk.{}.attn_k_b.weight", layer); }
std::string gguf_v_b_name(int layer) { return fmt::format("blk.{}.attn_v_b.weight", layer); }

RopeRows gguf_rope_rows(const ModelConfig& c, ParamKind kind) {
  const std::string arch = gguf_arch_of(c);
  if (arch == "llama" || arch == "granitemoe") {
    // Every row of each q/k head is a RoPE dimension (convert_hf_to_gguf.py's permute).
    if (kind == ParamKind::Wq) return {c.num_heads, c.head_dim, 0, c.head_dim};
    if (kind == ParamKind::Wk) return {c.num_kv_heads, c.head_dim, 0, c.head_dim};
    return {};
  }
  if (arch == "deepseek2" && !c.rope_interleave) {
    // The rope part of each query head, and the shared rope key after the latent in kv_a. With
    // rope_interleave (DeepSeek's own layout) the rows already are in llama.cpp's order.
    if (kind == ParamKind::Wq || kind == ParamKind::WqB) return {c.num_heads, c.head_dim, c.qk_nope_dim, c.qk_rope_dim};
    if (kind == ParamKind::WkvA) return {1, int64_t(c.kv_lora_rank) + c.qk_rope_dim, c.kv_lora_rank, c.qk_rope_dim};
  }
  return {};
}

void reorder_rope_rows(const void* src, void* dst, const RopeRows& r, size_t row_bytes, bool to_gguf) {
  SKY_CHECK(r.len % 2 == 0 && r.offset + r.len <= r.group_rows, "RoPE row reorder: {} rope rows at {} of {}", r.len,
            r.offset, r.group_rows);
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  std::memcpy(d, s, size_t(r.groups) * size_t(r.group_rows) * row_bytes);
  const int64_t half = r.len / 2;
  for (int g = 0; g < r.groups; g++)
    for (int64_t j = 0; j < half; j++)
      for (int64_t k = 0; k < 2; k++) {
        const int64_t base = g * r.group_rows + r.offset;
        const int64_t hf = base + k * half + j, file = base + 2 * j + k;
        const int64_t from = to_gguf ? hf : file, to = to_gguf ? file : hf;
        std::memcpy(d + size_t(to) * row_bytes, s + size_t(from) * row_bytes, row_bytes);
      }
}

void split_kv_b(const ModelConfig& c, const float* kv_b, float* k_b, float* v_b) {
  const int64_t nope = c.qk_nope_dim, v = c.v_head_dim, r = c.kv_lora_rank;
  for (int h = 0; h < c.num_heads; h++) {
    const float* head = kv_b + h * (nope + v) * r;
    for (int64_t i = 0; i < nope; i++)
      for (int64_t j = 0; j < r; j++) k_b[(h * r + j) * nope + i] = head[i * r + j];
    std::memcpy(v_b + h * v * r, head + nope * r, size_t(v * r) * sizeof(float));
  }
}

void join_kv_b(const ModelConfig& c, const float* k_b, const float* v_b, float* kv_b) {
  const int64_t nope = c.qk_nope_dim, v = c.v_head_dim, r = c.kv_lora_rank;
  for (int h = 0; h < c.num_heads; h++) {
    float* head = kv_b + h * (nope + v) * r;
    for (int64_t i = 0; i < nope; i++)
      for (int64_t j = 0; j < r; j++) head[i * r + j] = k_b[(h * r + j) * nope + i];
    std::memcpy(head + nope * r, v_b + h * v * r, size_t(v * r) * sizeof(float));
  }
}

namespace {
double yarn_m(double factor, double x) { return 1.0 + 0.1 * x * std::log(factor); }
}  // namespace

YarnGguf yarn_to_gguf(const RopeScaling& y) {
  const double R = y.rope_factor(), S = y.softmax_factor();
  // factor <= 1 leaves the frequencies alone and llama.cpp's m() is 1: only the scale a remains.
  if (y.factor <= 1) return {0.0, R};
  const double L = (std::sqrt(S) / R - 1.0) / (0.1 * std::log(y.factor));
  // Without a multiplier llama.cpp scales cos/sin by a * m(1) and the logits by (a * m(1))^2,
  // which is what R = sqrt(S) asks for.
  if (L == 0.0) return {0.0, R / yarn_m(y.factor, 1.0)};
  return {L, R};
}

void yarn_from_gguf(const YarnGguf& g, RopeScaling& y) {
  y.yarn = true;
  if (y.factor <= 1) {
    y.mscale = y.mscale_all_dim = 0, y.attention_factor = g.attn_factor;
    return;
  }
  if (g.log_mul != 0 && g.attn_factor == 1.0) {
    // DeepSeek's own configs: mscale == mscale_all_dim, cos/sin unscaled.
    y.mscale = y.mscale_all_dim = g.log_mul, y.attention_factor = 0;
    return;
  }
  const double R = g.log_mul != 0 ? g.attn_factor : g.attn_factor * yarn_m(y.factor, 1.0);
  const double sqrtS = g.log_mul != 0 ? g.attn_factor * yarn_m(y.factor, g.log_mul) : R;
  y.attention_factor = R;
  y.mscale = 0;
  y.mscale_all_dim = (sqrtS - 1.0) / (0.1 * std::log(y.factor));
}

}  // namespace sky
