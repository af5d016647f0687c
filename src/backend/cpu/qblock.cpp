#include "backend/cpu/qblock.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/scratch.h"
#include "backend/cpu/qmatmul_bf16.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* (GCC bug 105593).
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sky::qblock {

// Plain C++ (any x86-64), then the SIMD targets with function attributes: the build needs no -m
// flags, and only the target chosen at run time executes.
// Everything the tile loop calls is inlined into it: a call there would spill the accumulators.
#define QB_INLINE inline __attribute__((always_inline))
#define QB_NS scalar
#define QB_SIMD 0
#include "backend/cpu/qblock_impl.inc"
#undef QB_NS
#undef QB_SIMD

// GCC takes a target for a region of functions by `#pragma GCC target`; clang (the sanitizer
// build) by `#pragma clang attribute`.
#if defined(__clang__)
#define QB_TARGET_BEGIN(t) _Pragma(QB_STR(clang attribute push(__attribute__((target(t))), apply_to = function)))
#define QB_TARGET_END _Pragma("clang attribute pop")
#else
#define QB_TARGET_BEGIN(t) _Pragma("GCC push_options") _Pragma(QB_STR(GCC target(t)))
#define QB_TARGET_END _Pragma("GCC pop_options")
#endif
#define QB_STR(x) #x

QB_TARGET_BEGIN("avx2,fma,f16c")
#define QB_NS avx2
#define QB_SIMD 1
#include "backend/cpu/qblock_impl.inc"
#undef QB_NS
#undef QB_SIMD
QB_TARGET_END

QB_TARGET_BEGIN("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define QB_NS vnni
#define QB_SIMD 2
#include "backend/cpu/qblock_impl.inc"
#undef QB_NS
#undef QB_SIMD
QB_TARGET_END

namespace {

using RowsFn = void (*)(const QWeight&, const Acts&, float*, int, int);
using DecodeFn = void (*)(const QWeight&, int, int, float*, size_t);
using QuantizeFn = void (*)(const float*, size_t, int, int8_t*, float*, int32_t*, float*, int16_t*);
struct Target {
  const char* name;
  RowsFn rows;
  DecodeFn decode;
  QuantizeFn quantize;
  bool (*uses_k)(BlockType);
  bool (*runs)();
};
const Target kTargets[] = {
    {"avx512vnni", vnni::rows, vnni::decode, vnni::quantize_blocks, vnni::uses_k,
     [] {
       return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx512f") &&
              __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
              __builtin_cpu_supports("avx512vnni");
     }},
    {"avx2", avx2::rows, avx2::decode, avx2::quantize_blocks, avx2::uses_k,
     [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }},
    {"scalar", scalar::rows, scalar::decode, scalar::quantize_blocks, scalar::uses_k,
     [] { return true; }},
};

const Target* best() {
  static const Target* t = [] {
    for (const Target& c : kTargets)
      if (c.runs()) return &c;
    return &kTargets[2];
  }();
  return t;
}
const Target* g_forced = nullptr;
const Target* current() { return g_forced ? g_forced : best(); }

// One set per activation layout (B32, K256): a call may need both.
thread_local AlignedScratch<int8_t> t_q[2];
thread_local AlignedScratch<float> t_d[2];
thread_local AlignedScratch<int32_t> t_s;
thread_local AlignedScratch<float> t_ds;
thread_local AlignedScratch<int16_t> t_bs;
thread_local AlignedScratch<float> t_panel_f32;
thread_local AlignedScratch<uint16_t> t_panel_bf16;

// Fewest activation rows for which panels beat the int8 kernels (bench_qmatmul). bf16 panels
// (Sapphire Rapids): 8, or 32 for the types with 512-bit VNNI kernels, which keep up with the
// panels at 16 rows and lose at 64. f32 panels (AVX2, AMD EPYC Zen 3): f32_min_rows.
// SKYMOE_QBLOCK_PANEL_MIN_ROWS overrides all (model-level comparisons; a huge value keeps the int8
// kernels).
int env_min_rows() {
  const char* e = std::getenv("SKYMOE_QBLOCK_PANEL_MIN_ROWS");
  return e && std::atoi(e) > 0 ? std::atoi(e) : 0;
}
int g_panel_min_rows = env_min_rows();  // 0: the defaults

int f32_min_rows(BlockType t) {
  switch (t) {
    case BlockType::Q8_0: case BlockType::Q4_0: case BlockType::Q4_1: case BlockType::Q5_0: case BlockType::Q5_1:
      return 32;
    default: return 1 << 30;  // the K types: their int8 kernels keep up with f32 FMAs
  }
}

}  // namespace

bool supported(BlockType t) {
  switch (t) {
    case BlockType::Q8_0: case BlockType::Q4_0: case BlockType::Q4_1: case BlockType::Q5_0: case BlockType::Q5_1:
    case BlockType::Q4_K: case BlockType::Q5_K: case BlockType::Q6_K: case BlockType::Q2_K: case BlockType::Q3_K:
      return true;
    default: return false;
  }
}

ActFormat act_format(const QWeight& w) {
  return w.dtype == DType::Blocks && current()->uses_k(w.block) ? ActFormat::K256 : ActFormat::B32;
}

Acts quantize(const float* x, int N, int I, ActFormat f) {
  Acts a;
  a.format = f;
  a.N = N;
  a.I = I;
  const int bv = a.block(), k = f == ActFormat::K256;
  SKY_CHECK(I % bv == 0, "qblock: rows of {} values are not whole blocks of {}", I, bv);
  const size_t values = size_t(N) * I;
  int8_t* q = t_q[k].get(values);
  float* d = t_d[k].get(values / bv);
  int32_t* s = k ? nullptr : t_s.get(values / 32);
  float* ds = t_ds.get(values / 32);
  int16_t* bs = k ? t_bs.get(values / 16) : nullptr;
  current()->quantize(x, values, bv, q, d, s, ds, bs);
  a.q = q, a.d = d, a.s = s, a.ds = ds, a.bs = bs;
  return a;
}

void rows(const QWeight& w, const Acts& a, float* y, int o_begin, int o_end) {
  SKY_CHECK(w.dtype == DType::Blocks && supported(w.block), "qblock: weight type {} has no kernel",
            w.dtype == DType::Blocks ? block_type_name(w.block) : dtype_name(w.dtype));
  SKY_CHECK(a.I == w.I, "qblock: activations of {} values for rows of {}", a.I, w.I);
  SKY_CHECK(a.format == act_format(w), "qblock: {} activations for a {} kernel that reads the other layout",
            a.format == ActFormat::K256 ? "K256" : "B32", block_type_name(w.block));
  if (a.N <= 0 || o_begin >= o_end) return;
  current()->rows(w, a, y, o_begin, o_end);
}

Panels panels(const QWeight& w, int N) {
  if (bf16dot::supported()) {
    const bool wide = current() == &kTargets[0] &&
                      (w.block == BlockType::Q4_K || w.block == BlockType::Q6_K || w.block == BlockType::Q8_0);
    return N >= (g_panel_min_rows ? g_panel_min_rows : wide ? 32 : 8) ? Panels::BF16 : Panels::None;
  }
  if (current() != &kTargets[1]) return Panels::None;
  return N >= (g_panel_min_rows ? g_panel_min_rows : f32_min_rows(w.block)) ? Panels::F32 : Panels::None;
}

void set_panel_min_rows(int n) { g_panel_min_rows = n > 0 ? n : env_min_rows(); }

void decode_rows(const QWeight& w, int o_begin, int o_end, float* out, size_t ld) {
  SKY_CHECK(w.dtype == DType::Blocks && supported(w.block), "qblock: weight type {} has no kernel",
            w.dtype == DType::Blocks ? block_type_name(w.block) : dtype_name(w.dtype));
  if (o_begin < o_end) current()->decode(w, o_begin, o_end, out, ld);
}

void rows_bf16(const QWeight& w, const uint16_t* xb, float* y, int N, int o_begin, int o_end) {
  SKY_CHECK(w.dtype == DType::Blocks && supported(w.block), "qblock: weight type {} has no kernel",
            w.dtype == DType::Blocks ? block_type_name(w.block) : dtype_name(w.dtype));
  if (N <= 0 || o_begin >= o_end) return;
  // Panels of about 128 KiB of bf16, so they stay in L2 while every group of activation rows
  // passes over them; decoded 8 rows at a time through a small f32 buffer that stays in L1.
  const int ld = bf16dot::padded(w.I), P = std::max(8, (64 << 10) / ld / 8 * 8);
  float* f = t_panel_f32.get(size_t(8) * w.I);
  uint16_t* b = t_panel_bf16.get(size_t(P) * ld);
  for (int o0 = o_begin; o0 < o_end; o0 += P) {
    const int R = std::min(P, o_end - o0);
    for (int r = 0; r < R; r += 8) {
      const int k = std::min(8, R - r);
      current()->decode(w, o0 + r, o0 + r + k, f, size_t(w.I));
      bf16dot::convert_rows(b + size_t(r) * ld, f, k, w.I, DType::BF16);
    }
    bf16dot::panel(b, R, w.I, xb, y + o0, size_t(w.O), N);
  }
}

std::vector<std::string> targets() {
  std::vector<std::string> out;
  for (const Target& t : kTargets)
    if (t.runs()) out.push_back(t.name);
  return out;
}

const char* target() { return current()->name; }

bool set_target(const std::string& name) {
  if (name.empty()) return g_forced = nullptr, true;
  for (const Target& t : kTargets)
    if (name == t.name && t.runs()) return g_forced = &t, true;
  return false;
}

}  // namespace sky::qblock
