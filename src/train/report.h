#pragma once
// The quickstart's HTML report: one self-contained file (inline CSS and SVG, no scripts, nothing
// fetched) with the loss curves of the dense, upcycled and from-scratch runs, validation points,
// per-layer drop rates and adaptive aux-loss coefficients, a comparison of two load-balancing
// methods (Skywork's adaptive aux loss and auxiliary-loss-free balancing: loss, per-layer drop rate
// and load imbalance, the bias), a summary table and text samples.
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
  std::string balance;      // MoE runs: "adaptive-aux", "aux-free", ... (moe/balance.h)
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
  // The two runs (indices into runs) the load-balancing comparison sets side by side, the same model
  // and data trained with different --balance; -1: no comparison.
  int balance_a = -1, balance_b = -1;
};

// A per-layer statistic of the step logs.
enum class LayerStat { DropRate, Alpha, MaxVio, BiasRange };
// Per layer, its mean over the last `frac` of the steps (at least one step); empty without layers.
std::vector<double> tail_layer_means(const std::vector<StepLog>& log, LayerStat stat, double frac = 0.1);
// Mean over layers of the load imbalance (max load - mean) / mean, over the last `frac` of the steps.
double tail_max_vio(const std::vector<StepLog>& log, double frac = 0.1);
// Mean training cross-entropy over the last `frac` of the steps.
double tail_ce_loss(const std::vector<StepLog>& log, double frac = 0.1);

// Mean over layers of the drop rate, averaged over the last `frac` of the steps (at least one).
double tail_drop_rate(const std::vector<StepLog>& log, double frac = 0.1);
// The last validation loss of a run (or its initial one when it never evaluated); < 0 when none.
double final_val_loss(const ReportRun& r);

std::string render_report_html(const QuickstartReport& rep);

}  // namespace sky
