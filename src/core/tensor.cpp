#include "core/tensor.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace sky {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

static std::shared_ptr<void> aligned_alloc_shared(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) fail("out of memory allocating {} bytes", bytes);
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  for (auto d : shape) SKY_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.owner = aligned_alloc_shared(t.nbytes());
  t.data = t.owner.get();
  return t;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t = empty(dtype, std::move(shape));
  std::memset(t.data, 0, t.nbytes());
  return t;
}

float* Tensor::f32() {
  SKY_CHECK(dtype == DType::F32, "expected an F32 tensor, got {}", dtype_name(dtype));
  return static_cast<float*>(data);
}
const float* Tensor::f32() const {
  SKY_CHECK(dtype == DType::F32, "expected an F32 tensor, got {}", dtype_name(dtype));
  return static_cast<const float*>(data);
}

Tensor Tensor::to_f32() const { return to(DType::F32); }

Tensor Tensor::to(DType dst) const {
  Tensor out = empty(dst, shape);
  if (dst == dtype) {
    std::memcpy(out.data, data, nbytes());
  } else if (dst == DType::F32) {
    convert_to_f32(dtype, data, out.f32(), numel());
  } else {
    Tensor tmp = to_f32();
    convert_from_f32(dst, tmp.f32(), out.data, numel());
  }
  return out;
}

FloatBuf::FloatBuf(size_t n_) : n(n_) {
  // Large buffers (weights, gradients, optimizer moments: streamed every step) on 2 MiB pages where
  // the kernel allows it (transparent huge pages in madvise mode): far fewer TLB misses per pass.
  constexpr size_t kHuge = size_t(2) << 20;
  const bool huge = n * 4 >= 2 * kHuge;
  const size_t align = huge ? kHuge : 64, bytes = std::max((n * 4 + align - 1) / align * align, align);
  float* q = static_cast<float*>(std::aligned_alloc(align, bytes));
  if (!q) fail("out of memory allocating {} floats", n);
  if (huge) madvise(q, bytes, MADV_HUGEPAGE);  // advice only: failure just means small pages
  std::memset(q, 0, n * 4);
  p = std::shared_ptr<float>(q, [](float* r) { std::free(r); });
}

}  // namespace sky
