#include <fmt/format.h>

#include <chrono>
#include <filesystem>

#include "cli/byte_progress.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/char_coverage.h"
#include "io/text_files.h"
#include "io/tokenizer.h"

namespace sky::cli {

namespace fs = std::filesystem;

int cmd_tokenize(int argc, char** argv) {
  CLI::App app{"Turn text files into a token file (flat little-endian uint32 ids, what `skymoe train --data` reads).\n"
               "Use an existing tokenizer (--tokenizer: a Hugging Face tokenizer.json with a BPE model, e.g.\n"
               "Qwen2's or Llama 3's, a SentencePiece .model such as Skywork's, or a model directory holding\n"
               "one) or train a SentencePiece model on the same inputs first (--train-tokenizer PATH.model\n"
               "--vocab-size N). Each document ends with the eos id (unless --no-eos) and may start with bos (--bos)."};
  app.name("skymoe tokenize");
  std::vector<std::string> inputs;
  std::string out, tok_path, train_path, model_type = "bpe", sep = "percent";
  int vocab = 0;
  bool bos = false, no_eos = false, verbose = false;
  int64_t max_sentences = TokenizerTrainOptions{}.input_sentence_size;
  double coverage = 0;  // 0: pick one that fits the vocabulary
  app.add_option("--input", inputs, "text files, or directories (their files, sorted; binary files and duplicate "
                                    "symlinks skipped)")->required();
  app.add_option("--out", out, "output token file")->required();
  app.add_option("--tokenizer", tok_path, "tokenizer to encode with: tokenizer.json, SentencePiece .model, or a model "
                                         "directory (tokenizer.json first)");
  app.add_option("--train-tokenizer", train_path, "train a SentencePiece model on the inputs and write it here");
  app.add_option("--vocab-size", vocab, "vocabulary size of the trained tokenizer (with --train-tokenizer)");
  app.add_option("--model-type", model_type, "bpe | unigram (with --train-tokenizer)")->capture_default_str()
      ->check(CLI::IsMember({"bpe", "unigram"}));
  app.add_option("--max-sentences", max_sentences, "tokenizer training samples at most this many lines")
      ->capture_default_str();
  app.add_option("--character-coverage", coverage, "share of characters the tokenizer gives their own piece; rarer "
                                                   "ones are spelled in bytes [default: 0.9995, lowered so the "
                                                   "characters fill at most half the vocabulary]")
      ->check(CLI::Range(kMinCoverage, 1.0));
  app.add_option("--separator", sep, "how a file splits into documents: line | blank (blank lines) | percent "
                                     "(fortune '%' lines) | file")->capture_default_str()
      ->check(CLI::IsMember({"line", "blank", "percent", "file"}));
  app.add_flag("--bos", bos, "put the bos id before each document");
  app.add_flag("--no-eos", no_eos, "no eos id after each document");
  app.add_flag("--verbose", verbose, "list the input files and the ones skipped");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  SKY_CHECK(tok_path.empty() != train_path.empty(), "give exactly one of --tokenizer (use a model) or "
                                                    "--train-tokenizer (train one)");
  SKY_CHECK(train_path.empty() || vocab > 0, "--train-tokenizer needs --vocab-size (a positive number)");
  SKY_CHECK(!train_path.empty() || vocab == 0, "--vocab-size only applies with --train-tokenizer; a loaded "
                                                "tokenizer keeps its own vocabulary");
  SKY_CHECK(max_sentences > 0, "--max-sentences must be positive, got {}", max_sentences);
  TextFileList in = expand_text_inputs(inputs, "--input");
  if (verbose) {
    for (auto& f : in.files) fmt::print(stderr, "input: {}\n", f);
    for (auto& s : in.skipped) fmt::print(stderr, "skipped: {}\n", s);
  }
  if (fs::path p = fs::path(out).parent_path(); !p.empty()) fs::create_directories(p);

  Tokenizer tok;
  if (!train_path.empty()) {
    TokenizerTrainOptions topt;
    topt.model_type = model_type;
    topt.input_sentence_size = max_sentences;
    int needed = 0;  // characters that need their own piece even at the lowest coverage
    topt.character_coverage =
        coverage > 0 ? coverage : coverage_for_vocab(in.files, std::max(1, (vocab - 259) / 2), 0.9995, &needed);
    // Characters may fill half of what the 259 byte and control pieces leave.
    SKY_CHECK(needed == 0,
              "--vocab-size {} is too small for this text: even at character coverage {} (the lowest SentencePiece "
              "accepts) {} distinct characters need a piece of their own; use --vocab-size {} or more",
              vocab, kMinCoverage, needed, 259 + 2 * needed);
    if (fs::path p = fs::path(train_path).parent_path(); !p.empty()) fs::create_directories(p);
    auto t0 = std::chrono::steady_clock::now();
    tok = Tokenizer::train(in.files, train_path, vocab, topt);
    fmt::print(stderr, "trained {} tokenizer ({} pieces, character coverage {:.4f}) on {} files in {:.1f}s: {}\n",
               model_type, tok.vocab_size(), topt.character_coverage, in.files.size(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               tok.path());
  } else {
    tok = Tokenizer::load(tok_path);
    fmt::print(stderr, "tokenizer {}: {}, {} pieces\n", tok.path(),
               tok.kind() == Tokenizer::Kind::HfBpe ? "Hugging Face BPE" : "SentencePiece", tok.vocab_size());
  }

  TokenizeOptions opt;
  opt.separator = parse_doc_separator(sep);
  opt.bos = bos;
  opt.eos = !no_eos;
  ByteProgress bar("tokenize");
  auto t0 = std::chrono::steady_clock::now();
  TokenizeStats st = tokenize_files(tok, in.files, out, opt, std::ref(bar));
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("{} files, {} documents, {} tokens from {} bytes ({:.3f} tokens/byte) in {:.1f}s -> {}\n",
             in.files.size(), st.documents, st.tokens, st.bytes, st.bytes ? double(st.tokens) / st.bytes : 0.0, secs,
             out);
  return 0;
}

}  // namespace sky::cli
