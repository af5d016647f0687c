#pragma once
// Learning-rate schedule: linear warm-up, then constant or cosine decay to min_ratio * lr.
#include <cstdint>
#include <string>

namespace sky {

struct LrSchedule {
  double lr = 3e-4;
  int64_t warmup = 0;
  int64_t total = 1;
  bool cosine = true;
  double min_ratio = 0.1;
  double at(int64_t step) const;  // step counts from 1
};

}  // namespace sky
