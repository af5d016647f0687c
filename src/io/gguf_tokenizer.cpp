// The vocabulary of a GGUF file (tokenizer.ggml.*) as a Tokenizer.
//   "llama": SentencePiece-style (pieces, scores, token types, "▁" for spaces, <0xNN> byte pieces):
//            built as a SentencePiece BPE model proto and run by the SentencePiece library, which is
//            the algorithm llama.cpp's SPM tokenizer reproduces. Normalization is identity, spaces
//            are kept as they are (llama.cpp folds none), a space is prefixed unless
//            tokenizer.ggml.add_space_prefix is false.
//   "gpt2":  byte-level BPE (tokens, merges, tokenizer.ggml.pre naming the pre-tokenizer regex):
//            built as a tokenizer.json and run by HfTokenizer (the names: io/gguf_vocab.h). Control (3) and user-defined (4)
//            tokens are added tokens, matched before the BPE.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/gguf_vocab.h"
#include "io/hf_tokenizer.h"
#include "io/tokenizer.h"

#include <sentencepiece_processor.h>

namespace sky {

namespace {

// Protobuf wire format, just what a SentencePiece ModelProto needs.
void put_varint(std::string& b, uint64_t v) {
  while (v >= 0x80) {
    b.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  b.push_back(char(v));
}
void put_tag(std::string& b, int field, int wire) { put_varint(b, uint64_t(field) << 3 | uint64_t(wire)); }
void put_bytes(std::string& b, int field, std::string_view s) {
  put_tag(b, field, 2);
  put_varint(b, s.size());
  b.append(s);
}
void put_int(std::string& b, int field, int64_t v) {
  put_tag(b, field, 0);
  put_varint(b, uint64_t(v));  // negative: ten-byte two's complement, as protobuf does for int32
}
void put_float(std::string& b, int field, float v) {
  put_tag(b, field, 5);
  char raw[4];
  std::memcpy(raw, &v, 4);
  b.append(raw, 4);
}

int opt_id(const gguf::File& f, const char* key, int n) {
  if (!f.has(key)) return -1;
  const int64_t v = f.get_int(key);
  SKY_CHECK(v >= 0 && v < n, "{}: metadata '{}' = {} is not a token id below {}", f.path(), key, v, n);
  return int(v);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const std::string& path) {
  const gguf::File f = gguf::File::open(path);
  SKY_CHECK(f.has("tokenizer.ggml.model"), "{}: the GGUF file has no vocabulary (tokenizer.ggml.model)", path);
  const std::string model = f.get_string("tokenizer.ggml.model");
  const std::vector<std::string>& tokens = f.get_strings("tokenizer.ggml.tokens");
  const int n = int(std::min<size_t>(tokens.size(), size_t(1) << 24));
  SKY_CHECK(!tokens.empty() && tokens.size() <= (size_t(1) << 24), "{}: 'tokenizer.ggml.tokens' has {} entries", path,
            tokens.size());
  std::vector<int64_t> types(tokens.size(), 1);
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_ints("tokenizer.ggml.token_type");
    SKY_CHECK(types.size() == tokens.size(), "{}: 'tokenizer.ggml.token_type' has {} entries for {} tokens", path,
              types.size(), tokens.size());
    for (size_t i = 0; i < types.size(); i++)
      SKY_CHECK(types[i] >= 1 && types[i] <= 6, "{}: 'tokenizer.ggml.token_type'[{}] = {} (1..6 expected)", path, i,
                types[i]);
  }
  std::vector<float> scores(tokens.size(), 0.0f);
  if (f.has("tokenizer.ggml.scores")) {
    scores = f.get_floats("tokenizer.ggml.scores");
    SKY_CHECK(scores.size() == tokens.size(), "{}: 'tokenizer.ggml.scores' has {} entries for {} tokens", path,
              scores.size(), tokens.size());
  }
  const int bos = opt_id(f, "tokenizer.ggml.bos_token_id", n), eos = opt_id(f, "tokenizer.ggml.eos_token_id", n),
            unk = opt_id(f, "tokenizer.ggml.unknown_token_id", n), pad = opt_id(f, "tokenizer.ggml.padding_token_id", n);

  if (model == "llama") {
    std::string proto, trainer, norm;
    bool have_unk = false, bytes = false;
    for (int i = 0; i < n; i++) {
      int type = int(types[size_t(i)]);
      if (i == unk) type = 2;
      else if (type == 2 && unk >= 0) type = 3;  // one unknown piece: the one the key names
      have_unk |= type == 2;
      bytes |= type == 6;
      SKY_CHECK(!tokens[size_t(i)].empty(), "{}: 'tokenizer.ggml.tokens'[{}] is empty", path, i);
      std::string piece;
      put_bytes(piece, 1, tokens[size_t(i)]);
      put_float(piece, 2, scores[size_t(i)]);
      put_int(piece, 3, type);
      put_bytes(proto, 1, piece);
    }
    SKY_CHECK(have_unk, "{}: the 'llama' vocabulary has no unknown token (token type 2 or tokenizer.ggml.unknown_token_id)",
              path);
    put_int(trainer, 3, 2);  // model_type BPE
    put_int(trainer, 4, n);  // vocab_size
    put_int(trainer, 35, bytes ? 1 : 0);  // byte_fallback
    auto piece_of = [&](int id, const char* dflt) { return id >= 0 ? tokens[size_t(id)] : std::string(dflt); };
    put_bytes(trainer, 45, piece_of(unk, "<unk>"));
    put_bytes(trainer, 46, piece_of(bos, "\x01<no bos>"));
    put_bytes(trainer, 47, piece_of(eos, "\x01<no eos>"));
    put_bytes(trainer, 48, piece_of(pad, "\x01<no pad>"));
    put_bytes(norm, 1, "identity");
    put_int(norm, 3, f.get_bool("tokenizer.ggml.add_space_prefix", true) ? 1 : 0);
    put_int(norm, 4, 0);  // remove_extra_whitespaces
    put_int(norm, 5, 1);  // escape_whitespaces
    put_bytes(proto, 2, trainer);
    put_bytes(proto, 3, norm);
    auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
    sentencepiece::util::Status st;
    try {
      st = sp->LoadFromSerializedProto(proto);
    } catch (const std::exception& e) {
      fail("{}: the 'llama' vocabulary is not a valid SentencePiece model: {}", path, e.what());
    }
    SKY_CHECK(st.ok(), "{}: the 'llama' vocabulary is not a valid SentencePiece model: {}", path, st.ToString());
    return from_processor(std::move(sp), path);
  }

  if (model == "gpt2") {
    const std::string pre_name = f.get_string("tokenizer.ggml.pre", "default");
    const BpePreTokenizer* pre = bpe_pre_by_name(pre_name);
    SKY_CHECK(pre, "{}: metadata 'tokenizer.ggml.pre' is '{}', a pre-tokenizer skymoe does not know (known: {})", path,
              pre_name, bpe_pre_names());
    using json = nlohmann::ordered_json;
    json vocab = json::object(), added = json::array();
    for (int i = 0; i < n; i++) {
      const std::string& t = tokens[size_t(i)];
      const int64_t type = types[size_t(i)];
      if (type == 3 || type == 4)
        added.push_back({{"id", i}, {"content", t}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                         {"normalized", false}, {"special", type == 3}});
      if (!vocab.contains(t)) vocab[t] = i;
    }
    json merges = json::array();
    if (f.has("tokenizer.ggml.merges"))
      for (const std::string& m : f.get_strings("tokenizer.ggml.merges")) merges.push_back(m);
    json pre_tok;
    if (!pre->regexes.empty()) {
      json seq = json::array();
      for (const std::string& r : pre->regexes)
        seq.push_back({{"type", "Split"}, {"pattern", {{"Regex", r}}}, {"behavior", "Isolated"}, {"invert", false}});
      seq.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}});
      pre_tok = {{"type", "Sequence"}, {"pretokenizers", seq}};
    } else {
      pre_tok = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    }
    json j = {{"version", "1.0"},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", pre_tok},
              {"model",
               {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                {"ignore_merges", pre->ignore_merges}, {"vocab", vocab}, {"merges", merges}}},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}}};
    std::string text;
    try {
      text = j.dump(-1, ' ', false, json::error_handler_t::strict);
    } catch (const json::exception&) {
      fail("{}: 'tokenizer.ggml.tokens' or 'tokenizer.ggml.merges' holds invalid UTF-8", path);
    }
    return from_hf(HfTokenizer::parse_with_ids(text, path, bos, eos, pad));
  }
  fail("{}: metadata 'tokenizer.ggml.model' is '{}'; skymoe reads 'llama' (SentencePiece-style) and 'gpt2' (byte-level "
       "BPE) vocabularies",
       path, model);
}

}  // namespace sky
