#pragma once
// The AdamW pass (Backend::adamw's contract), in its own file: built with -fno-math-errno so the
// square root vectorizes (errno from sqrt is never read).
#include <cstddef>

namespace sky {
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float b1, float b2, float eps, float shrink,
                  float step_size, float inv_sqrt_bc2, float grad_scale);
}  // namespace sky
