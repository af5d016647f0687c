#pragma once
// Validation split by whole documents: every n-th document of a token file goes to the validation
// file, the rest to the training file. Unlike a tail split, this samples every part of a corpus
// whose files are sorted by topic (fortune files: the tail would be all Zippy quotes).
#include <cstdint>
#include <string>

namespace sky {

struct DocSplitStats {
  uint64_t train_docs = 0, val_docs = 0, train_tokens = 0, val_tokens = 0;
};

// Documents end with `eos` (a last document without one counts too). Document k (from 0) goes to
// validation when k % every == every - 1. Training documents keep their order; validation ones are
// written in a seeded random order when shuffle_val, so that the first few batches (what a quick
// evaluation reads) sample the whole corpus rather than its first files. Both files are written
// through TokenFileWriter (atomic).
DocSplitStats split_documents(const std::string& tokens_path, int64_t vocab_size, uint32_t eos, int every,
                              const std::string& train_path, const std::string& val_path,
                              bool shuffle_val = false, uint64_t seed = 0);

}  // namespace sky
