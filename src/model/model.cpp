#include "model/model.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/stored_tensor.h"
#include "model/gguf_model.h"

namespace sky {

namespace fs = std::filesystem;

void Model::bind() {
  w = param_view<float>(layout, shard.layer_begin, shard.num_layers(), params.data());
  rope = RopeTable(cfg.rope_dim(), cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, cfg.rope_interleave);
  const LayerShape d = layer_shape();
  const int nl = shard.num_layers();
  // wq wk wv wo gate up down, shared gate up down router, MLA q_a q_b kv_a kv_b; sized once: pointers
  // stay valid
  constexpr size_t kHandles = 15;
  handles_.assign(size_t(nl) * kHandles, QWeight{});
  layer_weights.assign(nl, LayerWeights{});
  for (int l = 0; l < nl; l++) {
    const LayerView<float>& V = w.layers[l];
    LayerWeights& L = layer_weights[l];
    QWeight* h = handles_.data() + size_t(l) * kHandles;
    L.attn_norm = V.attn_norm;
    L.ffn_norm = V.ffn_norm;
    if (d.mla()) {
      if (V.wq_a) {
        h[11] = f32_view(V.wq_a, d.rq, d.H);
        h[12] = f32_view(V.wq_b, d.qd(), d.rq);
        L.wq_a = &h[11], L.wq_b = &h[12], L.q_a_norm = V.q_a_norm;
      } else {
        h[0] = f32_view(V.wq, d.qd(), d.H);
        L.wq = &h[0];
      }
      h[13] = f32_view(V.wkv_a, d.r + d.dr, d.H);
      h[14] = f32_view(V.wkv_b, d.nh * (d.dn + d.dv), d.r);
      h[3] = f32_view(V.wo, d.H, d.od());
      L.wkv_a = &h[13], L.wkv_b = &h[14], L.kv_a_norm = V.kv_a_norm, L.wo = &h[3];
    } else {
      h[0] = f32_view(V.wq, d.qd(), d.H);
      h[1] = f32_view(V.wk, d.kvd(), d.H);
      h[2] = f32_view(V.wv, d.kvd(), d.H);
      h[3] = f32_view(V.wo, d.H, d.qd());
      L.wq = &h[0], L.wk = &h[1], L.wv = &h[2], L.wo = &h[3];
    }
    L.bq = V.bq, L.bk = V.bk, L.bv = V.bv;
    L.q_norm = V.q_norm, L.k_norm = V.k_norm;
    if (cfg.layer_is_moe(shard.layer_begin + l)) {
      MoeWeights<float>& e = L.moe;
      e.H = d.H;
      e.I = shard.expert_ffn.size;  // the expert width held
      e.E = cfg.num_experts;
      e.e_begin = shard.experts.begin;
      e.e_count = shard.experts.size;
      e.router = V.router;
      e.select_bias = V.router_bias;
      e.w1 = V.w1;
      e.w3 = V.w3;
      e.w2 = V.w2;
      if (V.sh_down) {
        h[7] = f32_view(V.sh_gate, d.S, d.H);
        h[8] = f32_view(V.sh_up, d.S, d.H);
        h[9] = f32_view(V.sh_down, d.H, d.S);
        L.sh_gate = &h[7], L.sh_up = &h[8], L.sh_down = &h[9];
      }
      if (V.sh_router) {
        h[10] = f32_view(V.sh_router, 1, d.H);
        L.sh_router = &h[10];
      }
    } else {
      h[4] = f32_view(V.w_gate, d.I, d.H);
      h[5] = f32_view(V.w_up, d.I, d.H);
      h[6] = f32_view(V.w_down, d.H, d.I);
      L.gate = &h[4], L.up = &h[5], L.down = &h[6];
    }
  }
  lm_head = w.lm_head ? f32_view(w.lm_head, cfg.vocab_size, cfg.hidden_size) : QWeight{};
}

LayerShape Model::layer_shape() const {
  LayerShape d;
  d.H = cfg.hidden_size;
  d.nh = shard.q_heads.size;
  d.nkv = shard.kv_heads.size;
  d.hd = cfg.head_dim;
  d.I = shard.ffn.size;
  d.S = cfg.shared_expert_size;
  d.qk_norm = cfg.qk_norm;
  d.eps = float(cfg.rms_norm_eps);
  d.set_multipliers(cfg);
  d.rope = &rope;
  set_mla_shape(d, cfg);
  return d;
}

Model Model::random(const ModelConfig& cfg, uint64_t seed) { return random(cfg, seed, Shard::full(cfg)); }

Model Model::allocate(const ModelConfig& cfg, const Shard& shard) {
  cfg.validate();
  Model m;
  m.cfg = cfg;
  m.shard = shard;
  m.layout = ParamLayout::build(cfg, shard);
  const double need = double(m.layout.total) * sizeof(float),
               have = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  SKY_CHECK(have <= 0 || need <= have,
            "the model's {} f32 parameters need {:.1f} GiB; this machine has {:.1f} GiB of memory", m.layout.total,
            need / (1 << 30), have / (1 << 30));
  m.params = FloatBuf(m.layout.total);
  m.bind();
  return m;
}

Model Model::random(const ModelConfig& cfg, uint64_t seed, const Shard& shard) {
  Model m = allocate(cfg, shard);
  const double out_scale = 1.0 / std::sqrt(2.0 * cfg.num_layers);
  const size_t chunk = size_t(1) << 16;
  std::vector<float> whole;  // a block of a tensor is cut from the whole tensor's values
  for (const ParamSpec& s : m.layout.specs) {
    const uint64_t si = uint64_t(s.index);
    float* dst = m.params.data() + s.offset;
    if (s.shape.size() == 1) {  // norm weights start at 1, biases at 0
      const bool bias = s.kind == ParamKind::BiasQ || s.kind == ParamKind::BiasK || s.kind == ParamKind::BiasV ||
                        s.kind == ParamKind::RouterBias;
      std::fill_n(dst, s.numel(), bias ? 0.0f : 1.0f);
      continue;
    }
    const bool block = s.shape != s.full_shape;
    if (block) whole.resize(size_t(shape_numel(s.full_shape)));
    float* p = block ? whole.data() : dst;
    const bool is_out = s.kind == ParamKind::Wo || s.kind == ParamKind::Down || s.kind == ParamKind::W2 ||
                        s.kind == ParamKind::SharedDown;
    const double stdev = 0.02 * (is_out ? out_scale : 1.0);
    const size_t n = size_t(shape_numel(s.full_shape)), nchunks = (n + chunk - 1) / chunk;
    // Each chunk has its own generator so the values do not depend on the thread count.
    parallel_for(nchunks, [&](size_t c) {
      Rng rng(seed * 1000003ull + si * 7919ull + c * 104729ull + 1);
      for (size_t i = c * chunk; i < std::min(n, (c + 1) * chunk); i++) p[i] = float(stdev * rng.normal());
    });
    if (block) copy_block_from_full(s, whole.data(), dst);
  }
  return m;
}

// Converts the whole tensor `s` names (where it is stored: a tensor, or rows of a stacked one) to
// f32 in dst, applying its FP8 weight_scale when present.
static void load_whole(const SafetensorsReader& r, const ParamSpec& s, float* dst) {
  Tensor t = read_stored(r, s.stored, s.full_shape);
  SKY_CHECK(dtype_is_float(t.dtype), "{}: tensor '{}' has non-float dtype {}", r.path(), s.stored.name,
            dtype_name(t.dtype));
  const size_t numel = size_t(shape_numel(s.full_shape));
  convert_to_f32(t.dtype, t.data, dst, numel);
  bool is_fp8 = t.dtype == DType::F8_E4M3 || t.dtype == DType::F8_E5M2;
  const int64_t rows = s.full_shape[0], cols = int64_t(numel) / rows;
  const std::optional<Tensor> sc = read_stored_scale(r, s.stored, rows);
  if (!sc) {
    SKY_CHECK(!is_fp8, "{}: FP8 tensor '{}' has no '{}' beside it", r.path(), s.stored.name,
              weight_scale_name(s.stored.name));
    return;
  }
  const int64_t ns = sc->numel();
  const float* f = sc->f32();
  for (int64_t i = 0; i < rows; i++) {
    float k = f[ns == 1 ? 0 : i];
    for (int64_t j = 0; j < cols; j++) dst[i * cols + j] *= k;
  }
}

static void load_one(const SafetensorsReader& r, const ParamSpec& s, float* dst) {
  if (s.shape == s.full_shape) return load_whole(r, s, dst);
  std::vector<float> whole(size_t(shape_numel(s.full_shape)));  // a block is cut after conversion
  load_whole(r, s, whole.data());
  copy_block_from_full(s, whole.data(), dst);
}

void load_params(const std::string& dir, const ParamLayout& layout, float* out) {
  SafetensorsReader r = open_model_tensors(dir);
  parallel_for(layout.specs.size(), [&](size_t i) { load_one(r, layout.specs[i], out + layout.specs[i].offset); });
}

Model Model::load(const std::string& dir) { return load(dir, std::nullopt); }

Model Model::load(const std::string& dir, const Shard& shard) { return load(dir, std::optional<Shard>(shard)); }

Model Model::load(const std::string& dir, const std::optional<Shard>& shard) {
  std::error_code ec;
  SKY_CHECK(fs::is_directory(dir, ec) || is_gguf_file(dir),
            "model directory '{}' does not exist or is not a directory (or a GGUF file)", dir);
  Model m;
  m.cfg = ModelConfig::load_file(dir);
  m.shard = shard ? *shard : Shard::full(m.cfg);
  m.layout = ParamLayout::build(m.cfg, m.shard);
  m.params = FloatBuf(m.layout.total);
  load_params(dir, m.layout, m.params.data());
  m.bind();
  return m;
}

void Model::save(const std::string& dir, DType dtype, size_t max_shard_bytes) const {
  SKY_CHECK(shard.is_full(cfg), "cannot save a model shard ({}) as a model directory", shard.describe());
  fs::create_directories(dir);
  StoredWriter ts;  // stacked experts go back into their stacked tensors
  for (auto& s : layout.specs) ts.add(s.stored, s.shape, params.data() + s.offset);
  write_safetensors_dir(dir, ts.finish(dtype), max_shard_bytes, {{"format", "pt"}});
  write_text_atomic((fs::path(dir) / "config.json").string(), cfg.to_hf_json().dump(2) + "\n");
}

}  // namespace sky
