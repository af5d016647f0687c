#pragma once
// Linear layers over ggml's block-quantized weights (QWeight with dtype Blocks: Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), read as stored, with integer dot products: each activation row is
// quantized to int8 in blocks of 32 (one f32 scale d = max|x| / 127 and the sum of the codes per
// block, for the types with a min), each block of weights is unpacked to signed 8-bit codes in
// registers, and the products are summed exactly in int32 (AVX2 vpmaddubsw + vpmaddwd, AVX512-VNNI
// vpdpbusd) before one f32 multiply by the two scales. The error against exact f32 activations is
// the activations' rounding: at most d/2 per value, sum over blocks of (d/2) * sum |w|.
//
// The code is compiled for several x86 targets (scalar, AVX2+FMA, AVX512-VNNI on 256-bit vectors)
// with function attributes, and the best one the CPU has is chosen at run time.
#include <string>
#include <vector>

#include "core/weight.h"

namespace sky::qblock {

// Activations of N rows of I values (I a multiple of 32) in int8 blocks.
struct Acts {
  const int8_t* q = nullptr;   // [N, I]
  const float* d = nullptr;    // [N, I / 32]
  const int32_t* s = nullptr;  // [N, I / 32]: sum of each block's codes
  const float* ds = nullptr;   // [N, I / 32]: d * s (the min terms' factor)
  int N = 0, I = 0;
};
// Quantizes x [N, I] into per-thread scratch (valid until this thread's next call).
Acts quantize(const float* x, int N, int I);

// y[n, o] = dot(w row o, x row n) for o in [o_begin, o_end), on the calling thread; y has stride w.O.
void rows(const QWeight& w, const Acts& a, float* y, int o_begin, int o_end);

bool supported(BlockType t);

// Batched calls (N >= 8, or 32 where 512-bit int8 kernels run) on CPUs with AVX512-BF16 and VBMI (bf16dot::supported()) take
// another path: weight rows decoded to f32 (scale * code + min), rounded to bf16 in panels that
// stay in L2, and multiplied with bf16 activations by qmatmul_bf16's vdpbf16ps tiles. The decode
// cost is paid once per weight for all N rows instead of an int8 product per row and group.
// Error: bf16 rounding of weights and activations (relative 2^-8 each), f32 sums.
bool bf16_panels(const QWeight& w, int N);
// xb: x converted by bf16dot::convert_rows for DType::BF16; y has stride w.O.
void rows_bf16(const QWeight& w, const uint16_t* xb, float* y, int N, int o_begin, int o_end);
// Fewest rows that take the bf16 panels (tests, comparisons: a huge value keeps the int8 kernels;
// 0 restores the default).
void set_bf16_min_rows(int n);

// Run-time target: the names compiled in that this CPU runs ("scalar", "avx2", "avx512vnni"), the
// one in use, and a way for tests to force one (returns false when it cannot run here).
std::vector<std::string> targets();
const char* target();
bool set_target(const std::string& name);

}  // namespace sky::qblock
