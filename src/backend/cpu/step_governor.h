#pragma once
#include <algorithm>

namespace sky {

// Chooses the engine's team size step by step, by measurement. A 2-thread team whose second thread
// shares a core with another process waits for it at every barrier: batch-1 decode, dozens of
// short parallel regions a token, then ran at under a third of its idle speed. One thread on the
// free core does better. So steps of similar size (rows, by powers of two) keep a moving average of
// their time on the full team and on one thread and run on the faster. The other mode is tried:
// - once early on (the third step of a size), so a core that is busy from the start is found;
// - from the full team, when two steps in a row took over 1.5x its average (a process arrived),
//   and every 256 steps; from one thread, every 32 steps (the other process may be gone);
// and never twice within 8 steps, so a short run (a benchmark) is barely disturbed.
class StepGovernor {
 public:
  // Threads for the next step of `rows` rows, given the configured team.
  int begin(int rows, int team) {
    if (team <= 1) return team;
    b_ = std::min(30, 31 - __builtin_clz(unsigned(std::max(rows, 1))));
    Bucket& k = buckets_[b_];
    int mode = k.n[1] == 0 || (k.n[0] > 0 && k.avg[0] <= k.avg[1]) ? 0 : 1;
    const int other = 1 - mode, period = mode == 0 ? 256 : 32;
    k.since_probe++;
    probe_ = k.n[mode] >= 2 && (k.n[other] == 0 || (k.since_probe > 8 && (k.since_probe > period || k.slow >= 2)));
    if (probe_) {
      mode = other;
      k.since_probe = 0;
      k.slow = 0;
    }
    mode_ = mode;
    return mode == 0 ? team : 1;
  }
  // The step took `dt` seconds.
  void end(double dt) {
    if (mode_ < 0) return;
    Bucket& k = buckets_[b_];
    if (!probe_) k.slow = k.n[mode_] >= 2 && dt > 1.5 * k.avg[mode_] ? k.slow + 1 : 0;
    // A probe's time replaces the old figure: probes are rare, so it is the best news there is.
    k.avg[mode_] = k.n[mode_] == 0 || probe_ ? dt : 0.7 * k.avg[mode_] + 0.3 * dt;
    k.n[mode_]++;
    mode_ = -1;
  }

 private:
  struct Bucket {
    double avg[2] = {0, 0};  // seconds a step: [0] the full team, [1] one thread
    int n[2] = {0, 0};
    int since_probe = 0;
    int slow = 0;  // steps in a row well over the average of their mode
  };
  Bucket buckets_[31];
  int b_ = 0, mode_ = -1;
  bool probe_ = false;
};

}  // namespace sky
