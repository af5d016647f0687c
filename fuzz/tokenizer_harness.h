#pragma once
// What the two tokenizer targets (tokenizer.model, tokenizer.json) do with one input: load it the
// way every command does (Tokenizer::load tells the formats apart by content), then use it the way
// generate, serve and export gguf do. Expected: a tokenizer, or sky::Error. Besides memory and UB
// errors it checks that ids stay in the vocabulary and that min_tokens() (the server's refusal
// before encoding) never exceeds the real token count.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/tokenizer.h"

namespace fuzz {

inline int tokenizer_file(const uint8_t* data, size_t size) {
  static MemFile file;
  const std::string& path = file.write(data, size);
  try {
    const sky::Tokenizer tok = sky::Tokenizer::load(path);
    const int n = tok.vocab_size();
    (void)tok.bos_id(), (void)tok.eos_id(), (void)tok.unk_id(), (void)tok.pad_id();
    // What export gguf reads for every piece, and what the stream decoder does with each id.
    for (int id = 0; id < n && id < 4096; id++) {
      (void)tok.id_to_piece(id);
      (void)tok.score(id);
      (void)tok.piece_type(id);
      (void)tok.decode_piece(id);
    }
    // ASCII, digits, runs of spaces, CJK, an accent (NFC/NFD), emoji, bytes that are not UTF-8.
    for (std::string_view s : {std::string_view("Hello, world!  123 4567\n\n  x"),
                               std::string_view("你好 caf\xc3\xa9 cafe\xcc\x81 \xf0\x9f\x99\x82 \xff\x01 User:"),
                               std::string_view("")}) {
      const std::vector<int32_t> ids = tok.encode(s);
      for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < n, "encode gave id %d outside the vocab of %d", id, n);
      const int64_t least = tok.min_tokens(s);
      FUZZ_CHECK(least <= int64_t(ids.size()), "min_tokens %lld > %zu tokens", (long long)least, ids.size());
      (void)tok.decode(ids);
      sky::StreamDecoder sd(tok);
      for (int32_t id : ids) (void)sd.push(id);
      (void)sd.flush();
    }
  } catch (const sky::Error&) {
  }
  return 0;
}

}  // namespace fuzz
