// Speed of every op of the compute seam on each backend, over the benchmark shapes of the op table
// the harness tests (tests/backend_op_cases.h): median of --reps timed runs after one warm-up,
// with GFLOP/s for compute-bound ops and GB/s (the bytes the op must move) for memory-bound ones,
// beside the backend's own read bandwidth as the roofline.
// Usage: build/bench_backend_ops [--backend NAME]... [--op SUBSTRING] [--reps N] [--json]
// ref (plain single-threaded loops) runs its smaller shapes and at most 3 reps.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

// The table lives with the test; header-only, so this target needs nothing but skymoe_lib.
#include "../tests/backend_op_cases.h"

static int run(int argc, char** argv) {
  std::vector<std::string> devices;
  std::string filter;
  int reps = 5;
  bool json = false;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--backend" && i + 1 < argc)
      devices.push_back(argv[++i]);
    else if (a == "--op" && i + 1 < argc)
      filter = argv[++i];
    else if (a == "--reps" && i + 1 < argc)
      reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--json")
      json = true;
    else {
      std::fprintf(stderr, "usage: %s [--backend NAME]... [--op SUBSTRING] [--reps N] [--json]\n", argv[0]);
      return 2;
    }
  }
  if (devices.empty()) devices = sky::device_names();

  nlohmann::json out = {{"backends", nlohmann::json::array()}, {"results", nlohmann::json::array()}};
  if (!json) fmt::print("{:<24} {:<5} {:<46} {:>10} {:>9} {:>8}\n", "op", "dev", "shape", "ms", "GFLOP/s", "GB/s");
  for (const std::string& dev : devices) {
    sky::Backend& be = sky::backend(dev);
    const double roof = be.memory_bandwidth_gbs(size_t(256) << 20, 3);
    out["backends"].push_back({{"name", dev}, {"describe", be.describe()}, {"read_gbs", roof}});
    if (!json) fmt::print("-- {}: read bandwidth {:.1f} GB/s\n", be.describe(), roof);
    const bool ref = dev == "ref";
    for (const skyops::OpCase& c : skyops::op_cases()) {
      const std::string name = std::string(c.op) + (c.f64 ? ".f64" : "");
      if (!filter.empty() && name.find(filter) == std::string::npos) continue;
      for (const skyops::Dims& d : ref && !c.bench_ref.empty() ? c.bench_ref : c.bench) {
        auto p = skyops::prepare(c, d, 1);
        p->run(be);  // warm-up: first-touch pages, thread pools, dispatch
        std::vector<double> ts;
        for (int r = 0; r < (ref ? std::min(reps, 3) : reps); r++) {
          const auto t0 = std::chrono::steady_clock::now();
          p->run(be);
          ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(ts.begin(), ts.end());
        const double sec = ts[ts.size() / 2];
        const double gflops = p->flops / sec / 1e9, gbs = p->bytes / sec / 1e9;
        out["results"].push_back({{"op", c.op},
                                  {"f64", c.f64},
                                  {"backend", dev},
                                  {"shape", d.str()},
                                  {"ms", sec * 1e3},
                                  {"gflops", p->flops ? nlohmann::json(gflops) : nlohmann::json()},
                                  {"gbs", p->bytes ? nlohmann::json(gbs) : nlohmann::json()}});
        if (!json)
          fmt::print("{:<24} {:<5} {:<46} {:>10.3f} {:>9} {:>8}\n", name, dev, d.str(), sec * 1e3,
                     p->flops ? fmt::format("{:.1f}", gflops) : "", p->bytes ? fmt::format("{:.1f}", gbs) : "");
      }
    }
  }
  if (json) fmt::print("{}\n", out.dump(2));
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // e.g. an unknown --backend: the message names the choices
    std::fprintf(stderr, "bench_backend_ops: %s\n", e.what());
    return 1;
  }
}
