#pragma once
// Training/eval data: a flat file of little-endian uint32 token ids, memory-mapped, and the batchers
// that cut it into [B, S] input/target pairs. Both batch orders are pure functions of a small
// position (epoch, index, seed), so a checkpoint can store it and a resumed run sees the same data.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace sky {

// Half-open token range [begin, end) of a file.
struct TokenRange {
  uint64_t begin = 0, end = 0;
  uint64_t size() const { return end - begin; }
  bool operator==(const TokenRange&) const = default;
};

class TokenFile {
 public:
  // Maps the file and checks it once: readable, non-empty, a whole number of uint32s, and every
  // id < vocab_size (the error names the first offending index and value).
  static TokenFile open(const std::string& path, int64_t vocab_size);

  uint64_t size() const { return n_; }  // tokens
  const uint32_t* data() const { return data_; }
  uint32_t operator[](uint64_t i) const { return data_[i]; }
  TokenRange all() const { return {0, n_}; }
  const std::string& path() const { return path_; }

 private:
  std::shared_ptr<const void> map_;  // keeps the mapping alive across copies
  const uint32_t* data_ = nullptr;
  uint64_t n_ = 0;
  std::string path_;
};

// Streams tokens to path + ".tmp"; commit() renames it into place, so a reader never sees a
// half-written file. Dropping the writer without commit() removes the temp file.
class TokenFileWriter {
 public:
  explicit TokenFileWriter(std::string path);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  void append(const uint32_t* tokens, size_t n);
  void append(const std::vector<uint32_t>& t) { append(t.data(), t.size()); }
  uint64_t count() const { return count_; }
  void commit();

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  uint64_t count_ = 0;
};

void write_token_file(const std::string& path, const std::vector<uint32_t>& tokens);

// --- The sequential rule (exact; `skymoe eval` and --data-order sequential) ---
// Batch k reads the B*S+1 tokens starting at k*B*S; row b's inputs are chunk tokens [b*S, b*S+S)
// and its targets the same shifted by one. Full batches: floor((n - 1) / (B*S)).
uint64_t sequential_batch_count(uint64_t n_tokens, int batch, int seq);
void sequential_batch(const TokenFile& f, TokenRange r, int batch, int seq, uint64_t k,
                      int32_t* inputs, int32_t* targets);

// Shuffled order works on windows of S+1 tokens at stride S: window w = tokens [w*S, w*S+S].
uint64_t window_count(uint64_t n_tokens, int seq);

enum class DataOrder { Sequential, Shuffled };
DataOrder parse_data_order(const std::string& s);  // "sequential" | "shuffled"
const char* to_string(DataOrder o);

// Where a batcher stands. index = next batch (sequential) or next window slot in the epoch's
// permutation (shuffled).
struct DataPosition {
  std::string order = "sequential";
  uint64_t epoch = 0;
  uint64_t index = 0;
  uint64_t seed = 0;
  bool operator==(const DataPosition&) const = default;
};
void to_json(nlohmann::json& j, const DataPosition& p);
void from_json(const nlohmann::json& j, DataPosition& p);

// Fills [B, S] int32 inputs/targets from a token range, endlessly.
// Sequential: batch 0, 1, ..., last full batch, then batch 0 again with epoch + 1.
// Shuffled: each epoch is a seeded permutation of all windows; batches take the next B windows of
// that stream, running on into the next epoch's permutation, so every window is seen exactly once
// per epoch even when B does not divide the window count.
class Batcher {
 public:
  Batcher(TokenFile file, TokenRange range, int batch, int seq, DataOrder order, uint64_t seed = 0);

  void next(int32_t* inputs, int32_t* targets);
  DataPosition state() const;
  void restore(const DataPosition& p);  // checks order and that index fits this data

  uint64_t batches_per_epoch() const;  // shuffled: floor(windows / B)
  uint64_t epoch() const { return epoch_; }
  int batch() const { return B_; }
  int seq() const { return S_; }

 private:
  const std::vector<uint64_t>& permutation();

  TokenFile file_;
  TokenRange range_;
  int B_, S_;
  DataOrder order_;
  uint64_t seed_;
  uint64_t epoch_ = 0, index_ = 0;
  uint64_t per_epoch_;  // batches (sequential) or windows (shuffled)
  std::vector<uint64_t> perm_;
  uint64_t perm_epoch_ = UINT64_MAX;
};

// Validation split, only when asked for. Either a separate file (then use file.all() for both), or
// an explicit fraction of the END of one file: the last ceil(frac * n) tokens, rounded up to whole
// windows (w*S + 1 tokens, w >= 1). Train is everything before it; the two do not share a token.
struct DataSplit {
  TokenRange train, val;
};
DataSplit split_tail(uint64_t n_tokens, double val_fraction, int seq);

}  // namespace sky
