#include "train/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "train/svg_chart.h"

namespace sky {

double tail_drop_rate(const std::vector<StepLog>& log, double frac) {
  if (log.empty()) return 0;
  const size_t n = std::max<size_t>(1, size_t(std::ceil(log.size() * frac)));
  double sum = 0;
  size_t count = 0;
  for (size_t i = log.size() - n; i < log.size(); i++)
    for (double d : log[i].drop_rate) { sum += d; count++; }
  return count ? sum / count : 0;
}

static const std::vector<double>& stat_of(const StepLog& s, LayerStat stat) {
  switch (stat) {
    case LayerStat::DropRate: return s.drop_rate;
    case LayerStat::Alpha: return s.alpha;
    case LayerStat::MaxVio: return s.max_vio;
    case LayerStat::BiasRange: return s.bias_range;
  }
  return s.drop_rate;
}

static size_t tail_begin(size_t steps, double frac) {
  return steps - std::min(steps, std::max<size_t>(1, size_t(std::ceil(steps * frac))));
}

std::vector<double> tail_layer_means(const std::vector<StepLog>& log, LayerStat stat, double frac) {
  if (log.empty()) return {};
  std::vector<double> sum(stat_of(log.back(), stat).size(), 0.0);
  const size_t b = tail_begin(log.size(), frac);
  for (size_t i = b; i < log.size(); i++) {
    const std::vector<double>& v = stat_of(log[i], stat);
    for (size_t l = 0; l < sum.size() && l < v.size(); l++) sum[l] += v[l];
  }
  for (double& v : sum) v /= double(log.size() - b);
  return sum;
}

double tail_max_vio(const std::vector<StepLog>& log, double frac) {
  const std::vector<double> m = tail_layer_means(log, LayerStat::MaxVio, frac);
  double sum = 0;
  for (double v : m) sum += v;
  return m.empty() ? 0.0 : sum / double(m.size());
}

double tail_ce_loss(const std::vector<StepLog>& log, double frac) {
  if (log.empty()) return -1;
  const size_t b = tail_begin(log.size(), frac);
  double sum = 0;
  for (size_t i = b; i < log.size(); i++) sum += log[i].ce_loss;
  return sum / double(log.size() - b);
}

double final_val_loss(const ReportRun& r) {
  for (auto it = r.log.rbegin(); it != r.log.rend(); ++it)
    if (it->val_loss >= 0) return it->val_loss;
  return r.initial_val_loss;
}

namespace {

// Distinct, print-friendly colors for per-layer curves.
const char* kLayerColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                              "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string fmt_count(int64_t n) {
  if (n >= 1'000'000) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 10'000) return fmt::format("{:.1f}k", n / 1e3);
  return std::to_string(n);
}

std::string fmt_seconds(double s) {
  if (s >= 120) return fmt::format("{}m {:02d}s", int(s) / 60, int(s) % 60);
  return fmt::format("{:.1f}s", s);
}

std::string fmt_loss(double v) { return v >= 0 ? fmt::format("{:.3f}", v) : "&ndash;"; }

ChartSeries series(std::string label, const std::string& color) {
  ChartSeries s;
  s.label = std::move(label);
  s.color = color;
  return s;
}

double tokens_at(const ReportRun& r, int64_t step, bool with_offset) {
  return double((with_offset ? r.token_offset : 0) + step * r.tokens_per_step);
}

// Training CE loss (faint raw line + smoothed line) and validation dots for each run.
void add_loss_series(std::vector<ChartSeries>& out, const ReportRun& r, bool with_offset) {
  ChartSeries raw = series("", r.color), smooth = series(r.name + " (train)", r.color),
              val = series(r.name + " (val)", r.color);
  raw.width = 1;
  raw.opacity = 0.25;
  raw.in_legend = false;
  smooth.width = 2.2;
  val.markers = true;
  val.line = false;
  if (r.initial_val_loss >= 0) {
    val.x.push_back(tokens_at(r, 0, with_offset));
    val.y.push_back(r.initial_val_loss);
  }
  for (const StepLog& s : r.log) {
    raw.x.push_back(tokens_at(r, s.step, with_offset));
    raw.y.push_back(s.ce_loss);
    if (s.val_loss >= 0) {
      val.x.push_back(tokens_at(r, s.step, with_offset));
      val.y.push_back(s.val_loss);
    }
  }
  smooth.x = raw.x;
  smooth.y = ema(raw.y, 0.9);
  out.push_back(std::move(raw));
  out.push_back(std::move(smooth));
  if (!val.x.empty()) out.push_back(std::move(val));
}

const char* stat_title(LayerStat stat) {
  switch (stat) {
    case LayerStat::DropRate: return "drop rate per layer";
    case LayerStat::Alpha: return "aux-loss coefficient \u03b1 per layer";
    case LayerStat::MaxVio: return "load imbalance per layer";
    case LayerStat::BiasRange: return "selection-bias range per layer";
  }
  return "";
}

const char* stat_axis(LayerStat stat) {
  switch (stat) {
    case LayerStat::DropRate: return "dropped assignments (smoothed)";
    case LayerStat::Alpha: return "\u03b1";
    case LayerStat::MaxVio: return "(max load \u2212 mean) / mean (smoothed)";
    case LayerStat::BiasRange: return "max b \u2212 min b";
  }
  return "";
}

// One line per layer of a per-layer statistic; noisy per-step ones lightly smoothed (alpha is
// already a moving average, the bias moves by a fixed step).
std::string layer_chart(const ReportRun& r, LayerStat stat, double y_hi) {
  std::vector<ChartSeries> lines;
  const size_t L = r.log.empty() ? 0 : stat_of(r.log[0], stat).size();
  const bool smooth = stat == LayerStat::DropRate || stat == LayerStat::MaxVio;
  for (size_t l = 0; l < L; l++) {
    ChartSeries s = series(fmt::format("layer {}", l), kLayerColors[l % std::size(kLayerColors)]);
    s.width = 1.8;
    std::vector<double> y;
    for (const StepLog& st : r.log) {
      const std::vector<double>& v = stat_of(st, stat);
      s.x.push_back(tokens_at(r, st.step, false));
      y.push_back(l < v.size() ? v[l] : 0.0);
    }
    s.y = smooth ? ema(y, 0.8) : y;
    lines.push_back(std::move(s));
  }
  ChartOptions o;
  o.title = fmt::format("{}: {}", r.name, stat_title(stat));
  o.x_label = "MoE training tokens";
  o.y_label = stat_axis(stat);
  o.x_zero = o.y_zero = true;
  o.y_include = {y_hi};
  o.width = 560;
  o.height = 300;
  return svg_line_chart(lines, o);
}

// The largest value of a statistic over the MoE runs (a shared y scale for their charts).
double layer_max(const std::vector<const ReportRun*>& runs, LayerStat stat) {
  double m = 0;
  for (const ReportRun* r : runs)
    if (r->moe)
      for (const StepLog& s : r->log)
        for (double v : stat_of(s, stat)) m = std::max(m, v);
  return m;
}

std::vector<const ReportRun*> moe_runs(const std::vector<ReportRun>& runs) {
  std::vector<const ReportRun*> out;
  for (const auto& r : runs)
    if (r.moe) out.push_back(&r);
  return out;
}

std::string pct(double v) { return fmt::format("{:.2f}%", 100 * v); }

// Skywork's adaptive aux loss against auxiliary-loss-free balancing on the same model and data.
std::string balance_section(const ReportRun& a, const ReportRun& b) {
  std::string h = fmt::format("<h2>Load balancing: {} vs {}</h2>\n", html_escape(a.name), html_escape(b.name));
  h += "<p>The same upcycled MoE, data order and learning rate; only how the router is kept balanced differs. "
       "<b>Adaptive aux loss</b> (Skywork-MoE eq. 4, 7&ndash;8): a loss term that pulls each layer's mean gate "
       "probabilities toward uniform, weighted per layer by &alpha; from its drop rate. <b>Auxiliary-loss-free</b> "
       "(DeepSeek-V3): no loss term; a per-expert bias b is added to the routing scores for choosing the top-k only "
       "(the gate weights stay the unbiased scores), and after every step b<sub>e</sub> += &gamma;&middot;sign(mean "
       "load &minus; load<sub>e</sub>), so the gradient sees only the language-modeling loss.</p>\n<div class=\"grid\">\n";
  {
    std::vector<ChartSeries> s;
    add_loss_series(s, a, false);
    add_loss_series(s, b, false);
    ChartOptions o;
    o.title = "Cross-entropy: adaptive aux loss vs aux-loss-free";
    o.x_label = "MoE training tokens";
    o.y_label = "loss (nats/token)";
    h += svg_line_chart(s, o);
  }
  const std::vector<const ReportRun*> both = {&a, &b};
  const double vio_hi = layer_max(both, LayerStat::MaxVio), drop_hi = layer_max(both, LayerStat::DropRate);
  for (const ReportRun* r : both) h += layer_chart(*r, LayerStat::MaxVio, vio_hi);
  for (const ReportRun* r : both) h += layer_chart(*r, LayerStat::DropRate, drop_hi);
  for (const ReportRun* r : both)
    if (!r->log.empty() && !r->log[0].bias_range.empty())
      h += layer_chart(*r, LayerStat::BiasRange, layer_max({r}, LayerStat::BiasRange));
  h += "</div>\n";

  // Per layer over the last 10% of the steps, then the runs' totals.
  const auto da = tail_layer_means(a.log, LayerStat::DropRate), db = tail_layer_means(b.log, LayerStat::DropRate);
  const auto va = tail_layer_means(a.log, LayerStat::MaxVio), vb = tail_layer_means(b.log, LayerStat::MaxVio);
  h += fmt::format("<table><tr><th>layer</th><th>drop rate: {0}</th><th>drop rate: {1}</th><th>load imbalance: {0}"
                   "</th><th>load imbalance: {1}</th></tr>\n",
                   html_escape(a.name), html_escape(b.name));
  for (size_t l = 0; l < da.size() && l < db.size() && l < va.size() && l < vb.size(); l++)
    h += fmt::format("<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.3f}</td>"
                     "<td class=\"num\">{:.3f}</td></tr>\n",
                     l, pct(da[l]), pct(db[l]), va[l], vb[l]);
  h += fmt::format("<tr><th>all layers</th><th class=\"num\">{}</th><th class=\"num\">{}</th><th class=\"num\">{:.3f}"
                   "</th><th class=\"num\">{:.3f}</th></tr>\n</table>\n",
                   pct(tail_drop_rate(a.log)), pct(tail_drop_rate(b.log)), tail_max_vio(a.log), tail_max_vio(b.log));
  h += "<table><tr><th>run</th><th>final val loss</th><th>train loss (last 10%)</th><th>drop rate (last 10%)</th>"
       "<th>load imbalance (last 10%)</th><th>training tokens/s</th></tr>\n";
  for (const ReportRun* r : both)
    h += fmt::format("<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"num\">{}</td>"
                     "<td class=\"num\">{:.3f}</td><td class=\"num\">{}</td><td class=\"num\">{:.3f}</td>"
                     "<td class=\"num\">{:.0f}</td></tr>\n",
                     r->color, html_escape(r->name), fmt_loss(final_val_loss(*r)), tail_ce_loss(r->log),
                     pct(tail_drop_rate(r->log)), tail_max_vio(r->log), r->tokens_per_s);
  h += "</table>\n<p class=\"muted\">Load imbalance: (max<sub>e</sub> load<sub>e</sub> &minus; mean load) / mean load "
       "of a layer in one step, from the token-to-expert assignments before capacity dropping (0 = perfectly "
       "even; the &ldquo;MaxVio&rdquo; of the auxiliary-loss-free balancing paper). Drop rate: assignments past an "
       "expert's capacity. Bias range: max<sub>e</sub> b<sub>e</sub> &minus; min<sub>e</sub> b<sub>e</sub> of a "
       "layer, in units of the softmax routing scores. Table values are means over the last 10% of the steps. "
       "Validation routes with the bias, as DeepSeek-V3 does at inference; the bias is kept in the checkpoint's "
       "trainer_state.json, not in its weights (this model family has no tensor for it).</p>\n";
  return h;
}

const char* kStyle = R"(
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;max-width:1240px;margin:24px auto;padding:0 20px;line-height:1.45}
h1{font-size:24px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
p{max-width:900px} .grid{display:flex;flex-wrap:wrap;gap:16px} .grid svg{border:1px solid #e4e4e4;border-radius:6px;max-width:100%;height:auto}
table{border-collapse:collapse;font-size:14px;margin:8px 0} th,td{border-bottom:1px solid #e4e4e4;padding:5px 12px;text-align:left}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
pre{background:#f7f7f7;border:1px solid #e4e4e4;border-radius:6px;padding:10px 12px;white-space:pre-wrap;max-width:900px}
.muted{color:#666;font-size:13px} code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
)";

}  // namespace

std::string render_report_html(const QuickstartReport& rep) {
  std::string h = fmt::format("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{}</title>\n"
                              "<style>{}</style></head><body>\n<h1>{}</h1>\n",
                              html_escape(rep.title), kStyle, html_escape(rep.title));
  for (const auto& p : rep.intro) h += "<p>" + html_escape(p) + "</p>\n";

  // Summary table.
  h += "<h2>Summary</h2>\n<table><tr><th>model</th><th>params (total)</th><th>params (active / token)</th>"
       "<th>initial val loss</th><th>final val loss</th><th>mean drop rate (last 10% of steps)</th>"
       "<th>training tokens/s</th><th>wall time</th></tr>\n";
  for (const auto& r : rep.runs)
    h += fmt::format("<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"num\">{}</td>"
                     "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>"
                     "<td class=\"num\">{:.0f}</td><td class=\"num\">{}</td></tr>\n",
                     r.color, html_escape(r.name), fmt_count(r.params_total), fmt_count(r.params_active),
                     fmt_loss(r.initial_val_loss), fmt_loss(final_val_loss(r)),
                     r.moe ? fmt::format("{:.2f}%", 100 * tail_drop_rate(r.log)) : "&ndash;", r.tokens_per_s,
                     fmt_seconds(r.seconds));
  h += "</table>\n";

  // Loss curves: once on the models' whole token history, once on the MoE budget alone.
  h += "<h2>Loss</h2>\n<div class=\"grid\">\n";
  {
    std::vector<ChartSeries> s;
    ChartOptions o;
    for (const auto& r : rep.runs) {
      add_loss_series(s, r, true);
      const bool guided = std::any_of(o.x_guides.begin(), o.x_guides.end(),
                                      [&](const auto& g) { return g.first == double(r.token_offset); });
      if (r.token_offset > 0 && !guided) o.x_guides.push_back({double(r.token_offset), r.name + " starts here"});
    }
    o.title = "Cross-entropy vs tokens seen by the model";
    o.x_label = "tokens seen (an upcycled MoE counts its dense pre-training)";
    o.y_label = "loss (nats/token)";
    h += svg_line_chart(s, o);
  }
  {
    std::vector<ChartSeries> s;
    for (const auto& r : rep.runs)
      if (r.moe) add_loss_series(s, r, false);
    ChartOptions o;
    o.title = "MoE runs on the same MoE token budget";
    o.x_label = "MoE training tokens";
    o.y_label = "loss (nats/token)";
    h += svg_line_chart(s, o);
  }
  h += "</div>\n<p class=\"muted\">Faint lines: per-step training loss; solid lines: its moving average; dots: "
       "validation loss on held-out documents (the first dot of each run is measured before its first step). "
       "Validation runs dropless, as inference does.</p>\n";

  // Router statistics, same scale for all MoE runs so they compare at a glance; alpha only where it
  // is adaptive.
  const std::vector<const ReportRun*> moe = moe_runs(rep.runs);
  const double drop_hi = layer_max(moe, LayerStat::DropRate), alpha_hi = layer_max(moe, LayerStat::Alpha);
  h += "<h2>Router: token dropping and adaptive aux-loss coefficients</h2>\n<div class=\"grid\">\n";
  for (const ReportRun* r : moe) h += layer_chart(*r, LayerStat::DropRate, drop_hi);
  for (const ReportRun* r : moe)
    if (r->balance.empty() || r->balance == "adaptive-aux") h += layer_chart(*r, LayerStat::Alpha, alpha_hi);
  h += "</div>\n<p class=\"muted\">Drop rate: share of token-to-expert assignments past an expert's capacity in "
       "that layer's micro-batch. &alpha; follows Skywork-MoE eq. 7&ndash;8: &alpha;&#770; = min(&xi;&middot;d, "
       "&alpha;<sub>max</sub>), &alpha; &larr; &beta;&alpha; + (1&minus;&beta;)&alpha;&#770;, so layers that drop more "
       "tokens get a stronger load-balancing push; a layer dropping at least &alpha;<sub>max</sub>/&xi; = 5% of its "
       "assignments stays at &alpha;<sub>max</sub> (such lines overlap).</p>\n";
  const int na = int(rep.runs.size());
  if (rep.balance_a >= 0 && rep.balance_a < na && rep.balance_b >= 0 && rep.balance_b < na)
    h += balance_section(rep.runs[size_t(rep.balance_a)], rep.runs[size_t(rep.balance_b)]);

  if (!rep.samples.empty()) {
    h += "<h2>Samples</h2>\n";
    for (const auto& s : rep.samples)
      h += fmt::format("<p><b>{}</b></p><pre><b>{}</b>{}</pre>\n", html_escape(s.model), html_escape(s.prompt),
                       html_escape(s.text));
  }
  if (!rep.settings.empty()) {
    h += "<h2>Settings</h2>\n<table>\n";
    for (const auto& [k, v] : rep.settings)
      h += fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", html_escape(k), html_escape(v));
    h += "</table>\n";
  }
  if (!rep.files.empty()) {
    h += "<h2>Files</h2>\n<table>\n";
    for (const auto& [k, v] : rep.files)
      h += fmt::format("<tr><th>{}</th><td><code>{}</code></td></tr>\n", html_escape(k), html_escape(v));
    h += "</table>\n";
  }
  h += "</body></html>\n";
  return h;
}

}  // namespace sky
