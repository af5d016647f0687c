#pragma once
// A small GGUF (v3) writer: typed key-value metadata, tensor infos and aligned tensor data, the
// single-file format llama.cpp and other ggml programs load. Layout (ggml docs/gguf.md):
//   "GGUF" | u32 version=3 | u64 tensor_count | u64 kv_count
//   kv_count x (string key, u32 value type, value)
//   tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
//   zero padding to the alignment, then each tensor's data, each padded to the alignment.
// Strings are u64 length + bytes (no NUL); everything little-endian. ne[0] is the innermost
// (contiguous) dimension, so a row-major PyTorch [rows, cols] matrix is ne = {cols, rows}.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/block_quant.h"

namespace sky::gguf {

constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;

// gguf_metadata_value_type
enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9,
  U64 = 10, I64 = 11, F64 = 12,
};

// ggml tensor types (ggml_type numbering; core/block_quant.h). The writer produces F32, F16 and
// the types block_quantize encodes (Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
using TensorType = BlockType;

inline const char* tensor_type_name(TensorType t) { return block_type_name(t); }  // "f32", "q8_0", ...
using sky::block_bytes;
using sky::block_values;
// Bytes of a tensor with dimensions ne (innermost first); ne[0] must be a multiple of the block.
uint64_t tensor_nbytes(TensorType t, const std::vector<int64_t>& ne);

// Q8_0: blocks of 32 values -> {f16 d, int8 q[32]} (34 bytes), x ~= d * q. d is max|x|/127 rounded
// to f16, and q = round(x / d) with that rounded d, so the decoded error stays within d/2.
constexpr int kQ8Block = 32;
using sky::quantize_q8_0;  // n a multiple of 32
// The bytes of n values in type t (block_quantize; n a multiple of the block).
std::vector<uint8_t> encode(TensorType t, const float* x, int64_t n);

class Writer {
 public:
  // Metadata, in the order added. Keys must be unique ASCII; arrays must not be empty.
  void add_string(const std::string& key, const std::string& v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  // Sets the data alignment and records it as general.alignment (u32). Without a call the
  // alignment is 32 and no key is written, which readers take as 32.
  void set_alignment(uint32_t alignment);
  bool has_key(const std::string& key) const;

  // Declares a tensor (name <= 63 bytes, 1..4 dims, ne innermost first). `data` runs while the
  // file is written, one tensor at a time, so only one converted tensor is in memory; it must
  // return exactly tensor_nbytes(type, ne) bytes.
  using DataFn = std::function<std::vector<uint8_t>()>;
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> ne, DataFn data);

  struct TensorDecl {
    std::string name;
    TensorType type;
    std::vector<int64_t> ne;
    uint64_t offset;  // relative to the start of the data section
    DataFn data;
  };
  const std::vector<TensorDecl>& tensors() const { return tensors_; }
  size_t kv_count() const { return keys_.size(); }

  // Writes the file atomically (temporary file, then rename). progress(i, tensor) runs before
  // tensor i's data is produced. Returns the file size.
  uint64_t write(const std::string& path,
                 const std::function<void(size_t, const TensorDecl&)>& progress = {}) const;

 private:
  void begin_kv(const std::string& key, ValueType t);
  void begin_array(const std::string& key, ValueType elem, uint64_t n);

  std::vector<std::string> keys_;
  std::vector<uint8_t> kv_;  // the serialized key-value section
  std::vector<TensorDecl> tensors_;
  uint64_t data_size_ = 0;  // padded
  uint32_t alignment_ = kDefaultAlignment;
};

}  // namespace sky::gguf
