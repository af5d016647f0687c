#pragma once
// Memory read-bandwidth probe, for benchmarks that compare a memory-bound kernel against what the
// machine delivers in the same run (bandwidth on shared VMs varies by minutes; DESIGN.md section 10).
#include <cstddef>

namespace sky {

// All OpenMP threads sum disjoint parts of a `bytes`-sized buffer (allocated and filled once per
// call, so its pages are resident). Median GB/s (1e9 bytes/s) of `reps` passes.
double read_bandwidth_gbs(size_t bytes = size_t(1) << 30, int reps = 5);

}  // namespace sky
