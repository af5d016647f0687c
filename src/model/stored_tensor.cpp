#include "model/stored_tensor.h"

#include <cstring>

#include "core/error.h"

namespace sky {

std::string weight_scale_name(const std::string& n) {
  const std::string suffix = ".weight";
  const bool has = n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
  return (has ? n.substr(0, n.size() - suffix.size()) : n) + ".weight_scale";
}

Tensor read_stored(const SafetensorsReader& r, const StoredAt& at, const Shape& shape) {
  SKY_CHECK(r.has(at.name), "{}: missing tensor '{}'", r.path(), at.name);
  Tensor t = r.get_checked(at.name, at.shape);
  if (at.whole(shape)) return t;
  const int64_t cols = at.shape.back(), rows = shape_numel(shape) / std::max<int64_t>(cols, 1);
  SKY_CHECK(shape.size() == 2 && shape[1] == cols && at.row0 >= 0 && at.row0 + rows <= at.rows(),
            "{}: rows [{}, {}) of '{}' {} do not hold a {} parameter", r.path(), at.row0, at.row0 + rows, at.name,
            shape_str(at.shape), shape_str(shape));
  Tensor v = t;  // the rows, a view (the owner keeps the map alive)
  v.shape = shape;
  v.data = static_cast<char*>(t.data) + size_t(at.row0) * size_t(cols) * dtype_size(t.dtype);
  return v;
}

std::optional<Tensor> read_stored_scale(const SafetensorsReader& r, const StoredAt& at, int64_t rows) {
  const std::string sn = weight_scale_name(at.name);
  if (!r.has(sn)) return std::nullopt;
  Tensor sc = r.get(sn).to_f32();
  const int64_t ns = sc.numel(), stored_rows = at.shape.empty() ? 1 : at.shape.size() == 1 ? at.shape[0] : at.rows();
  SKY_CHECK(ns == 1 || ns == stored_rows, "{}: '{}' has {} values; expected 1 (per-tensor) or {} (per-row)", r.path(),
            sn, ns, stored_rows);
  if (ns == 1 || (at.row0 == 0 && rows == ns)) return sc;
  SKY_CHECK(at.row0 + rows <= ns, "{}: '{}' has no rows [{}, {})", r.path(), sn, at.row0, at.row0 + rows);
  Tensor part = Tensor::empty(DType::F32, {rows});
  std::memcpy(part.data, sc.f32() + at.row0, sizeof(float) * size_t(rows));
  return part;
}

void StoredWriter::add(const StoredAt& at, const Shape& shape, const float* data) {
  if (at.whole(shape)) {
    Tensor t;
    t.dtype = DType::F32;
    t.shape = shape;
    t.data = const_cast<float*>(data);
    order_.emplace_back(at.name, t);
    return;
  }
  auto it = stacked_.find(at.name);
  if (it == stacked_.end()) {
    it = stacked_.emplace(at.name, Stacked{Tensor::zeros(DType::F32, at.shape), 0}).first;
    order_.emplace_back(at.name, Tensor{});  // filled by finish()
  }
  Stacked& s = it->second;
  SKY_CHECK(s.t.shape == at.shape, "'{}' is stored as {} and as {}", at.name, shape_str(s.t.shape), shape_str(at.shape));
  const int64_t cols = at.shape.back(), rows = shape_numel(shape) / std::max<int64_t>(cols, 1);
  SKY_CHECK(shape.size() == 2 && shape[1] == cols && at.row0 >= 0 && at.row0 + rows <= at.rows(),
            "rows [{}, {}) of '{}' {} cannot hold a {} parameter", at.row0, at.row0 + rows, at.name,
            shape_str(at.shape), shape_str(shape));
  std::memcpy(s.t.f32() + size_t(at.row0) * size_t(cols), data, sizeof(float) * size_t(rows * cols));
  s.rows_given += rows;
}

NamedTensors StoredWriter::finish(DType dtype) {
  NamedTensors out;
  for (auto& [name, t] : order_) {
    Tensor w = t;
    if (auto it = stacked_.find(name); it != stacked_.end()) {
      SKY_CHECK(it->second.rows_given == shape_numel(it->second.t.shape) / it->second.t.shape.back(),
                "'{}': {} of its {} rows were given", name, it->second.rows_given,
                shape_numel(it->second.t.shape) / it->second.t.shape.back());
      w = it->second.t;
    }
    out.emplace_back(name, dtype == DType::F32 || w.shape.size() == 1 ? w : w.to(dtype));
  }
  order_.clear();
  stacked_.clear();
  return out;
}

}  // namespace sky
