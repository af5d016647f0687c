#pragma once
// Parameters where params.h's StoredAt says they are stored: a whole tensor, or rows of a stacked
// one (Granite-MoE's experts). Loading (training and inference) reads a parameter's rows and the
// matching rows of a per-row weight_scale; saving gathers a stacked tensor's rows and writes it
// once, whole, so a checkpoint keeps the family's file layout.
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/params.h"

namespace sky {

// "x.weight" -> "x.weight_scale": the FP8 scale beside a weight.
std::string weight_scale_name(const std::string& weight_name);

// The parameter, of shape `shape` ([rows, cols] or a vector), in its stored dtype: the stored
// tensor's rows [at.row0, at.row0 + rows) as a view into the file. Checks the stored tensor's shape
// (the error names the tensor and the file).
Tensor read_stored(const SafetensorsReader& r, const StoredAt& at, const Shape& shape);

// The parameter's part of the stored tensor's weight_scale: one value (per-tensor) or its `rows`
// values (per-row scales of the whole stored tensor, cut to the parameter's rows); nullopt when
// the tensor has no scale. Throws naming the scale when it has any other count.
std::optional<Tensor> read_stored_scale(const SafetensorsReader& r, const StoredAt& at, int64_t rows);

// Collects a whole model's parameters (f32) for writing: a whole tensor passes through as it is;
// the rows of a stacked tensor are copied into it, and finish() returns it once.
class StoredWriter {
 public:
  // `data` must stay alive until finish() (whole tensors are not copied).
  void add(const StoredAt& at, const Shape& shape, const float* data);
  // The tensors in order of first appearance, matrices converted to `dtype` (vectors stay f32).
  // Throws naming a stacked tensor some of whose rows no parameter gave.
  NamedTensors finish(DType dtype);

 private:
  struct Stacked {
    Tensor t;              // f32, the stored shape
    int64_t rows_given = 0;
  };
  std::vector<std::pair<std::string, Tensor>> order_;  // whole tensors (views) and stacked placeholders
  std::map<std::string, Stacked> stacked_;
};

}  // namespace sky
