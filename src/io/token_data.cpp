#include "io/token_data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"

namespace sky {

// The file format is little-endian; reading it in place is only right on a little-endian host.
static_assert(std::endian::native == std::endian::little, "token files are read in place as little-endian");

TokenFile TokenFile::open(const std::string& path, int64_t vocab_size) {
  SKY_CHECK(vocab_size > 0, "token file {}: vocab size {} must be positive", path, vocab_size);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not block: the S_ISREG check refuses it
  SKY_CHECK(fd >= 0, "token file {}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("token file {}: not a regular file", path);
  }
  size_t bytes = size_t(st.st_size);
  if (bytes == 0 || bytes % 4 != 0) {
    ::close(fd);
    SKY_CHECK(bytes != 0, "token file {} is empty", path);
    fail("token file {} has {} bytes, not a multiple of 4", path, bytes);
  }
  void* p = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  SKY_CHECK(p != MAP_FAILED, "token file {}: mmap failed: {}", path, std::strerror(err));

  TokenFile f;
  f.map_ = std::shared_ptr<const void>(p, [bytes](const void* q) { munmap(const_cast<void*>(q), bytes); });
  f.data_ = static_cast<const uint32_t*>(p);
  f.n_ = bytes / 4;
  f.path_ = path;

  // One pass with a vectorizable max per block; only a failing block is searched for the index.
  const uint64_t limit = uint64_t(vocab_size);
  constexpr uint64_t kBlock = 1 << 16;
  for (uint64_t b = 0; b < f.n_; b += kBlock) {
    uint64_t e = std::min(f.n_, b + kBlock);
    uint32_t m = 0;
    for (uint64_t i = b; i < e; i++) m = std::max(m, f.data_[i]);
    if (m < limit) continue;
    for (uint64_t i = b; i < e; i++)
      SKY_CHECK(f.data_[i] < limit, "token file {}: token {} at index {} is not below the vocab size {}", path,
                f.data_[i], i, vocab_size);
  }
  return f;
}

TokenFileWriter::TokenFileWriter(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  f_ = std::fopen(tmp_.c_str(), "wb");
  SKY_CHECK(f_, "token file {}: cannot create {}: {}", path_, tmp_, std::strerror(errno));
}

TokenFileWriter::~TokenFileWriter() {
  if (f_) {
    std::fclose(f_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void TokenFileWriter::append(const uint32_t* tokens, size_t n) {
  SKY_CHECK(f_, "token file {}: append after commit", path_);
  SKY_CHECK(std::fwrite(tokens, 4, n, f_) == n, "token file {}: write failed: {}", tmp_, std::strerror(errno));
  count_ += n;
}

void TokenFileWriter::commit() {
  SKY_CHECK(f_, "token file {}: committed twice", path_);
  bool ok = std::fflush(f_) == 0 && fsync(fileno(f_)) == 0;
  ok = (std::fclose(f_) == 0) && ok;
  f_ = nullptr;
  std::error_code ec;
  if (ok) std::filesystem::rename(tmp_, path_, ec);
  if (!ok || ec) {
    std::filesystem::remove(tmp_, ec);
    fail("token file {}: could not write it", path_);
  }
}

void write_token_file(const std::string& path, const std::vector<uint32_t>& tokens) {
  TokenFileWriter w(path);
  w.append(tokens);
  w.commit();
}

uint64_t sequential_batch_count(uint64_t n_tokens, int batch, int seq) {
  SKY_CHECK(batch > 0 && seq > 0, "batch {} and sequence length {} must be positive", batch, seq);
  return n_tokens == 0 ? 0 : (n_tokens - 1) / (uint64_t(batch) * uint64_t(seq));
}

uint64_t window_count(uint64_t n_tokens, int seq) {
  SKY_CHECK(seq > 0, "sequence length {} must be positive", seq);
  return n_tokens == 0 ? 0 : (n_tokens - 1) / uint64_t(seq);
}

// Row `row` of the outputs gets tokens [start, start+S) as inputs and [start+1, start+S] as targets.
static void copy_row(const uint32_t* tok, uint64_t start, int S, int row, int32_t* inputs, int32_t* targets) {
  const uint32_t* src = tok + start;
  int32_t* in = inputs + size_t(row) * S;
  int32_t* tg = targets + size_t(row) * S;
  for (int t = 0; t < S; t++) {
    in[t] = int32_t(src[t]);
    tg[t] = int32_t(src[t + 1]);
  }
}

void sequential_batch(const TokenFile& f, TokenRange r, int batch, int seq, uint64_t k, int32_t* inputs,
                      int32_t* targets) {
  SKY_CHECK(r.begin <= r.end && r.end <= f.size(), "token file {}: range [{}, {}) outside its {} tokens", f.path(),
            r.begin, r.end, f.size());
  uint64_t nb = sequential_batch_count(r.size(), batch, seq);
  SKY_CHECK(k < nb, "token file {}: batch {} out of range ({} full batches of {}x{})", f.path(), k, nb, batch, seq);
  uint64_t base = r.begin + k * uint64_t(batch) * uint64_t(seq);
  for (int b = 0; b < batch; b++) copy_row(f.data(), base + uint64_t(b) * seq, seq, b, inputs, targets);
}

DataOrder parse_data_order(const std::string& s) {
  if (s == "sequential") return DataOrder::Sequential;
  if (s == "shuffled") return DataOrder::Shuffled;
  fail("data order '{}' is not one of: sequential, shuffled", s);
}

const char* to_string(DataOrder o) { return o == DataOrder::Sequential ? "sequential" : "shuffled"; }

void to_json(nlohmann::json& j, const DataPosition& p) {
  j = nlohmann::json{{"order", p.order}, {"epoch", p.epoch}, {"index", p.index}, {"seed", p.seed}};
}

// A count read from a checkpoint: a non-negative integer below 2^53 (-1 would wrap to the batcher's
// "no permutation yet" marker).
static uint64_t count_field(const nlohmann::json& j, const char* name) {
  const nlohmann::json& v = j.at(name);
  const bool ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
  SKY_CHECK(ok && v.get<uint64_t>() < (uint64_t(1) << 53), "data position: '{}' must be a count, got {}", name,
            v.is_primitive() ? v.dump() : std::string(v.type_name()));
  return v.get<uint64_t>();
}

void from_json(const nlohmann::json& j, DataPosition& p) {
  j.at("order").get_to(p.order);
  p.epoch = count_field(j, "epoch");
  p.index = count_field(j, "index");
  SKY_CHECK(j.at("seed").is_number_integer(), "data position: 'seed' must be an integer");
  j.at("seed").get_to(p.seed);
}

Batcher::Batcher(TokenFile file, TokenRange range, int batch, int seq, DataOrder order, uint64_t seed)
    : file_(std::move(file)), range_(range), B_(batch), S_(seq), order_(order), seed_(seed) {
  SKY_CHECK(batch > 0 && seq > 0, "batch {} and sequence length {} must be positive", batch, seq);
  SKY_CHECK(range.begin <= range.end && range.end <= file_.size(), "token file {}: range [{}, {}) outside its {} tokens",
            file_.path(), range.begin, range.end, file_.size());
  if (order_ == DataOrder::Sequential) {
    per_epoch_ = sequential_batch_count(range.size(), B_, S_);
    SKY_CHECK(per_epoch_ > 0, "token file {}: {} tokens are too few for one {}x{} batch (need {})", file_.path(),
              range.size(), B_, S_, uint64_t(B_) * S_ + 1);
  } else {
    per_epoch_ = window_count(range.size(), S_);
    SKY_CHECK(per_epoch_ >= uint64_t(B_), "token file {}: {} tokens give {} windows of {}, fewer than the batch of {}",
              file_.path(), range.size(), per_epoch_, S_ + 1, B_);
  }
}

// Fisher-Yates from a generator derived from (seed, epoch) alone, so any epoch can be rebuilt
// directly on resume without replaying the earlier ones.
const std::vector<uint64_t>& Batcher::permutation() {
  if (perm_epoch_ == epoch_) return perm_;
  perm_.resize(per_epoch_);
  for (uint64_t i = 0; i < per_epoch_; i++) perm_[i] = i;
  Rng rng(Rng(seed_).next() + epoch_);
  for (uint64_t i = per_epoch_ - 1; i > 0; i--) std::swap(perm_[i], perm_[rng.below(i + 1)]);
  perm_epoch_ = epoch_;
  return perm_;
}

void Batcher::next(int32_t* inputs, int32_t* targets) {
  if (order_ == DataOrder::Sequential) {
    sequential_batch(file_, range_, B_, S_, index_, inputs, targets);
    if (++index_ == per_epoch_) index_ = 0, epoch_++;
    return;
  }
  for (int b = 0; b < B_; b++) {
    uint64_t w = permutation()[index_];
    copy_row(file_.data(), range_.begin + w * S_, S_, b, inputs, targets);
    if (++index_ == per_epoch_) index_ = 0, epoch_++;
  }
}

DataPosition Batcher::state() const { return {to_string(order_), epoch_, index_, seed_}; }

void Batcher::restore(const DataPosition& p) {
  SKY_CHECK(p.order == to_string(order_), "data position is for order '{}', this run uses '{}'", p.order,
            to_string(order_));
  SKY_CHECK(p.index < per_epoch_,
            "data position index {} is out of range for {} ({} per epoch): data or batch shape changed?", p.index,
            file_.path(), per_epoch_);
  epoch_ = p.epoch;
  index_ = p.index;
  perm_epoch_ = UINT64_MAX;
  seed_ = p.seed;
}

uint64_t Batcher::batches_per_epoch() const {
  return order_ == DataOrder::Sequential ? per_epoch_ : per_epoch_ / uint64_t(B_);
}

DataSplit split_tail(uint64_t n_tokens, double val_fraction, int seq) {
  SKY_CHECK(val_fraction > 0 && val_fraction < 1, "validation fraction {} must be between 0 and 1", val_fraction);
  SKY_CHECK(seq > 0, "sequence length {} must be positive", seq);
  uint64_t want = uint64_t(std::ceil(val_fraction * double(n_tokens)));
  uint64_t windows = want <= 1 ? 1 : (want - 1 + seq - 1) / uint64_t(seq);
  uint64_t val_len = windows * seq + 1;
  SKY_CHECK(val_len + seq + 1 <= n_tokens,
            "validation fraction {} of {} tokens leaves too few for training (validation takes {}, training needs {})",
            val_fraction, n_tokens, val_len, seq + 1);
  uint64_t cut = n_tokens - val_len;
  return {{0, cut}, {cut, n_tokens}};
}

}  // namespace sky
