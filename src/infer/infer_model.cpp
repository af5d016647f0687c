#include "infer/infer_model.h"

#include <atomic>
#include <optional>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "io/safetensors.h"
#include "model/params.h"
#include "model/stored_tensor.h"
#include "model/gguf_model.h"

namespace sky {

static DType parse_target(const std::string& s, const char* flag = "--dtype") {
  if (s == "f32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  if (s == "fp8") return DType::F8_E4M3;
  fail("{} '{}' (expected auto, f32, bf16 or fp8)", flag, s);
}

static std::vector<float> f32_vec(const SafetensorsReader& r, const std::string& name, const Shape& shape) {
  Tensor t = r.get_checked(name, shape);
  std::vector<float> v(t.numel());
  convert_to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

// The block [rows) x [cols) of a stored [O, I] tensor, in its stored dtype: a view into the map when
// it is whole rows (contiguous), else a copy of just the block.
static Tensor block_of(const Tensor& t, Range rows, Range cols) {
  const int64_t I = t.shape[1];
  const size_t es = dtype_size(t.dtype);
  if (cols.begin == 0 && cols.size == I) {
    if (rows.begin == 0 && rows.size == t.shape[0]) return t;
    Tensor v = t;
    v.shape = {rows.size, I};
    v.data = static_cast<char*>(t.data) + size_t(rows.begin) * I * es;
    return v;
  }
  Tensor b = Tensor::empty(t.dtype, {rows.size, cols.size});
  for (int r = 0; r < rows.size; r++)
    std::memcpy(static_cast<char*>(b.data) + size_t(r) * cols.size * es,
                static_cast<const char*>(t.data) + (size_t(rows.begin + r) * I + cols.begin) * es, cols.size * es);
  return b;
}

// Loads the block [rows) x [cols) of one linear weight [O, I] (default: all of it), stored where
// `at` says (a tensor, or rows of a stacked one). Kept as a view into the map when the stored dtype
// is wanted (or `target` is auto and the stored dtype is one the kernels take) and the block is
// whole rows; converted otherwise.
static QWeight load_linear(const SafetensorsReader& r, const StoredAt& at, int O, int I, const InferLoadOptions& o,
                           bool is_head, bool* mmapped, Range rows = {}, Range cols = {}) {
  if (rows.size == 0) rows = {0, O};
  if (cols.size == 0) cols = {0, I};
  // Block-quantized (GGUF) weights run as stored when nothing else is asked for: whole rows are a
  // view into the map (q/k of llama files: a reordered copy); a column block is converted below.
  if (at.row0 == 0 && r.has_blocks(at.name) && o.dtype == "auto" && !(is_head && o.lm_head != "auto") &&
      cols.size == I) {
    const TensorInfo& ti = r.info(at.name);
    SKY_CHECK(ti.shape == Shape({O, I}), "tensor '{}' in {} has shape {}, expected [{}, {}]", at.name, r.path(),
              shape_str(ti.shape), O, I);
    const BlockTensor b = r.blocks(at.name);
    const BlockTraits* tr = block_traits(uint32_t(b.type));
    if (block_is_quantized(b.type) && tr && tr->decodable) {
      *mmapped = true;
      const auto* p = static_cast<const uint8_t*>(b.data) + size_t(rows.begin) * b.row_bytes();
      return block_weight(b.type, p, b.owner, rows.size, I);
    }
  }
  Tensor full = read_stored(r, at, {O, I});
  Tensor t = block_of(full, rows, cols);
  const bool is_view = t.data >= full.data && t.data < static_cast<char*>(full.data) + full.nbytes();
  const int bo = rows.size, bi = cols.size;
  const std::string& name = at.name;
  const std::string scale_name = weight_scale_name(name);
  const std::optional<Tensor> stored_scale = read_stored_scale(r, at, O);
  const bool has_scale = stored_scale.has_value();
  // Scales of the block's rows (one value: per-tensor, kept as it is).
  auto block_scale = [&] {
    Tensor sc = *stored_scale;
    const int64_t ns = sc.numel();
    if (ns == 1 || bo == O) return sc;
    Tensor b = Tensor::empty(DType::F32, {bo});
    std::memcpy(b.data, sc.f32() + rows.begin, sizeof(float) * bo);
    return b;
  };
  DType want = o.dtype == "auto" ? t.dtype : parse_target(o.dtype);
  if (want == DType::F16 || want == DType::F8_E5M2) want = DType::F32;
  if (is_head && o.lm_head != "auto")
    want = parse_target(o.lm_head, "--lm-head");
  else if (is_head && want == DType::F8_E4M3 && t.dtype != DType::F8_E4M3)
    want = DType::BF16;  // converting: the LM head stays higher precision (a stored fp8 head stays fp8)
  // The stored bytes as they are: no conversion.
  auto as_stored = [&] {
    QWeight q;
    q.dtype = want;
    q.O = bo;
    q.I = bi;
    q.data = t.data;
    q.storage = t;
    *mmapped = *mmapped || is_view;
    return q;
  };
  if (t.dtype == want && (want == DType::F32 || want == DType::BF16) && !has_scale) return as_stored();
  if (t.dtype == DType::F8_E4M3 && want == DType::F8_E4M3) {
    SKY_CHECK(has_scale, "{}: FP8 tensor '{}' has no '{}' beside it", r.path(), name, scale_name);
    QWeight q = as_stored();
    q.scale_storage = block_scale();
    q.scale_count = int(q.scale_storage.numel());
    q.scale = q.scale_storage.f32();
    return q;
  }
  // Convert: dequantize to f32 (applying any scale), then quantize to the target.
  std::vector<float> w(size_t(bo) * bi);
  convert_to_f32(t.dtype, t.data, w.data(), w.size());
  if (has_scale) {
    Tensor sc = block_scale();
    const int64_t ns = sc.numel();
    for (int i = 0; i < bo; i++)
      for (int j = 0; j < bi; j++) w[size_t(i) * bi + j] *= sc.f32()[ns == 1 ? 0 : i];
  }
  return quantize_weight(w.data(), bo, bi, want, o.per_row);
}

// kv_b [nh (dn + dv), r] (f32) as mla_attend_kv runs it: per head uk = its key rows transposed
// [r, dn] and uv = its value rows [dv, r], in `dt`.
static void absorb_kv_b(InferLayer& L, const float* kvb, const ModelConfig& c, DType dt, bool per_row) {
  const int nh = c.num_heads, dn = c.qk_nope_dim, dv = c.v_head_dim, r = c.kv_lora_rank;
  L.uk.resize(nh);
  L.uv.resize(nh);
  std::vector<float> t(size_t(r) * dn);
  for (int h = 0; h < nh; h++) {
    const float* rows = kvb + size_t(h) * (dn + dv) * r;
    for (int i = 0; i < dn; i++)
      for (int j = 0; j < r; j++) t[size_t(j) * dn + i] = rows[size_t(i) * r + j];
    L.uk[h] = quantize_weight(t.data(), r, dn, dt, per_row);
    L.uv[h] = quantize_weight(rows + size_t(dn) * r, dv, r, dt, per_row);
  }
}

InferModel InferModel::load(const std::string& dir, const InferLoadOptions& o, const Shard* shard) {
  if (o.dtype != "auto") parse_target(o.dtype);
  if (o.lm_head != "auto") parse_target(o.lm_head, "--lm-head");
  SKY_CHECK(o.kv_dtype == "f32" || o.kv_dtype == "bf16", "--kv-dtype '{}' (expected f32 or bf16)", o.kv_dtype);
  InferModel m;
  m.full_cfg = ModelConfig::load_file(dir);
  const ModelConfig& c = m.full_cfg;
  m.shard = shard ? *shard : Shard::full(c);
  const Shard& sh = m.shard;
  SKY_CHECK(sh.layer_begin == 0 && sh.layer_end == c.num_layers && sh.embed,
            "inference holds every layer and the embedding on every rank (no pipeline split)");
  m.cfg = shard_config(c, sh);
  SafetensorsReader r = open_model_tensors(dir);
  const int H = c.hidden_size, I = c.intermediate_size, EI = c.moe_intermediate_size, qd = c.q_dim(),
            kvd = c.kv_dim(), hd = c.head_dim;
  // This rank's attention heads: rows of q/k/v, columns of o_proj; its FFN / expert width: rows of
  // gate/up (w1/w3), columns of down (w2).
  const Range qrows{sh.q_heads.begin * hd, sh.q_heads.size * hd}, kvrows{sh.kv_heads.begin * hd, sh.kv_heads.size * hd};
  using K = ParamKind;
  // Where parameter `kind` of shape {O, I} is stored.
  auto at = [&](K kind, int l, int e, int O, int I) { return stored_at(c, kind, l, e, {O, I}); };
  m.embed = f32_vec(r, tensor_name(c, K::Embed), {c.vocab_size, H});
  bool mm = false;
  if (sh.head) {
    m.final_norm = f32_vec(r, tensor_name(c, K::FinalNorm), {H});
    // Tied embeddings: the head is the embedding matrix (kept f32 beside it for lookups).
    m.lm_head = load_linear(r, at(c.tie_word_embeddings ? K::Embed : K::Head, -1, -1, c.vocab_size, H), c.vocab_size,
                            H, o, true, &mm);
  }
  m.layers.resize(c.num_layers);
  std::atomic<bool> any_view{mm};
  parallel_for(size_t(c.num_layers), [&](size_t li) {
      const int l = int(li);
      bool lm = false;
      InferLayer& L = m.layers[l];
      L.attn_norm = f32_vec(r, tensor_name(c, K::AttnNorm, l), {H});
      L.ffn_norm = f32_vec(r, tensor_name(c, K::FfnNorm, l), {H});
      if (c.mla()) {  // tensor parallelism is refused for MLA: whole tensors
        const int rq = c.q_lora_rank, kr = c.kv_lora_rank;
        if (rq > 0) {
          L.wq_a = load_linear(r, at(K::WqA, l, -1, rq, H), rq, H, o, false, &lm);
          L.q_a_norm = f32_vec(r, tensor_name(c, K::QANorm, l), {rq});
          L.wq_b = load_linear(r, at(K::WqB, l, -1, qd, rq), qd, rq, o, false, &lm);
        } else {
          L.wq = load_linear(r, at(K::Wq, l, -1, qd, H), qd, H, o, false, &lm);
        }
        L.wkv_a = load_linear(r, at(K::WkvA, l, -1, kr + c.qk_rope_dim, H), kr + c.qk_rope_dim, H, o, false, &lm);
        L.kv_a_norm = f32_vec(r, tensor_name(c, K::KvANorm, l), {kr});
        const int kvb_rows = c.num_heads * (c.qk_nope_dim + c.v_head_dim);
        const StoredAt kvb = at(K::WkvB, l, -1, kvb_rows, kr);
        InferLoadOptions f32o = o;
        f32o.dtype = "f32";
        bool unused = false;
        const QWeight full = load_linear(r, kvb, kvb_rows, kr, f32o, false, &unused);
        DType dt = o.dtype == "auto" ? r.get(kvb.name).dtype : parse_target(o.dtype);
        if (dt != DType::BF16 && dt != DType::F8_E4M3) dt = DType::F32;
        absorb_kv_b(L, static_cast<const float*>(full.data), c, dt, o.per_row);
        L.wo = load_linear(r, at(K::Wo, l, -1, H, c.o_dim()), H, c.o_dim(), o, false, &lm);
      } else {
        L.wq = load_linear(r, at(K::Wq, l, -1, qd, H), qd, H, o, false, &lm, qrows);
        L.wk = load_linear(r, at(K::Wk, l, -1, kvd, H), kvd, H, o, false, &lm, kvrows);
        L.wv = load_linear(r, at(K::Wv, l, -1, kvd, H), kvd, H, o, false, &lm, kvrows);
        L.wo = load_linear(r, at(K::Wo, l, -1, H, qd), H, qd, o, false, &lm, {}, qrows);
      }
      if (c.qkv_bias) {  // tensor parallelism is refused for these families: whole vectors
        L.bq = f32_vec(r, tensor_name(c, K::BiasQ, l), {qd});
        L.bk = f32_vec(r, tensor_name(c, K::BiasK, l), {kvd});
        L.bv = f32_vec(r, tensor_name(c, K::BiasV, l), {kvd});
      }
      if (c.qk_norm != QkNorm::None) {
        const bool ph = c.qk_norm == QkNorm::PerHead;
        L.q_norm = f32_vec(r, tensor_name(c, K::QNorm, l), {ph ? hd : qd});
        L.k_norm = f32_vec(r, tensor_name(c, K::KNorm, l), {ph ? hd : kvd});
      }
      if (c.layer_is_moe(l)) {
        const Range width = sh.expert_ffn;
        L.router = f32_vec(r, tensor_name(c, K::Router, l), {c.num_experts, H});
        if (c.router_bias) L.router_bias = f32_vec(r, tensor_name(c, K::RouterBias, l), {c.num_experts});
        if (c.shared_expert_size > 0) {
          const int S = c.shared_expert_size;
          L.sh_gate = load_linear(r, at(K::SharedGate, l, -1, S, H), S, H, o, false, &lm);
          L.sh_up = load_linear(r, at(K::SharedUp, l, -1, S, H), S, H, o, false, &lm);
          L.sh_down = load_linear(r, at(K::SharedDown, l, -1, H, S), H, S, o, false, &lm);
          if (c.shared_expert_gate) {
            InferLoadOptions f32o = o;
            f32o.dtype = "f32";  // one row: the router's precision, not worth quantizing
            L.sh_router = load_linear(r, at(K::SharedRouter, l, -1, 1, H), 1, H, f32o, false, &lm);
          }
        }
        L.w1.resize(c.num_experts);
        L.w3.resize(c.num_experts);
        L.w2.resize(c.num_experts);
        for (int e = sh.experts.begin; e < sh.experts.end(); e++) {
          L.w1[e] = load_linear(r, at(K::W1, l, e, EI, H), EI, H, o, false, &lm, width);
          L.w3[e] = load_linear(r, at(K::W3, l, e, EI, H), EI, H, o, false, &lm, width);
          L.w2[e] = load_linear(r, at(K::W2, l, e, H, EI), H, EI, o, false, &lm, {}, width);
        }
      } else {
        const Range width = sh.ffn;
        L.gate = load_linear(r, at(K::Gate, l, -1, I, H), I, H, o, false, &lm, width);
        L.up = load_linear(r, at(K::Up, l, -1, I, H), I, H, o, false, &lm, width);
        L.down = load_linear(r, at(K::Down, l, -1, H, I), H, I, o, false, &lm, {}, width);
      }
      if (lm) any_view = true;
  });
  mm = any_view;
  m.kv_bf16 = o.kv_dtype == "bf16";
  m.mmapped = mm;
  m.rope = RopeTable(c.rope_dim(), c.max_position_embeddings, c.rope_theta, c.rope_scaling, c.rope_interleave);
  const QWeight& probe = c.mla() ? m.layers[0].wkv_a : m.layers[0].wq;
  m.weight_dtype = probe.dtype == DType::Blocks     ? block_type_name(probe.block)
                   : probe.dtype == DType::F8_E4M3 ? "fp8"
                   : probe.dtype == DType::BF16    ? "bf16"
                                                   : "f32";
  return m;
}

InferModel InferModel::from_model(const Model& src, DType dtype, bool per_row, std::optional<DType> head) {
  InferModel m;
  m.be = src.be;
  m.full_cfg = src.cfg;
  m.shard = src.shard;
  m.cfg = shard_config(src.cfg, src.shard);
  const ModelConfig& c = m.cfg;  // the shard's widths: the source holds only its blocks
  SKY_CHECK(src.shard.layer_begin == 0 && src.shard.layer_end == c.num_layers && src.w.embed,
            "inference holds every layer and the embedding");
  const int H = c.hidden_size, I = c.intermediate_size, EI = c.moe_intermediate_size, qd = c.q_dim(),
            kvd = c.kv_dim();
  auto vec = [](const float* p, size_t n) { return std::vector<float>(p, p + n); };
  auto lin = [&](const float* p, int O, int In) { return quantize_weight(p, O, In, dtype, per_row); };
  m.embed = vec(src.w.embed, size_t(c.vocab_size) * H);
  if (src.shard.head) {
    m.final_norm = vec(src.w.final_norm, H);
    const DType hd = head ? *head : dtype == DType::F8_E4M3 ? DType::BF16 : dtype;
    m.lm_head = quantize_weight(src.w.lm_head, c.vocab_size, H, hd, per_row);
  }
  for (int l = 0; l < c.num_layers; l++) {
    const auto& W = src.w.layers[l];
    InferLayer L;
    L.attn_norm = vec(W.attn_norm, H);
    L.ffn_norm = vec(W.ffn_norm, H);
    if (c.mla()) {
      if (W.wq_a) {
        L.wq_a = lin(W.wq_a, c.q_lora_rank, H);
        L.q_a_norm = vec(W.q_a_norm, c.q_lora_rank);
        L.wq_b = lin(W.wq_b, qd, c.q_lora_rank);
      } else {
        L.wq = lin(W.wq, qd, H);
      }
      L.wkv_a = lin(W.wkv_a, c.kv_lora_rank + c.qk_rope_dim, H);
      L.kv_a_norm = vec(W.kv_a_norm, c.kv_lora_rank);
      absorb_kv_b(L, W.wkv_b, c, dtype, per_row);
      L.wo = lin(W.wo, H, c.o_dim());
    } else {
      L.wq = lin(W.wq, qd, H);
      L.wk = lin(W.wk, kvd, H);
      L.wv = lin(W.wv, kvd, H);
      L.wo = lin(W.wo, H, qd);
    }
    if (W.bq) L.bq = vec(W.bq, qd), L.bk = vec(W.bk, kvd), L.bv = vec(W.bv, kvd);
    if (W.q_norm) {
      const bool ph = c.qk_norm == QkNorm::PerHead;
      L.q_norm = vec(W.q_norm, ph ? c.head_dim : qd);
      L.k_norm = vec(W.k_norm, ph ? c.head_dim : kvd);
    }
    if (c.layer_is_moe(l)) {
      L.router = vec(W.router, size_t(c.num_experts) * H);
      if (W.router_bias) L.router_bias = vec(W.router_bias, c.num_experts);
      if (W.sh_down) {
        const int S = c.shared_expert_size;
        L.sh_gate = lin(W.sh_gate, S, H);
        L.sh_up = lin(W.sh_up, S, H);
        L.sh_down = lin(W.sh_down, H, S);
      }
      if (W.sh_router) L.sh_router = quantize_weight(W.sh_router, 1, H, DType::F32, per_row);
      L.w1.resize(c.num_experts);
      L.w3.resize(c.num_experts);
      L.w2.resize(c.num_experts);
      for (int e = m.shard.experts.begin, j = 0; e < m.shard.experts.end(); e++, j++) {  // j: index among held
        L.w1[e] = lin(W.w1 + size_t(j) * EI * H, EI, H);
        L.w3[e] = lin(W.w3 + size_t(j) * EI * H, EI, H);
        L.w2[e] = lin(W.w2 + size_t(j) * H * EI, H, EI);
      }
    } else {
      L.gate = lin(W.w_gate, I, H);
      L.up = lin(W.w_up, I, H);
      L.down = lin(W.w_down, H, I);
    }
    m.layers.push_back(std::move(L));
  }
  m.rope = RopeTable(c.rope_dim(), c.max_position_embeddings, c.rope_theta, c.rope_scaling, c.rope_interleave);
  m.weight_dtype = dtype == DType::F8_E4M3 ? "fp8" : dtype == DType::BF16 ? "bf16" : "f32";
  return m;
}

// MLA's projections and absorbed kv_b, and the small vectors beside them.
static double mla_bytes(const InferLayer& L) {
  double b = double(L.wq_a.bytes() + L.wq_b.bytes() + L.wkv_a.bytes());
  for (size_t h = 0; h < L.uk.size(); h++) b += double(L.uk[h].bytes() + L.uv[h].bytes());
  return b + (L.q_a_norm.size() + L.kv_a_norm.size() + L.router_bias.size()) * 4.0;
}

double InferModel::decode_weight_bytes_per_token() const {
  double b = double(lm_head.bytes()) + final_norm.size() * 4.0;
  for (const auto& L : layers) {
    b += mla_bytes(L);
    b += double(L.wq.bytes() + L.wk.bytes() + L.wv.bytes() + L.wo.bytes()) + (L.attn_norm.size() + L.ffn_norm.size()) * 4.0;
    if (!L.router.empty()) {
      // Under expert parallelism a token's top-k experts land on this rank in proportion to its experts.
      const int e0 = shard.experts.begin;
      b += L.router.size() * 4.0 + double(L.sh_gate.bytes() + L.sh_up.bytes() + L.sh_down.bytes() + L.sh_router.bytes());
      b += cfg.top_k * double(shard.experts.size) / cfg.num_experts *
           double(L.w1[e0].bytes() + L.w3[e0].bytes() + L.w2[e0].bytes());
    } else {
      b += double(L.gate.bytes() + L.up.bytes() + L.down.bytes());
    }
  }
  return b;
}

double InferModel::total_weight_bytes() const {
  double b = double(lm_head.bytes()) + (embed.size() + final_norm.size()) * 4.0;
  for (const auto& L : layers) {
    b += mla_bytes(L);
    b += double(L.wq.bytes() + L.wk.bytes() + L.wv.bytes() + L.wo.bytes()) + (L.attn_norm.size() + L.ffn_norm.size()) * 4.0;
    b += L.router.size() * 4.0 + double(L.gate.bytes() + L.up.bytes() + L.down.bytes());
    b += double(L.sh_gate.bytes() + L.sh_up.bytes() + L.sh_down.bytes() + L.sh_router.bytes());
    b += (L.bq.size() + L.bk.size() + L.bv.size() + L.q_norm.size() + L.k_norm.size()) * 4.0;
    for (size_t e = 0; e < L.w1.size(); e++) b += double(L.w1[e].bytes() + L.w3[e].bytes() + L.w2[e].bytes());
  }
  return b;
}

}  // namespace sky
