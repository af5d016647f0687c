#include "backend/cpu/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace sky {

// 16-byte integer vectors with four independent accumulators, so the loop is bound by memory and
// not by add latency (a plain float `+=` loop is not vectorized without -ffast-math).
typedef uint64_t u64x2 __attribute__((vector_size(16)));

double read_bandwidth_gbs(size_t bytes, int reps) {
  std::vector<u64x2> buf(bytes / sizeof(u64x2), u64x2{1, 2});
  std::vector<double> gbs;
  volatile uint64_t sink = 0;
  const size_t n = buf.size() / 4 * 4;
  for (int r = 0; r < reps; r++) {
    auto t0 = std::chrono::steady_clock::now();
    uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
    {
      u64x2 a = {0, 0}, b = a, c = a, d = a;
#pragma omp for schedule(static) nowait
      for (size_t i = 0; i < n; i += 4) {
        a += buf[i];
        b += buf[i + 1];
        c += buf[i + 2];
        d += buf[i + 3];
      }
      u64x2 s = a + b + c + d;
      total += s[0] + s[1];
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink = sink + total;
    gbs.push_back(n * sizeof(u64x2) / secs / 1e9);
  }
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

}  // namespace sky
