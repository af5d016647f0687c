// A token file (flat little-endian uint32 ids) as train and eval read it. The input is an 8-byte
// prefix (u32 vocab size, batch 1..8, sequence length 1..16, order, validation fraction in 256ths)
// followed by the file's bytes. Expected: batches, or sky::Error.
// Findings besides crashes and sanitizer reports: an id at or above the vocab size in a batch, or
// a target that is not the next input (the batch rule broken).
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/token_data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint32_t vocab;
  std::memcpy(&vocab, data, 4);
  const int B = 1 + data[4] % 8, S = 1 + data[5] % 16;
  const auto order = data[6] & 1 ? sky::DataOrder::Shuffled : sky::DataOrder::Sequential;
  const double val_fraction = data[7] / 256.0;
  static fuzz::MemFile file;
  const std::string& path = file.write(data + 8, size - 8);
  try {
    const sky::TokenFile f = sky::TokenFile::open(path, int64_t(vocab));
    FUZZ_CHECK(f.size() * 4 == size - 8, "%llu tokens from %zu bytes", (unsigned long long)f.size(), size - 8);
    sky::TokenRange range = f.all();
    if (val_fraction > 0) range = sky::split_tail(f.size(), val_fraction, S).train;
    sky::Batcher b(f, range, B, S, order, data[7]);
    std::vector<int32_t> in(size_t(B) * S), tg(size_t(B) * S);
    for (int i = 0; i < 4; i++) {
      b.next(in.data(), tg.data());
      for (size_t k = 0; k < in.size(); k++) {
        FUZZ_CHECK(uint32_t(in[k]) < vocab && uint32_t(tg[k]) < vocab, "batch %d: id outside the vocab of %u", i, vocab);
        FUZZ_CHECK(k % S == size_t(S) - 1 || tg[k] == in[k + 1], "batch %d: target %zu is not the next input", i, k);
      }
    }
    const sky::DataPosition p = b.state();
    b.restore(p);
  } catch (const sky::Error&) {
  }
  return 0;
}
