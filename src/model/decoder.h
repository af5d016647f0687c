#pragma once
// The one decoder layer, run by training, eval and the engine (prefill and decode) alike:
//   mid = x + o_proj(attention(rope(q), rope(k), v)) over rmsnorm(x),   y = mid + ffn(rmsnorm(mid))
// where ffn is a dense SwiGLU or the MoE block (moe/moe_layer.h), as the config says per layer.
// Granite-MoE scales both branches (o_proj's and the FFN's outputs) by a residual multiplier and
// the attention scores by its attention multiplier (LayerShape::resid_scale, q_scale).
// It runs a batch of row segments: training and eval give B sequences of T rows from position 0
// and keep every activation for backward; the engine gives each running sequence's new rows,
// which attend over that sequence's KV cache. Weights are handles (core/weight.h): training's are
// f32 views of its master weights, the engine's whatever it loaded (f32, bf16, fp8).
// Backward (training only) sits beside the forward.
#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "core/rope_table.h"
#include "core/weight.h"
#include "model/params.h"
#include "moe/moe_layer.h"

namespace sky {

// Scratch vectors grow on first use and are then reused: no allocation per step once a shape has
// been seen. zero_prefix also zeroes the first n values (for gradients that accumulate).
template <class V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}
void zero_prefix(std::vector<float>& v, size_t n);

// One layer's weights as the decoder reads them (views; Model or InferModel owns the bytes).
struct LayerWeights {
  const float* attn_norm = nullptr;
  const float* ffn_norm = nullptr;
  const QWeight *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;  // q/k/v biases (null: none)
  const float *q_norm = nullptr, *k_norm = nullptr;         // q/k RMSNorm weights (LayerShape::qk_norm)
  const QWeight *gate = nullptr, *up = nullptr, *down = nullptr;  // dense FFN (null in an MoE layer)
  MoeWeights<float> moe;                                          // router and held experts (MoE layer)
  // Shared expert of an MoE layer (null: none) and its sigmoid gate [1, H] (null: ungated).
  const QWeight *sh_gate = nullptr, *sh_up = nullptr, *sh_down = nullptr, *sh_router = nullptr;
  // Multi-head latent attention (LayerShape::mla): q = wq_b(norm(wq_a x)) (or wq x), [c_kv | k_pe] =
  // wkv_a x, per-head [k_nope | v] = wkv_b norm(c_kv). wk, wv are then null.
  const QWeight *wq_a = nullptr, *wq_b = nullptr, *wkv_a = nullptr, *wkv_b = nullptr;
  const float *q_a_norm = nullptr, *kv_a_norm = nullptr;
  // The engine's kv_b absorbed per head (arrays of nh; the engine runs attention over the latent
  // cache): uk[h] = (head h's key rows of kv_b)^T [r, dn], uv[h] = its value rows [dv, r].
  const QWeight *uk = nullptr, *uv = nullptr;
  bool is_moe() const { return moe.router != nullptr; }
};

// The sizes this process runs (a tensor-parallel rank holds fewer heads and a narrower FFN).
struct LayerShape {
  int H = 0, nh = 0, nkv = 0, hd = 0;
  int I = 0;  // dense FFN width held
  int S = 0;  // shared expert width
  QkNorm qk_norm = QkNorm::None;
  float eps = 1e-6f;
  const RopeTable* rope = nullptr;  // MLA: over the dr RoPE dims
  // q is multiplied by q_scale after RoPE, so the scores q.k / sqrt(hd) the attention op computes
  // become q.k * attention_scale (q_scale = attention_scale * sqrt(hd); 1 for the usual scale).
  float q_scale = 1.0f;
  float resid_scale = 1.0f;  // each branch's output is multiplied by it before its residual add
  // Multi-head latent attention: hd = dn + dr is the q/k head, dv the value head; rq the q latent
  // (0: q_proj directly), r the kv latent. softmax_factor multiplies the attention logits (YaRN).
  int rq = 0, r = 0, dn = 0, dr = 0, dv = 0;
  double softmax_factor = 1.0;
  bool mla() const { return r > 0; }
  int qd() const { return nh * hd; }
  int kvd() const { return nkv * hd; }
  int od() const { return mla() ? nh * dv : qd(); }  // attention's output width (o_proj's input)
  void set_multipliers(const ModelConfig& c);  // q_scale and resid_scale from the config
};

// Fills the MLA fields of d from the config (nothing for other attention).
void set_mla_shape(LayerShape& d, const ModelConfig& c);

// A sequence's KV cache: [layer][position][kv_dim] for keys and values, f32 or (half the memory
// and the bytes attention reads) bf16. Multi-head latent attention (`latent`) keeps one row per
// position instead, [c_kv (after its norm) | k_pe (after RoPE)] of kv_lora_rank + qk_rope_dim values,
// in k/kh: the keys and (its first kv_lora_rank values) the values of every head.
struct SeqKV {
  int capacity = 0;  // positions
  int len = 0;       // positions filled
  bool bf16 = false;
  bool latent = false;
  int kv_dim = 0;    // values per position and layer in each of k and v (latent: the latent row)
  std::vector<float> k, v;       // f32 cache
  std::vector<uint16_t> kh, vh;  // bf16 cache
  void init(const ModelConfig& c, int capacity, bool bf16 = false);
  // Stores n positions' keys and values (f32 rows of kv_dim) at pos of a layer.
  void put(int layer, int pos, const float* keys, const float* values, int n);
  void put_latent(int layer, int pos, const float* rows, int n);  // latent rows (kv_dim each)
  // The layer's cache from position 0, as attention reads it.
  KvView view(int layer) const;
};

struct BatchRow {  // the new tokens of one sequence in an engine step
  SeqKV* kv;
  const int32_t* tokens;
  int n;
};

// The rows of one forward pass, in order.
struct RowBatch {
  int N = 0;                     // rows
  const int32_t* pos = nullptr;  // [N] position of each row
  int B = 0, T = 0;              // training/eval: B sequences of T rows each, from position 0
  const std::vector<BatchRow>* seqs = nullptr;  // engine: each sequence's new rows, over its KV cache
};

// Adds up a tensor-parallel group's partial outputs (after attention and the dense FFN; after the
// MoE block too when its dispatcher does not do it itself). Empty: one process.
struct PartialSum {
  std::function<void(float*, size_t)> sum;
  bool moe = false;
  void operator()(float* x, size_t n) const {
    if (sum) sum(x, n);
  }
};

// What a layer's forward keeps for backward (training) or reuses as scratch (engine). Buffers grow
// on first use and are reused: no allocation per step once the shapes have been seen.
struct LayerActs {
  std::vector<float> ln1, rstd1, q, k, v, att, ctx, mid, ln2, rstd2;  // mid: residual after attention
  std::vector<float> h1, h3, act;  // dense FFN
  std::vector<float> q_raw, k_raw, rstd_q, rstd_k;          // q/k before their norms
  std::vector<float> sh_h1, sh_h3, sh_act, sh_out, sh_g;    // shared expert
  // MLA: q latent (before/after its norm), the kv_a output, c_kv (before/after its norm), RoPE parts,
  // kv_b's output, attention's padded output [N, nh, hd]; engine: absorbed queries, latent rows,
  // latent context, per-head scratch.
  std::vector<float> qa, qan, rstd_qa, kva, ckv, ckvn, rstd_kv, kpe, qpe, kvb, ctxp;
  std::vector<float> qlat, lat, ctxl, head_in, head_out;
  std::vector<AttnSeq> attn;       // engine: one attention row segment per sequence
  MoeCache<float> moe;
};

// y [N, H] = layer(x [N, H]); y may be x (the engine runs in place). `layer` is the global index
// (the KV cache's layer).
void layer_forward(Backend& be, const LayerWeights& W, const LayerShape& d, int layer, LayerActs& A, const float* x,
                   float* y, const RowBatch& rb, const MoeOptions& moe, const PartialSum& tp);

// Gradient scratch of layer_backward (grown on first use).
struct LayerGradScratch {
  std::vector<float> d_mid, d_ln, d_q, d_k, d_v, d_ctx, d_h1, d_h3, d_act, d_qraw, d_kraw, d_sh, d_g;
  std::vector<float> d_ctxp, d_kvb, d_kpe, d_qpe, d_ckvn, d_ckv, d_kva, d_qan, d_qa;  // MLA
};

// Backward of layer_forward (a training batch, activations in A): d_x holds the gradient of y on
// entry and of x on exit; weight gradients accumulate into G. aux_coef and z_coef weight the MoE
// layer's auxiliary and z losses.
void layer_backward(Backend& be, const LayerWeights& W, const LayerView<float>& G, const LayerShape& d,
                    const LayerActs& A, const float* x, float* d_x, const RowBatch& rb, const MoeOptions& moe,
                    double aux_coef, double z_coef, const PartialSum& tp, LayerGradScratch& S);

}  // namespace sky
