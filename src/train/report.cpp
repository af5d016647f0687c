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

// One line per layer of a per-layer statistic (drop rate or alpha), lightly smoothed.
std::string layer_chart(const ReportRun& r, bool alpha, double y_hi) {
  std::vector<ChartSeries> lines;
  const size_t L = r.log.empty() ? 0 : (alpha ? r.log[0].alpha.size() : r.log[0].drop_rate.size());
  for (size_t l = 0; l < L; l++) {
    ChartSeries s = series(fmt::format("layer {}", l), kLayerColors[l % std::size(kLayerColors)]);
    s.width = 1.8;
    std::vector<double> y;
    for (const StepLog& st : r.log) {
      s.x.push_back(tokens_at(r, st.step, false));
      y.push_back(alpha ? st.alpha[l] : st.drop_rate[l]);
    }
    s.y = alpha ? y : ema(y, 0.8);  // alpha is already a moving average
    lines.push_back(std::move(s));
  }
  ChartOptions o;
  o.title = fmt::format("{}: {}", r.name, alpha ? "aux-loss coefficient \u03b1 per layer" : "drop rate per layer");
  o.x_label = "MoE training tokens";
  o.y_label = alpha ? "\u03b1" : "dropped assignments (smoothed)";
  o.x_zero = o.y_zero = true;
  o.y_include = {y_hi};
  o.width = 560;
  o.height = 300;
  return svg_line_chart(lines, o);
}

double layer_max(const std::vector<ReportRun>& runs, bool alpha) {
  double m = 0;
  for (const auto& r : runs)
    if (r.moe)
      for (const StepLog& s : r.log)
        for (double v : alpha ? s.alpha : s.drop_rate) m = std::max(m, v);
  return m;
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
      if (r.token_offset > 0) o.x_guides.push_back({double(r.token_offset), r.name + " starts here"});
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

  // Router statistics, same scale for both MoE runs so they compare at a glance.
  const double drop_hi = layer_max(rep.runs, false), alpha_hi = layer_max(rep.runs, true);
  h += "<h2>Router: token dropping and adaptive aux-loss coefficients</h2>\n<div class=\"grid\">\n";
  for (bool alpha : {false, true})
    for (const auto& r : rep.runs)
      if (r.moe) h += layer_chart(r, alpha, alpha ? alpha_hi : drop_hi);
  h += "</div>\n<p class=\"muted\">Drop rate: share of token-to-expert assignments past an expert's capacity in "
       "that layer's micro-batch. &alpha; follows Skywork-MoE eq. 7&ndash;8: &alpha;&#770; = min(&xi;&middot;d, "
       "&alpha;<sub>max</sub>), &alpha; &larr; &beta;&alpha; + (1&minus;&beta;)&alpha;&#770;, so layers that drop more "
       "tokens get a stronger load-balancing push; a layer dropping at least &alpha;<sub>max</sub>/&xi; = 5% of its "
       "assignments stays at &alpha;<sub>max</sub> (such lines overlap).</p>\n";

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
