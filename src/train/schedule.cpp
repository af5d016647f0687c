#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace sky {

double LrSchedule::at(int64_t step) const {
  if (warmup > 0 && step <= warmup) return lr * double(step) / double(warmup);
  if (!cosine || total <= warmup) return lr;
  double progress = std::clamp(double(step - warmup) / double(total - warmup), 0.0, 1.0);
  double lo = lr * min_ratio;
  return lo + 0.5 * (lr - lo) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace sky
