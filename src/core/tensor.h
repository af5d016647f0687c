#pragma once
// A typed n-d array whose storage is either owned (heap) or borrowed from a memory map; `owner`
// keeps whichever it is alive, so tensors can be copied cheaply and outlive the file they came from.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace sky {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[4, 8]"

struct Tensor {
  DType dtype = DType::F32;
  Shape shape;
  void* data = nullptr;
  std::shared_ptr<void> owner;

  static Tensor empty(DType dtype, Shape shape);  // uninitialized, 64-byte aligned
  static Tensor zeros(DType dtype, Shape shape);

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }

  float* f32();              // throws unless dtype is F32
  const float* f32() const;
  template <class T> T* as() { return static_cast<T*>(data); }
  template <class T> const T* as() const { return static_cast<const T*>(data); }

  Tensor to_f32() const;         // converted copy (or a copy of the data when already F32)
  Tensor to(DType dst) const;    // converted copy
};

// 64-byte aligned float buffer for activations and gradients.
struct FloatBuf {
  std::shared_ptr<float> p;
  size_t n = 0;
  FloatBuf() = default;
  explicit FloatBuf(size_t n);  // zero-filled
  float* data() { return p.get(); }
  const float* data() const { return p.get(); }
  size_t size() const { return n; }
  float& operator[](size_t i) { return p.get()[i]; }
  float operator[](size_t i) const { return p.get()[i]; }
};

}  // namespace sky
