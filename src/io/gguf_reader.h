#pragma once
// GGUF reading (format in io/gguf.h): the whole file memory-mapped, the header parsed and checked
// against the file before anything is handed out. Every count, length, dimension, size and offset is
// overflow-checked and bounded by the file, so a truncated or hostile file gives a sky::Error naming
// the path and the key or tensor at fault, never a crash or an out-of-range read. Versions 2 and 3
// (little-endian) are read; version 1 and big-endian files are refused with the reason.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/block_quant.h"
#include "io/gguf.h"

namespace sky::gguf {

const char* value_type_name(ValueType t);  // "u32", "string", "array", ...

// One metadata value. Scalars are held decoded; arrays of numbers stay in the map (unaligned,
// little-endian) and are read through the accessors; arrays of strings are decoded; arrays of
// arrays are checked and skipped (no key llama.cpp writes uses them).
struct Value {
  ValueType type = ValueType::U8;
  // scalars (the one matching `type`)
  uint64_t u = 0;  // U8..U64, Bool
  int64_t i = 0;   // I8..I64
  double f = 0;    // F32, F64
  std::string s;   // String
  // arrays
  ValueType elem = ValueType::U8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;     // numeric elements
  std::vector<std::string> strs;    // string elements
};

struct TensorEntry {
  std::string name;
  BlockType type = BlockType::F32;
  std::vector<int64_t> ne;  // innermost first
  uint64_t offset = 0;      // relative to the data section, as stored
  uint64_t file_offset = 0; // absolute
  uint64_t nbytes = 0;
  const void* data = nullptr;  // into the map
  int64_t numel() const;
};

class File {
 public:
  static File open(const std::string& path);
  // True when `path` is a regular file starting with the GGUF magic (no error otherwise).
  static bool is_gguf(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }
  const std::shared_ptr<void>& mapping() const { return map_; }

  const std::vector<std::string>& keys() const { return key_order_; }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const Value* find(const std::string& key) const;
  const Value& get(const std::string& key) const;  // throws naming the key and the path
  // Typed reads; each throws naming the key, its type and what was expected. Integer reads accept
  // any integer type whose value fits; float reads accept F32/F64 and integers.
  uint64_t get_uint(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  uint64_t get_uint(const std::string& key, uint64_t dflt) const { return has(key) ? get_uint(key) : dflt; }
  double get_float(const std::string& key, double dflt) const { return has(key) ? get_float(key) : dflt; }
  bool get_bool(const std::string& key, bool dflt) const { return has(key) ? get_bool(key) : dflt; }
  std::string get_string(const std::string& key, const std::string& dflt) const { return has(key) ? get_string(key) : dflt; }
  const std::vector<std::string>& get_strings(const std::string& key) const;  // array of string
  std::vector<float> get_floats(const std::string& key) const;                // array of f32/f64
  std::vector<int64_t> get_ints(const std::string& key) const;                // array of integers
  // A value as short text for listings ("[array of 32000 string]").
  std::string describe(const std::string& key) const;

  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* find_tensor(const std::string& name) const;
  const TensorEntry& tensor(const std::string& name) const;  // throws naming it

 private:
  std::string path_;
  std::shared_ptr<void> map_;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::map<std::string, Value> kv_;
  std::vector<std::string> key_order_;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace sky::gguf
