#pragma once
// Element types and exact conversions (round-to-nearest-even). E4M3 is the "fn" variant: no
// infinity, NaN = S.1111.111, saturates at +-448. E5M2, F16 and BF16 follow IEEE rules.
#include <cstddef>
#include <cstdint>
#include <string>

namespace sky {

// Blocks: a block-quantized matrix (ggml's Q8_0, Q4_K, ...; QWeight::block names the type); not an
// element type of tensors, so it has no name in files and no conversions.
enum class DType : uint8_t { F32, BF16, F16, F8_E4M3, F8_E5M2, U32, I64, Blocks };

size_t dtype_size(DType t);
const char* dtype_name(DType t);           // safetensors spelling: "F32", "BF16", ...
bool dtype_from_name(const std::string& s, DType* out);  // false when unknown
DType dtype_parse(const std::string& s);   // throws sky::Error naming the value

uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
uint8_t f32_to_e4m3(float x);
float e4m3_to_f32(uint8_t v);
uint8_t f32_to_e5m2(float x);
float e5m2_to_f32(uint8_t v);

// Converts n elements of a float-like dtype to f32 / from f32.
void convert_to_f32(DType src, const void* in, float* out, size_t n);
void convert_from_f32(DType dst, const float* in, void* out, size_t n);
bool dtype_is_float(DType t);

}  // namespace sky
