// svg_plot: line charts as standalone SVG files, for `cudapoolctl plot` (memory timelines) and the
// benchmarks. No dependency beyond the C++ standard library.
//
// A Chart is one or more named line series over a common x axis, plus optional event markers
// (vertical lines with a label). Axes are labelled with "nice" ticks in the axis's unit: seconds
// (ms/s/min), bytes (binary units: B, KiB, MiB, GiB, TiB) or plain numbers (k, M, G suffixes).
// The output is well-formed XML (text is escaped) with a title, axis labels, a legend, and one
// <path> per series whose `data-series` attribute holds the series name (tests look for it).
//
// Example:
//   plot::Chart chart;
//   chart.title = "GPU memory of pid 1234";
//   chart.x_unit = plot::Unit::kSeconds;   // x values in seconds
//   chart.y_unit = plot::Unit::kBytes;     // y values in bytes
//   chart.series.push_back({"held", xs, held});
//   chart.series.push_back({"in use", xs, in_use});
//   chart.markers.push_back({2.5, "watermark release"});
//   std::string svg = plot::render_svg(chart);
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cudapool::plot {

enum class Unit {
  kPlain,    // numbers: 0, 250, 500, 1k, 1.5M ...
  kSeconds,  // seconds: 0 ms, 500 ms, 1 s, 90 s, 2 min ...
  kBytes,    // bytes, binary units: 512 MiB, 1 GiB, 1.5 GiB ...
};

struct Series {
  Series() = default;
  Series(std::string name, std::vector<double> x, std::vector<double> y, std::string color = {})
      : name(std::move(name)), x(std::move(x)), y(std::move(y)), color(std::move(color)) {}
  std::string name;
  std::vector<double> x;  // same length as y; points with a non-finite value are skipped
  std::vector<double> y;
  std::string color;  // any SVG colour; empty = the next colour of the default palette
  bool dashed = false;
  bool step = false;  // draw as a step function (value holds until the next x)
};

struct Marker {
  Marker() = default;
  Marker(double x, std::string label, std::string color = {})
      : x(x), label(std::move(label)), color(std::move(color)) {}
  double x = 0;
  std::string label;  // markers with the same label share a colour and one legend entry
  std::string color;  // empty = chosen by label
};

struct Chart {
  std::string title;
  std::string x_label = "time";
  std::string y_label;
  Unit x_unit = Unit::kSeconds;
  Unit y_unit = Unit::kBytes;
  std::vector<Series> series;
  std::vector<Marker> markers;
  int width = 960;  // pixels
  int height = 480;
  bool y_from_zero = true;  // y axis starts at 0 (else at the smallest value)
};

// The chart as a complete SVG document.
std::string render_svg(const Chart& chart);

// Writes render_svg(chart) to `path`. False with *error set when the file cannot be written.
bool write_svg(const Chart& chart, const std::string& path, std::string* error);

// ---- building blocks, exposed for tests and other renderers ----

// About `target` evenly spaced round tick values covering [lo, hi] in `unit` (bytes: multiples
// of a binary unit, seconds: of 1/2/5 * 10^k seconds or minutes, plain: of 1/2/5 * 10^k).
std::vector<double> nice_ticks(double lo, double hi, int target, Unit unit);
// A tick label: "1.5 GiB", "250 ms", "12 s", "2.5k".
std::string format_tick(double value, Unit unit);
// `text` with &, <, >, " and ' escaped for XML.
std::string xml_escape(std::string_view text);

}  // namespace cudapool::plot
