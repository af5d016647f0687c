#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "io/atomic_file.h"

namespace sky::gguf {

// GGUF is little-endian by default and carries no flag saying otherwise; we write host order.
static_assert(std::endian::native == std::endian::little, "the GGUF writer assumes a little-endian host");

namespace {

constexpr size_t kMaxName = 63;  // ggml's GGML_MAX_NAME is 64 including the NUL
constexpr size_t kMaxDims = 4;   // GGML_MAX_DIMS

template <class T>
void put(std::vector<uint8_t>& b, T v) {
  uint8_t raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));
  b.insert(b.end(), raw, raw + sizeof(T));
}

void put_string(std::vector<uint8_t>& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

uint64_t pad_to(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

uint64_t tensor_nbytes(TensorType t, const std::vector<int64_t>& ne) {
  SKY_CHECK(!ne.empty(), "gguf: a tensor needs at least one dimension");
  uint64_t n = 1;
  for (int64_t d : ne) {
    SKY_CHECK(d > 0, "gguf: tensor dimension {} must be positive", d);
    n *= uint64_t(d);
  }
  SKY_CHECK(ne[0] % block_values(t) == 0, "gguf: {} needs rows of a multiple of {} values, got {}",
            tensor_type_name(t), block_values(t), ne[0]);
  return n / block_values(t) * block_bytes(t);
}

std::vector<uint8_t> encode(TensorType t, const float* x, int64_t n) {
  SKY_CHECK(block_can_encode(t), "gguf: the writer does not encode {}", tensor_type_name(t));
  std::vector<uint8_t> out(size_t(n / block_values(t) * block_bytes(t)));
  block_quantize(t, x, n, out.data());
  return out;
}

void Writer::begin_kv(const std::string& key, ValueType t) {
  SKY_CHECK(!key.empty() && key.size() < 65536, "gguf: bad metadata key length {}", key.size());
  for (unsigned char c : key) SKY_CHECK(c >= 0x20 && c < 0x7F, "gguf: metadata key '{}' is not printable ASCII", key);
  SKY_CHECK(!has_key(key), "gguf: duplicate metadata key '{}'", key);
  keys_.push_back(key);
  put_string(kv_, key);
  put<uint32_t>(kv_, uint32_t(t));
}

void Writer::begin_array(const std::string& key, ValueType elem, uint64_t n) {
  // gguf-py never writes empty arrays (it skips them); here one would be a caller bug.
  SKY_CHECK(n > 0, "gguf: metadata array '{}' is empty", key);
  begin_kv(key, ValueType::Array);
  put<uint32_t>(kv_, uint32_t(elem));
  put<uint64_t>(kv_, n);
}

bool Writer::has_key(const std::string& key) const { return std::find(keys_.begin(), keys_.end(), key) != keys_.end(); }

void Writer::add_string(const std::string& key, const std::string& v) {
  begin_kv(key, ValueType::String);
  put_string(kv_, v);
}
void Writer::add_u32(const std::string& key, uint32_t v) { begin_kv(key, ValueType::U32); put(kv_, v); }
void Writer::add_i32(const std::string& key, int32_t v) { begin_kv(key, ValueType::I32); put(kv_, v); }
void Writer::add_u64(const std::string& key, uint64_t v) { begin_kv(key, ValueType::U64); put(kv_, v); }
void Writer::add_f32(const std::string& key, float v) { begin_kv(key, ValueType::F32); put(kv_, v); }
void Writer::add_bool(const std::string& key, bool v) { begin_kv(key, ValueType::Bool); put<uint8_t>(kv_, v ? 1 : 0); }

void Writer::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  begin_array(key, ValueType::String, v.size());
  for (auto& s : v) put_string(kv_, s);
}
void Writer::add_f32_array(const std::string& key, const std::vector<float>& v) {
  begin_array(key, ValueType::F32, v.size());
  for (float x : v) put(kv_, x);
}
void Writer::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  begin_array(key, ValueType::I32, v.size());
  for (int32_t x : v) put(kv_, x);
}

void Writer::set_alignment(uint32_t alignment) {
  // The spec asks for a multiple of 8; ggml additionally wants a power of two.
  SKY_CHECK(alignment >= 8 && (alignment & (alignment - 1)) == 0, "gguf: alignment {} is not a power of two >= 8",
            alignment);
  SKY_CHECK(tensors_.empty(), "gguf: set the alignment before adding tensors");
  alignment_ = alignment;
  add_u32("general.alignment", alignment);
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> ne, DataFn data) {
  SKY_CHECK(!name.empty() && name.size() <= kMaxName, "gguf: tensor name '{}' must be 1..{} bytes", name, kMaxName);
  SKY_CHECK(ne.size() >= 1 && ne.size() <= kMaxDims, "gguf: tensor {} has {} dimensions (1..{} allowed)", name,
            ne.size(), kMaxDims);
  for (auto& t : tensors_) SKY_CHECK(t.name != name, "gguf: duplicate tensor name '{}'", name);
  uint64_t nbytes = tensor_nbytes(type, ne);
  tensors_.push_back({name, type, std::move(ne), data_size_, std::move(data)});
  data_size_ += pad_to(nbytes, alignment_);
}

uint64_t Writer::write(const std::string& path, const std::function<void(size_t, const TensorDecl&)>& progress) const {
  std::vector<uint8_t> head;
  head.insert(head.end(), {'G', 'G', 'U', 'F'});
  put<uint32_t>(head, kVersion);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, keys_.size());
  head.insert(head.end(), kv_.begin(), kv_.end());
  for (auto& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, t.offset);
  }
  head.resize(pad_to(head.size(), alignment_), 0);
  const uint64_t total = head.size() + data_size_;

  write_file_atomic(path, [&](std::FILE* f) {
    std::fwrite(head.data(), 1, head.size(), f);
    const std::vector<uint8_t> zeros(alignment_, 0);
    for (size_t i = 0; i < tensors_.size(); i++) {
      const TensorDecl& t = tensors_[i];
      if (progress) progress(i, t);
      std::vector<uint8_t> bytes = t.data();
      const uint64_t want = tensor_nbytes(t.type, t.ne);
      SKY_CHECK(bytes.size() == want, "gguf: tensor {} produced {} bytes, expected {}", t.name, bytes.size(), want);
      std::fwrite(bytes.data(), 1, bytes.size(), f);
      std::fwrite(zeros.data(), 1, pad_to(want, alignment_) - want, f);
    }
  });
  return total;
}

}  // namespace sky::gguf
