#pragma once
// The quickstart's HTML report: one self-contained file (inline CSS and SVG, no scripts, nothing
// fetched) with the loss curves of the dense, upcycled and from-scratch runs, validation points,
// per-layer drop rates and adaptive aux-loss coefficients, a summary table and text samples.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "train/trainer.h"

namespace sky {

struct ReportRun {
  std::string name;   // "dense", "upcycled MoE", "scratch MoE"
  std::string color;  // CSS color for every chart of this run
  std::vector<StepLog> log;
  int64_t tokens_per_step = 0;
  int64_t token_offset = 0;  // tokens the model saw before this run (an upcycled MoE: its dense run's)
  double initial_val_loss = -1;  // before the first step (< 0: not measured)
  int64_t params_total = 0, params_active = 0;
  double tokens_per_s = 0;  // training only, as the trainer reports it
  double seconds = 0;       // wall time of the run, evaluation and checkpoints included
  bool moe = false;
};

struct ReportSample {
  std::string model, prompt, text;
};

struct QuickstartReport {
  std::string title;
  std::vector<std::string> intro;  // paragraphs of plain text (escaped on output)
  std::vector<ReportRun> runs;     // dense first, then the MoE runs
  std::vector<ReportSample> samples;
  std::vector<std::pair<std::string, std::string>> settings;  // shown as a key/value table
  std::vector<std::pair<std::string, std::string>> files;     // what was written, and where
};

// Mean over layers of the drop rate, averaged over the last `frac` of the steps (at least one).
double tail_drop_rate(const std::vector<StepLog>& log, double frac = 0.1);
// The last validation loss of a run (or its initial one when it never evaluated); < 0 when none.
double final_val_loss(const ReportRun& r);

std::string render_report_html(const QuickstartReport& rep);

}  // namespace sky
