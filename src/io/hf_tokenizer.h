#pragma once
// Hugging Face `tokenizers` files (tokenizer.json) with a BPE model, the tokenizer of Qwen2, Llama 3,
// DeepSeek V2/V3, GPT-2 (byte-level BPE with regex pre-tokenizers) and of Mixtral and Llama 2
// (SentencePiece-style BPE: "▁" for spaces, <0xNN> byte fallback). Encoding follows the library's
// pipeline: added tokens are cut out first, the rest is normalized, pre-tokenized into pieces, and
// each piece is merged by the BPE model; the ids are the ones the library gives (tested against it).
//
// Supported components (anything else is a sky::Error naming the file and the component type):
//   normalizer     NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence (or null)
//   pre_tokenizer  ByteLevel (with or without its GPT-2 regex), Split (String or Regex pattern, all
//                  five behaviors, invert), Metaspace, Digits, Sequence (or null)
//   model          BPE: merges as "a b" strings or [a, b] pairs, unk_token, fuse_unk, byte_fallback,
//                  ignore_merges, continuing_subword_prefix, end_of_word_suffix (not dropout > 0)
//   decoder        ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence
//   post_processor read past: encode() adds no bos/eos (the callers add what they need);
//                  truncation and padding are read past too (the engine bounds lengths itself)
//   added_tokens   special, normalized, lstrip, rstrip, single_word
//
// Regexes run on PCRE2 (Oniguruma in the library), Unicode normalization on utf8proc; both follow
// the same Unicode definitions, though possibly of different Unicode versions.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer.h"

namespace sky {

class HfTokenizer {
 public:
  // Reads tokenizer.json at `path`, and next to it tokenizer_config.json (bos_token, eos_token,
  // pad_token: a string or {"content": ...}; null means none) or, when that file or key is absent,
  // config.json (bos_token_id, eos_token_id, pad_token_id; a list means its first id).
  static std::shared_ptr<const HfTokenizer> load(const std::string& path);
  // The same from text: `name` is used in errors, `dir` is where the two config files are looked for
  // ("" for nowhere).
  static std::shared_ptr<const HfTokenizer> parse(std::string_view json_text, const std::string& name,
                                                  const std::string& dir);
  // The same with bos/eos/pad given (-1: none) instead of read from files (a GGUF vocabulary).
  static std::shared_ptr<const HfTokenizer> parse_with_ids(std::string_view json_text, const std::string& name, int bos,
                                                           int eos, int pad);
  ~HfTokenizer();

  // Invalid UTF-8 in `text` is read as U+FFFD (the library only takes valid text).
  std::vector<int32_t> encode(std::string_view text) const;
  // Special tokens decode to nothing; malformed UTF-8 in the output becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes one id stands for (possibly part of a UTF-8 character), "" for a special token.
  std::string decode_piece(int32_t id) const;
  const std::string& id_to_piece(int32_t id) const;
  Tokenizer::PieceType piece_type(int32_t id) const;

  int vocab_size() const;  // model vocabulary plus added tokens: the largest id + 1
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;
  int pad_id() const;
  // Whether the decoder drops the space the encoder put before the text (Metaspace with a prepend
  // scheme, or Strip after Fuse): StreamDecoder then drops it from the first piece, as decode() does.
  bool adds_dummy_prefix() const;
  // The most bytes of input text one id can stand for (its normalized text, times what the
  // normalizers can shrink text by), so that bytes / max_piece_bytes() bounds a text's token count
  // from below before encoding it. SIZE_MAX when nothing bounds it: a Split that removes text, an
  // lstrip/rstrip added token, unknown characters dropped or fused into one <unk>.
  size_t max_piece_bytes() const;
  const std::string& path() const;

  struct Impl;

 private:
  HfTokenizer();
  std::unique_ptr<Impl> impl_;
};

}  // namespace sky
