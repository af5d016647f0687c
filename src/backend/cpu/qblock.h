#pragma once
// Linear layers over ggml's block-quantized weights (QWeight with dtype Blocks: Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), read as stored, with integer dot products: each activation row is
// quantized to int8 in blocks (Acts below: of 32, or of 256 for the K types on AVX2), each block of
// weights is unpacked to 8-bit codes in registers, and the products are summed exactly in int32
// (AVX2 vpmaddubsw + vpmaddwd, AVX512-VNNI vpdpbusd) before one f32 multiply by the two scales.
// The error against exact f32 activations is the activations' rounding: at most d/2 per value, sum
// over blocks of (d/2) * sum |w|.
//
// The code is compiled for several x86 targets (scalar, AVX2+FMA, AVX512-VNNI on 256-bit vectors)
// with function attributes, and the best one the CPU has is chosen at run time.
#include <string>
#include <vector>

#include "core/weight.h"

namespace sky::qblock {

// Activations of N rows of I values quantized to int8, in one of two layouts:
//  - B32: blocks of 32 (I a multiple of 32), one f32 scale d = max|x| / 127 per block, and the sum
//    of the codes per block for the types with a min. Used by the 32-value types and, where the
//    512-bit VNNI kernels run, by Q4_K/Q6_K.
//  - K256: blocks of 256 (I a multiple of 256), one f32 scale per block and the sum of the codes per
//    16 values. The K types' kernels on the SIMD targets: their 6- and 8-bit scales are integers, so
//    a whole block of 256 products sums in int32 (codes times integer scales) before one f32
//    multiply, instead of a float conversion and multiply per 32 values. Coarser: the rounding
//    error per value is half of a scale shared by 256 values (as llama.cpp's Q8_K).
enum class ActFormat { B32, K256 };
struct Acts {
  ActFormat format = ActFormat::B32;
  const int8_t* q = nullptr;    // [N, I]
  const float* d = nullptr;     // [N, I / 32] (B32) or [N, I / 256] (K256)
  const int32_t* s = nullptr;   // B32: [N, I / 32], sum of each block's codes
  const float* ds = nullptr;    // [N, I / 32], d * (sum of each 32 codes) (the min terms' factor)
  const int16_t* bs = nullptr;  // K256: [N, I / 16], sum of each 16 codes
  int N = 0, I = 0;
  // Values per scale: 32 or 256.
  int block() const { return format == ActFormat::K256 ? 256 : 32; }
};
// The layout w's kernel reads under the current target.
ActFormat act_format(const QWeight& w);
// Quantizes x [N, I] into per-thread scratch (one buffer per layout, valid until this thread's next
// call for that layout).
Acts quantize(const float* x, int N, int I, ActFormat f = ActFormat::B32);

// y[n, o] = dot(w row o, x row n) for o in [o_begin, o_end), on the calling thread; y has stride w.O.
void rows(const QWeight& w, const Acts& a, float* y, int o_begin, int o_end);

bool supported(BlockType t);

// Batched calls may take another path than the int8 kernels: weight rows decoded to f32
// (scale * code + min) once per call into panels that stay in L2, then multiplied with the f32 or
// bf16 activations by dense register tiles, so the decode cost is paid once per weight for all N
// rows instead of an int8 product per row and group.
//  - BF16 (CPUs with AVX512-BF16 and VBMI, bf16dot::supported()): the panels rounded to bf16 and
//    qmatmul_bf16's vdpbf16ps tiles; N >= 8, or 32 where 512-bit int8 kernels run. Error: bf16
//    rounding of weights and activations (relative 2^-8 each), f32 sums.
//  - F32 (the AVX2 target): qmatmul's f32 FMA tiles, for the types whose int8 kernels are slower
//    per product than f32 FMAs (the 32-value types and Q6_K; bench_qmatmul). Exact weights and
//    activations, f32 sums: more exact than the int8 kernels.
enum class Panels { None, BF16, F32 };
Panels panels(const QWeight& w, int N);
// xb: x converted by bf16dot::convert_rows for DType::BF16; y has stride w.O.
void rows_bf16(const QWeight& w, const uint16_t* xb, float* y, int N, int o_begin, int o_end);
// Rows [o_begin, o_end) of w decoded to f32 (I values each, stride ld) by this target's decoder.
void decode_rows(const QWeight& w, int o_begin, int o_end, float* out, size_t ld);
// Fewest rows that take panels, of either kind (tests, comparisons: a huge value keeps the int8
// kernels; 0 restores the defaults).
void set_panel_min_rows(int n);

// Run-time target: the names compiled in that this CPU runs ("scalar", "avx2", "avx512vnni"), the
// one in use, and a way for tests to force one (returns false when it cannot run here).
std::vector<std::string> targets();
const char* target();
bool set_target(const std::string& name);

}  // namespace sky::qblock
