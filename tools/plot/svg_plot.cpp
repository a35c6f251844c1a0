#include "tools/plot/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>

namespace cudapool::plot {
namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                    "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};
constexpr const char* kMarkerPalette[] = {"#e6550d", "#756bb1", "#31a354", "#de2d26",
                                          "#3182bd", "#636363", "#a55194", "#8c6d31"};

// How an axis writes its values: value / divisor, then the suffix.
struct AxisScale {
  double divisor = 1;
  const char* suffix = "";
};

AxisScale scale_for(double magnitude, Unit unit) {
  magnitude = std::fabs(magnitude);
  switch (unit) {
    case Unit::kBytes: {
      static const AxisScale kScales[] = {{1024.0 * 1024 * 1024 * 1024, " TiB"},
                                          {1024.0 * 1024 * 1024, " GiB"},
                                          {1024.0 * 1024, " MiB"},
                                          {1024.0, " KiB"}};
      for (const AxisScale& s : kScales)
        if (magnitude >= 2 * s.divisor) return s;
      return {1, " B"};
    }
    case Unit::kSeconds:
      if (magnitude >= 180) return {60, " min"};
      if (magnitude >= 2) return {1, " s"};
      return {0.001, " ms"};
    case Unit::kPlain:
      if (magnitude >= 2e9) return {1e9, "G"};
      if (magnitude >= 2e6) return {1e6, "M"};
      if (magnitude >= 2e4) return {1e3, "k"};
      return {1, ""};
  }
  return {};
}

std::string format_number(double v) {
  if (std::fabs(v) < 1e-9) v = 0;
  char buf[32];
  // Up to 3 significant decimals, trailing zeros dropped.
  std::snprintf(buf, sizeof buf, "%.3f", v);
  std::string s(buf);
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0')
      s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

std::string format_scaled(double value, const AxisScale& scale) {
  return format_number(value / scale.divisor) + scale.suffix;
}

// The smallest of {1, 2, 2.5, 5} * 10^k that is >= raw.
double nice_step(double raw) {
  if (!(raw > 0) || !std::isfinite(raw)) return 1;
  const double base = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * base >= raw * (1 - 1e-9)) return m * base;
  return 10 * base;
}

std::string fixed(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

}  // namespace

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') {
          out += ' ';
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string format_tick(double value, Unit unit) {
  return format_scaled(value, scale_for(value, unit));
}

std::vector<double> nice_ticks(double lo, double hi, int target, Unit unit) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (hi < lo) std::swap(lo, hi);
  if (target < 2) target = 2;
  const AxisScale scale = scale_for(std::max(std::fabs(lo), std::fabs(hi)), unit);
  double span = (hi - lo) / scale.divisor;
  if (span <= 0) span = std::max(std::fabs(hi / scale.divisor), 1.0);
  const double step = nice_step(span / target) * scale.divisor;
  std::vector<double> ticks;
  const double first = std::floor(lo / step) * step;
  for (int i = 0; i < 1000; ++i) {
    const double t = first + i * step;
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
    if (t >= hi - step * 1e-9 && ticks.size() >= 2) break;  // the first tick at or past hi
  }
  return ticks;
}

std::string render_svg(const Chart& chart) {
  const double width = std::max(chart.width, 320);
  const double height = std::max(chart.height, 200);
  const double left = 86, right = 20, top = 44, bottom = 78;
  const double plot_w = width - left - right, plot_h = height - top - bottom;

  Range xr, yr;
  for (const Series& s : chart.series) {
    const std::size_t n = std::min(s.x.size(), s.y.size());
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xr.add(s.x[i]);
      yr.add(s.y[i]);
    }
  }
  for (const Marker& m : chart.markers)
    xr.add(m.x);
  if (xr.empty()) xr = {0, 1};
  if (yr.empty()) yr = {0, 1};
  if (chart.y_from_zero) yr.lo = std::min(yr.lo, 0.0);
  if (xr.hi <= xr.lo) xr.hi = xr.lo + 1;
  if (yr.hi <= yr.lo) yr.hi = yr.lo + 1;

  const std::vector<double> xticks = nice_ticks(xr.lo, xr.hi, 8, chart.x_unit);
  const std::vector<double> yticks = nice_ticks(yr.lo, yr.hi, 6, chart.y_unit);
  // The axes cover the ticks, so the last gridline is the frame's edge.
  if (!xticks.empty()) {
    xr.lo = std::min(xr.lo, xticks.front());
    xr.hi = std::max(xr.hi, xticks.back());
  }
  if (!yticks.empty()) {
    yr.lo = std::min(yr.lo, yticks.front());
    yr.hi = std::max(yr.hi, yticks.back());
  }
  const AxisScale xscale = scale_for(std::max(std::fabs(xr.lo), std::fabs(xr.hi)), chart.x_unit);
  const AxisScale yscale = scale_for(std::max(std::fabs(yr.lo), std::fabs(yr.hi)), chart.y_unit);
  auto px = [&](double x) { return left + (x - xr.lo) / (xr.hi - xr.lo) * plot_w; };
  auto py = [&](double y) { return top + plot_h - (y - yr.lo) / (yr.hi - yr.lo) * plot_h; };

  std::string o;
  o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fixed(width) + "\" height=\"" +
       fixed(height) + "\" viewBox=\"0 0 " + fixed(width) + " " + fixed(height) +
       "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o += "<title>" + xml_escape(chart.title) + "</title>\n";
  o += "<rect x=\"0\" y=\"0\" width=\"" + fixed(width) + "\" height=\"" + fixed(height) +
       "\" fill=\"white\"/>\n";
  o += "<text x=\"" + fixed(width / 2) +
       "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">" +
       xml_escape(chart.title) + "</text>\n";

  // Grid and ticks.
  o += "<g class=\"grid\" stroke=\"#e0e0e0\" stroke-width=\"1\">\n";
  for (double t : yticks)
    o += "<line x1=\"" + fixed(left) + "\" y1=\"" + fixed(py(t)) + "\" x2=\"" +
         fixed(left + plot_w) + "\" y2=\"" + fixed(py(t)) + "\"/>\n";
  for (double t : xticks)
    o += "<line x1=\"" + fixed(px(t)) + "\" y1=\"" + fixed(top) + "\" x2=\"" + fixed(px(t)) +
         "\" y2=\"" + fixed(top + plot_h) + "\"/>\n";
  o += "</g>\n";
  o += "<g class=\"y-ticks\" text-anchor=\"end\">\n";
  for (double t : yticks)
    o += "<text x=\"" + fixed(left - 6) + "\" y=\"" + fixed(py(t) + 4) + "\">" +
         xml_escape(format_scaled(t, yscale)) + "</text>\n";
  o += "</g>\n";
  o += "<g class=\"x-ticks\" text-anchor=\"middle\">\n";
  for (double t : xticks)
    o += "<text x=\"" + fixed(px(t)) + "\" y=\"" + fixed(top + plot_h + 16) + "\">" +
         xml_escape(format_scaled(t, xscale)) + "</text>\n";
  o += "</g>\n";
  o += "<rect x=\"" + fixed(left) + "\" y=\"" + fixed(top) + "\" width=\"" + fixed(plot_w) +
       "\" height=\"" + fixed(plot_h) + "\" fill=\"none\" stroke=\"#444\"/>\n";
  if (!chart.x_label.empty())
    o += "<text class=\"x-label\" x=\"" + fixed(left + plot_w / 2) + "\" y=\"" +
         fixed(top + plot_h + 34) + "\" text-anchor=\"middle\">" + xml_escape(chart.x_label) +
         "</text>\n";
  if (!chart.y_label.empty())
    o += "<text class=\"y-label\" transform=\"translate(16 " + fixed(top + plot_h / 2) +
         ") rotate(-90)\" text-anchor=\"middle\">" + xml_escape(chart.y_label) + "</text>\n";

  // Legend entries, in order: series, then marker kinds.
  struct LegendEntry {
    std::string label, color;
    bool marker = false, dashed = false;
  };
  std::vector<LegendEntry> legend;

  // Markers: one colour per label; labels staggered over three rows at the top of the plot, and
  // left out where they would overlap the previous label of the same row.
  std::map<std::string, std::string> marker_colors;
  if (!chart.markers.empty()) {
    o += "<g class=\"markers\">\n";
    double row_end[3] = {-1e9, -1e9, -1e9};
    int next_row = 0;
    for (const Marker& m : chart.markers) {
      auto [it, added] = marker_colors.emplace(m.label, "");
      if (added) {
        it->second = !m.color.empty()
                         ? m.color
                         : kMarkerPalette[(marker_colors.size() - 1) % std::size(kMarkerPalette)];
        legend.push_back({m.label, it->second, true, false});
      }
      const std::string& color = it->second;
      const double x = px(m.x);
      o += "<line class=\"marker\" data-label=\"" + xml_escape(m.label) + "\" x1=\"" + fixed(x) +
           "\" y1=\"" + fixed(top) + "\" x2=\"" + fixed(x) + "\" y2=\"" + fixed(top + plot_h) +
           "\" stroke=\"" + xml_escape(color) +
           "\" stroke-width=\"1.2\" stroke-dasharray=\"4 3\"/>\n";
      const double label_w = 6.5 * static_cast<double>(m.label.size()) + 4;
      int row = -1;
      for (int k = 0; k < 3; ++k) {
        const int r = (next_row + k) % 3;
        if (x > row_end[r]) {
          row = r;
          break;
        }
      }
      if (row >= 0 && !m.label.empty()) {
        next_row = (row + 1) % 3;
        row_end[row] = x + label_w;
        o += "<text x=\"" + fixed(x + 3) + "\" y=\"" + fixed(top + 12 + 13 * row) +
             "\" font-size=\"10\" fill=\"" + xml_escape(color) + "\">" + xml_escape(m.label) +
             "</text>\n";
      }
    }
    o += "</g>\n";
  }

  // Series.
  o += "<g class=\"series\" fill=\"none\" stroke-width=\"2\" stroke-linejoin=\"round\">\n";
  std::size_t palette_next = 0;
  std::vector<LegendEntry> series_legend;
  for (const Series& s : chart.series) {
    const std::string color =
        !s.color.empty() ? s.color : kPalette[palette_next++ % std::size(kPalette)];
    series_legend.push_back({s.name, color, false, s.dashed});
    std::string d;
    bool pen_down = false;
    double last_y = 0;
    const std::size_t n = std::min(s.x.size(), s.y.size());
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        pen_down = false;
        continue;
      }
      const double x = px(s.x[i]), y = py(s.y[i]);
      if (!pen_down) {
        d += "M" + fixed(x) + " " + fixed(y) + " ";
        pen_down = true;
      } else {
        if (s.step) d += "L" + fixed(x) + " " + fixed(last_y) + " ";
        d += "L" + fixed(x) + " " + fixed(y) + " ";
      }
      last_y = y;
    }
    if (!d.empty()) d.pop_back();
    o += "<path data-series=\"" + xml_escape(s.name) + "\" stroke=\"" + xml_escape(color) + "\"" +
         (s.dashed ? " stroke-dasharray=\"6 4\"" : "") + " d=\"" + d + "\"/>\n";
  }
  o += "</g>\n";
  legend.insert(legend.begin(), series_legend.begin(), series_legend.end());

  // Legend: one row under the x axis label.
  if (!legend.empty()) {
    o += "<g class=\"legend\">\n";
    double x = left;
    const double y = height - 14;
    for (const LegendEntry& e : legend) {
      if (e.marker) {
        o += "<line x1=\"" + fixed(x + 9) + "\" y1=\"" + fixed(y - 10) + "\" x2=\"" + fixed(x + 9) +
             "\" y2=\"" + fixed(y + 4) + "\" stroke=\"" + xml_escape(e.color) +
             "\" stroke-width=\"1.2\" stroke-dasharray=\"4 3\"/>\n";
      } else {
        o += "<line x1=\"" + fixed(x) + "\" y1=\"" + fixed(y - 4) + "\" x2=\"" + fixed(x + 18) +
             "\" y2=\"" + fixed(y - 4) + "\" stroke=\"" + xml_escape(e.color) +
             "\" stroke-width=\"2\"" + (e.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>\n";
      }
      o += "<text x=\"" + fixed(x + 22) + "\" y=\"" + fixed(y) + "\">" + xml_escape(e.label) +
           "</text>\n";
      x += 22 + 7 * static_cast<double>(e.label.size()) + 16;
    }
    o += "</g>\n";
  }
  o += "</svg>\n";
  return o;
}

bool write_svg(const Chart& chart, const std::string& path, std::string* error) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    if (error != nullptr) *error = "cannot open " + path + " for writing";
    return false;
  }
  out << render_svg(chart);
  out.close();
  if (!out) {
    if (error != nullptr) *error = "cannot write " + path;
    return false;
  }
  return true;
}

}  // namespace cudapool::plot
