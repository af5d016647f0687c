// One .gguf file: the reader (header, metadata, tensor infos, data offsets), the model mapping
// (config from the metadata, tensors under HF names, decoded) and the vocabulary (tokenizer.ggml.*).
// Expected: each succeeds or throws sky::Error. Findings besides crashes and sanitizer reports: a
// tensor the reader accepted whose bytes do not lie inside the file or do not match its shape and type.
#include <cstdint>
#include <string>
#include <vector>

#include "core/block_quant.h"
#include "core/error.h"
#include "fuzz_util.h"
#include "io/gguf_reader.h"
#include "io/tokenizer.h"
#include "model/gguf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file;
  const std::string& path = file.write(data, size);
  try {
    const sky::gguf::File f = sky::gguf::File::open(path);
    for (const std::string& k : f.keys()) (void)f.describe(k);
    for (const auto& t : f.tensors()) {
      FUZZ_CHECK(t.file_offset <= size && t.nbytes <= size - t.file_offset, "tensor '%s' at %llu + %llu bytes, file of %zu",
                 t.name.c_str(), (unsigned long long)t.file_offset, (unsigned long long)t.nbytes, size);
      const sky::BlockTraits* tr = sky::block_traits(uint32_t(t.type));
      FUZZ_CHECK(tr && uint64_t(t.numel()) / tr->block_values * tr->block_bytes == t.nbytes,
                 "tensor '%s': shape and type give a size other than %llu", t.name.c_str(), (unsigned long long)t.nbytes);
      if (t.nbytes) {
        const auto* p = static_cast<const uint8_t*>(t.data);
        FUZZ_CHECK(p[0] == data[t.file_offset] && p[t.nbytes - 1] == data[t.file_offset + t.nbytes - 1],
                   "tensor '%s' does not map its bytes", t.name.c_str());
      }
    }
    try {
      const sky::ModelConfig c = sky::gguf_model_config(f);
      const sky::SafetensorsReader r = sky::gguf_model_tensors(f, c);
      for (const std::string& n : r.names()) {
        const sky::Tensor t = r.get(n);
        FUZZ_CHECK(t.shape == r.info(n).shape, "tensor '%s' decoded to another shape", n.c_str());
        if (r.has_blocks(n)) (void)r.blocks(n);
      }
    } catch (const sky::Error&) {
    }
    const sky::Tokenizer tok = sky::Tokenizer::load(path);
    const int n = tok.vocab_size();
    const std::vector<int32_t> ids = tok.encode("Hello, world!\n你好 caf\xc3\xa9 \xff\x01 User:");
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < n, "encode gave id %d outside the vocab of %d", id, n);
    (void)tok.decode(ids);
  } catch (const sky::Error&) {
  }
  return 0;
}
