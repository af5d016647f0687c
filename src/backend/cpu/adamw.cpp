#include "backend/cpu/adamw.h"

#include <cmath>

namespace sky {

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float b1, float b2, float eps, float shrink,
                  float step_size, float inv_sqrt_bc2, float grad_scale) {
  // One pass over p, g, m, v: the update is bound by memory traffic.
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * grad_scale;
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    p[i] = p[i] * shrink - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace sky
