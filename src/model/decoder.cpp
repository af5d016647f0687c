#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/config.h"

namespace sky {

void SeqKV::init(const ModelConfig& c, int cap, bool half) {
  capacity = cap;
  len = 0;
  bf16 = half;
  latent = c.mla();
  kv_dim = latent ? c.kv_lora_rank + c.qk_rope_dim : c.kv_dim();
  const size_t n = size_t(c.num_layers) * cap * kv_dim, nv = latent ? 0 : n;
  k.assign(bf16 ? 0 : n, 0.0f);
  v.assign(bf16 ? 0 : nv, 0.0f);
  kh.assign(bf16 ? n : 0, 0);
  vh.assign(bf16 ? nv : 0, 0);
}

void SeqKV::put_latent(int layer, int pos, const float* rows, int n) {
  const size_t at = (size_t(layer) * capacity + pos) * kv_dim, count = size_t(n) * kv_dim;
  if (bf16) convert_from_f32(DType::BF16, rows, kh.data() + at, count);
  else std::memcpy(k.data() + at, rows, sizeof(float) * count);
}

void set_mla_shape(LayerShape& d, const ModelConfig& c) {
  if (!c.mla()) return;
  d.rq = c.q_lora_rank;
  d.r = c.kv_lora_rank;
  d.dn = c.qk_nope_dim;
  d.dr = c.qk_rope_dim;
  d.dv = c.v_head_dim;
  d.softmax_factor = c.rope_scaling.softmax_factor();
}

void SeqKV::put(int layer, int pos, const float* keys, const float* values, int n) {
  const size_t at = (size_t(layer) * capacity + pos) * kv_dim, count = size_t(n) * kv_dim;
  if (bf16) {
    convert_from_f32(DType::BF16, keys, kh.data() + at, count);
    convert_from_f32(DType::BF16, values, vh.data() + at, count);
  } else {
    std::memcpy(k.data() + at, keys, sizeof(float) * count);
    std::memcpy(v.data() + at, values, sizeof(float) * count);
  }
}

KvView SeqKV::view(int layer) const {
  const size_t at = size_t(layer) * capacity * kv_dim;
  if (latent) {  // keys and values read the same latent rows
    if (bf16) return {nullptr, nullptr, kh.data() + at, kh.data() + at};
    return {k.data() + at, k.data() + at, nullptr, nullptr};
  }
  if (bf16) return {nullptr, nullptr, kh.data() + at, vh.data() + at};
  return {k.data() + at, v.data() + at, nullptr, nullptr};
}

void LayerShape::set_multipliers(const ModelConfig& c) {
  q_scale = c.attention_multiplier > 0 ? float(c.attention_multiplier * std::sqrt(double(c.head_dim))) : 1.0f;
  resid_scale = float(c.residual_multiplier);
}

void zero_prefix(std::vector<float>& v, size_t n) {
  grow(v, n);
  std::fill(v.begin(), v.begin() + n, 0.0f);
}

// Backward reads the f32 master weight behind a handle.
static const float* f32(const QWeight* w) {
  SKY_CHECK(w->dtype == DType::F32, "backward needs f32 weights, got {}", dtype_name(w->dtype));
  return static_cast<const float*>(w->data);
}

// out [N, H] = down(silu(gate(x)) * up(x)) over width I (a dense FFN or a shared expert).
static void swiglu_ffn(Backend& be, const QWeight& gate, const QWeight& up, const QWeight& down, int I, const float* x,
                       int N, std::vector<float>& h1, std::vector<float>& h3, std::vector<float>& act, float* out) {
  const size_t NI = size_t(N) * I;
  for (auto* b : {&h1, &h3, &act}) grow(*b, NI);
  const LinearOut gate_up[] = {{h1.data(), &gate}, {h3.data(), &up}};
  be.linear_multi(x, N, gate_up, 2);
  be.swiglu(act.data(), h1.data(), h3.data(), long(NI));
  be.linear(out, act.data(), down, N);
}

// Backward of swiglu_ffn: d_x += d(x) from d_out; weight gradients accumulate.
static void swiglu_ffn_backward(Backend& be, const QWeight& gate, const QWeight& up, const QWeight& down, float* g_gate,
                                float* g_up, float* g_down, int I, int H, const float* x, int N, const float* h1,
                                const float* h3, const float* act, const float* d_out, float* d_x, LayerGradScratch& S) {
  const size_t NI = size_t(N) * I;
  zero_prefix(S.d_h1, NI);
  zero_prefix(S.d_h3, NI);
  zero_prefix(S.d_act, NI);
  be.matmul_backward(S.d_act.data(), g_down, d_out, act, f32(&down), N, I, H);
  be.swiglu_backward(S.d_h1.data(), S.d_h3.data(), S.d_act.data(), h1, h3, long(NI));
  be.matmul_backward(d_x, g_gate, S.d_h1.data(), x, f32(&gate), N, H, I);
  be.matmul_backward(d_x, g_up, S.d_h3.data(), x, f32(&up), N, H, I);
}

// Rows and width of a q/k norm: each head, or the whole projection.
static void norm_rows(const LayerShape& d, int N, int heads, int& rows, int& dim) {
  rows = d.qk_norm == QkNorm::PerHead ? N * heads : N;
  dim = d.qk_norm == QkNorm::PerHead ? d.hd : heads * d.hd;
}

// Attention of the batch's rows: per training sequence (probabilities kept for backward), or
// each engine sequence's new rows over its KV cache (their keys and values appended first).
static void attend(Backend& be, const LayerShape& d, int layer, LayerActs& A, const RowBatch& rb) {
  if (!rb.seqs) {
    grow(A.att, size_t(rb.B) * d.nh * rb.T * rb.T);
    be.attention(A.ctx.data(), A.att.data(), A.q.data(), A.k.data(), A.v.data(), rb.B, rb.T, d.nh, d.nkv, d.hd);
    return;
  }
  const std::vector<BatchRow>& seqs = *rb.seqs;
  grow(A.attn, seqs.size());
  size_t r0 = 0;
  for (size_t i = 0; i < seqs.size(); i++) {
    SeqKV& kv = *seqs[i].kv;
    kv.put(layer, kv.len, A.k.data() + r0 * d.kvd(), A.v.data() + r0 * d.kvd(), seqs[i].n);
    A.attn[i] = {A.ctx.data() + r0 * d.qd(), A.q.data() + r0 * d.qd(), kv.view(layer), kv.len, seqs[i].n};
    r0 += size_t(seqs[i].n);
  }
  be.attention_kv(A.attn.data(), int(seqs.size()), d.nh, d.nkv, d.hd);
}

// q, k, v projections (with biases and q/k norms), RoPE, attention: ctx [N, nh * hd].
static void attention_qkv(Backend& be, const LayerWeights& W, const LayerShape& d, int layer, LayerActs& A,
                          const RowBatch& rb) {
  const int N = rb.N;
  // With q/k norms the projections land in q_raw/k_raw and the norms write q/k.
  const bool qkn = d.qk_norm != QkNorm::None;
  if (qkn) {
    grow(A.q_raw, size_t(N) * d.qd());
    grow(A.k_raw, size_t(N) * d.kvd());
  }
  float* qp = qkn ? A.q_raw.data() : A.q.data();
  float* kp = qkn ? A.k_raw.data() : A.k.data();
  const LinearOut qkv[] = {{qp, W.wq}, {kp, W.wk}, {A.v.data(), W.wv}};
  be.linear_multi(A.ln1.data(), N, qkv, 3);
  if (W.bq) {
    be.add_bias(qp, W.bq, N, d.qd());
    be.add_bias(kp, W.bk, N, d.kvd());
    be.add_bias(A.v.data(), W.bv, N, d.kvd());
  }
  if (qkn) {
    int rows, dim;
    norm_rows(d, N, d.nh, rows, dim);
    grow(A.rstd_q, size_t(rows));
    be.rmsnorm(A.q.data(), A.rstd_q.data(), qp, W.q_norm, rows, dim, d.eps);
    norm_rows(d, N, d.nkv, rows, dim);
    grow(A.rstd_k, size_t(rows));
    be.rmsnorm(A.k.data(), A.rstd_k.data(), kp, W.k_norm, rows, dim, d.eps);
  }
  be.rope(A.q.data(), rb.pos, N, d.nh, *d.rope);
  be.rope(A.k.data(), rb.pos, N, d.nkv, *d.rope);
  if (d.q_scale != 1.0f) be.scale(A.q.data(), size_t(N) * d.qd(), d.q_scale);
  attend(be, d, layer, A, rb);
}

// ---- Multi-head latent attention (DeepSeek-V2/V3). Its small norms (q_a_layernorm,
// kv_a_layernorm) use eps 1e-6 whatever rms_norm_eps says, as transformers and DeepSeek build them.
constexpr double kLatentEps = 1e-6;

// q [N, nh * hd] with RoPE on each head's last dr dims, the normed kv latent ckvn [N, r] and the
// rotated shared key kpe [N, dr].
static void mla_project(Backend& be, const LayerWeights& W, const LayerShape& d, LayerActs& A, const RowBatch& rb) {
  const int N = rb.N, L = d.r + d.dr;
  const long NH = long(N) * d.nh;
  if (W.wq_a) {
    grow(A.qa, size_t(N) * d.rq);
    grow(A.qan, size_t(N) * d.rq);
    grow(A.rstd_qa, size_t(N));
    be.linear(A.qa.data(), A.ln1.data(), *W.wq_a, N);
    be.rmsnorm(A.qan.data(), A.rstd_qa.data(), A.qa.data(), W.q_a_norm, N, d.rq, kLatentEps);
    be.linear(A.q.data(), A.qan.data(), *W.wq_b, N);
  } else {
    be.linear(A.q.data(), A.ln1.data(), *W.wq, N);
  }
  grow(A.kva, size_t(N) * L);
  grow(A.ckv, size_t(N) * d.r);
  grow(A.ckvn, size_t(N) * d.r);
  grow(A.rstd_kv, size_t(N));
  grow(A.kpe, size_t(N) * d.dr);
  grow(A.qpe, size_t(NH) * d.dr);
  be.linear(A.kva.data(), A.ln1.data(), *W.wkv_a, N);
  be.copy_cols(A.ckv.data(), d.r, A.kva.data(), L, N, d.r, false);
  be.rmsnorm(A.ckvn.data(), A.rstd_kv.data(), A.ckv.data(), W.kv_a_norm, N, d.r, kLatentEps);
  be.copy_cols(A.kpe.data(), d.dr, A.kva.data() + d.r, L, N, d.dr, false);
  be.rope(A.kpe.data(), rb.pos, N, 1, *d.rope);
  be.copy_cols(A.qpe.data(), d.dr, A.q.data() + d.dn, d.hd, NH, d.dr, false);
  be.rope(A.qpe.data(), rb.pos, N, d.nh, *d.rope);
  be.copy_cols(A.q.data() + d.dn, d.hd, A.qpe.data(), d.dr, NH, d.dr, false);
}

// Training and eval: keys [k_nope | k_pe] and values per head from kv_b, the values padded with zeros
// to hd so the one attention op runs (its 1/sqrt(hd) is the model's scale; q carries the YaRN
// factor); ctx [N, nh * dv] its first dv columns per head.
static void mla_attend_train(Backend& be, const LayerWeights& W, const LayerShape& d, LayerActs& A,
                             const RowBatch& rb) {
  const int N = rb.N, kvw = d.dn + d.dv;
  const long NH = long(N) * d.nh;
  const size_t NQ = size_t(N) * d.qd();
  grow(A.kvb, size_t(NH) * kvw);
  be.linear(A.kvb.data(), A.ckvn.data(), *W.wkv_b, N);
  if (d.softmax_factor != 1.0) be.scale(A.q.data(), NQ, float(d.softmax_factor));
  grow(A.k, NQ);
  grow(A.v, NQ);
  grow(A.ctxp, NQ);
  be.copy_cols(A.k.data(), d.hd, A.kvb.data(), kvw, NH, d.dn, false);
  for (int h = 0; h < d.nh; h++) be.copy_cols(A.k.data() + size_t(h) * d.hd + d.dn, d.qd(), A.kpe.data(), d.dr, N, d.dr, false);
  be.zero(A.v.data(), NQ);
  be.copy_cols(A.v.data(), d.hd, A.kvb.data() + d.dn, kvw, NH, d.dv, false);
  grow(A.att, size_t(rb.B) * d.nh * rb.T * rb.T);
  be.attention(A.ctxp.data(), A.att.data(), A.q.data(), A.k.data(), A.v.data(), rb.B, rb.T, d.nh, d.nh, d.hd);
  be.copy_cols(A.ctx.data(), d.dv, A.ctxp.data(), d.hd, NH, d.dv, false);
}

// The engine: each sequence's cache holds latent rows [c_kv | k_pe] (r + dr values a position and
// layer). kv_b is absorbed into both sides, so attention runs over the latent rows as one shared
// key/value head of width r + dr: queries [q_nope uk[h] | q_pe] per head (score = q_nope k_nope +
// q_pe k_pe), scaled so the op's 1/sqrt(r + dr) becomes 1/sqrt(hd) times the YaRN factor; the
// context's first r columns (the latent average) go through uv[h] to the head's dv values.
static void mla_attend_kv(Backend& be, const LayerWeights& W, const LayerShape& d, int layer, LayerActs& A,
                          const RowBatch& rb) {
  const int N = rb.N, L = d.r + d.dr, nh = d.nh;
  const long NH = long(N) * nh;
  SKY_CHECK(W.uk && W.uv, "MLA inference needs the absorbed kv_b (InferModel)");
  grow(A.lat, size_t(N) * L);
  grow(A.qlat, size_t(NH) * L);
  grow(A.ctxl, size_t(NH) * L);
  grow(A.head_in, size_t(N) * std::max(d.dn, d.r));
  grow(A.head_out, size_t(N) * std::max(d.r, d.dv));
  be.copy_cols(A.lat.data(), L, A.ckvn.data(), d.r, N, d.r, false);
  be.copy_cols(A.lat.data() + d.r, L, A.kpe.data(), d.dr, N, d.dr, false);
  for (int h = 0; h < nh; h++) {
    be.copy_cols(A.head_in.data(), d.dn, A.q.data() + size_t(h) * d.hd, d.qd(), N, d.dn, false);
    be.linear(A.head_out.data(), A.head_in.data(), W.uk[h], N);
    be.copy_cols(A.qlat.data() + size_t(h) * L, long(nh) * L, A.head_out.data(), d.r, N, d.r, false);
  }
  be.copy_cols(A.qlat.data() + d.r, L, A.q.data() + d.dn, d.hd, NH, d.dr, false);
  be.scale(A.qlat.data(), size_t(NH) * L, float(std::sqrt(double(L) / d.hd) * d.softmax_factor));
  const std::vector<BatchRow>& seqs = *rb.seqs;
  grow(A.attn, seqs.size());
  size_t r0 = 0;
  for (size_t i = 0; i < seqs.size(); i++) {
    SeqKV& kv = *seqs[i].kv;
    SKY_CHECK(kv.latent && kv.kv_dim == L, "MLA layer {}: the KV cache is not a latent cache of width {}", layer, L);
    kv.put_latent(layer, kv.len, A.lat.data() + r0 * L, seqs[i].n);
    A.attn[i] = {A.ctxl.data() + r0 * nh * L, A.qlat.data() + r0 * nh * L, kv.view(layer), kv.len, seqs[i].n};
    r0 += size_t(seqs[i].n);
  }
  be.attention_kv(A.attn.data(), int(seqs.size()), nh, 1, L);
  for (int h = 0; h < nh; h++) {
    be.copy_cols(A.head_in.data(), d.r, A.ctxl.data() + size_t(h) * L, long(nh) * L, N, d.r, false);
    be.linear(A.head_out.data(), A.head_in.data(), W.uv[h], N);
    be.copy_cols(A.ctx.data() + size_t(h) * d.dv, d.od(), A.head_out.data(), d.dv, N, d.dv, false);
  }
}

// Backward of mla_project + mla_attend_train: d_ctx [N, nh * dv] in; d_ln += the gradient at ln1;
// weight gradients accumulate.
static void mla_backward(Backend& be, const LayerWeights& W, const LayerView<float>& G, const LayerShape& d,
                         const LayerActs& A, const RowBatch& rb, LayerGradScratch& S) {
  const int N = rb.N, L = d.r + d.dr, kvw = d.dn + d.dv;
  const long NH = long(N) * d.nh;
  const size_t NQ = size_t(N) * d.qd();
  zero_prefix(S.d_ctxp, NQ);
  be.copy_cols(S.d_ctxp.data(), d.hd, S.d_ctx.data(), d.dv, NH, d.dv, false);
  zero_prefix(S.d_q, NQ);
  zero_prefix(S.d_k, NQ);
  zero_prefix(S.d_v, NQ);
  be.attention_backward(S.d_q.data(), S.d_k.data(), S.d_v.data(), S.d_ctxp.data(), A.q.data(), A.k.data(),
                        A.v.data(), A.att.data(), rb.B, rb.T, d.nh, d.nh, d.hd);
  if (d.softmax_factor != 1.0) be.scale(S.d_q.data(), NQ, float(d.softmax_factor));
  // Keys and values back into kv_b's output; k_pe gets every head's share.
  grow(S.d_kvb, size_t(NH) * kvw);
  be.copy_cols(S.d_kvb.data(), kvw, S.d_k.data(), d.hd, NH, d.dn, false);
  be.copy_cols(S.d_kvb.data() + d.dn, kvw, S.d_v.data(), d.hd, NH, d.dv, false);
  zero_prefix(S.d_kpe, size_t(N) * d.dr);
  for (int h = 0; h < d.nh; h++)
    be.copy_cols(S.d_kpe.data(), d.dr, S.d_k.data() + size_t(h) * d.hd + d.dn, d.qd(), N, d.dr, true);
  be.rope_backward(S.d_kpe.data(), rb.pos, N, 1, *d.rope);
  // q's RoPE dims through the rotation (d_q then holds the gradient of q_proj's / q_b's output).
  grow(S.d_qpe, size_t(NH) * d.dr);
  be.copy_cols(S.d_qpe.data(), d.dr, S.d_q.data() + d.dn, d.hd, NH, d.dr, false);
  be.rope_backward(S.d_qpe.data(), rb.pos, N, d.nh, *d.rope);
  be.copy_cols(S.d_q.data() + d.dn, d.hd, S.d_qpe.data(), d.dr, NH, d.dr, false);
  // kv_b, the latent's norm, kv_a.
  zero_prefix(S.d_ckvn, size_t(N) * d.r);
  be.matmul_backward(S.d_ckvn.data(), G.wkv_b, S.d_kvb.data(), A.ckvn.data(), f32(W.wkv_b), N, d.r, int(d.nh) * kvw);
  zero_prefix(S.d_ckv, size_t(N) * d.r);
  be.rmsnorm_backward(S.d_ckv.data(), G.kv_a_norm, S.d_ckvn.data(), A.ckv.data(), W.kv_a_norm, A.rstd_kv.data(), N,
                      d.r);
  grow(S.d_kva, size_t(N) * L);
  be.copy_cols(S.d_kva.data(), L, S.d_ckv.data(), d.r, N, d.r, false);
  be.copy_cols(S.d_kva.data() + d.r, L, S.d_kpe.data(), d.dr, N, d.dr, false);
  be.matmul_backward(S.d_ln.data(), G.wkv_a, S.d_kva.data(), A.ln1.data(), f32(W.wkv_a), N, d.H, L);
  // q_b, the q latent's norm, q_a (or q_proj).
  if (W.wq_a) {
    zero_prefix(S.d_qan, size_t(N) * d.rq);
    be.matmul_backward(S.d_qan.data(), G.wq_b, S.d_q.data(), A.qan.data(), f32(W.wq_b), N, d.rq, d.qd());
    zero_prefix(S.d_qa, size_t(N) * d.rq);
    be.rmsnorm_backward(S.d_qa.data(), G.q_a_norm, S.d_qan.data(), A.qa.data(), W.q_a_norm, A.rstd_qa.data(), N,
                        d.rq);
    be.matmul_backward(S.d_ln.data(), G.wq_a, S.d_qa.data(), A.ln1.data(), f32(W.wq_a), N, d.H, d.rq);
  } else {
    be.matmul_backward(S.d_ln.data(), G.wq, S.d_q.data(), A.ln1.data(), f32(W.wq), N, d.H, d.qd());
  }
}

void layer_forward(Backend& be, const LayerWeights& W, const LayerShape& d, int layer, LayerActs& A, const float* x,
                   float* y, const RowBatch& rb, const MoeOptions& moe, const PartialSum& tp) {
  const int N = rb.N;
  const size_t NH = size_t(N) * d.H;
  for (auto* b : {&A.ln1, &A.mid, &A.ln2}) grow(*b, NH);
  grow(A.rstd1, N);
  grow(A.rstd2, N);
  grow(A.q, size_t(N) * d.qd());
  grow(A.ctx, size_t(N) * d.od());
  grow(A.k, size_t(N) * d.kvd());
  grow(A.v, size_t(N) * d.kvd());

  be.rmsnorm(A.ln1.data(), A.rstd1.data(), x, W.attn_norm, N, d.H, d.eps);
  if (d.mla()) {
    mla_project(be, W, d, A, rb);
    if (rb.seqs) mla_attend_kv(be, W, d, layer, A, rb);
    else mla_attend_train(be, W, d, A, rb);
  } else {
    attention_qkv(be, W, d, layer, A, rb);
  }
  be.linear(A.mid.data(), A.ctx.data(), *W.wo, N);
  tp(A.mid.data(), NH);  // every rank's heads
  if (d.resid_scale != 1.0f) be.scale(A.mid.data(), NH, d.resid_scale);
  be.add(A.mid.data(), x, NH);
  be.rmsnorm(A.ln2.data(), A.rstd2.data(), A.mid.data(), W.ffn_norm, N, d.H, d.eps);
  if (W.is_moe()) {
    moe_forward(be, y, A.ln2.data(), N, W.moe, moe, A.moe);
    if (tp.moe) tp(y, NH);  // every rank's experts or expert blocks
    if (W.sh_down) {
      grow(A.sh_out, NH);
      swiglu_ffn(be, *W.sh_gate, *W.sh_up, *W.sh_down, d.S, A.ln2.data(), N, A.sh_h1, A.sh_h3, A.sh_act,
                 A.sh_out.data());
      if (W.sh_router) {
        grow(A.sh_g, size_t(N));
        be.linear(A.sh_g.data(), A.ln2.data(), *W.sh_router, N);
        be.gated_add(y, A.sh_out.data(), A.sh_g.data(), N, d.H);
      } else {
        be.add(y, A.sh_out.data(), NH);
      }
    }
  } else {
    swiglu_ffn(be, *W.gate, *W.up, *W.down, d.I, A.ln2.data(), N, A.h1, A.h3, A.act, y);
    tp(y, NH);  // every rank's FFN width
  }
  if (d.resid_scale != 1.0f) be.scale(y, NH, d.resid_scale);
  be.add(y, A.mid.data(), NH);
}

void layer_backward(Backend& be, const LayerWeights& W, const LayerView<float>& G, const LayerShape& d,
                    const LayerActs& A, const float* x, float* d_x, const RowBatch& rb, const MoeOptions& moe,
                    double aux_coef, double z_coef, const PartialSum& tp, LayerGradScratch& S) {
  SKY_CHECK(!rb.seqs, "layer_backward: a training batch has no KV caches");
  const int N = rb.N;
  const size_t NH = size_t(N) * d.H;
  // y = mid + ffn(ln2(mid)): d_mid = d_y + d(ffn path).
  grow(S.d_mid, NH);
  std::copy(d_x, d_x + NH, S.d_mid.begin());
  // The FFN branch's output was scaled by resid_scale: its gradient is d_y * resid_scale (d_x is
  // overwritten with d_mid's below, so it holds it meanwhile).
  if (d.resid_scale != 1.0f) be.scale(d_x, NH, d.resid_scale);
  zero_prefix(S.d_ln, NH);
  if (W.is_moe()) {
    const MoeGrads<float> mg{G.router, G.w1, G.w3, G.w2};
    moe_backward(be, S.d_ln.data(), mg, d_x, A.ln2.data(), N, W.moe, moe, A.moe, aux_coef, z_coef);
    if (tp.moe) tp(S.d_ln.data(), NH);
    if (W.sh_down) {
      const float* d_sh = d_x;
      if (W.sh_router) {
        grow(S.d_sh, NH);
        grow(S.d_g, size_t(N));
        be.gated_add_backward(S.d_sh.data(), S.d_g.data(), d_x, A.sh_out.data(), A.sh_g.data(), N, d.H);
        be.matmul_backward(S.d_ln.data(), G.sh_router, S.d_g.data(), A.ln2.data(), f32(W.sh_router), N, d.H, 1);
        d_sh = S.d_sh.data();
      }
      swiglu_ffn_backward(be, *W.sh_gate, *W.sh_up, *W.sh_down, G.sh_gate, G.sh_up, G.sh_down, d.S, d.H,
                          A.ln2.data(), N, A.sh_h1.data(), A.sh_h3.data(), A.sh_act.data(), d_sh, S.d_ln.data(), S);
    }
  } else {
    swiglu_ffn_backward(be, *W.gate, *W.up, *W.down, G.w_gate, G.w_up, G.w_down, d.I, d.H, A.ln2.data(), N,
                        A.h1.data(), A.h3.data(), A.act.data(), d_x, S.d_ln.data(), S);
    tp(S.d_ln.data(), NH);
  }
  be.rmsnorm_backward(S.d_mid.data(), G.ffn_norm, S.d_ln.data(), A.mid.data(), W.ffn_norm, A.rstd2.data(), N, d.H);
  // mid = x + o_proj(attn(...)): d_x = d_mid + d(attention path).
  std::copy(S.d_mid.begin(), S.d_mid.begin() + NH, d_x);
  if (d.resid_scale != 1.0f) be.scale(S.d_mid.data(), NH, d.resid_scale);  // into the attention branch
  zero_prefix(S.d_ctx, size_t(N) * d.od());
  be.matmul_backward(S.d_ctx.data(), G.wo, S.d_mid.data(), A.ctx.data(), f32(W.wo), N, d.od(), d.H);
  if (d.mla()) {
    zero_prefix(S.d_ln, NH);
    mla_backward(be, W, G, d, A, rb, S);
    tp(S.d_ln.data(), NH);
    be.rmsnorm_backward(d_x, G.attn_norm, S.d_ln.data(), x, W.attn_norm, A.rstd1.data(), N, d.H);
    return;
  }
  zero_prefix(S.d_q, size_t(N) * d.qd());
  zero_prefix(S.d_k, size_t(N) * d.kvd());
  zero_prefix(S.d_v, size_t(N) * d.kvd());
  be.attention_backward(S.d_q.data(), S.d_k.data(), S.d_v.data(), S.d_ctx.data(), A.q.data(), A.k.data(), A.v.data(),
                        A.att.data(), rb.B, rb.T, d.nh, d.nkv, d.hd);
  if (d.q_scale != 1.0f) be.scale(S.d_q.data(), size_t(N) * d.qd(), d.q_scale);
  be.rope_backward(S.d_q.data(), rb.pos, N, d.nh, *d.rope);
  be.rope_backward(S.d_k.data(), rb.pos, N, d.nkv, *d.rope);
  // Through the q/k norms to the projections' outputs.
  const float* d_qp = S.d_q.data();
  const float* d_kp = S.d_k.data();
  if (d.qk_norm != QkNorm::None) {
    int rows, dim;
    zero_prefix(S.d_qraw, size_t(N) * d.qd());
    zero_prefix(S.d_kraw, size_t(N) * d.kvd());
    norm_rows(d, N, d.nh, rows, dim);
    be.rmsnorm_backward(S.d_qraw.data(), G.q_norm, S.d_q.data(), A.q_raw.data(), W.q_norm, A.rstd_q.data(), rows, dim);
    norm_rows(d, N, d.nkv, rows, dim);
    be.rmsnorm_backward(S.d_kraw.data(), G.k_norm, S.d_k.data(), A.k_raw.data(), W.k_norm, A.rstd_k.data(), rows, dim);
    d_qp = S.d_qraw.data();
    d_kp = S.d_kraw.data();
  }
  if (W.bq) {
    be.bias_backward(G.bq, d_qp, N, d.qd());
    be.bias_backward(G.bk, d_kp, N, d.kvd());
    be.bias_backward(G.bv, S.d_v.data(), N, d.kvd());
  }
  zero_prefix(S.d_ln, NH);
  be.matmul_backward(S.d_ln.data(), G.wq, d_qp, A.ln1.data(), f32(W.wq), N, d.H, d.qd());
  be.matmul_backward(S.d_ln.data(), G.wk, d_kp, A.ln1.data(), f32(W.wk), N, d.H, d.kvd());
  be.matmul_backward(S.d_ln.data(), G.wv, S.d_v.data(), A.ln1.data(), f32(W.wv), N, d.H, d.kvd());
  tp(S.d_ln.data(), NH);
  be.rmsnorm_backward(d_x, G.attn_norm, S.d_ln.data(), x, W.attn_norm, A.rstd1.data(), N, d.H);
}

}  // namespace sky
