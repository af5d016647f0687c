#pragma once
// Byte-level BPE vocabularies in GGUF (tokenizer.ggml.model = "gpt2"): llama.cpp names each
// pre-tokenizer (tokenizer.ggml.pre) instead of storing its regexes, so the one table below maps
// its names to the regexes they stand for, as tokenizer.json spells them. The GGUF tokenizer
// reader (io/gguf_tokenizer.cpp) builds a pre-tokenizer from a name; the exporter
// (io/gguf_export.cpp) finds the name of a tokenizer.json's regexes.
#include <cstdint>
#include <string>
#include <vector>

namespace sky {

struct BpePreTokenizer {
  const char* name;  // what the exporter writes
  // Split(Regex, Isolated) pre-tokenizers in order, then ByteLevel without its regex; empty: one
  // ByteLevel with GPT-2's regex.
  std::vector<std::string> regexes;
  bool ignore_merges;  // the BPE model's ignore_merges (llama.cpp: true for llama-bpe)
};

// By name, aliases included (default, gpt2, olmo -> gpt-2; llama3, llama-v3 -> llama-bpe);
// nullptr when unknown.
const BpePreTokenizer* bpe_pre_by_name(const std::string& name);
// The names known, for error messages.
std::string bpe_pre_names();

// A tokenizer.json byte-level BPE vocabulary as llama.cpp's "gpt2" vocabulary.
struct GgufBpeVocab {
  std::vector<std::string> tokens;  // vocab_size entries; ids nothing names are [PADi]
  std::vector<int32_t> types;       // 1 normal, 3 control (special added), 4 user-defined, 5 unused
  std::vector<std::string> merges;  // "a b"
  std::string pre;                  // tokenizer.ggml.pre
  bool add_bos = false;             // tokenizer_config.json add_bos_token, else the post-processor's template
  int unused = 0;                   // [PADi] entries written
};
// Reads `tokenizer_json` (and tokenizer_config.json beside it) for a model of `vocab_size` ids.
// A tokenizer that is not byte-level BPE (e.g. Mixtral's Metaspace with byte fallback), a
// normalizer llama.cpp does not run, or regexes no llama.cpp pre-tokenizer name stands for is a
// sky::Error naming the component or the regex.
GgufBpeVocab read_bpe_vocab(const std::string& tokenizer_json, int vocab_size);

}  // namespace sky
