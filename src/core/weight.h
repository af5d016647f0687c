#pragma once
// The weight handle: a linear layer's matrix [O, I] in the dtype it is held in (f32, bf16, fp8
// E4M3 with per-tensor or per-row f32 scales, or ggml's block-quantized types read from GGUF),
// owned or a zero-copy view into a memory map. Every backend's linear takes one; quantizing to it
// needs no backend.
#include <cstdint>

#include "core/block_quant.h"
#include "core/tensor.h"

namespace sky {

struct QWeight {
  DType dtype = DType::F32;  // F32, BF16, F8_E4M3, or Blocks (then `block` is the ggml type)
  BlockType block = BlockType::F32;  // Blocks only: Q8_0, Q4_0, Q4_K, ... (rows of I / block_values blocks)
  int O = 0, I = 0;          // [O, I], row-major (HF layout)
  const void* data = nullptr;
  const float* scale = nullptr;  // F8_E4M3 only: 1 value (per-tensor) or O values (per-row)
  int scale_count = 0;
  Tensor storage, scale_storage;  // keep the bytes alive (owned, or a view into a memory map)

  size_t row_bytes() const { return dtype == DType::Blocks ? block_row_bytes(block, I) : size_t(I) * dtype_size(dtype); }
  size_t bytes() const { return size_t(O) * row_bytes() + size_t(scale_count) * 4; }
  float row_scale(int o) const { return scale ? scale[scale_count == 1 ? 0 : o] : 1.0f; }
};

// Makes a QWeight from f32 values, converting to `dtype`. For F8_E4M3, `per_row` chooses one scale
// per output row (else one per tensor); scales map each row's (or the tensor's) max |w| to 448.
QWeight quantize_weight(const float* w, int O, int I, DType dtype, bool per_row);
// A view of f32 rows [O, I] that the caller keeps alive (training's master weights, the router).
QWeight f32_view(const float* w, int O, int I);
// A view of block-quantized rows [O, I] (I a multiple of the type's block) kept alive by `owner`.
QWeight block_weight(BlockType type, const void* data, std::shared_ptr<void> owner, int O, int I);
// Row o of any weight decoded to f32 (I values, times the row's scale).
void dequantize_row(const QWeight& w, int o, float* out);

}  // namespace sky
