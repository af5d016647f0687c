#pragma once
// A one-line progress bar for work measured in bytes (tokenizing a corpus). Draws on stderr only
// when stderr is a terminal, so logs and pipes get just the caller's summary line.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace sky::cli {

class ByteProgress {
 public:
  explicit ByteProgress(std::string label) : label_(std::move(label)), tty_(isatty(2) != 0) {}

  void operator()(uint64_t done, uint64_t total) {
    if (!tty_) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const int width = 28;
    const int filled = total ? int(double(width) * done / total) : width;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    fmt::print(stderr, "\r{} [{}] {:.1f}/{:.1f} MB  {:.1f} MB/s ", label_, bar, done / 1e6, total / 1e6,
               secs > 0 ? done / 1e6 / secs : 0.0);
    drawn_ = true;
    if (done >= total) finish();
  }

  // Ends the bar's line (once), so whatever prints next starts on a fresh line.
  void finish() {
    if (drawn_) fmt::print(stderr, "\n");
    drawn_ = false;
  }

 private:
  std::string label_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace sky::cli
