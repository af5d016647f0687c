// The CPU backend's step governor (backend/cpu/step_governor.h) on simulated step times: it runs
// steps on the faster of the full team and one thread, notices when that changes, and keeps
// separate books for steps of different sizes.
#include <gtest/gtest.h>

#include <functional>

#include "backend/cpu/step_governor.h"

using sky::StepGovernor;

// Runs `steps` steps of `rows` rows; `cost(threads)` is how long a step takes and the team's
// threads get `share` of their cores. Returns the number of steps that ran on one thread.
static int run(StepGovernor& g, int steps, int rows, const std::function<double(int)>& cost, double share = 1.0) {
  int single = 0;
  for (int i = 0; i < steps; i++) {
    const int t = g.begin(rows, 2);
    single += t == 1;
    g.end(cost(t), t == 1 ? 1.0 : share);
  }
  return single;
}

TEST(StepGovernor, KeepsTheTeamWhenTheCoresAreFree) {
  StepGovernor g;
  EXPECT_LE(run(g, 600, 1, [](int t) { return t == 2 ? 1.0 : 1.8; }), 3);  // a probe every 256 steps
  // A starved step (a thread lost its core) that was a fluke: one probe, and back to the team.
  EXPECT_EQ(run(g, 1, 1, [](int t) { return 1.0; }, 0.5), 0);
  EXPECT_EQ(run(g, 10, 1, [](int t) { return t == 2 ? 1.0 : 1.8; }), 1);
}

TEST(StepGovernor, DropsToOneThreadWhileACoreIsBusyAndComesBack) {
  StepGovernor g;
  // Another process holds a core from the start: the team waits at every barrier, and its threads
  // get three quarters of their cores.
  EXPECT_GE(run(g, 100, 1, [](int t) { return t == 2 ? 5.0 : 1.6; }, 0.75), 100 - 100 / 32 - 4);
  // It is gone: the periodic probe of the full team finds it fast again.
  const int single = run(g, 200, 1, [](int t) { return t == 2 ? 1.0 : 1.6; });
  EXPECT_LE(single, 32 + 200 / 32 + 4);
}

TEST(StepGovernor, StepSizesKeepTheirOwnBooks) {
  StepGovernor g;
  // Decode steps (1 row) run better on one thread, prefill steps (512 rows) on the team.
  int single_decode = 0, single_prefill = 0;
  for (int i = 0; i < 100; i++) {
    int t = g.begin(1, 2);
    single_decode += t == 1;
    g.end(t == 2 ? 3.0 : 1.0, t == 2 ? 0.7 : 1.0);
    t = g.begin(512, 2);
    single_prefill += t == 1;
    g.end(t == 2 ? 1.0 : 1.9, 1.0);
  }
  EXPECT_GE(single_decode, 90);
  EXPECT_LE(single_prefill, 10);
}

TEST(StepGovernor, OneThreadTeamsAreLeftAlone) {
  StepGovernor g;
  for (int i = 0; i < 10; i++) {
    EXPECT_EQ(g.begin(4, 1), 1);
    g.end(1.0, 1.0);
  }
}
