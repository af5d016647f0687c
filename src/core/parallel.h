#pragma once
// Coarse parallel loops for set-up work outside the compute backend (loading, initializing and
// quantizing weights): threads are started per call and take indices from a shared counter, so a
// slow or descheduled thread does not hold the others up. The first exception a body throws is
// rethrown once every thread has stopped. Not for hot paths: those belong to a backend.
#include <cstddef>
#include <functional>

namespace sky {

// body(i) for i in [0, n); threads <= 0: one per hardware thread (capped at n).
void parallel_for(size_t n, const std::function<void(size_t)>& body, int threads = 0);

// Reads one value per 64-byte line of [p, p + bytes) on all threads, so the pages of a memory map
// (or memory the VM paged out) are resident before a benchmark times anything. Returns a checksum
// so the reads are not optimized away.
double touch_bytes(const void* p, size_t bytes);

}  // namespace sky
