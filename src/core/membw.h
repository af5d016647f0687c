#pragma once
// Memory read-bandwidth probe, for benchmarks that compare a memory-bound kernel against what the
// machine delivers in the same run (bandwidth on shared VMs varies by minutes; DESIGN.md section 10).
#include <cstddef>

namespace sky {

// All OpenMP threads sum disjoint parts of a `bytes`-sized buffer (allocated and filled once per
// call, so its pages are resident). Median GB/s (1e9 bytes/s) of `reps` passes.
double read_bandwidth_gbs(size_t bytes = size_t(1) << 30, int reps = 5);

// Reads one value per 64-byte line of [p, p + bytes) with all threads, so the pages of a memory
// map or of memory the VM paged out are resident before timing. Returns a checksum to keep reads.
double touch_bytes(const void* p, size_t bytes);

}  // namespace sky
