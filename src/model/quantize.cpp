#include "model/quantize.h"

#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"
#include "core/weight.h"
#include "model/gguf_model.h"

namespace sky {

namespace fs = std::filesystem;

static bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

std::set<std::string> quantizable_linears(const ModelConfig& c) {
  // The projections of attention, FFNs and experts, by the tensor table; routers, norms, biases, the
  // shared expert's one-row gate and the embedding stay as they are.
  std::set<std::string> names;
  for (const ParamSpec& s : ParamLayout::build(c).specs) {
    switch (s.kind) {
      case ParamKind::Wq: case ParamKind::Wk: case ParamKind::Wv: case ParamKind::Wo:
      case ParamKind::Gate: case ParamKind::Up: case ParamKind::Down:
      case ParamKind::W1: case ParamKind::W3: case ParamKind::W2:
      case ParamKind::SharedGate: case ParamKind::SharedUp: case ParamKind::SharedDown:
      case ParamKind::WqA: case ParamKind::WqB: case ParamKind::WkvA: case ParamKind::WkvB:
        names.insert(s.stored.name);  // stacked experts: the stacked tensor
        break;
      default:
        break;
    }
  }
  return names;
}

// The tensor as f32, with any existing weight_scale applied (so FP8 inputs re-quantize correctly).
static Tensor dequantized(const SafetensorsReader& r, const std::string& name) {
  Tensor t = r.get(name).to_f32();
  std::string sn = name.substr(0, name.size() - 7) + ".weight_scale";
  if (!r.has(sn)) return t;
  Tensor sc = r.get(sn).to_f32();
  // Rows of a matrix; a stacked [E, O, I] tensor has E * O rows (per-row scales run over them all).
  const int64_t rows = t.shape.empty() ? 1 : t.shape.size() >= 2 ? t.numel() / std::max<int64_t>(t.shape.back(), 1) : t.shape[0],
                cols = t.numel() / std::max<int64_t>(rows, 1);
  const int64_t ns = sc.numel();
  SKY_CHECK(ns == 1 || ns == rows, "{}: '{}' has {} values; expected 1 or {}", r.path(), sn, ns, rows);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) t.f32()[i * cols + j] *= sc.f32()[ns == 1 ? 0 : i];
  return t;
}

QuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir, const QuantizeOptions& o) {
  SKY_CHECK(o.to == "fp8" || o.to == "bf16", "--to '{}' (expected fp8 or bf16)", o.to);
  SKY_CHECK(fs::absolute(in_dir) != fs::absolute(out_dir), "--out must differ from --model ({})", in_dir);
  ModelConfig cfg = ModelConfig::load_file(in_dir);  // validates the config before any work
  SafetensorsReader r = open_model_tensors(in_dir);
  const std::set<std::string> linears = quantizable_linears(cfg);
  QuantizeReport rep;
  NamedTensors out;
  for (const std::string& name : r.names()) {
    if (ends_with(name, ".weight_scale") || ends_with(name, ".input_scale")) continue;  // rewritten below
    const TensorInfo& ti = r.info(name);
    rep.bytes_in += double(ti.nbytes);
    const bool head_fp8 = name == "lm_head.weight" && o.lm_head_fp8 && o.to == "fp8";
    if ((linears.count(name) || head_fp8) && ti.shape.size() >= 2) {
      Tensor w = dequantized(r, name);
      // A stacked [E, O, I] tensor (Granite-MoE's experts) quantizes as the matrix [E * O, I].
      const int I = int(ti.shape.back()), O = int(shape_numel(ti.shape) / std::max<int64_t>(I, 1));
      if (o.to == "bf16") {
        out.emplace_back(name, w.to(DType::BF16));
      } else {
        QWeight q = quantize_weight(w.f32(), O, I, DType::F8_E4M3, o.per_channel);
        Tensor qt = q.storage;
        qt.shape = ti.shape;
        out.emplace_back(name, qt);
        Tensor sc = q.scale_storage;
        Shape per_row = ti.shape;  // [O, 1], or [E, O, 1] for a stacked tensor
        per_row.back() = 1;
        sc.shape = o.per_channel ? per_row : Shape{};
        out.emplace_back(name.substr(0, name.size() - 7) + ".weight_scale", sc);
      }
      rep.tensors_quantized++;
    } else if (name == "lm_head.weight" && (ti.dtype == DType::F32 || ti.dtype == DType::F16)) {
      out.emplace_back(name, dequantized(r, name).to(DType::BF16));
    } else {
      out.emplace_back(name, r.has(name.substr(0, name.size() - 7) + ".weight_scale") ? dequantized(r, name) : r.get(name));
    }
  }
  SKY_CHECK(rep.tensors_quantized > 0, "{}: no linear layers found to quantize", in_dir);
  for (auto& [n, t] : out) rep.bytes_out += double(t.nbytes());
  fs::create_directories(out_dir);
  write_safetensors_dir(out_dir, out, size_t(o.max_shard_gb * (1ull << 30)), {{"format", "pt"}});
  nlohmann::json j = cfg.to_hf_json();
  if (o.to == "fp8")
    j["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"},
                                {"weight_scale", o.per_channel ? "per-channel" : "per-tensor"}};
  j["torch_dtype"] = o.to == "fp8" ? "float8_e4m3fn" : "bfloat16";
  write_text_atomic((fs::path(out_dir) / "config.json").string(), j.dump(2) + "\n");
  for (const char* extra : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    if (fs::exists(fs::path(in_dir) / extra))
      fs::copy_file(fs::path(in_dir) / extra, fs::path(out_dir) / extra, fs::copy_options::overwrite_existing);
  return rep;
}

}  // namespace sky
