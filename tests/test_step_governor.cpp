// The CPU backend's step governor (backend/cpu/step_governor.h) on simulated step times: it runs
// steps on the faster of the full team and one thread, notices when that changes, and keeps
// separate books for steps of different sizes.
#include <gtest/gtest.h>

#include <functional>

#include "backend/cpu/step_governor.h"

using sky::StepGovernor;

// Runs `steps` steps of `rows` rows; `cost(threads)` is how long a step takes. Returns the number
// of steps that ran on one thread.
static int run(StepGovernor& g, int steps, int rows, const std::function<double(int)>& cost) {
  int single = 0;
  for (int i = 0; i < steps; i++) {
    const int t = g.begin(rows, 2);
    single += t == 1;
    g.end(cost(t));
  }
  return single;
}

TEST(StepGovernor, KeepsTheTeamWhenTheCoresAreFree) {
  StepGovernor g;
  // One early probe, then one every 256 steps.
  EXPECT_EQ(run(g, 600, 1, [](int t) { return t == 2 ? 1.0 : 1.8; }), 3);
  // One slow step (a thread lost its core for a moment) changes nothing; two in a row bring a
  // probe, which finds the team still faster.
  EXPECT_EQ(run(g, 1, 1, [](int) { return 2.0; }), 0);
  EXPECT_EQ(run(g, 10, 1, [](int t) { return t == 2 ? 1.0 : 1.8; }), 0);
  EXPECT_EQ(run(g, 2, 1, [](int) { return 2.0; }), 0);
  EXPECT_EQ(run(g, 10, 1, [](int t) { return t == 2 ? 1.0 : 1.8; }), 1);
}

TEST(StepGovernor, FindsABusyCoreFromTheStartAndComesBack) {
  StepGovernor g;
  // Another process holds a core from the start: the team waits at every barrier.
  EXPECT_GE(run(g, 100, 1, [](int t) { return t == 2 ? 5.0 : 1.6; }), 100 - 2 - 100 / 32 - 1);
  // It is gone: the periodic probe of the full team finds it fast again.
  EXPECT_LE(run(g, 200, 1, [](int t) { return t == 2 ? 1.0 : 1.6; }), 33 + 200 / 256 + 2);
}

TEST(StepGovernor, NoticesAProcessArrivingLater) {
  StepGovernor g;
  run(g, 50, 1, [](int t) { return t == 2 ? 1.0 : 1.6; });
  // From now on the team takes 5x as long: after two slow steps it tries one thread and stays there.
  EXPECT_GE(run(g, 60, 1, [](int t) { return t == 2 ? 5.0 : 1.6; }), 60 - 3 - 60 / 32 - 1);
}

TEST(StepGovernor, StepSizesKeepTheirOwnBooks) {
  StepGovernor g;
  // Decode steps (1 row) run better on one thread, prefill steps (512 rows) on the team.
  int single_decode = 0, single_prefill = 0;
  for (int i = 0; i < 100; i++) {
    int t = g.begin(1, 2);
    single_decode += t == 1;
    g.end(t == 2 ? 3.0 : 1.0);
    t = g.begin(512, 2);
    single_prefill += t == 1;
    g.end(t == 2 ? 1.0 : 1.9);
  }
  EXPECT_GE(single_decode, 90);
  EXPECT_LE(single_prefill, 3);
}

TEST(StepGovernor, OneThreadTeamsAreLeftAlone) {
  StepGovernor g;
  for (int i = 0; i < 10; i++) {
    EXPECT_EQ(g.begin(4, 1), 1);
    g.end(1.0);
  }
}
