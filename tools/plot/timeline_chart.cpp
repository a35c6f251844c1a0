#include "tools/plot/timeline_chart.h"

#include <cstdlib>
#include <map>
#include <vector>

namespace cudapool::plot {
namespace {

std::vector<std::string_view> split(std::string_view line) {
  std::vector<std::string_view> fields;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = line.find(',', start);
    fields.push_back(line.substr(start, comma == std::string_view::npos ? line.npos : comma - start));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return fields;
}

bool number(std::string_view text, double* out) {
  if (text.empty()) return false;
  const std::string s(text);
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

}  // namespace

bool timeline_chart(std::string_view csv, const std::string& title, Chart* out,
                    std::string* error) {
  struct DeviceSeries {
    std::vector<double> t, held, in_use;
  };
  std::map<int, DeviceSeries> devices;
  std::vector<Marker> markers;
  std::size_t line_no = 0;
  bool header = false;
  while (!csv.empty()) {
    const std::size_t nl = csv.find('\n');
    std::string_view line = csv.substr(0, nl);
    csv.remove_prefix(nl == std::string_view::npos ? csv.size() : nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::vector<std::string_view> f = split(line);
    if (!header) {
      if (f.size() < 9 || f[0] != "time_s" || f[2] != "kind") {
        *error = "line 1: not a cudapool timeline (expected the header time_s,device,kind,...)";
        return false;
      }
      header = true;
      continue;
    }
    double t = 0, device = 0;
    if (f.size() < 9 || !number(f[0], &t) || !number(f[1], &device)) {
      *error = "line " + std::to_string(line_no) + ": malformed row";
      return false;
    }
    if (f[2] == "sample") {
      double held = 0, in_use = 0;
      if (!number(f[3], &held) || !number(f[4], &in_use)) {
        *error = "line " + std::to_string(line_no) + ": sample without held/in_use";
        return false;
      }
      DeviceSeries& d = devices[static_cast<int>(device)];
      d.t.push_back(t);
      d.held.push_back(held);
      d.in_use.push_back(in_use);
    } else {
      markers.push_back({t, std::string(f[2])});
    }
  }
  if (!header) {
    *error = "empty file: no timeline header";
    return false;
  }
  out->title = title;
  out->x_label = "time since the first CUDA call";
  out->y_label = "GPU memory";
  out->x_unit = Unit::kSeconds;
  out->y_unit = Unit::kBytes;
  const bool several = devices.size() > 1;
  static const char* const kHeld[] = {"#1f77b4", "#9467bd", "#17becf", "#8c564b"};
  static const char* const kInUse[] = {"#2ca02c", "#ff7f0e", "#e377c2", "#bcbd22"};
  std::size_t i = 0;
  for (auto& [dev, d] : devices) {
    const std::string suffix = several ? " (device " + std::to_string(dev) + ")" : "";
    out->series.emplace_back("held" + suffix, d.t, d.held, kHeld[i % 4]);
    out->series.emplace_back("in use" + suffix, d.t, d.in_use, kInUse[i % 4]);
    ++i;
  }
  out->markers = std::move(markers);
  return true;
}

}  // namespace cudapool::plot
