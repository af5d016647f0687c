#include "logits_check.h"

#include <cmath>

#include "infer/batch_forward.h"

namespace skytest {

double rel_rms(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

std::vector<float> engine_logits(const sky::InferModel& im, const std::vector<int32_t>& ids) {
  const int T = int(ids.size()), V = im.cfg.vocab_size;
  sky::SeqKV kv;
  kv.init(im.cfg, T);
  std::vector<sky::BatchRow> rows = {{&kv, ids.data(), T}};
  std::vector<float> last(V), all(size_t(T) * V);
  sky::BatchScratch scratch;
  sky::batch_forward(im, rows, last.data(), scratch, all.data());
  return all;
}

std::vector<int32_t> prompt(int V, int T) {
  std::vector<int32_t> ids;
  for (int i = 0; i < T; i++) ids.push_back((i * 7 + 3) % V);
  return ids;
}

}  // namespace skytest
