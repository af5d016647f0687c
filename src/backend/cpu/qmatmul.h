#pragma once
// Linear layers for inference with f32 activations and f32, bf16 or fp8-E4M3 weights (per-tensor or
// per-output-row f32 scales). Weights are decoded in registers, never into a temporary array.
// Memory-bound at small N (decode): speed is bytes per weight and how close the loop runs to the
// memory roofline. SIMD code for each x86 target (SSSE3 ... AVX-512) is picked at run time by
// Highway. E4M3 NaN codes (0x7F, 0xFF) are not supported in weights (they decode to +-480).
#include <cstdint>
#include <initializer_list>

#include "backend/backend.h"
#include "core/weight.h"

namespace sky {



// y[N, O] = x[N, I] * W^T (overwrites y). Parallel over output rows (OpenMP); every weight row is
// read once for all N input rows. Rows of x and y are contiguous with strides I and O.
void qmatmul(float* y, const float* x, const QWeight& w, int N);

// Several products of the same x [N, I] in one parallel region (e.g. the q, k and v projections):
// ys[j] = x * ws[j]^T. The concatenated output rows are split evenly across the threads.
using QProduct = LinearOut;
void qmatmul_multi(const float* x, int N, std::initializer_list<QProduct> products);
void qmatmul_multi(const float* x, int N, const QProduct* products, int count);

// The same over a sub-range of output rows [o_begin, o_end) on the calling thread only (for use
// inside a parallel region, e.g. grouped expert GEMMs). y keeps stride O.
void qmatmul_rows(float* y, const float* x, const QWeight& w, int N, int o_begin, int o_end);
// Several products of the same x over the same output rows (an expert's gate and up projections):
// x is converted (quantized, rounded to bf16) once for all of them.
void qmatmul_rows_multi(const float* x, int N, const QProduct* products, int count, int o_begin, int o_end);

// BF16 and FP8 weights go through bf16 dot products (vdpbf16ps) where the CPU has AVX512-BF16 and
// AVX512-VBMI: activations are rounded to bf16 (nearest even, relative error <= 2^-9 each) before
// exact products summed in f32, at about twice the f32 FMA rate (batched decode and prefill are
// compute-bound). Same results for a row whatever the batch around it. On by default; off forces
// the f32 kernels (tests, comparisons). F32 weights always use the f32 kernels.
void qmatmul_set_bf16_dot(bool on);
bool qmatmul_uses_bf16_dot(DType weight_dtype);

// Name of the SIMD target chosen at run time (e.g. "AVX3_ZEN4", "AVX2").
const char* qmatmul_target();

}  // namespace sky
