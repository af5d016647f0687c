#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sky {

void parallel_for(size_t n, const std::function<void(size_t)>& body, int threads) {
  size_t nt = threads > 0 ? size_t(threads) : std::max(1u, std::thread::hardware_concurrency());
  nt = std::min(nt, n);
  if (nt <= 1) {
    for (size_t i = 0; i < n; i++) body(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::mutex mu;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      try {
        body(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!err) err = std::current_exception();
        next = n;  // stop handing out work
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < nt; t++) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (err) std::rethrow_exception(err);
}

double touch_bytes(const void* p, size_t bytes) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  constexpr size_t kChunk = size_t(1) << 24;
  const size_t chunks = (bytes + kChunk - 1) / kChunk;
  std::vector<double> part(chunks, 0.0);
  parallel_for(chunks, [&](size_t k) {
    double s = 0;
    for (size_t i = k * kChunk; i < std::min(bytes, (k + 1) * kChunk); i += 64) s += c[i];
    part[k] = s;
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}

}  // namespace sky
