#pragma once
// qmatmul's bf16 dot-product path (internal to qmatmul.cpp and its tests). For bf16 and fp8 weights
// on CPUs with AVX512-BF16 and AVX512-VBMI: activations are rounded to bf16 once per call, weights
// are decoded to bf16 in registers (fp8 through two 128-entry byte lookups, exactly), and
// vdpbf16ps multiplies 32 pairs per instruction with exact products and f32 sums: about twice the
// f32 FMA rate, which batched decode and prefill (compute-bound) need. Compiled with function
// target attributes and chosen at run time, so the binary still runs on any x86-64.
#include <cstdint>

#include "backend/cpu/qmatmul.h"

namespace sky::bf16dot {

bool supported();  // this CPU has AVX512-BF16 and AVX512-VBMI

// Activation row stride (elements) of converted rows: I rounded up to a multiple of 64.
inline int padded(int I) { return (I + 63) / 64 * 64; }

// x [N, I] f32 -> xb [N, padded(I)] bf16 (round to nearest even, zero padding). For F8_E4M3
// weights each block of 64 is stored in the lane order the fp8 decoder produces. xb: 64-aligned.
void convert_rows(uint16_t* xb, const float* x, int N, int I, DType wdtype);

// y[n * w.O + o] for o in [o_begin, o_end): w (BF16 or F8_E4M3) times rows converted for w.dtype.
void rows(const QWeight& w, const uint16_t* xb, float* y, int N, int o_begin, int o_end);

// y[n * ldy + r] for r < R: R bf16 weight rows in convert_rows' natural layout (stride padded(I))
// times N rows converted for BF16 weights (the decoded panels of block-quantized weights).
void panel(const uint16_t* wb, int R, int I, const uint16_t* xb, float* y, size_t ldy, int N);

}  // namespace sky::bf16dot
