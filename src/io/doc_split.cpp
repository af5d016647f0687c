#include "io/doc_split.h"

#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "io/token_data.h"

namespace sky {

DocSplitStats split_documents(const std::string& tokens_path, int64_t vocab_size, uint32_t eos, int every,
                              const std::string& train_path, const std::string& val_path, bool shuffle_val,
                              uint64_t seed) {
  SKY_CHECK(every >= 2, "validation split: every {}-th document would leave nothing to train on", every);
  TokenFile f = TokenFile::open(tokens_path, vocab_size);
  TokenFileWriter train(train_path), val(val_path);
  DocSplitStats st;
  std::vector<TokenRange> val_docs;
  uint64_t begin = 0, doc = 0;
  for (uint64_t i = 0; i < f.size(); i++) {
    if (f[i] != eos && i + 1 < f.size()) continue;
    const uint64_t n = i + 1 - begin;
    if (doc % every == uint64_t(every - 1)) {
      val_docs.push_back({begin, i + 1});
      st.val_docs++;
      st.val_tokens += n;
    } else {
      train.append(f.data() + begin, n);
      st.train_docs++;
      st.train_tokens += n;
    }
    begin = i + 1;
    doc++;
  }
  SKY_CHECK(st.val_docs > 0, "validation split of {}: only {} documents, fewer than {}", tokens_path, doc, every);
  if (shuffle_val) {
    Rng rng(seed);
    for (size_t i = val_docs.size(); i > 1; i--) std::swap(val_docs[i - 1], val_docs[rng.next() % i]);
  }
  for (const TokenRange& r : val_docs) val.append(f.data() + r.begin, r.size());
  train.commit();
  val.commit();
  return st;
}

}  // namespace sky
