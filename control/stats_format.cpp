#include "control/stats_format.h"

#include <charconv>
#include <initializer_list>
#include <map>
#include <utility>

#include "control/options.h"

namespace cudapool {
namespace {

// Same order as ReleaseReason (allocator/types.h).
constexpr std::string_view kReasonKeys[] = {
    "releases_watermark", "releases_idle_timer",    "releases_device_pressure",
    "releases_limit",     "releases_out_of_memory", "releases_trim",
};
constexpr std::string_view kReasonLabels[] = {
    "watermark", "idle_timer", "device_pressure", "limit", "out_of_memory", "trim",
};
static_assert(std::size(kReasonKeys) == std::size(PoolStats{}.releases_by_reason));
static_assert(static_cast<int>(ReleaseReason::kTrim) == 5);

void append_label_value(std::string* out, std::string_view text) {
  for (char c : text) {
    if (c == '\\' || c == '"') {
      *out += '\\';
      *out += c;
    } else if (c == '\n') {
      *out += "\\n";
    } else {
      *out += c;
    }
  }
}

std::string_view trim_blanks(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t'))
    text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  return text;
}

bool parse_u64(std::string_view text, std::uint64_t* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && ptr == end;
}

// `name{labels} value` or `name value`, with a valid metric name ending at `name_end`.
bool is_sample(std::string_view line, std::size_t name_end) {
  for (std::size_t i = 0; i < name_end; ++i) {
    const char c = line[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && (i == 0 || c < '0' || c > '9')) return false;
  }
  std::string_view rest = line.substr(name_end);
  if (rest.front() == '{') {
    const std::size_t close = rest.rfind('}');
    if (close == std::string_view::npos) return false;
    rest = rest.substr(close + 1);
  }
  if (rest.empty() || rest.front() != ' ') return false;
  std::string_view value = trim_blanks(rest);
  value = value.substr(0, value.find(' '));  // a timestamp may follow
  if (value == "NaN" || value == "+Inf" || value == "-Inf") return true;
  return !value.empty() && value.find_first_not_of("0123456789.eE+-") == std::string_view::npos;
}

}  // namespace

void append_json_string(std::string* out, std::string_view text) {
  *out += '"';
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      *out += '\\';
      *out += c;
    } else if (u < 0x20 || u >= 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      *out += "\\u00";
      *out += kHex[u >> 4];
      *out += kHex[u & 15];
    } else {
      *out += c;
    }
  }
  *out += '"';
}

std::string sanitize_process_name(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 64)) {
    const auto u = static_cast<unsigned char>(c);
    const bool plain = u > 0x20 && u < 0x7f && c != '=' && c != '"' && c != '\\';
    out += plain ? c : '_';
  }
  return out.empty() ? "?" : out;
}

std::vector<Metric> device_metrics(const DeviceReport& d) {
  const PoolStats& s = d.stats;
  const Policy& p = d.policy;
  std::vector<Metric> m = {
      {"held", "cudapool_held_bytes", "gauge", "Bytes the pool holds from the driver.", "", "",
       s.held},
      {"in_use", "cudapool_in_use_bytes", "gauge", "Bytes handed to the application.", "", "",
       s.in_use},
      {"idle", "cudapool_idle_bytes", "gauge", "Held but not in use (free or pending).", "", "",
       s.idle()},
      {"pending", "cudapool_pending_bytes", "gauge", "Freed bytes waiting for a fence.", "", "",
       s.pending},
      {"segments", "cudapool_segments", "gauge",
       "Driver allocations the pool holds (with pages: address ranges).", "", "", s.segments},
      {"live_blocks", "cudapool_live_blocks", "gauge", "Blocks in use by the application.", "", "",
       s.live_blocks},
      {"peak_held", "cudapool_peak_held_bytes", "gauge", "Highest held since start or reset-peaks.",
       "", "", s.peak_held},
      {"peak_in_use", "cudapool_peak_in_use_bytes", "gauge",
       "Highest in use since start or reset-peaks.", "", "", s.peak_in_use},
      {"app_mallocs", "cudapool_app_mallocs_total", "counter", "Allocations served by the pool.",
       "", "", s.app_mallocs},
      {"app_frees", "cudapool_app_frees_total", "counter", "Frees of pool blocks.", "", "",
       s.app_frees},
      {"hits", "cudapool_hits_total", "counter", "Allocations served without growing the pool.", "",
       "", s.hits},
      {"driver_mallocs", "cudapool_driver_mallocs_total", "counter",
       "Segments obtained from the driver.", "", "", s.driver_mallocs},
      {"driver_frees", "cudapool_driver_frees_total", "counter", "Segments returned to the driver.",
       "", "", s.driver_frees},
      {"page_size", "cudapool_page_size_bytes", "gauge",
       "Physical page size of the pool (0: whole segments).", "", "", s.page_size},
      {"pages", "cudapool_pages", "gauge", "Physical pages the pool holds.", "", "", s.pages},
      {"pages_mapped_idle", "cudapool_pages_mapped_idle", "gauge",
       "Mapped pages wholly inside free blocks.", "", "", s.pages_mapped_idle},
      {"pages_unmapped", "cudapool_pages_unmapped", "gauge", "Held pages mapped nowhere.", "", "",
       s.pages_unmapped},
      {"page_creates", "cudapool_page_creates_total", "counter",
       "Physical pages created (cuMemCreate).", "", "", s.page_creates},
      {"page_releases", "cudapool_page_releases_total", "counter",
       "Physical pages returned (cuMemRelease).", "", "", s.page_releases},
      {"page_maps", "cudapool_page_maps_total", "counter", "Pages mapped (cuMemMap).", "", "",
       s.page_maps},
      {"page_unmaps", "cudapool_page_unmaps_total", "counter", "Pages unmapped (cuMemUnmap).", "",
       "", s.page_unmaps},
      {"page_remaps", "cudapool_page_remaps_total", "counter",
       "Idle pages moved from a free run to a new address.", "", "", s.page_remaps},
      {"reservations", "cudapool_address_reservations_total", "counter",
       "Address ranges reserved (cuMemAddressReserve).", "", "", s.reservations},
      {"fences", "cudapool_fences_total", "counter", "Fences (device synchronisations) issued.", "",
       "", s.fences},
      {"releases", "cudapool_releases_total", "counter", "Release operations that returned memory.",
       "", "", s.releases},
      {"released_bytes", "cudapool_released_bytes_total", "counter",
       "Bytes returned to the driver.", "", "", s.released_bytes},
      {"oom_retries", "cudapool_oom_retries_total", "counter",
       "Driver out-of-memory answered by release and retry.", "", "", s.oom_retries},
      {"alloc_failures", "cudapool_alloc_failures_total", "counter",
       "Allocations the pool failed with out-of-memory.", "", "", s.alloc_failures},
      {"limit_hits", "cudapool_limit_hits_total", "counter", "Requests that ran into the limit.",
       "", "", s.limit_hits},
      {"invalid_frees", "cudapool_invalid_frees_total", "counter",
       "Double or interior frees refused.", "", "", s.invalid_frees},
  };
  for (std::size_t i = 0; i < std::size(kReasonKeys); ++i) {
    m.push_back({kReasonKeys[i], "cudapool_releases_by_reason_total", "counter",
                 "Release operations by reason.", "reason", kReasonLabels[i],
                 s.releases_by_reason[i]});
  }
  const Metric policy[] = {
      {"device_total", "cudapool_device_total_bytes", "gauge", "Memory of the device.", "", "",
       d.device_total},
      {"device_free", "cudapool_device_free_bytes", "gauge",
       "Free memory of the device (every process).", "", "", d.device_free},
      {"high_watermark", "cudapool_high_watermark_bytes", "gauge", "Policy: high watermark.", "",
       "", p.high_watermark},
      {"low_watermark", "cudapool_low_watermark_bytes", "gauge", "Policy: low watermark.", "", "",
       p.low_watermark},
      {"idle_release_ms", "cudapool_idle_release_seconds", "gauge", "Policy: idle timer (0 = off).",
       "", "", p.idle_release_ms, 1000},
      {"min_device_free", "cudapool_min_device_free_bytes", "gauge",
       "Policy: minimum device free (0 = off).", "", "", p.min_device_free},
      {"limit", "cudapool_limit_bytes", "gauge", "Policy: limit per device (0 = none).", "", "",
       p.limit},
      {"reuse_immediate", "cudapool_reuse_immediate", "gauge",
       "Policy: 1 when freed blocks are reused without a fence.", "", "",
       p.reuse == ReuseMode::kImmediate ? 1u : 0u},
  };
  m.insert(m.end(), std::begin(policy), std::end(policy));
  if (!d.framework.empty()) {
    m.push_back({"framework_reserved", "cudapool_framework_reserved_bytes", "gauge",
                 "Bytes the framework's cache (PyTorch, CuPy) holds from the pool.", "framework",
                 d.framework, d.framework_reserved});
    m.push_back({"framework_allocated", "cudapool_framework_allocated_bytes", "gauge",
                 "Of the framework's bytes, those it has handed out.", "framework", d.framework,
                 d.framework_allocated});
  }
  return m;
}

std::string format_stats_text(const ProcessReport& report) {
  const RouteCounts& r = report.routes;
  std::string out = "pid=" + std::to_string(report.pid) +
                    " command=" + sanitize_process_name(report.command) +
                    " devices=" + std::to_string(report.devices.size()) +
                    " runtime_calls=" + std::to_string(r.runtime_calls) +
                    " driver_calls=" + std::to_string(r.driver_calls) +
                    " dlsym_lookups=" + std::to_string(r.dlsym_lookups) +
                    " proc_address_lookups=" + std::to_string(r.proc_address_lookups) + "\n";
  for (const DeviceReport& d : report.devices) {
    out += "device=" + std::to_string(d.device);
    for (const Metric& m : device_metrics(d)) {
      if (m.key == "reuse_immediate") continue;  // shown as reuse=fence|immediate
      out += ' ';
      out += m.key;
      out += '=';
      out += std::to_string(m.value);
    }
    out += " reuse=";
    out += to_string(d.policy.reuse);
    if (!d.uuid.empty()) out += " uuid=" + sanitize_process_name(d.uuid);
    if (!d.framework.empty()) out += " framework=" + d.framework;
    out += '\n';
  }
  return out;
}

std::string format_stats_json(const ProcessReport& report) {
  std::string out = "{\"pid\":" + std::to_string(report.pid) + ",\"command\":";
  append_json_string(&out, report.command);
  const RouteCounts& r = report.routes;
  out += ",\"runtime_calls\":" + std::to_string(r.runtime_calls) +
         ",\"driver_calls\":" + std::to_string(r.driver_calls) +
         ",\"dlsym_lookups\":" + std::to_string(r.dlsym_lookups) +
         ",\"proc_address_lookups\":" + std::to_string(r.proc_address_lookups);
  out += ",\"devices\":[";
  bool first_device = true;
  for (const DeviceReport& d : report.devices) {
    if (!first_device) out += ',';
    first_device = false;
    out += "{\"device\":" + std::to_string(d.device);
    for (const Metric& m : device_metrics(d)) {
      if (m.key == "reuse_immediate") continue;
      out += ",\"";
      out += m.key;
      out += "\":";
      out += std::to_string(m.value);
    }
    out += ",\"reuse\":";
    append_json_string(&out, to_string(d.policy.reuse));
    if (!d.uuid.empty()) {
      out += ",\"uuid\":";
      append_json_string(&out, d.uuid);
    }
    if (!d.framework.empty()) {
      out += ",\"framework\":";
      append_json_string(&out, d.framework);
    }
    out += '}';
  }
  out += "]}\n";
  return out;
}

std::string format_stats_prometheus(const ProcessReport& report) {
  std::string process_labels = "pid=\"" + std::to_string(report.pid) + "\",command=\"";
  append_label_value(&process_labels, report.command);
  process_labels += '"';
  // Families in first-seen order, each with its samples.
  std::vector<std::pair<const Metric*, std::string>> families;  // first metric, sample lines
  std::vector<std::vector<Metric>> per_device;
  per_device.reserve(report.devices.size());
  for (const DeviceReport& d : report.devices)
    per_device.push_back(device_metrics(d));
  std::map<std::string_view, std::size_t> index;
  for (std::size_t di = 0; di < report.devices.size(); ++di) {
    const DeviceReport& device = report.devices[di];
    for (const Metric& m : per_device[di]) {
      auto [it, added] = index.emplace(m.family, families.size());
      if (added) families.emplace_back(&m, std::string());
      std::string& lines = families[it->second].second;
      lines += m.family;
      lines += '{';
      lines += process_labels;
      lines += ",gpu=\"" + std::to_string(device.device) + "\"";
      if (!device.uuid.empty()) {
        lines += ",UUID=\"";
        append_label_value(&lines, device.uuid);
        lines += '"';
      }
      if (!m.label.empty()) {
        lines += ',';
        lines += m.label;
        lines += "=\"";
        append_label_value(&lines, m.label_value);
        lines += '"';
      }
      lines += "} " + format_decimal_ratio(m.value, m.divisor) + "\n";
    }
  }
  std::string out =
      "# HELP cudapool_build_info The cudapool library a process runs (version label), "
      "value 1.\n# TYPE cudapool_build_info gauge\ncudapool_build_info{" +
      process_labels + ",version=\"" CUDAPOOL_VERSION "\"} 1\n";
  // A process-wide counter family with one sample per label value.
  auto process_counter = [&](const char* family, const char* help, const char* label,
                             std::initializer_list<std::pair<const char*, std::uint64_t>> values) {
    out += std::string("# HELP ") + family + " " + help + "\n# TYPE " + family + " counter\n";
    for (const auto& [value, n] : values)
      out += std::string(family) + "{" + process_labels + "," + label + "=\"" + value + "\"} " +
             std::to_string(n) + "\n";
  };
  const RouteCounts& r = report.routes;
  process_counter("cudapool_pool_calls_total",
                  "Allocations and frees that reached the pool, by the API the application called.",
                  "api", {{"runtime", r.runtime_calls}, {"driver", r.driver_calls}});
  process_counter(
      "cudapool_entry_point_lookups_total",
      "Lookups of a pooled driver name answered with cudapool's entry point, by lookup.", "lookup",
      {{"dlsym", r.dlsym_lookups}, {"proc_address", r.proc_address_lookups}});
  for (const auto& [metric, lines] : families) {
    out += "# HELP ";
    out += metric->family;
    out += ' ';
    out += metric->help;
    out += "\n# TYPE ";
    out += metric->family;
    out += ' ';
    out += metric->type;
    out += '\n';
    out += lines;
  }
  return out;
}

std::string format_decimal_ratio(std::uint64_t value, std::uint64_t divisor) {
  if (divisor <= 1) return std::to_string(value);
  std::string out = std::to_string(value / divisor);
  std::uint64_t rest = value % divisor;
  if (rest == 0) return out;
  out += '.';
  // Digits of rest / divisor until nothing is left (exact for divisors made of 2s and 5s, such as
  // 1000; others stop after 18 digits).
  for (int digits = 0; rest != 0 && digits < 18; ++digits) {
    rest *= 10;
    out += static_cast<char>('0' + rest / divisor);
    rest %= divisor;
  }
  return out;
}

std::string format_gpu_uuid(const unsigned char (&bytes)[16]) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "GPU-";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 15];
  }
  return out;
}

std::string format_up_metric(int pid, bool up) {
  return "# HELP cudapool_up 1 when the process's control pipe answered the scrape in time, else "
         "0.\n# TYPE cudapool_up gauge\ncudapool_up{pid=\"" +
         std::to_string(pid) + (up ? "\"} 1\n" : "\"} 0\n");
}

std::string escape_label_value(std::string_view value) {
  std::string out;
  append_label_value(&out, value);
  return out;
}

std::string add_prometheus_labels(std::string_view exposition, std::string_view labels) {
  std::string out;
  out.reserve(exposition.size() + exposition.size() / 4);
  while (!exposition.empty()) {
    const std::size_t nl = exposition.find('\n');
    const std::string_view line = exposition.substr(0, nl);
    exposition = nl == std::string_view::npos ? std::string_view() : exposition.substr(nl + 1);
    const std::size_t end = line.find_first_of("{ ");
    if (labels.empty() || line.empty() || line.front() == '#' || end == 0 ||
        end == std::string_view::npos || !is_sample(line, end)) {
      out += line;
    } else if (line[end] == '{') {
      out += line.substr(0, end + 1);
      out += labels;
      if (line.size() > end + 1 && line[end + 1] != '}') out += ',';
      out += line.substr(end + 1);
    } else {
      out += line.substr(0, end);
      out += '{';
      out += labels;
      out += '}';
      out += line.substr(end);
    }
    out += '\n';
  }
  return out;
}

std::string format_stats(const ProcessReport& report, StatsFormat format) {
  switch (format) {
    case StatsFormat::kJson:
      return format_stats_json(report);
    case StatsFormat::kPrometheus:
      return format_stats_prometheus(report);
    case StatsFormat::kText:
      break;
  }
  return format_stats_text(report);
}

std::string merge_prometheus(const std::vector<std::string>& expositions) {
  struct Family {
    std::string help;  // whole "# HELP" line
    std::string type;  // whole "# TYPE" line
    std::string samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Family> families;
  auto family_of = [&](const std::string& name) -> Family& {
    auto [it, added] = families.try_emplace(name);
    if (added) order.push_back(name);
    return it->second;
  };
  for (const std::string& text : expositions) {
    std::string_view rest = text;
    while (!rest.empty()) {
      const std::size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      line = trim_blanks(line);
      if (line.empty()) continue;
      if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
        std::string_view after = line.substr(7);
        const std::string name(after.substr(0, after.find(' ')));
        Family& f = family_of(name);
        std::string& slot = line[2] == 'H' ? f.help : f.type;
        if (slot.empty()) slot = std::string(line);
        continue;
      }
      if (line.front() == '#') continue;
      const std::size_t end = line.find_first_of("{ ");
      if (end == 0 || end == std::string_view::npos || !is_sample(line, end)) continue;
      Family& f = family_of(std::string(line.substr(0, end)));
      f.samples += line;
      f.samples += '\n';
    }
  }
  std::string out;
  for (const std::string& name : order) {
    const Family& f = families[name];
    if (!f.help.empty()) out += f.help + "\n";
    if (!f.type.empty()) out += f.type + "\n";
    out += f.samples;
  }
  return out;
}

bool parse_stats_text(std::string_view text, ProcessSummary* out) {
  bool have_pid = false;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    std::map<std::string_view, std::string_view> kv;
    while (!line.empty()) {
      line = trim_blanks(line);
      const std::size_t sp = line.find(' ');
      std::string_view word = line.substr(0, sp);
      line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
      const std::size_t eq = word.find('=');
      if (eq != std::string_view::npos) kv[word.substr(0, eq)] = word.substr(eq + 1);
    }
    std::uint64_t n = 0;
    if (kv.count("pid") != 0 && parse_u64(kv["pid"], &n)) {
      out->pid = static_cast<int>(n);
      out->command = std::string(kv["command"]);
      have_pid = true;
    } else if (kv.count("device") != 0 && parse_u64(kv["device"], &n)) {
      DeviceSummary d;
      d.device = static_cast<int>(n);
      parse_u64(kv["held"], &d.held);
      parse_u64(kv["in_use"], &d.in_use);
      parse_u64(kv["idle"], &d.idle);
      d.framework = std::string(kv["framework"]);
      parse_u64(kv["framework_reserved"], &d.framework_reserved);
      parse_u64(kv["framework_allocated"], &d.framework_allocated);
      out->devices.push_back(d);
    }
  }
  return have_pid;
}

}  // namespace cudapool
