#pragma once
// Hugging Face safetensors: memory-mapped reading (one file, or a sharded directory with
// model.safetensors.index.json) and atomic writing (temp file, then rename).
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data (offsets relative to it).
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/block_quant.h"
#include "core/tensor.h"

namespace sky {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  std::string file;     // the shard it lives in
  size_t offset = 0;    // absolute byte offset in that file
  size_t nbytes = 0;
  // Tensors of another format presented under HF names (SafetensorsReader::from_virtual, a GGUF
  // model): the stored type ("q4_K", "f16", ...; dtype is then what get() returns) and bytes stored.
  std::string stored_as;
};

// A matrix in a block-quantized (or plain) ggml type, rows of `cols` values, row-major: a view into
// a GGUF file's map (or a copy when its rows had to be reordered).
struct BlockTensor {
  BlockType type = BlockType::F32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
  std::shared_ptr<void> owner;
  size_t row_bytes() const { return block_row_bytes(type, cols); }
};

class SafetensorsReader {
 public:
  // `path` is a .safetensors file, or a directory holding model.safetensors or
  // model.safetensors.index.json (+ shards). Validates every header fully: header length,
  // JSON, dtypes, shapes vs byte sizes, offsets in range, no overlapping tensors.
  static SafetensorsReader open(const std::string& path);
  // Tensors of another format (model/gguf_model.h) under HF names: get() runs `make` (a view or a
  // converted copy); `blocks`, when set, gives the stored block-quantized form.
  struct Virtual {
    TensorInfo info;
    std::function<Tensor()> make;
    std::function<BlockTensor()> blocks;
  };
  static SafetensorsReader from_virtual(std::string path, std::vector<Virtual> tensors);
  bool is_virtual() const { return !virtual_.empty(); }
  // Whether a (virtual, 2-D) tensor has a stored block form, and that form.
  bool has_blocks(const std::string& name) const;
  BlockTensor blocks(const std::string& name) const;

  bool has(const std::string& name) const { return infos_.count(name) != 0; }
  std::vector<std::string> names() const;  // sorted
  const TensorInfo& info(const std::string& name) const;  // throws naming the tensor and the path
  // A zero-copy view into the memory map (kept alive by the tensor's owner). Read-only (writing
  // through data faults) and not necessarily aligned to the element size: convert or copy.
  Tensor get(const std::string& name) const;
  // get(name) after checking the shape; the error names tensor, file, expected and actual shape.
  Tensor get_checked(const std::string& name, const Shape& expected) const;
  // The header's __metadata__; for a sharded directory also the index's "metadata" (non-string
  // values as JSON text, e.g. total_size), which wins over the shards' on a clash.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::shared_ptr<void>> maps_;  // file -> mapping (munmap on release)
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Virtual> virtual_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes one .safetensors file atomically (temp file + fsync + rename). Tensors keep their dtype.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a model directory's weights: model.safetensors when the total is <= max_shard_bytes,
// else model-0000i-of-0000N.safetensors shards plus model.safetensors.index.json. Each file atomic.
// Creates `dir` if needed and removes weight files of any other layout left in it.
void write_safetensors_dir(const std::string& dir, const NamedTensors& tensors, size_t max_shard_bytes,
                           const std::map<std::string, std::string>& metadata = {});

}  // namespace sky
