#include "core/weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"

namespace sky {

QWeight f32_view(const float* w, int O, int I) {
  QWeight q;
  q.O = O;
  q.I = I;
  q.data = w;
  return q;
}

QWeight block_weight(BlockType type, const void* data, std::shared_ptr<void> owner, int O, int I) {
  const BlockTraits* t = block_traits(uint32_t(type));
  SKY_CHECK(t && t->decodable && block_is_quantized(type), "block_weight: type {} is not a block type skymoe runs",
            t ? t->name : "?");
  SKY_CHECK(I % t->block_values == 0, "block_weight: {} rows of {} values are not whole blocks", t->name, I);
  QWeight q;
  q.dtype = DType::Blocks;
  q.block = type;
  q.O = O;
  q.I = I;
  q.data = data;
  q.storage.dtype = DType::U32;  // only keeps the bytes alive
  q.storage.data = const_cast<void*>(data);
  q.storage.owner = std::move(owner);
  return q;
}

void dequantize_row(const QWeight& w, int o, float* out) {
  const auto* row = static_cast<const uint8_t*>(w.data) + size_t(o) * w.row_bytes();
  if (w.dtype == DType::Blocks) return block_dequantize(w.block, row, out, w.I);
  convert_to_f32(w.dtype, row, out, size_t(w.I));
  const float s = w.row_scale(o);
  if (w.scale)
    for (int i = 0; i < w.I; i++) out[i] *= s;
}

QWeight quantize_weight(const float* w, int O, int I, DType dtype, bool per_row) {
  QWeight q;
  q.dtype = dtype;
  q.O = O;
  q.I = I;
  q.storage = Tensor::empty(dtype, {O, I});
  q.data = q.storage.data;
  const size_t n = size_t(O) * I;
  switch (dtype) {
    case DType::F32: std::memcpy(q.storage.data, w, n * 4); break;
    case DType::BF16: convert_from_f32(DType::BF16, w, q.storage.data, n); break;
    case DType::F8_E4M3: {
      const int ns = per_row ? O : 1;
      q.scale_storage = Tensor::empty(DType::F32, {ns});
      float* s = q.scale_storage.f32();
      const size_t group = per_row ? size_t(I) : n;  // elements sharing one scale
      for (int g = 0; g < ns; g++) {
        float m = 0;
        for (size_t i = 0; i < group; i++) m = std::max(m, std::fabs(w[g * group + i]));
        const float sc = m / 448.0f;
        s[g] = sc > 0 && std::isfinite(sc) ? sc : 1.0f;  // all-zero row: any scale works
      }
      auto* out = q.storage.as<uint8_t>();
      parallel_for(
          size_t(O),
          [&](size_t o) {
            const float so = s[per_row ? o : 0];
            for (int i = 0; i < I; i++) out[o * I + i] = f32_to_e4m3(w[o * I + i] / so);
          },
          n > (1 << 20) ? 0 : 1);
      q.scale = s;
      q.scale_count = ns;
      break;
    }
    default: fail("quantize_weight: unsupported dtype {} (expected F32, BF16 or F8_E4M3)", dtype_name(dtype));
  }
  return q;
}

}  // namespace sky
