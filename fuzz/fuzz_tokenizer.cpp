// A tokenizer.model file (SentencePiece's serialized ModelProto), loaded through Tokenizer::load,
// then used the way generate, serve and export gguf use it. Expected: a tokenizer, or sky::Error.
// SentencePiece itself is not instrumented (coverage guides only our wrapper), but a crash or
// abort inside it on a model file is a finding all the same: we must refuse such a file first.
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file;
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
    // Text the server would encode: ASCII, CJK, an accent, bytes that are not UTF-8.
    const std::vector<int32_t> ids = tok.encode("Hello, world!\n你好 caf\xc3\xa9 \xff\x01 User:");
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < n, "encode gave id %d outside the vocab of %d", id, n);
    (void)tok.decode(ids);
    sky::StreamDecoder sd(tok);
    for (int32_t id : ids) (void)sd.push(id);
    (void)sd.flush();
  } catch (const sky::Error&) {
  }
  return 0;
}
