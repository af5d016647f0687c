// `skymoe export gguf`: a model directory -> one GGUF file for llama.cpp (docs/gguf.md).
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "io/gguf_export.h"
#include "io/tokenizer.h"
#include "model/gguf_arch.h"
#include "model/gguf_model.h"
#include "model/model.h"

namespace sky::cli {

namespace fs = std::filesystem;

int write_gguf(const std::string& model, const std::string& out, const std::string& type, std::string tokenizer,
               bool no_tokenizer, std::string name) {
  std::error_code ec;
  const bool gguf_in = is_gguf_file(model);
  SKY_CHECK(gguf_in || fs::is_directory(model, ec), "--model {}: no such model directory or GGUF file", model);
  SKY_CHECK(!fs::is_directory(out, ec), "--out {} is a directory; give the .gguf file to write", out);
  SKY_CHECK(!(no_tokenizer && !tokenizer.empty()), "--tokenizer and --no-tokenizer exclude each other");
  SKY_CHECK(fs::weakly_canonical(model, ec) != fs::weakly_canonical(out, ec), "--out {} is the input model", out);
  GgufExportOptions o;
  o.type = parse_gguf_file_type(type);

  std::unique_ptr<Tokenizer> tok;
  if (!no_tokenizer) {
    if (tokenizer.empty() && gguf_in) {
      // A GGUF model carries its own vocabulary, if any.
      tokenizer = find_tokenizer(model);
      SKY_CHECK(!tokenizer.empty(),
                "no tokenizer: {} has no vocabulary (tokenizer.ggml.*). Pass --tokenizer PATH (a tokenizer.json or a "
                "SentencePiece .model), or --no-tokenizer to write the weights alone",
                model);
    } else if (tokenizer.empty()) {
      // tokenizer.json first (the ids the model's authors encoded with; a byte-level BPE becomes
      // llama.cpp's "gpt2" vocabulary), then tokenizer.model (its "llama" vocabulary). For llama.cpp's
      // llama architecture (Llama 2, Mixtral, Skywork) tokenizer.model first: their tokenizer.json is
      // SentencePiece-style, which only the .model expresses exactly.
      const std::string sp = (fs::path(model) / "tokenizer.model").string();
      const std::string hf = (fs::path(model) / "tokenizer.json").string();
      const bool sp_first = gguf_arch_of(ModelConfig::load_file(model)) == "llama";
      const std::string first = sp_first ? sp : hf, second = sp_first ? hf : sp;
      tokenizer = fs::exists(first, ec) ? first : fs::exists(second, ec) ? second : "";
      SKY_CHECK(!tokenizer.empty(),
                "no tokenizer: neither {} nor {} exists. Pass --tokenizer PATH (a tokenizer.json or a SentencePiece "
                ".model), or --no-tokenizer to export the weights alone (llama.cpp cannot run such a file by itself)",
                hf, sp);
    }
    tok = std::make_unique<Tokenizer>(Tokenizer::load(tokenizer));
  }

  if (name.empty()) {
    const fs::path p = fs::path(model).lexically_normal();
    name = (gguf_in ? p.stem() : p.filename()).string();  // "moe" for moe.gguf
  }
  if (name.empty() || name == ".") name = fs::absolute(model, ec).lexically_normal().parent_path().filename().string();
  o.name = name;
  o.warn = [](const std::string& s) { fmt::print(stderr, "warning: {}\n", s); };
  // One line per tensor on a terminal; logs and pipes get the summary line only.
  if (isatty(2))
    o.progress = [](size_t i, size_t n, const std::string& t, gguf::TensorType type, const std::vector<int64_t>& ne) {
      fmt::print(stderr, "[{:>{}}/{}] {:<28} {:<5} {{{}}}\n", i + 1, fmt::formatted_size("{}", n), n, t,
                 gguf::tensor_type_name(type), fmt::join(ne, ", "));
    };

  GgufExportReport r = export_gguf(model, tok.get(), out, o);  // one layer in memory at a time
  // Tensors per type, K types first (ggml's numbering, reversed): "4 q6_K, 20 q4_K, 4 q8_0, 51 f32".
  std::vector<std::string> counts;
  for (auto it = r.type_counts.rbegin(); it != r.type_counts.rend(); ++it)
    counts.push_back(fmt::format("{} {}", it->second, gguf::tensor_type_name(it->first)));
  fmt::print("wrote {} ({}): {} tensors ({}), {:.2f} bits/weight, {} metadata keys, {} tokens, {:.1f} MiB{}\n", out,
             type, r.tensors, fmt::join(counts, ", "), r.values ? 8.0 * double(r.data_bytes) / double(r.values) : 0.0,
             r.kv, r.vocab, r.file_bytes / 1048576.0,
             r.warnings.empty() ? "" : fmt::format(", {} warning(s)", r.warnings.size()));
  return 0;
}

int cmd_export(int argc, char** argv) {
  CLI::App app{"Export a model to another format. `skymoe export gguf` writes one GGUF file in the layout of\n"
               "llama.cpp's architecture for the family (llama, qwen2moe, qwen3moe, olmoe, granitemoe, deepseek2)\n"
               "with the tokenizer."};
  app.name("skymoe export");
  app.require_subcommand(1);
  CLI::App* g = app.add_subcommand("gguf", "write a GGUF file for llama.cpp (docs/gguf.md)");
  std::string model, out, type = "f16", tokenizer, name;
  bool no_tokenizer = false;
  int threads = 0;
  g->add_option("--model", model, "input model: an HF-layout directory or a .gguf file")->required();
  g->add_option("--out", out, "output .gguf file")->required();
  g->add_option("--type", type,
                "weight matrices: f32 | f16 | q8_0 | q6_k | q4_k_m (llama.cpp's mix; norms and router stay f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "q8_0", "q6_k", "q4_k_m"}));
  g->add_option("--tokenizer", tokenizer, "a byte-level BPE tokenizer.json or a SentencePiece .model (default: "
                                          "MODEL/tokenizer.json, else MODEL/tokenizer.model)");
  g->add_flag("--no-tokenizer", no_tokenizer, "export without a vocabulary (llama.cpp needs one to run)");
  g->add_option("--name", name, "general.name (default: the model directory's name)");
  g->add_option("--threads", threads, "threads for loading (0 = all cores)");
  // CLI11 would only say "A subcommand is required" for an unknown one.
  if (argc > 1 && argv[1][0] != '-' && std::string(argv[1]) != "gguf")
    fail("unknown export format '{}' (known: gguf)", argv[1]);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  backend().set_threads(threads);
  return write_gguf(model, out, type, tokenizer, no_tokenizer, name);
}

}  // namespace sky::cli
