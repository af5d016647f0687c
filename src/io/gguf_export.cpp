#include "io/gguf_export.h"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <memory>

#include "core/error.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace sky {

using gguf::TensorType;

std::vector<float> permute_qk_rows(const float* w, int n_heads, int head_dim, int64_t cols) {
  SKY_CHECK(head_dim % 2 == 0, "Q/K permutation: head_dim {} is odd", head_dim);
  std::vector<float> out(size_t(n_heads) * head_dim * cols);
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; h++)
    for (int j = 0; j < half; j++)
      for (int k = 0; k < 2; k++) {
        const float* src = w + (int64_t(h) * head_dim + k * half + j) * cols;
        float* dst = out.data() + (int64_t(h) * head_dim + 2 * j + k) * cols;
        std::memcpy(dst, src, size_t(cols) * sizeof(float));
      }
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
      : m_(m), c_(m.cfg()), opt_(opt), rep_(rep) {}

  void metadata(const Tokenizer* tok) {
    const ModelConfig& c = c_;
    SKY_CHECK(!c.mlp_expert_names() && !c.stacked_experts(),
              "GGUF export of {} models (llama.cpp's {} architecture) is not supported yet; llama, Mixtral and "
              "Skywork models export as llama.cpp's llama architecture",
              c.model_type,
              c.model_type == "qwen2_moe"   ? "qwen2moe"
              : c.model_type == "qwen3_moe" ? "qwen3moe"
              : c.deepseek()                ? "deepseek2"
              : c.granite()                 ? "granitemoe"  // llama.cpp's granitemoe has the shared MLP too
                                            : "olmoe");
    // llama.cpp's llama architecture has one FFN width and, when it has experts, experts in every layer.
    SKY_CHECK(!c.has_moe() || (!c.router_sigmoid && c.norm_topk_prob && c.routed_scaling_factor == 1.0),
              "GGUF export: llama.cpp's llama architecture routes with softmax and renormalized top-k weights; this "
              "model's router (scoring {}, norm_topk_prob {}, routed_scaling_factor {}) cannot be written as it",
              c.router_sigmoid ? "sigmoid" : "softmax", c.norm_topk_prob, c.routed_scaling_factor);
    SKY_CHECK(!c.has_moe() || (!c.has_dense() && c.moe_intermediate_size == c.intermediate_size),
              "GGUF export: this model's FFN ({}) cannot be written as llama.cpp's llama architecture, which has one "
              "FFN width and experts in every layer or none",
              c.ffn_summary());
    w_.add_string("general.architecture", "llama");
    w_.add_string("general.type", "model");
    w_.add_string("general.name", opt_.name.empty() ? "skymoe" : opt_.name);
    w_.set_alignment(gguf::kDefaultAlignment);  // the default, written out so the file says so
    w_.add_u32("general.file_type", gguf_llama_ftype(opt_.type));
    w_.add_u32("general.quantization_version", 2);  // GGML_QNT_VERSION, what llama.cpp writes today
    w_.add_u32("llama.vocab_size", uint32_t(c.vocab_size));
    w_.add_u32("llama.context_length", uint32_t(c.max_position_embeddings));
    w_.add_u32("llama.embedding_length", uint32_t(c.hidden_size));
    w_.add_u32("llama.block_count", uint32_t(c.num_layers));
    // For the llama architecture this is also each expert's width (ffn_*_exps are {.., n_ff, n_expert}).
    w_.add_u32("llama.feed_forward_length", uint32_t(c.intermediate_size));
    w_.add_u32("llama.attention.head_count", uint32_t(c.num_heads));
    w_.add_u32("llama.attention.head_count_kv", uint32_t(c.num_kv_heads));
    w_.add_f32("llama.rope.freq_base", float(c.rope_theta));
    w_.add_u32("llama.rope.dimension_count", uint32_t(c.head_dim));
    w_.add_f32("llama.attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
    if (c.has_moe()) {
      w_.add_u32("llama.expert_count", uint32_t(c.num_experts));
      w_.add_u32("llama.expert_used_count", uint32_t(c.top_k));
      if (c.logits_norm) {
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
    }
    if (tok) vocabulary(*tok);
    else warn("no tokenizer: the file has no vocabulary (tokenizer.ggml.*), which llama.cpp needs to load it");
  }

  void tensors() {
    const ModelConfig& c = c_;
    const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
    using Get = std::function<const float*()>;
    auto outer = [this](float* ParamView<float>::*f) -> Get { return [this, f] { return m_.outer().*f; }; };
    matrix("token_embd.weight", outer(&ParamView<float>::embed), {H, V});
    for (int l = 0; l < c.num_layers; l++) {
      auto n = [&](const char* what) { return fmt::format("blk.{}.{}.weight", l, what); };
      auto get = [this, l](float* LayerView<float>::*f) -> Get { return [this, l, f] { return m_.layer(l).*f; }; };
      norm(n("attn_norm"), get(&LayerView<float>::attn_norm), H);
      // HF checkpoints rotate (i, i + d/2) pairs; llama.cpp's llama arch rotates (2i, 2i + 1).
      // Reordering Q and K rows per head makes the two agree (convert_hf_to_gguf.py's permute).
      add(n("attn_q"), matrix_type_for(n("attn_q"), H), {H, c.q_dim()},
          [this, l] { return permute_qk_rows(m_.layer(l).wq, c_.num_heads, c_.head_dim, c_.hidden_size); });
      add(n("attn_k"), matrix_type_for(n("attn_k"), H), {H, c.kv_dim()},
          [this, l] { return permute_qk_rows(m_.layer(l).wk, c_.num_kv_heads, c_.head_dim, c_.hidden_size); });
      matrix(n("attn_v"), get(&LayerView<float>::wv), {H, c.kv_dim()});
      matrix(n("attn_output"), get(&LayerView<float>::wo), {c.q_dim(), H});
      norm(n("ffn_norm"), get(&LayerView<float>::ffn_norm), H);
      if (c.layer_is_moe(l)) {
        // llama.cpp keeps the router f32 (convert_hf_to_gguf.py forces FFN_GATE_INP to F32).
        raw(n("ffn_gate_inp"), TensorType::F32, get(&LayerView<float>::router), {H, E});
        // Experts stacked [E, rows, cols]; skymoe already stores each layer's experts contiguously
        // in exactly that order (w1 [E, I, H], w3 [E, I, H], w2 [E, H, I]).
        matrix(n("ffn_gate_exps"), get(&LayerView<float>::w1), {H, I, E});
        matrix(n("ffn_up_exps"), get(&LayerView<float>::w3), {H, I, E});
        matrix(n("ffn_down_exps"), get(&LayerView<float>::w2), {I, H, E});
      } else {
        matrix(n("ffn_gate"), get(&LayerView<float>::w_gate), {H, I});
        matrix(n("ffn_up"), get(&LayerView<float>::w_up), {H, I});
        matrix(n("ffn_down"), get(&LayerView<float>::w_down), {I, H});
      }
    }
    norm("output_norm.weight", outer(&ParamView<float>::final_norm), H);
    // Tied embeddings: no output.weight; llama.cpp then uses token_embd for the head.
    if (!c.tie_word_embeddings) matrix("output.weight", outer(&ParamView<float>::lm_head), {H, V});
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
    // bos/eos from config.json, the ids skymoe itself prepends and stops at; the tokenizer's own
    // should agree.
    auto special = [&](const char* key, const char* what, int cfg_id, int tok_id) {
      SKY_CHECK(cfg_id >= 0 && cfg_id < V, "config {}_token_id {} is outside the vocabulary [0, {})", what, cfg_id, V);
      if (tok_id != cfg_id)
        warn(fmt::format("config.json {}_token_id is {} but tokenizer {} says {}; writing {}", what, cfg_id, tok.path(),
                         tok_id, cfg_id));
      w_.add_u32(key, uint32_t(cfg_id));
    };
    special("tokenizer.ggml.bos_token_id", "bos", c_.bos_token_id, tok.bos_id());
    special("tokenizer.ggml.eos_token_id", "eos", c_.eos_token_id, tok.eos_id());
    if (tok.unk_id() >= 0) w_.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(tok.unk_id()));
    if (tok.pad_id() >= 0) w_.add_u32("tokenizer.ggml.padding_token_id", uint32_t(tok.pad_id()));
    // Llama convention, and what `skymoe generate` does with a text prompt.
    w_.add_bool("tokenizer.ggml.add_bos_token", true);
    w_.add_bool("tokenizer.ggml.add_eos_token", false);
    w_.add_bool("tokenizer.ggml.add_space_prefix", tok.adds_dummy_prefix());
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

  void matrix(const std::string& name, std::function<const float*()> p, std::vector<int64_t> ne) {
    const TensorType t = matrix_type_for(name, ne[0]);  // before ne is moved from
    raw(name, t, std::move(p), std::move(ne));
  }
  // llama.cpp's kernels take norms in f32 only.
  void norm(const std::string& name, std::function<const float*()> p, int64_t n) {
    raw(name, TensorType::F32, std::move(p), {n});
  }

  ModelParts& m_;
  const ModelConfig& c_;
  const GgufExportOptions& opt_;
  GgufExportReport& rep_;
  gguf::Writer w_;
  std::map<std::pair<TensorType, TensorType>, std::vector<std::string>> fallback_;  // (written, wanted) -> names
};

}  // namespace

static GgufExportReport run_export(ModelParts& parts, const Tokenizer* tok, const std::string& out_path,
                                   const GgufExportOptions& opt) {
  // llama.cpp reads a SentencePiece vocabulary from scores ("llama"); a Hugging Face BPE needs its
  // merges and a pre-tokenizer name llama.cpp knows ("gpt2" + tokenizer.ggml.pre), not written yet.
  SKY_CHECK(!tok || tok->kind() == Tokenizer::Kind::SentencePiece,
            "GGUF export: tokenizer {} is a Hugging Face tokenizer.json BPE; writing its vocabulary (merges and "
            "llama.cpp's pre-tokenizer name) is not supported yet. Pass --tokenizer a SentencePiece .model, or "
            "--no-tokenizer to export the weights alone",
            tok->path());
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
