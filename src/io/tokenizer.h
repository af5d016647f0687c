#pragma once
// Tokenizers: load a SentencePiece model (e.g. Skywork's tokenizer.model) or a Hugging Face
// tokenizer.json with a BPE model (Qwen2, Llama 3, DeepSeek, Mixtral...; io/hf_tokenizer.h), train a
// SentencePiece model on text files, and turn text files into the uint32 token files of
// io/token_data.h.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace sky {

class HfTokenizer;

struct TokenizerTrainOptions {
  std::string model_type = "bpe";     // "bpe" or "unigram"
  double character_coverage = 0.9995;  // rarer characters fall back to bytes (mixed CJK corpora)
  // Lines beyond this many are reservoir-sampled (seeded), so big corpora train in bounded time.
  int64_t input_sentence_size = 2'000'000;
  uint32_t seed = 1;
  int threads = 1;  // fixed rather than per-machine, so the result does not depend on the host
  bool verbose = false;  // SentencePiece's own training log
};

class Tokenizer {
 public:
  // `path` is a tokenizer.json (Hugging Face, BPE model), a SentencePiece .model, or a model
  // directory holding one of them (tokenizer.json is taken first, then tokenizer.model). A file is
  // recognized by its content: JSON is a tokenizer.json. Errors (sky::Error) name the path when it
  // is missing, unreadable, or neither kind, and a tokenizer.json component that is not supported.
  // For a tokenizer.json, bos/eos/pad come from tokenizer_config.json next to it (bos_token... as a
  // string or {"content": ...}; null: none), else from config.json there (bos_token_id...), else
  // there are none (-1).
  // A GGUF file's vocabulary (tokenizer.ggml.*, io/gguf_tokenizer.cpp) is read too.
  static Tokenizer load(const std::string& path);

  // Trains on the lines of `text_files` (blank lines and lone "%" fortune separators skipped, very
  // long lines cut into pieces) with Llama conventions: unk 0, bos 1, eos 2, no pad, byte fallback
  // (any text round-trips), identity normalization. Writes `model_path` (".model" appended when
  // missing) and returns the loaded tokenizer. Same inputs and options give the same model file.
  static Tokenizer train(const std::vector<std::string>& text_files, const std::string& model_path,
                         int vocab_size, const TokenizerTrainOptions& opt = {});

  std::vector<int32_t> encode(std::string_view text) const;  // no bos/eos added
  std::string decode(const std::vector<int32_t>& ids) const;
  // The raw bytes one id stands for: "▁" as a space, a byte-fallback piece as its byte (possibly
  // half a UTF-8 character), control ids as "". Concatenating these for a whole sequence gives
  // decode() plus the leading space the model's dummy prefix adds; StreamDecoder handles both.
  std::string decode_piece(int32_t id) const;
  const std::string& id_to_piece(int32_t id) const;
  // The score and kind of each piece, for exporting the vocabulary (GGUF). Scores are
  // SentencePiece's; a Hugging Face BPE ranks merges, not pieces, and scores every piece 0. Its
  // special added tokens are Control, <0xNN> pieces (with byte_fallback) Byte, ids no piece has Unused.
  enum class PieceType { Normal, Unknown, Control, Unused, Byte };
  float score(int32_t id) const;
  PieceType piece_type(int32_t id) const;

  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;
  int pad_id() const;  // -1 when the model has none
  bool adds_dummy_prefix() const { return dummy_prefix_; }
  // A lower bound on encode(text).size(), found without encoding (a server refuses a prompt that
  // is too long for sure before paying for its tokenization), or 0 when this tokenizer allows
  // none. Sound when normalization never merges input: no precompiled character map (identity
  // normalization) and byte fallback (unknown characters spelled in bytes, not merged into one
  // unk). Then every token covers at most max_piece_bytes() bytes of the input, so there are at
  // least bytes / max_piece_bytes() tokens; with remove_extra_whitespaces runs of spaces fold into
  // one, so spaces are not counted. Most SentencePiece models (Llama's, ours) qualify. For a
  // tokenizer.json the bound is HfTokenizer::max_piece_bytes() (normalizers and added tokens
  // accounted for); Qwen2, Llama 3, DeepSeek and Mixtral files have one.
  int64_t min_tokens(std::string_view text) const;
  int max_piece_bytes() const { return max_piece_bytes_; }  // 0: min_tokens gives no bound
  const std::string& path() const { return path_; }
  // Which implementation holds the vocabulary.
  enum class Kind { SentencePiece, HfBpe };
  Kind kind() const { return hf_ ? Kind::HfBpe : Kind::SentencePiece; }

 private:
  static Tokenizer from_processor(std::shared_ptr<sentencepiece::SentencePieceProcessor> sp, std::string path);
  static Tokenizer from_hf(std::shared_ptr<const HfTokenizer> hf);
  static Tokenizer from_gguf(const std::string& path);  // io/gguf_tokenizer.cpp
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::shared_ptr<const HfTokenizer> hf_;  // set instead of sp_ for a tokenizer.json
  std::string path_;
  bool dummy_prefix_ = false;
  int max_piece_bytes_ = 0;
  bool folds_spaces_ = false;
};

// The tokenizer file of a model directory: tokenizer.json when present (its ids are the ones the
// model's authors encoded with), else tokenizer.model, else ""; a GGUF file is its own tokenizer.
std::string find_tokenizer(const std::string& model_dir);

// Generation output one token at a time: push() returns the text that is complete so far (whole
// UTF-8 characters only), holding back a partial character until its last byte arrives.
class StreamDecoder {
 public:
  // at_start: these are the first ids of a sequence, so drop the dummy-prefix space like decode().
  explicit StreamDecoder(const Tokenizer& tok, bool at_start = true);
  std::string push(int32_t id);
  std::string flush();  // whatever is held back, even if not valid UTF-8

 private:
  const Tokenizer* tok_;
  bool strip_space_;
  std::string pending_;
};

// How a text file splits into documents.
enum class DocSeparator {
  Line,     // each non-empty line
  Blank,    // runs of lines separated by blank lines
  Percent,  // fortune files: a line holding only "%"
  File,     // the whole file
};
DocSeparator parse_doc_separator(const std::string& s);  // "line" | "blank" | "percent" | "file"

struct TokenizeOptions {
  DocSeparator separator = DocSeparator::Percent;
  bool bos = false;  // bos before each document
  bool eos = true;   // eos after each document
};

struct TokenizeStats {
  uint64_t documents = 0, tokens = 0, bytes = 0;
};

using ProgressFn = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

// Encodes each document of `text_files` (in order) and writes the ids as a token file (temp file,
// then rename). Lines inside a document are joined with "\n"; empty documents are skipped.
TokenizeStats tokenize_files(const Tokenizer& tok, const std::vector<std::string>& text_files,
                             const std::string& out_path, const TokenizeOptions& opt = {},
                             const ProgressFn& progress = {});

}  // namespace sky
