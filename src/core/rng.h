#pragma once
// Deterministic, serializable random numbers: the whole state is one 64-bit word (splitmix64), so a
// checkpoint can store it and a resumed run draws exactly the same numbers.
#include <cmath>
#include <cstdint>

namespace sky {

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed = 0) : state(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {  // Box-Muller, no cached second value so the state stays one word
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

}  // namespace sky
