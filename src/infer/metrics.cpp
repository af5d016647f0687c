#include "infer/metrics.h"

#include <fmt/format.h>

namespace sky {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t b = 0;
  while (b < bounds_.size() && v > bounds_[b]) b++;
  counts_[b]++;
  sum_ += v;
  n_++;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t b = 0; b < bounds_.size(); b++) {
    cum += counts_[b];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[b], cum);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, n_, name, sum_, name, n_);
}

Metrics::Metrics()
    : latency_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}) {}

void Metrics::request(const std::string& endpoint, int status, double seconds, bool generation) {
  std::lock_guard<std::mutex> g(mu_);
  requests_[{endpoint, status}]++;
  if (generation) latency_.observe(seconds);
}

void Metrics::first_token(double seconds) {
  std::lock_guard<std::mutex> g(mu_);
  ttft_.observe(seconds);
}

void Metrics::cancelled(const std::string& reason) {
  std::lock_guard<std::mutex> g(mu_);
  cancelled_[reason]++;
}

void Metrics::engine_error() {
  std::lock_guard<std::mutex> g(mu_);
  engine_errors_++;
}

uint64_t Metrics::cancelled_count(const std::string& reason) const {
  std::lock_guard<std::mutex> g(mu_);
  auto it = cancelled_.find(reason);
  return it == cancelled_.end() ? 0 : it->second;
}

namespace {

void scalar(std::string& out, const char* type, const std::string& name, const std::string& help, double v) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, v);
}

}  // namespace

std::string Metrics::render(const ServingState& s) const {
  std::string out;
  std::lock_guard<std::mutex> g(mu_);
  out += "# HELP skymoe_requests_total HTTP requests by endpoint and status code.\n"
         "# TYPE skymoe_requests_total counter\n";
  for (const auto& [k, n] : requests_)
    out += fmt::format("skymoe_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, n);
  out += "# HELP skymoe_requests_cancelled_total Generations cut short by the server, by reason.\n"
         "# TYPE skymoe_requests_cancelled_total counter\n";
  for (const char* r : {"disconnect", "timeout", "shutdown"}) {
    auto it = cancelled_.find(r);
    out += fmt::format("skymoe_requests_cancelled_total{{reason=\"{}\"}} {}\n", r, it == cancelled_.end() ? 0 : it->second);
  }
  scalar(out, "counter", "skymoe_engine_errors_total", "Engine steps that failed (their requests got errors).",
         double(engine_errors_));
  scalar(out, "counter", "skymoe_prompt_tokens_total", "Prompt tokens prefilled.", double(s.engine.prompt_tokens));
  scalar(out, "counter", "skymoe_generated_tokens_total", "Tokens generated.", double(s.engine.generated_tokens));
  scalar(out, "counter", "skymoe_engine_steps_total", "Engine steps (one batched forward each).", double(s.engine.steps));
  scalar(out, "gauge", "skymoe_queue_depth", "Requests waiting for their first token.", s.queued);
  scalar(out, "gauge", "skymoe_active_sequences", "Sequences being decoded.", s.engine.active);
  scalar(out, "gauge", "skymoe_batch_size", "Sequences in the last engine step.", s.engine.last_batch);
  scalar(out, "gauge", "skymoe_kv_used_tokens", "KV-cache positions reserved by admitted sequences.",
         double(s.engine.kv_used_tokens));
  scalar(out, "gauge", "skymoe_kv_budget_tokens", "KV-cache positions available in all.", double(s.kv_budget));
  scalar(out, "gauge", "skymoe_healthy", "1 unless the last engine step failed or the server is stopping.",
         s.healthy ? 1 : 0);
  latency_.render(out, "skymoe_request_duration_seconds",
                  "Time from request to the last byte, completions and chat completions.");
  ttft_.render(out, "skymoe_time_to_first_token_seconds", "Time from request to its first generated token.");
  return out;
}

}  // namespace sky
