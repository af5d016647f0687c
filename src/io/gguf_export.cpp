#include "io/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "core/error.h"
#include "io/chat_template.h"
#include "io/gguf_vocab.h"
#include "io/tokenizer.h"
#include "model/gguf_arch.h"
#include "model/model.h"

namespace sky {

using gguf::TensorType;
namespace fs = std::filesystem;

std::vector<float> permute_qk_rows(const float* w, int n_heads, int head_dim, int64_t cols) {
  SKY_CHECK(head_dim % 2 == 0, "Q/K permutation: head_dim {} is odd", head_dim);
  std::vector<float> out(size_t(n_heads) * head_dim * cols);
  reorder_rope_rows(w, out.data(), RopeRows{n_heads, head_dim, 0, head_dim}, size_t(cols) * sizeof(float), true);
  return out;
}

namespace {

// gguf-py's TokenType, the values llama.cpp's SentencePiece vocab expects in token_type.
int32_t token_type(Tokenizer::PieceType t) {
  switch (t) {
    case Tokenizer::PieceType::Normal: return 1;
    case Tokenizer::PieceType::Unknown: return 2;
    case Tokenizer::PieceType::Control: return 3;
    case Tokenizer::PieceType::Unused: return 5;
    case Tokenizer::PieceType::Byte: return 6;
  }
  return 1;
}
constexpr int32_t kTokenUnused = 5;

// The model's tensors, from a model in memory or read from a directory one part at a time (part =
// a layer, or -1 for the embedding, final norm and LM head). A tensor's bytes are produced while the
// file is written, in file order, so at most one part is held.
class ModelParts {
 public:
  explicit ModelParts(const Model& m) : whole_(&m), cfg_(m.cfg) {}
  explicit ModelParts(std::string dir) : dir_(std::move(dir)), cfg_(ModelConfig::load_file(dir_)) {}
  const ModelConfig& cfg() const { return cfg_; }
  const ParamView<float>& outer() { return load(-1).w; }
  const LayerView<float>& layer(int l) {
    const Model& m = load(l);
    return m.w.layers[size_t(l - m.shard.layer_begin)];
  }

 private:
  const Model& load(int part) {
    if (whole_) return *whole_;
    if (!held_ || part != part_) {
      Shard s = Shard::full(cfg_);
      s.layer_begin = part < 0 ? 0 : part;
      s.layer_end = part < 0 ? 0 : part + 1;
      s.embed = s.head = part < 0;
      held_.reset();  // free the previous part first
      held_ = std::make_unique<Model>(Model::load(dir_, s));
      part_ = part;
    }
    return *held_;
  }
  const Model* whole_ = nullptr;
  std::string dir_;
  ModelConfig cfg_;
  std::unique_ptr<Model> held_;
  int part_ = -2;
};

class Exporter {
 public:
  Exporter(ModelParts& m, const GgufExportOptions& opt, GgufExportReport& rep)
      : m_(m), c_(m.cfg()), arch_(gguf_arch_of(c_)), opt_(opt), rep_(rep) {}

  void metadata(const Tokenizer* tok) {
    const ModelConfig& c = c_;
    refuse_inexpressible();
    w_.add_string("general.architecture", arch_);
    w_.add_string("general.type", "model");
    w_.add_string("general.name", opt_.name.empty() ? "skymoe" : opt_.name);
    w_.set_alignment(gguf::kDefaultAlignment);  // the default, written out so the file says so
    w_.add_u32("general.file_type", gguf_llama_ftype(opt_.type));
    w_.add_u32("general.quantization_version", 2);  // GGML_QNT_VERSION, what llama.cpp writes today
    namespace k = gguf_key;
    const bool mla = arch_ == "deepseek2";
    w_.add_u32(key(k::kVocabSize), uint32_t(c.vocab_size));
    w_.add_u32(key(k::kContextLength), uint32_t(c.max_position_embeddings));
    w_.add_u32(key(k::kEmbeddingLength), uint32_t(c.hidden_size));
    w_.add_u32(key(k::kBlockCount), uint32_t(c.num_layers));
    // llama, olmoe and granitemoe read their experts' width from feed_forward_length (their
    // ffn_*_exps are {.., n_ff, n_expert}); the others have a dense width here and the experts' apart.
    const bool ff_is_experts = arch_ == "olmoe" || arch_ == "granitemoe";
    w_.add_u32(key(k::kFeedForwardLength), uint32_t(ff_is_experts ? c.moe_intermediate_size : c.intermediate_size));
    w_.add_u32(key(k::kHeadCount), uint32_t(c.num_heads));
    // deepseek2 runs latent attention as one shared key/value "head" (MQA over the latent).
    w_.add_u32(key(k::kHeadCountKv), uint32_t(mla ? 1 : c.num_kv_heads));
    w_.add_f32(key(k::kRopeFreqBase), float(c.rope_theta));
    w_.add_u32(key(k::kRopeDimensionCount), uint32_t(c.rope_dim()));
    w_.add_f32(key(k::kRmsEps), float(c.rms_norm_eps));
    if (c.has_moe()) {
      w_.add_u32(key(k::kExpertCount), uint32_t(c.num_experts));
      w_.add_u32(key(k::kExpertUsedCount), uint32_t(c.top_k));
    }
    if (arch_ != "llama") family_metadata();
    if (c.has_moe() && c.logits_norm) {
      // Namespaced record of what llama.cpp will not do (GGUF asks community keys to carry a prefix).
      w_.add_bool("skymoe.moe.logits_norm", true);
      w_.add_f32("skymoe.moe.gate_norm_std", float(c.gate_norm_std));
      warn(fmt::format(
          "this model uses gating logit normalization (moe_use_logits_norm, lambda={}), which GGUF and llama.cpp "
          "cannot express: llama.cpp routes with a plain softmax of the router logits. The normalization rescales "
          "each token's logits by lambda/std (plus a shift), so the chosen top-{} experts are the same, but their "
          "renormalized weights differ and outputs will not match skymoe's (docs/gguf.md)",
          c.gate_norm_std, c.top_k));
    }
    for (const std::string& d : llamacpp_differences())
      warn(fmt::format("llama.cpp's {} architecture will not run this model as skymoe does: {} (skymoe reads the file "
                       "back exactly; docs/gguf.md)",
                       arch_, d));
    if (tok && tok->kind() == Tokenizer::Kind::HfBpe) bpe_vocabulary(*tok);
    else if (tok) vocabulary(*tok);
    else warn("no tokenizer: the file has no vocabulary (tokenizer.ggml.*), which llama.cpp needs to load it");
  }

  // Every parameter in ParamLayout order (so a llama file keeps its tensor order), under its GGUF
  // name (model/gguf_arch.h); an expert kind's first expert stands for the merged tensor.
  void tensors() {
    const ModelConfig& c = c_;
    const ParamLayout layout = ParamLayout::build(c);
    std::set<std::string> done;
    for (const ParamSpec& s : layout.specs) {
      const ParamKind kind = s.kind;
      const int l = s.layer;
      if (kind == ParamKind::WkvB) {
        kv_b(l);
        continue;
      }
      const std::string name = gguf_tensor_name(kind, l);
      if (!done.insert(name).second) continue;  // another expert of a merged tensor
      std::vector<int64_t> ne(s.shape.rbegin(), s.shape.rend());
      if (s.is_expert()) ne.push_back(c.num_experts);  // stacked [E, rows, cols] on a new outer axis
      if (kind == ParamKind::SharedRouter) ne = {c.hidden_size};  // llama.cpp's qwen2moe has it {n_embd}
      Get get = [this, kind, l] { return l < 0 ? outer_field(kind) : layer_field(m_.layer(l), kind); };
      // Norms, biases and the router stay f32: llama.cpp's kernels take 1-D tensors in f32 only, and
      // convert_hf_to_gguf.py keeps ffn_gate_inp f32.
      const TensorType t = ne.size() == 1 || kind == ParamKind::Router ? TensorType::F32 : matrix_type_for(name, ne[0]);
      const RopeRows rr = gguf_rope_rows(c, kind);
      if (!rr.any()) {
        raw(name, t, std::move(get), std::move(ne));
        continue;
      }
      // llama.cpp rotates adjacent pairs where the checkpoint rotates halves: reorder those rows.
      const int64_t cols = ne[0];
      add(name, t, std::move(ne), [get, rr, cols] {
        std::vector<float> out(size_t(rr.groups * rr.group_rows * cols));
        reorder_rope_rows(get(), out.data(), rr, size_t(cols) * sizeof(float), true);
        return out;
      });
    }
    for (auto& [types, names] : fallback_)
      warn(fmt::format("{} tensor(s) have rows whose length is not a multiple of {} and are written as {} instead of "
                       "{}, as llama.cpp falls back (e.g. {})",
                       names.size(), block_values(types.second), block_type_name(types.first),
                       block_type_name(types.second), names.front()));
  }

  void write(const std::string& path) {
    const size_t n = w_.tensors().size();
    rep_.file_bytes = w_.write(path, [&](size_t i, const gguf::Writer::TensorDecl& t) {
      if (opt_.progress) opt_.progress(i, n, t.name, t.type, t.ne);
    });
    rep_.tensors = n;
    rep_.kv = w_.kv_count();
    for (auto& t : w_.tensors()) {
      if (t.type == TensorType::F32) rep_.count_f32++;
      if (t.type == TensorType::F16) rep_.count_f16++;
      if (t.type == TensorType::Q8_0) rep_.count_q8_0++;
      rep_.type_counts[t.type]++;
      uint64_t n = 1;
      for (int64_t d : t.ne) n *= uint64_t(d);
      rep_.values += n;
      rep_.data_bytes += gguf::tensor_nbytes(t.type, t.ne);
    }
  }

 private:
  using Get = std::function<const float*()>;
  std::string key(const char* k) const { return arch_ + "." + k; }

  // What GGUF cannot say for this model, so that neither llama.cpp nor skymoe could read it back.
  void refuse_inexpressible() const {
    const ModelConfig& c = c_;
    if (arch_ == "llama") {
      // llama.cpp's llama architecture has one FFN width and, when it has experts, experts in every layer.
      SKY_CHECK(!c.has_moe() || (!c.router_sigmoid && c.norm_topk_prob && c.routed_scaling_factor == 1.0),
                "GGUF export: llama.cpp's llama architecture routes with softmax and renormalized top-k weights; this "
                "model's router (scoring {}, norm_topk_prob {}, routed_scaling_factor {}) cannot be written as it",
                c.router_sigmoid ? "sigmoid" : "softmax", c.norm_topk_prob, c.routed_scaling_factor);
      SKY_CHECK(!c.has_moe() || (!c.has_dense() && c.moe_intermediate_size == c.intermediate_size),
                "GGUF export: this model's FFN ({}) cannot be written as llama.cpp's llama architecture, which has "
                "one FFN width and experts in every layer or none",
                c.ffn_summary());
    }
    if (arch_ == "olmoe" || arch_ == "granitemoe")
      SKY_CHECK(!c.has_dense(), "GGUF export: llama.cpp's {} architecture has experts in every layer and one FFN "
                "width (feed_forward_length); this model's FFN ({}) cannot be written as it",
                arch_, c.ffn_summary());
    if (arch_ == "deepseek2") {
      SKY_CHECK(c.mla(), "GGUF export: llama.cpp's deepseek2 architecture needs latent attention (kv_lora_rank > 0)");
      SKY_CHECK(c.shared_expert_size % std::max(c.moe_intermediate_size, 1) == 0,
                "GGUF export: the shared experts' width {} is not a multiple of the experts' width {} "
                "(deepseek2.expert_shared_count is a count of experts)",
                c.shared_expert_size, c.moe_intermediate_size);
      SKY_CHECK(!c.rope_scaling.yarn || c.rope_scaling.truncate,
                "GGUF export: rope_scaling truncate false cannot be written: llama.cpp's YaRN rounds the correction "
                "range to whole dimensions (truncate true)");
    }
  }

  // The keys beyond the ones every architecture has, as llama.cpp's loader for the architecture
  // reads them (src/models/<arch>.cpp) and convert_hf_to_gguf.py writes them.
  void family_metadata() {
    const ModelConfig& c = c_;
    namespace k = gguf_key;
    if (arch_ == "qwen3moe") {  // head_dim apart from hidden / heads
      w_.add_u32(key(k::kKeyLength), uint32_t(c.head_dim));
      w_.add_u32(key(k::kValueLength), uint32_t(c.head_dim));
    }
    if (c.has_moe() && (arch_ == "qwen2moe" || arch_ == "qwen3moe" || arch_ == "deepseek2"))
      w_.add_u32(key(k::kExpertFeedForwardLength), uint32_t(c.moe_intermediate_size));
    if (c.shared_expert_size > 0 && (arch_ == "qwen2moe" || arch_ == "granitemoe"))
      w_.add_u32(key(k::kExpertSharedFeedForwardLength), uint32_t(c.shared_expert_size));
    if (c.has_moe()) {
      // Written for every family so skymoe reads the routing back exactly; llama.cpp's qwen2moe,
      // qwen3moe, olmoe and granitemoe fix their own (llamacpp_differences says where that differs).
      w_.add_bool(key(k::kExpertWeightsNorm), c.norm_topk_prob);
      w_.add_u32(key(k::kExpertGatingFunc), c.router_sigmoid ? 2 : 1);
      if (c.routed_scaling_factor != 1.0 || arch_ == "deepseek2")
        w_.add_f32(key(k::kExpertWeightsScale), float(c.routed_scaling_factor));
    }
    if (arch_ == "granitemoe") {
      w_.add_f32(key(k::kAttentionScale), float(c.attention_scale()));
      w_.add_f32(key(k::kEmbeddingScale), float(c.embedding_multiplier));
      w_.add_f32(key(k::kResidualScale), float(c.residual_multiplier));
      w_.add_f32(key(k::kLogitScale), float(c.logits_scaling));
    }
    if (arch_ == "deepseek2") {
      w_.add_u32(key(k::kLeadingDenseBlockCount), uint32_t(c.has_moe() ? c.first_dense_layers : c.num_layers));
      // 0 without a q latent (V2-Lite): llama.cpp requires the key unless it guesses "lite" from
      // the layer count, and 0 selects attn_q.
      w_.add_u32(key(k::kQLoraRank), uint32_t(c.q_lora_rank));
      w_.add_u32(key(k::kKvLoraRank), uint32_t(c.kv_lora_rank));
      // Keys and values as llama.cpp's MLA sees them (the latent and rope key; the latent), and the
      // per-head sizes after kv_b (the _mla keys): convert_hf_to_gguf.py's DeepseekV2Model.
      w_.add_u32(key(k::kKeyLength), uint32_t(c.kv_lora_rank + c.qk_rope_dim));
      w_.add_u32(key(k::kValueLength), uint32_t(c.kv_lora_rank));
      w_.add_u32(key(k::kKeyLengthMla), uint32_t(c.head_dim));
      w_.add_u32(key(k::kValueLengthMla), uint32_t(c.v_head_dim));
      if (c.has_moe()) {
        w_.add_u32(key(k::kExpertSharedCount), uint32_t(c.shared_expert_size / c.moe_intermediate_size));
        if (c.n_group > 1) {
          w_.add_u32(key(k::kExpertGroupCount), uint32_t(c.n_group));
          w_.add_u32(key(k::kExpertGroupUsedCount), uint32_t(c.topk_group));
        }
        // llama.cpp ranks groups by the sum of their two best scores (V3's noaux_tc); V2's
        // group_limited_greedy (the best single score) is recorded for skymoe.
        if (c.topk_method == "group_limited_greedy" && c.n_group > 1)
          w_.add_string("skymoe.moe.topk_method", c.topk_method);
      }
      if (c.rope_scaling.yarn) {
        const RopeScaling& y = c.rope_scaling;
        const YarnGguf g = yarn_to_gguf(y);
        w_.add_string(key(k::kRopeScalingType), "yarn");
        w_.add_f32(key(k::kRopeScalingFactor), float(y.factor));
        w_.add_u32(key(k::kRopeScalingOrigCtx),
                   uint32_t(y.original_max_position > 0 ? y.original_max_position : c.max_position_embeddings));
        w_.add_f32(key(k::kRopeYarnBetaFast), float(y.beta_fast));
        w_.add_f32(key(k::kRopeYarnBetaSlow), float(y.beta_slow));
        // llama.cpp divides the stored multiplier by 0.1 ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]).
        if (g.log_mul != 0) w_.add_f32(key(k::kRopeYarnLogMul), float(0.1 * g.log_mul));
        if (g.attn_factor != 1.0) w_.add_f32(key(k::kRopeScalingAttnFactor), float(g.attn_factor));
      }
    }
  }

  // Where llama.cpp's loader or graph for the architecture fixes what this model has otherwise:
  // the file still says it (skymoe reads it back exactly), llama.cpp will not run it the same.
  std::vector<std::string> llamacpp_differences() const {
    const ModelConfig& c = c_;
    std::vector<std::string> d;
    if (arch_ == "llama" || !c.has_moe()) return d;
    if (arch_ == "deepseek2") {
      for (int l = 0; l < c.num_layers; l++)
        if (c.layer_is_moe(l) != (l >= c.first_dense_layers)) {
          d.push_back(fmt::format("its dense layers ({}) are not the leading {} (leading_dense_block_count)",
                                  c.ffn_summary(), c.first_dense_layers));
          break;
        }
      if (c.topk_method == "group_limited_greedy" && c.n_group > 1)
        d.push_back("llama.cpp ranks expert groups by the sum of their two best scores, DeepSeek-V2's "
                    "group_limited_greedy by the best one");
      return d;
    }
    if (c.has_dense()) d.push_back(fmt::format("it needs a router in every layer; this model has {}", c.ffn_summary()));
    const bool fixed_norm = arch_ == "qwen3moe" || arch_ == "granitemoe";
    if (c.norm_topk_prob != fixed_norm)
      d.push_back(fmt::format("it {} the top-k weights; this model {}", fixed_norm ? "renormalizes" : "does not renormalize",
                              c.norm_topk_prob ? "does" : "does not"));
    if (c.router_sigmoid) d.push_back("it scores experts with softmax; this model with sigmoid");
    if (arch_ == "qwen2moe" && c.shared_expert_size == 0) d.push_back("it needs a shared expert; this model has none");
    // llama.cpp's olmoe loads attn_k_norm as {n_embd}: OLMoE without grouped-query attention.
    if (arch_ == "olmoe" && c.kv_dim() != c.hidden_size)
      d.push_back(fmt::format("it needs the keys as wide as the hidden size (attn_k_norm {{n_embd}}); this model's are {} "
                              "wide (grouped-query attention)",
                              c.kv_dim()));
    return d;
  }

  const float* outer_field(ParamKind kind) {
    const ParamView<float>& v = m_.outer();
    return kind == ParamKind::Embed ? v.embed : kind == ParamKind::FinalNorm ? v.final_norm : v.lm_head;
  }

  static const float* layer_field(const LayerView<float>& v, ParamKind kind) {
    using K = ParamKind;
    switch (kind) {
      case K::AttnNorm: return v.attn_norm;
      case K::Wq: return v.wq;
      case K::Wk: return v.wk;
      case K::Wv: return v.wv;
      case K::Wo: return v.wo;
      case K::FfnNorm: return v.ffn_norm;
      case K::Gate: return v.w_gate;
      case K::Up: return v.w_up;
      case K::Down: return v.w_down;
      case K::Router: return v.router;
      case K::W1: return v.w1;
      case K::W3: return v.w3;
      case K::W2: return v.w2;
      case K::BiasQ: return v.bq;
      case K::BiasK: return v.bk;
      case K::BiasV: return v.bv;
      case K::QNorm: return v.q_norm;
      case K::KNorm: return v.k_norm;
      case K::SharedGate: return v.sh_gate;
      case K::SharedUp: return v.sh_up;
      case K::SharedDown: return v.sh_down;
      case K::SharedRouter: return v.sh_router;
      case K::WqA: return v.wq_a;
      case K::QANorm: return v.q_a_norm;
      case K::WqB: return v.wq_b;
      case K::WkvA: return v.wkv_a;
      case K::KvANorm: return v.kv_a_norm;
      case K::WkvB: return v.wkv_b;
      case K::RouterBias: return v.router_bias;
      default: break;
    }
    fail("GGUF export: parameter kind {} is not a layer tensor", int(kind));
  }

  // DeepSeek's kv_b_proj as llama.cpp's attn_k_b and attn_v_b (model/gguf_arch.h split_kv_b).
  void kv_b(int l) {
    const ModelConfig& c = c_;
    const int64_t nope = c.qk_nope_dim, v = c.v_head_dim, r = c.kv_lora_rank, nh = c.num_heads;
    auto part = [this, l, nope, v, r, nh](bool keys) {
      return [this, l, nope, v, r, nh, keys] {
        std::vector<float> k_b(size_t(nh * r * nope)), v_b(size_t(nh * v * r));
        split_kv_b(c_, m_.layer(l).wkv_b, k_b.data(), v_b.data());
        return keys ? k_b : v_b;
      };
    };
    const std::string kn = gguf_k_b_name(l), vn = gguf_v_b_name(l);
    add(kn, matrix_type_for(kn, nope), {nope, r, nh}, part(true));
    add(vn, matrix_type_for(vn, r), {r, v, nh}, part(false));
  }

  void warn(const std::string& s) {
    rep_.warnings.push_back(s);
    if (opt_.warn) opt_.warn(s);
  }

  void vocabulary(const Tokenizer& tok) {
    const int V = c_.vocab_size, n = tok.vocab_size();
    SKY_CHECK(n <= V, "tokenizer {} has {} tokens but the model's vocab_size is {}", tok.path(), n, V);
    std::vector<std::string> pieces(static_cast<size_t>(V));
    std::vector<float> scores(static_cast<size_t>(V));
    std::vector<int32_t> types(static_cast<size_t>(V));
    for (int i = 0; i < V; i++) {
      if (i < n) {
        pieces[i] = tok.id_to_piece(i);
        scores[i] = tok.score(i);
        types[i] = token_type(tok.piece_type(i));
      } else {
        // Embedding rows beyond the tokenizer, named and typed as convert_hf_to_gguf.py pads them.
        pieces[i] = fmt::format("[PAD{}]", i);
        scores[i] = -1000.0f;
        types[i] = kTokenUnused;
      }
    }
    if (n < V)
      warn(fmt::format("tokenizer {} has {} tokens, the model {}: ids {}..{} are written as unused [PADi] tokens",
                       tok.path(), n, V, n, V - 1));
    rep_.vocab = V;
    w_.add_string("tokenizer.ggml.model", "llama");  // SentencePiece, Llama style
    w_.add_string("tokenizer.ggml.pre", "default");
    w_.add_string_array("tokenizer.ggml.tokens", pieces);
    w_.add_f32_array("tokenizer.ggml.scores", scores);
    w_.add_i32_array("tokenizer.ggml.token_type", types);
    special_ids(tok);
    if (tok.unk_id() >= 0) w_.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(tok.unk_id()));
    if (tok.pad_id() >= 0) w_.add_u32("tokenizer.ggml.padding_token_id", uint32_t(tok.pad_id()));
    // Llama convention, and what `skymoe generate` does with a text prompt.
    w_.add_bool("tokenizer.ggml.add_bos_token", true);
    w_.add_bool("tokenizer.ggml.add_eos_token", false);
    w_.add_bool("tokenizer.ggml.add_space_prefix", tok.adds_dummy_prefix());
  }

  // bos/eos from config.json, the ids skymoe itself prepends and stops at; the tokenizer's own
  // should agree.
  void special_ids(const Tokenizer& tok) {
    const int V = c_.vocab_size;
    auto special = [&](const char* key, const char* what, int cfg_id, int tok_id) {
      SKY_CHECK(cfg_id >= 0 && cfg_id < V, "config {}_token_id {} is outside the vocabulary [0, {})", what, cfg_id, V);
      if (tok_id != cfg_id && tok_id >= 0)
        warn(fmt::format("config.json {}_token_id is {} but tokenizer {} says {}; writing {}", what, cfg_id, tok.path(),
                         tok_id, cfg_id));
      w_.add_u32(key, uint32_t(cfg_id));
    };
    special("tokenizer.ggml.bos_token_id", "bos", c_.bos_token_id, tok.bos_id());
    special("tokenizer.ggml.eos_token_id", "eos", c_.eos_token_id, tok.eos_id());
  }

  // A tokenizer.json byte-level BPE as llama.cpp's "gpt2" vocabulary (io/gguf_vocab.h): tokens
  // with their types, merges, the pre-tokenizer's llama.cpp name, and the chat template.
  void bpe_vocabulary(const Tokenizer& tok) {
    const int V = c_.vocab_size, n = tok.vocab_size();
    SKY_CHECK(n <= V, "tokenizer {} has {} tokens but the model's vocab_size is {}", tok.path(), n, V);
    const GgufBpeVocab b = read_bpe_vocab(tok.path(), V);
    if (b.unused > 0)
      warn(fmt::format("tokenizer {} names {} of the model's {} ids; the others are written as unused [PADi] tokens",
                       tok.path(), V - b.unused, V));
    rep_.vocab = V;
    w_.add_string("tokenizer.ggml.model", "gpt2");
    w_.add_string("tokenizer.ggml.pre", b.pre);
    w_.add_string_array("tokenizer.ggml.tokens", b.tokens);
    w_.add_i32_array("tokenizer.ggml.token_type", b.types);
    w_.add_string_array("tokenizer.ggml.merges", b.merges);
    special_ids(tok);
    if (tok.unk_id() >= 0) w_.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(tok.unk_id()));
    if (tok.pad_id() >= 0) w_.add_u32("tokenizer.ggml.padding_token_id", uint32_t(tok.pad_id()));
    w_.add_bool("tokenizer.ggml.add_bos_token", b.add_bos);
    w_.add_bool("tokenizer.ggml.add_eos_token", false);
    const std::string dir = fs::path(tok.path()).parent_path().string();
    if (std::optional<ChatTemplate> t = ChatTemplate::from_model_dir(dir.empty() ? "." : dir))
      w_.add_string("tokenizer.chat_template", t->source());
  }

  // The type of a weight matrix with rows of `row` values: the file type's mix (io/gguf_quant_mix),
  // with its fallbacks for rows the chosen blocks do not divide collected for one warning per kind.
  TensorType matrix_type_for(const std::string& name, int64_t row) {
    int layer = -1;
    if (name.starts_with("blk.")) layer = std::stoi(name.substr(4));
    const GgufMixModel mm{c_.num_layers, c_.has_moe() ? c_.num_experts : 0, c_.tie_word_embeddings};
    const GgufTensorChoice ch = gguf_tensor_type(opt_.type, name, layer, row, mm);
    if (ch.fell_back()) fallback_[{ch.type, ch.wanted}].push_back(name);
    return ch.type;
  }

  void add(const std::string& name, TensorType t, std::vector<int64_t> ne, std::function<std::vector<float>()> src) {
    w_.add_tensor(name, t, ne, [t, src = std::move(src)] {
      std::vector<float> x = src();
      return gguf::encode(t, x.data(), int64_t(x.size()));
    });
  }

  // A tensor straight from the model's buffer (fetched when written), `ne` innermost first.
  void raw(const std::string& name, TensorType t, std::function<const float*()> p, std::vector<int64_t> ne) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    w_.add_tensor(name, t, std::move(ne), [t, p = std::move(p), n] { return gguf::encode(t, p(), n); });
  }

  ModelParts& m_;
  const ModelConfig& c_;
  const std::string arch_;  // llama.cpp's general.architecture
  const GgufExportOptions& opt_;
  GgufExportReport& rep_;
  gguf::Writer w_;
  std::map<std::pair<TensorType, TensorType>, std::vector<std::string>> fallback_;  // (written, wanted) -> names
};

}  // namespace

static GgufExportReport run_export(ModelParts& parts, const Tokenizer* tok, const std::string& out_path,
                                   const GgufExportOptions& opt) {
  GgufExportReport rep;
  Exporter ex(parts, opt, rep);
  ex.metadata(tok);
  ex.tensors();
  ex.write(out_path);
  return rep;
}

GgufExportReport export_gguf(const Model& m, const Tokenizer* tok, const std::string& out_path,
                             const GgufExportOptions& opt) {
  ModelParts parts(m);
  return run_export(parts, tok, out_path, opt);
}

GgufExportReport export_gguf(const std::string& model_dir, const Tokenizer* tok, const std::string& out_path,
                             const GgufExportOptions& opt) {
  ModelParts parts(model_dir);
  return run_export(parts, tok, out_path, opt);
}

}  // namespace sky
