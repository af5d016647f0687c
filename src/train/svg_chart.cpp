#include "train/svg_chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace sky {

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<double> ema(const std::vector<double>& y, double beta) {
  std::vector<double> out(y.size());
  double m = 0, w = 0;
  for (size_t i = 0; i < y.size(); i++) {
    m = beta * m + (1 - beta) * y[i];
    w = beta * w + (1 - beta);
    out[i] = m / w;
  }
  return out;
}

namespace {

struct Axis {
  double lo = 0, hi = 1, step = 1;
};

// Round tick spacing to 1, 2 or 5 times a power of ten, about `target` intervals over the range.
Axis nice_axis(double lo, double hi, int target) {
  if (!(hi > lo)) {
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / p;
  const double step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step, step};
}

// Tick text: large values with k/M suffixes (token counts), small ones with just enough decimals.
std::string tick_label(double v, double step) {
  if (std::abs(v) < step * 1e-6) v = 0;
  const double mag = std::max(std::abs(v), step);
  const char* suffix = "";
  double div = 1;
  if (mag >= 1e6) { div = 1e6; suffix = "M"; }
  else if (mag >= 1e4) { div = 1e3; suffix = "k"; }
  const int decimals = std::clamp(int(-std::floor(std::log10(step / div) + 1e-9)), 0, 6);
  return fmt::format("{:.{}f}{}", v / div, decimals, suffix);
}

double text_width(const std::string& s, double px) {
  // Rough: CJK and other multi-byte characters count as wide; enough to lay out a legend.
  double w = 0;
  for (unsigned char c : s) {
    if (c < 0x80) w += 0.58;
    else if (c >= 0xC0) w += 1.0;
  }
  return w * px;
}

}  // namespace

std::string svg_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& o) {
  const double W = o.width, H = o.height;
  const double left = 60, right = 18, top = 34, tick_band = 40;

  // Legend rows first: they decide how tall the plot can be.
  struct Item { const ChartSeries* s; double x; int row; };
  std::vector<Item> items;
  double lx = left;
  int row = 0;
  for (const auto& s : series) {
    if (!s.in_legend || s.label.empty()) continue;
    const double w = 26 + text_width(s.label, 12) + 18;
    if (lx + w > W - right && lx > left) { row++; lx = left; }
    items.push_back({&s, lx, row});
    lx += w;
  }
  const double legend_h = items.empty() ? 0 : (row + 1) * 18 + 6;
  const double px0 = left, px1 = W - right, py0 = top, py1 = H - tick_band - legend_h;

  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& s : series)
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); i++) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]); xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]); ymax = std::max(ymax, s.y[i]);
    }
  for (const auto& g : o.x_guides) { xmin = std::min(xmin, g.first); xmax = std::max(xmax, g.first); }
  if (!std::isfinite(xmin)) { xmin = 0; xmax = 1; ymin = 0; ymax = 1; }
  if (o.x_zero) xmin = std::min(xmin, 0.0);
  if (o.y_zero) ymin = std::min(ymin, 0.0);
  for (double v : o.y_include)
    if (std::isfinite(v)) { ymin = std::min(ymin, v); ymax = std::max(ymax, v); }
  const Axis ax = nice_axis(xmin, xmax, 6), ay = nice_axis(ymin, ymax, 5);
  auto X = [&](double x) { return px0 + (x - ax.lo) / (ax.hi - ax.lo) * (px1 - px0); };
  auto Y = [&](double y) { return py1 - (y - ay.lo) / (ay.hi - ay.lo) * (py1 - py0); };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {0} {1}\" width=\"{0}\" height=\"{1}\" "
      "font-family=\"system-ui, -apple-system, 'Segoe UI', sans-serif\" font-size=\"12\" role=\"img\">\n"
      "<title>{2}</title>\n<rect width=\"{0}\" height=\"{1}\" fill=\"#fff\"/>\n"
      "<text x=\"{3}\" y=\"20\" font-size=\"14\" font-weight=\"600\" fill=\"#222\">{2}</text>\n",
      W, H, html_escape(o.title), px0);

  // Grid and ticks.
  for (double v = ay.lo; v <= ay.hi + ay.step * 1e-6; v += ay.step) {
    const double y = Y(v);
    svg += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e6e6e6\"/>"
                       "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" fill=\"#555\">{}</text>\n",
                       px0, px1, y, y, px0 - 6, y + 4, tick_label(v, ay.step));
  }
  for (double v = ax.lo; v <= ax.hi + ax.step * 1e-6; v += ax.step) {
    const double x = X(v);
    svg += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#f0f0f0\"/>"
                       "<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#888\"/>"
                       "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
                       x, x, py0, py1, x, x, py1, py1 + 4, x, py1 + 17, tick_label(v, ax.step));
  }
  svg += fmt::format("<path d=\"M{:.1f} {:.1f}V{:.1f}H{:.1f}\" fill=\"none\" stroke=\"#888\"/>\n", px0, py0, py1, px1);
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#333\">{}</text>\n",
                     (px0 + px1) / 2, py1 + 33, html_escape(o.x_label));
  svg += fmt::format("<text transform=\"translate(16 {:.1f}) rotate(-90)\" text-anchor=\"middle\" fill=\"#333\">{}</text>\n",
                     (py0 + py1) / 2, html_escape(o.y_label));

  for (const auto& g : o.x_guides) {
    const double x = X(g.first);
    svg += fmt::format("<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"{1:.1f}\" y2=\"{2:.1f}\" stroke=\"#999\" "
                       "stroke-dasharray=\"4 4\"/><text x=\"{3:.1f}\" y=\"{4:.1f}\" fill=\"#666\" font-size=\"11\">{5}</text>\n",
                       x, py0, py1, x + 4, py0 + 12, html_escape(g.second));
  }

  // Series, thinned to about one point per horizontal pixel.
  for (const auto& s : series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    const size_t stride = std::max<size_t>(1, n / size_t(px1 - px0));
    if (s.line) {
      std::string d;
      for (size_t i = 0; i < n; i += stride) {
        const size_t k = (i + stride >= n) ? n - 1 : i;  // always end on the last point
        if (!std::isfinite(s.x[k]) || !std::isfinite(s.y[k])) continue;
        d += fmt::format("{}{:.1f} {:.1f}", d.empty() ? "M" : "L", X(s.x[k]), Y(s.y[k]));
      }
      if (!d.empty())
        svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" stroke-opacity=\"{}\" "
                           "stroke-linejoin=\"round\"{}/>\n",
                           d, s.color, s.width, s.opacity, s.dashed ? " stroke-dasharray=\"6 4\"" : "");
    }
    if (s.markers)
      for (size_t i = 0; i < n; i++)
        if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]))
          svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"1\"/>",
                             X(s.x[i]), Y(s.y[i]), s.color);
    if (s.markers) svg += "\n";
  }

  for (const auto& it : items) {
    const double y = py1 + tick_band + 8 + it.row * 18;
    const ChartSeries& s = *it.s;
    if (s.line)
      svg += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"2.5\"{}/>",
                         it.x, it.x + 20, y, y, s.color, s.dashed ? " stroke-dasharray=\"6 4\"" : "");
    if (s.markers)
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>", it.x + 10, y, s.color);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" fill=\"#333\">{}</text>\n", it.x + 26, y + 4, html_escape(s.label));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace sky
