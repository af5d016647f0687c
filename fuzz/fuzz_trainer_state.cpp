// trainer_state.json as `train --resume` reads it: the run shape it adopts (parse_run_shape), the
// step, data position, per-layer alpha and selection bias (parse_trainer_state, for a model of 2 MoE
// layers of 3 experts), and the data position restored into a batcher that then makes a few batches.
// Expected: values, or sky::Error. A finding besides crashes and sanitizer reports: a restored
// batcher that reads outside its token file (every token there is nonzero; past it reads zeros).
#include <cstdint>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/trainer_state.h"
#include "io/json_input.h"
#include "io/token_data.h"

namespace {

constexpr int kTokens = 61, kBatch = 2, kSeq = 4;  // 15 windows, 7 sequential batches

const sky::TokenFile& token_file() {
  static fuzz::MemFile file;
  static const sky::TokenFile f = [] {
    std::vector<uint32_t> t(kTokens);
    std::iota(t.begin(), t.end(), 1u);
    return sky::TokenFile::open(file.write(t.data(), t.size() * 4), kTokens + 1);
  }();
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  nlohmann::json st;
  try {
    st = sky::parse_json(text, text + size, "trainer_state.json");
  } catch (const sky::Error&) {
    return 0;
  }
  try {
    (void)sky::parse_run_shape(st);
  } catch (const sky::Error&) {
  }
  try {
    const sky::TrainerState s = sky::parse_trainer_state(st, 2, 3);
    const sky::DataOrder order = sky::parse_data_order(s.data.order);
    sky::Batcher b(token_file(), token_file().all(), kBatch, kSeq, order, 0);
    b.restore(s.data);
    int32_t in[kBatch * kSeq], tg[kBatch * kSeq];
    for (int i = 0; i < 3; i++) {
      b.next(in, tg);
      for (int k = 0; k < kBatch * kSeq; k++)
        FUZZ_CHECK(in[k] > 0 && tg[k] == in[k] + 1, "batch %d reads outside the token file", i);
    }
  } catch (const sky::Error&) {
  }
  return 0;
}
