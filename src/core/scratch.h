#pragma once
// A 64-byte aligned buffer that grows on demand and is kept: kernels hold one per thread
// (thread_local) so repeated calls reuse memory instead of faulting fresh pages in each time.
// Contents are not preserved when it grows.
#include <cstddef>
#include <cstdlib>

#include "core/error.h"

namespace sky {

template <class T>
class AlignedScratch {
 public:
  AlignedScratch() = default;
  AlignedScratch(const AlignedScratch&) = delete;
  AlignedScratch& operator=(const AlignedScratch&) = delete;
  ~AlignedScratch() { std::free(p_); }
  T* get(size_t need) {
    if (need > n_) {
      std::free(p_);
      n_ = need;
      p_ = static_cast<T*>(std::aligned_alloc(64, (n_ * sizeof(T) + 63) / 64 * 64));
      if (!p_) fail("out of memory allocating {} bytes of scratch", n_ * sizeof(T));
    }
    return p_;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace sky
