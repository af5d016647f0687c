#pragma once
// The server's Prometheus metrics (text exposition format 0.0.4): requests by endpoint and status,
// cancellations by reason, engine errors, and histograms of request latency and time to first
// token. Engine gauges and token totals are read from Engine::stats() at scrape time.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "infer/engine.h"

namespace sky {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds, ascending; +Inf is implied
  void observe(double v);
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0;
  uint64_t n_ = 0;
};

// What the engine thread and the server know at scrape time.
struct ServingState {
  EngineStats engine;
  int queued = 0;  // submitted requests that have not produced a token yet
  int64_t kv_budget = 0;
  bool healthy = true;
};

class Metrics {
 public:
  Metrics();
  // Thread-safe. Latency is observed for the generation endpoints only.
  void request(const std::string& endpoint, int status, double seconds, bool generation);
  void first_token(double seconds);
  void cancelled(const std::string& reason);  // disconnect | timeout | shutdown
  void engine_error();
  uint64_t cancelled_count(const std::string& reason) const;
  std::string render(const ServingState& s) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> cancelled_;
  uint64_t engine_errors_ = 0;
  Histogram latency_, ttft_;
};

}  // namespace sky
