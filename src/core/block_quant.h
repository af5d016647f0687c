#pragma once
// ggml's block-quantized tensor types (the element types of GGUF files), numbered as ggml numbers
// them: each holds blocks of `block_values` values in `block_bytes` bytes. Decoding follows the
// GGUF specification's formulas exactly (same f32 operations in the same order, so the values are
// bit-identical to ggml's reference dequantization); tests/test_gguf_model.cpp checks each against
// gguf-py and an independent plain reference. Encoding (block_quantize, below) is checked by
// tests/test_block_quant.cpp.
//
// Layouts (all little-endian; d, dmin, m are f16 unless said):
//   Q4_0  {d; u8 qs[16]}                 x[j] = (lo4(qs[j]) - 8) d, x[j+16] = (hi4(qs[j]) - 8) d
//   Q4_1  {d; m; u8 qs[16]}              x = q d + m
//   Q5_0  {d; u32 qh; u8 qs[16]}         5-bit q: low 4 bits from qs, bit 4 from qh (bit j, j+16); x = (q - 16) d
//   Q5_1  {d; m; u32 qh; u8 qs[16]}      x = q d + m
//   Q8_0  {d; i8 qs[32]}                 x = q d
//   Q4_K  {d; dmin; u8 scales[12]; u8 qs[128]}            256 values in 8 groups of 32, each a 6-bit
//         scale sc and min mn: x = (d sc) q - (dmin mn)
//   Q5_K  {d; dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]} as Q4_K with a fifth bit from qh
//   Q6_K  {u8 ql[128]; u8 qh[64]; i8 scales[16]; d}        16 groups of 16: x = (d sc) (q - 32)
//   Q2_K  {u8 scales[16]; u8 qs[64]; d; dmin}               16 groups of 16, 2-bit q, a 4-bit scale
//         and min per group: x = (d sc) q - (dmin mn)
//   Q3_K  {u8 hmask[32]; u8 qs[64]; u8 scales[12]; d}      16 groups of 16, 3-bit q (2 bits from qs,
//         the third from hmask), 6-bit scales: x = (d (sc - 32)) (q - 4)
#include <cstddef>
#include <cstdint>

namespace sky {

enum class BlockType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10, Q3_K = 11,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19,
  IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28,
  IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
};

struct BlockTraits {
  const char* name;      // ggml's spelling: "f32", "q4_0", "q4_K", ...
  int64_t block_values;  // values per block
  int64_t block_bytes;   // bytes per block
  bool decodable;        // block_dequantize handles it
};

// nullptr for a number ggml does not define (or one it retired, e.g. 4 and 5).
const BlockTraits* block_traits(uint32_t type);
const char* block_type_name(BlockType t);  // "?" when unknown
inline int64_t block_values(BlockType t) { auto* b = block_traits(uint32_t(t)); return b ? b->block_values : 0; }
inline int64_t block_bytes(BlockType t) { auto* b = block_traits(uint32_t(t)); return b ? b->block_bytes : 0; }
// Bytes of n values (n a multiple of the block).
inline size_t block_row_bytes(BlockType t, int64_t n) { return size_t(n / block_values(t) * block_bytes(t)); }
bool block_is_quantized(BlockType t);  // a block type other than F32/F16/BF16

// Decodes n values (a multiple of the block) of a decodable type into f32.
void block_dequantize(BlockType t, const void* src, float* dst, int64_t n);

// Q8_0 encoding (what `export gguf --type q8_0` writes): d = max|x| / 127 rounded to f16, q =
// round(x / d) against the rounded d.
void quantize_q8_0(const float* x, int64_t n, uint8_t* out);

// Encodes n values (a multiple of the block) as Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K:
// round-to-nearest, no importance weights. Each group's step (and offset) starts from its min and
// max, so the grid covers every value, and is then refined by least squares over the rounded codes
// (kept only when it lowers the squared error and still covers every value within half a step).
// K types then round the group scales to 6 bits (Q6_K: 8) against the block's f16 d and dmin, and
// the codes are chosen against those stored scales, so block_dequantize of the output is the
// value the file holds. Every value ends within half its group's stored step plus the scale
// rounding term (tests/test_block_quant.cpp). A non-finite value, or values too large for the
// f16 scales, is a sky::Error naming the type, block and value.
void block_quantize(BlockType t, const float* x, int64_t n, uint8_t* out);
bool block_can_encode(BlockType t);  // F32, F16 and the types above

// Block sizes the kernels use.
constexpr int kQK = 32;    // Q4_0, Q5_0, Q8_0 ...
constexpr int kQKK = 256;  // the K types

}  // namespace sky
