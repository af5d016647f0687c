#pragma once
// Minimal line charts as inline SVG, for the self-contained HTML reports (no scripts, no external
// styles): axes with "nice" ticks, labels, a legend under the plot, optional point markers and
// labeled vertical guide lines.
#include <string>
#include <utility>
#include <vector>

namespace sky {

struct ChartSeries {
  std::string label, color;
  std::vector<double> x, y;
  double width = 2.0;
  double opacity = 1.0;
  bool dashed = false;
  bool markers = false;    // draw each point as a dot (validation points), no connecting line when !line
  bool line = true;
  bool in_legend = true;
};

struct ChartOptions {
  std::string title, x_label, y_label;
  int width = 620, height = 340;  // whole SVG, legend included
  bool x_zero = false;            // include 0 in the x range (step 0 of a run)
  bool y_zero = false;            // include 0 in the y range (rates, coefficients)
  std::vector<double> y_include;  // values the y range must cover (to share a scale across charts)
  std::vector<std::pair<double, std::string>> x_guides;  // vertical dashed lines with a caption
};

std::string svg_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& o);

// Escapes &, <, >, " for HTML text and attributes.
std::string html_escape(const std::string& s);

// Exponential moving average (bias-corrected), to draw a readable trend over noisy per-step losses.
std::vector<double> ema(const std::vector<double>& y, double beta);

}  // namespace sky
