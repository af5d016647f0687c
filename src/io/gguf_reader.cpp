#include "io/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace sky::gguf {

namespace {

constexpr int kMaxArrayDepth = 8;     // arrays of arrays: far more than any writer nests
constexpr size_t kMaxDims = 4;        // GGML_MAX_DIMS
constexpr uint32_t kMaxAlignment = 1u << 30;

size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::Bool: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
    default: return 0;
  }
}

bool valid_type(uint32_t t) { return t <= uint32_t(ValueType::F64); }

// A bounds-checked cursor over the mapped bytes. `what` says where in the header it is, for errors.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return n_ - pos_; }
  const uint8_t* here() const { return p_ + pos_; }
  void need(uint64_t k, const std::string& what) const {
    if (k > left())
      fail("{}: GGUF file truncated: {} needs {} bytes at offset {}, the file has {} left", path_, what, k, pos_,
           left());
  }
  template <class T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  void skip(uint64_t k, const std::string& what) {
    need(k, what);
    pos_ += k;
  }
  std::string str(const std::string& what) {
    const uint64_t len = get<uint64_t>(what + " (string length)");
    need(len, what + fmt::format(" (a string of {} bytes)", len));
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

void read_scalar(Cursor& c, ValueType t, Value& v, const std::string& what) {
  switch (t) {
    case ValueType::U8: v.u = c.get<uint8_t>(what); break;
    case ValueType::I8: v.i = c.get<int8_t>(what); break;
    case ValueType::U16: v.u = c.get<uint16_t>(what); break;
    case ValueType::I16: v.i = c.get<int16_t>(what); break;
    case ValueType::U32: v.u = c.get<uint32_t>(what); break;
    case ValueType::I32: v.i = c.get<int32_t>(what); break;
    case ValueType::F32: v.f = c.get<float>(what); break;
    case ValueType::Bool: v.u = c.get<uint8_t>(what); break;
    case ValueType::U64: v.u = c.get<uint64_t>(what); break;
    case ValueType::I64: v.i = c.get<int64_t>(what); break;
    case ValueType::F64: v.f = c.get<double>(what); break;
    case ValueType::String: v.s = c.str(what); break;
    case ValueType::Array: break;  // handled by the caller
  }
}

// Reads an array body (element type, count, elements) into v; nested arrays are checked, not kept.
void read_array(Cursor& c, Value& v, const std::string& key, const std::string& path, int depth, bool keep) {
  const uint32_t et = c.get<uint32_t>("metadata '" + key + "' array type");
  if (!valid_type(et)) fail("{}: metadata '{}' is an array of unknown type {}", path, key, et);
  if (depth >= kMaxArrayDepth) fail("{}: metadata '{}' nests arrays deeper than {}", path, key, kMaxArrayDepth);
  v.elem = ValueType(et);
  v.count = c.get<uint64_t>("metadata '" + key + "' array length");
  const std::string what = "metadata '" + key + "' array";
  if (v.elem == ValueType::String) {
    // Each string takes at least its 8-byte length: a count beyond that cannot be in the file.
    if (v.count > c.left() / 8)
      fail("{}: metadata '{}' claims {} strings but only {} bytes follow", path, key, v.count, c.left());
    if (keep) v.strs.reserve(size_t(v.count));
    for (uint64_t k = 0; k < v.count; k++) {
      std::string s = c.str(what);
      if (keep) v.strs.push_back(std::move(s));
    }
  } else if (v.elem == ValueType::Array) {
    if (v.count > c.left() / 12)
      fail("{}: metadata '{}' claims {} nested arrays but only {} bytes follow", path, key, v.count, c.left());
    for (uint64_t k = 0; k < v.count; k++) {
      Value inner;
      read_array(c, inner, key, path, depth + 1, false);
    }
  } else {
    const uint64_t es = scalar_size(v.elem);
    if (v.count > c.left() / es)
      fail("{}: metadata '{}' claims {} {} values ({} bytes each) but only {} bytes follow", path, key, v.count,
           value_type_name(v.elem), es, c.left());
    v.raw = c.here();
    c.skip(v.count * es, what);
  }
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::Bool: return "bool";
    case ValueType::String: return "string";
    case ValueType::Array: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "?";
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // bounded when the file was opened
  return n;
}

bool File::is_gguf(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st {};
  char magic[4] = {};
  const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ::pread(fd, magic, 4, 0) == 4 &&
                  std::memcmp(magic, "GGUF", 4) == 0;
  ::close(fd);
  return ok;
}

File File::open(const std::string& path) {
  File f;
  f.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot open GGUF file {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot read GGUF file {}: not a regular file", path);
  }
  f.size_ = uint64_t(st.st_size);
  if (f.size_ < 24) {
    ::close(fd);
    fail("{} is {} bytes, too short for a GGUF file (magic, version and two counts take 24)", path, f.size_);
  }
  void* p = ::mmap(nullptr, size_t(f.size_), PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot mmap {}: {}", path, std::strerror(err));
  const size_t sz = size_t(f.size_);
  f.map_ = std::shared_ptr<void>(p, [sz](void* q) { ::munmap(q, sz); });
  const auto* base = static_cast<const uint8_t*>(p);

  Cursor c(base, f.size_, f.path_);
  if (std::memcmp(base, "GGUF", 4) != 0) fail("{} is not a GGUF file (no 'GGUF' magic)", path);
  c.skip(4, "magic");
  f.version_ = c.get<uint32_t>("version");
  if (f.version_ == 1) fail("{}: GGUF version 1 (32-bit counts) is not supported; re-convert it with a current gguf", path);
  if (f.version_ != 2 && f.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(f.version_);
    if (swapped >= 1 && swapped <= 3) fail("{}: big-endian GGUF files are not supported", path);
    fail("{}: unsupported GGUF version {} (2 and 3 are read)", path, f.version_);
  }
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  // Each key-value takes at least 8 + 4 bytes and each tensor info 8 + 4 + 8 + 4 + 8.
  if (n_kv > c.left() / 12) fail("{}: GGUF header claims {} metadata entries, more than the file can hold", path, n_kv);
  if (n_tensors > c.left() / 32) fail("{}: GGUF header claims {} tensors, more than the file can hold", path, n_tensors);

  for (uint64_t k = 0; k < n_kv; k++) {
    std::string key = c.str(fmt::format("metadata key #{}", k));
    if (key.empty()) fail("{}: metadata key #{} is empty", path, k);
    if (f.kv_.count(key)) fail("{}: metadata key '{}' appears twice", path, key);
    const uint32_t t = c.get<uint32_t>("metadata '" + key + "' type");
    if (!valid_type(t)) fail("{}: metadata '{}' has unknown value type {}", path, key, t);
    Value v;
    v.type = ValueType(t);
    if (v.type == ValueType::Array) read_array(c, v, key, path, 0, true);
    else read_scalar(c, v.type, v, "metadata '" + key + "'");
    if (v.type == ValueType::Bool && v.u > 1) fail("{}: metadata '{}' is a bool of value {}", path, key, v.u);
    f.key_order_.push_back(key);
    f.kv_.emplace(std::move(key), std::move(v));
  }

  if (const Value* a = f.find("general.alignment")) {
    if (a->type != ValueType::U32)
      fail("{}: metadata 'general.alignment' is {}, expected u32", path, value_type_name(a->type));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0 || a->u > kMaxAlignment)
      fail("{}: metadata 'general.alignment' is {}, not a power of two up to 2^30", path, a->u);
    f.alignment_ = uint32_t(a->u);
  }

  f.tensors_.reserve(size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; k++) {
    TensorEntry t;
    t.name = c.str(fmt::format("tensor info #{} name", k));
    if (t.name.empty()) fail("{}: tensor #{} has an empty name", path, k);
    if (f.tensor_index_.count(t.name)) fail("{}: tensor '{}' appears twice", path, t.name);
    const std::string where = "tensor '" + t.name + "'";
    const uint32_t nd = c.get<uint32_t>(where + " dimension count");
    if (nd < 1 || nd > kMaxDims) fail("{}: {} has {} dimensions (1..{} allowed)", path, where, nd, kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; d++) {
      const uint64_t n = c.get<uint64_t>(where + " dimension");
      if (n == 0 || n > uint64_t(std::numeric_limits<int64_t>::max()) || !checked_mul(numel, n, &numel) ||
          numel > uint64_t(std::numeric_limits<int64_t>::max()))
        fail("{}: {} has dimension {} = {} (positive, product below 2^63 required)", path, where, d, n);
      t.ne.push_back(int64_t(n));
    }
    const uint32_t type = c.get<uint32_t>(where + " type");
    const BlockTraits* tr = block_traits(type);
    if (!tr) fail("{}: {} has unknown tensor type {}", path, where, type);
    t.type = BlockType(type);
    if (t.ne[0] % tr->block_values != 0)
      fail("{}: {} is {} but its rows of {} values are not a multiple of the block ({})", path, where, tr->name,
           t.ne[0], tr->block_values);
    if (!checked_mul(numel / uint64_t(tr->block_values), uint64_t(tr->block_bytes), &t.nbytes))
      fail("{}: {} is too large ({} values of {})", path, where, numel, tr->name);
    t.offset = c.get<uint64_t>(where + " offset");
    if (t.offset % f.alignment_ != 0)
      fail("{}: {} data offset {} is not a multiple of the alignment {}", path, where, t.offset, f.alignment_);
    f.tensor_index_[t.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }

  const uint64_t head_end = c.pos();
  f.data_offset_ = (head_end + f.alignment_ - 1) / f.alignment_ * f.alignment_;  // no overflow: head_end < size
  if (!f.tensors_.empty() && f.data_offset_ > f.size_)
    fail("{}: GGUF file truncated: the data section would start at {}, the file has {} bytes", path, f.data_offset_,
         f.size_);
  const uint64_t data_size = f.size_ - std::min(f.size_, f.data_offset_);
  for (TensorEntry& t : f.tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor '{}' ({}, {} bytes at data offset {}) runs past the end of the file ({} bytes of data)", path,
           t.name, block_type_name(t.type), t.nbytes, t.offset, data_size);
    t.file_offset = f.data_offset_ + t.offset;
    t.data = base + t.file_offset;
  }
  // No two tensors may share bytes.
  std::vector<const TensorEntry*> by_off;
  for (auto& t : f.tensors_) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_off.size(); k++)
    if (by_off[k - 1]->offset + by_off[k - 1]->nbytes > by_off[k]->offset)
      fail("{}: tensors '{}' and '{}' overlap", path, by_off[k - 1]->name, by_off[k]->name);
  return f;
}

const Value* File::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const Value& File::get(const std::string& key) const {
  const Value* v = find(key);
  if (!v) fail("{}: GGUF metadata has no '{}'", path_, key);
  return *v;
}

uint64_t File::get_uint(const std::string& key) const {
  const Value& v = get(key);
  switch (v.type) {
    case ValueType::U8: case ValueType::U16: case ValueType::U32: case ValueType::U64: return v.u;
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64:
      if (v.i < 0) fail("{}: metadata '{}' is {}, expected a non-negative integer", path_, key, v.i);
      return uint64_t(v.i);
    default: fail("{}: metadata '{}' is {}, expected an unsigned integer", path_, key, value_type_name(v.type));
  }
}

int64_t File::get_int(const std::string& key) const {
  const Value& v = get(key);
  switch (v.type) {
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64: return v.i;
    case ValueType::U8: case ValueType::U16: case ValueType::U32: case ValueType::U64:
      if (v.u > uint64_t(std::numeric_limits<int64_t>::max())) fail("{}: metadata '{}' = {} is too large", path_, key, v.u);
      return int64_t(v.u);
    default: fail("{}: metadata '{}' is {}, expected an integer", path_, key, value_type_name(v.type));
  }
}

double File::get_float(const std::string& key) const {
  const Value& v = get(key);
  switch (v.type) {
    case ValueType::F32: case ValueType::F64: return v.f;
    case ValueType::U8: case ValueType::U16: case ValueType::U32: case ValueType::U64: return double(v.u);
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64: return double(v.i);
    default: fail("{}: metadata '{}' is {}, expected a number", path_, key, value_type_name(v.type));
  }
}

bool File::get_bool(const std::string& key) const {
  const Value& v = get(key);
  if (v.type != ValueType::Bool) fail("{}: metadata '{}' is {}, expected bool", path_, key, value_type_name(v.type));
  return v.u != 0;
}

const std::string& File::get_string(const std::string& key) const {
  const Value& v = get(key);
  if (v.type != ValueType::String) fail("{}: metadata '{}' is {}, expected string", path_, key, value_type_name(v.type));
  return v.s;
}

const std::vector<std::string>& File::get_strings(const std::string& key) const {
  const Value& v = get(key);
  if (v.type != ValueType::Array || v.elem != ValueType::String)
    fail("{}: metadata '{}' is {}, expected an array of strings", path_, key,
         v.type == ValueType::Array ? "an array of " + std::string(value_type_name(v.elem)) : value_type_name(v.type));
  return v.strs;
}

std::vector<float> File::get_floats(const std::string& key) const {
  const Value& v = get(key);
  if (v.type != ValueType::Array || (v.elem != ValueType::F32 && v.elem != ValueType::F64))
    fail("{}: metadata '{}' is {}, expected an array of f32", path_, key,
         v.type == ValueType::Array ? "an array of " + std::string(value_type_name(v.elem)) : value_type_name(v.type));
  std::vector<float> out(size_t(v.count));
  for (uint64_t k = 0; k < v.count; k++) {
    if (v.elem == ValueType::F32) std::memcpy(&out[k], v.raw + 4 * k, 4);
    else {
      double d;
      std::memcpy(&d, v.raw + 8 * k, 8);
      out[k] = float(d);
    }
  }
  return out;
}

std::vector<int64_t> File::get_ints(const std::string& key) const {
  const Value& v = get(key);
  const size_t es = scalar_size(v.elem);
  if (v.type != ValueType::Array || es == 0 || v.elem == ValueType::F32 || v.elem == ValueType::F64 ||
      v.elem == ValueType::Bool)
    fail("{}: metadata '{}' is {}, expected an array of integers", path_, key,
         v.type == ValueType::Array ? "an array of " + std::string(value_type_name(v.elem)) : value_type_name(v.type));
  std::vector<int64_t> out(size_t(v.count));
  for (uint64_t k = 0; k < v.count; k++) {
    const uint8_t* p = v.raw + es * k;
    switch (v.elem) {
      case ValueType::U8: out[k] = *p; break;
      case ValueType::I8: out[k] = int8_t(*p); break;
      case ValueType::U16: { uint16_t x; std::memcpy(&x, p, 2); out[k] = x; break; }
      case ValueType::I16: { int16_t x; std::memcpy(&x, p, 2); out[k] = x; break; }
      case ValueType::U32: { uint32_t x; std::memcpy(&x, p, 4); out[k] = x; break; }
      case ValueType::I32: { int32_t x; std::memcpy(&x, p, 4); out[k] = x; break; }
      case ValueType::U64: {
        uint64_t x;
        std::memcpy(&x, p, 8);
        if (x > uint64_t(std::numeric_limits<int64_t>::max())) fail("{}: metadata '{}'[{}] = {} is too large", path_, key, k, x);
        out[k] = int64_t(x);
        break;
      }
      default: { int64_t x; std::memcpy(&x, p, 8); out[k] = x; break; }
    }
  }
  return out;
}

std::string File::describe(const std::string& key) const {
  const Value& v = get(key);
  switch (v.type) {
    case ValueType::String: return v.s.size() > 80 ? fmt::format("\"{}...\" ({} bytes)", v.s.substr(0, 60), v.s.size()) : "\"" + v.s + "\"";
    case ValueType::Array: return fmt::format("[array of {} {}]", v.count, value_type_name(v.elem));
    case ValueType::Bool: return v.u ? "true" : "false";
    case ValueType::F32: case ValueType::F64: return fmt::format("{}", v.f);
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64: return fmt::format("{}", v.i);
    default: return fmt::format("{}", v.u);
  }
}

const TensorEntry* File::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorEntry& File::tensor(const std::string& name) const {
  const TensorEntry* t = find_tensor(name);
  if (!t) fail("{}: GGUF file has no tensor '{}'", path_, name);
  return *t;
}

}  // namespace sky::gguf
