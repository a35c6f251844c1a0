// The counters of a process as the control channel prints them: text, JSON and Prometheus.
//
// text        one `key=value` line for the process, then one per device, every number in bytes
//             (or a count), so `grep`/`awk` and parse_stats_text read it back:
//               pid=4242 command=server devices=1
//               device=0 held=1073741824 in_use=2097152 idle=1071644672 pending=0 ...
// json        {"pid":4242,"command":"server","devices":[{"device":0,"held":...,...}]}
// prometheus  text exposition format 0.0.4: `# HELP`/`# TYPE` once per family, samples labelled
//             pid, command, gpu (the device ordinal) and UUID (the device's UUID, when known):
//             the names NVIDIA's DCGM exporter gives the same device, so the two join (DCGM's
//             `device` label means "nvidia0", hence `gpu`). Units are base units (bytes, seconds).
//             cudapool_build_info{version} 1 names the library a process runs.
//             merge_prometheus() joins several processes' expositions into one valid document
//             (node_exporter's textfile collector, cudapoolctl serve-metrics).
// All three formats come from one list of metrics (device_metrics), so they always agree.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "control/command.h"

namespace cudapool {

struct ProcessReport {
  int pid = 0;
  std::string command;  // the process's name (/proc/self/comm)
  RouteCounts routes;
  std::vector<DeviceReport> devices;
};

// Appends `text` as a JSON string (quoted, escaped).
void append_json_string(std::string* out, std::string_view text);

std::string format_stats_text(const ProcessReport& report);
std::string format_stats_json(const ProcessReport& report);
std::string format_stats_prometheus(const ProcessReport& report);
std::string format_stats(const ProcessReport& report, StatsFormat format);

// One number of one device, and how each format names it.
struct Metric {
  std::string_view key;     // text and JSON key: "held"
  std::string_view family;  // Prometheus family: "cudapool_held_bytes"
  std::string_view type;    // "gauge" or "counter"
  std::string_view help;    // one line
  std::string_view label;   // an extra Prometheus label ("reason"), or empty
  std::string_view label_value;
  std::uint64_t value = 0;
  // Prometheus shows value / divisor (exact decimals): milliseconds as seconds. Text and JSON
  // show the value as it is.
  std::uint64_t divisor = 1;
};
std::vector<Metric> device_metrics(const DeviceReport& device);

// value / divisor as an exact decimal: (1500, 1000) -> "1.5", (30000, 1000) -> "30".
std::string format_decimal_ratio(std::uint64_t value, std::uint64_t divisor);

// A device UUID (16 bytes) as nvidia-smi and DCGM print it: "GPU-" then 8-4-4-4-12 hex digits.
std::string format_gpu_uuid(const unsigned char (&bytes)[16]);

// The collector's verdict on one process, in Prometheus text: cudapool_up{pid} 1 when its pipe
// answered in time, 0 when it did not (stuck, refused, gone mid-scrape). Labelled by pid alone,
// so that the series is the same whether or not the process could say its name.
std::string format_up_metric(int pid, bool up);

// `labels` (`a="x",b="y"`, already escaped) added first to every sample of an exposition; other
// lines unchanged. For the collector's own labels (the pod of a control folder).
std::string add_prometheus_labels(std::string_view exposition, std::string_view labels);

// Escapes a label value for the text format (backslash, double quote, newline).
std::string escape_label_value(std::string_view value);

// Joins Prometheus expositions (each one valid on its own) so that each family's HELP and TYPE
// appear once and its samples stay together. Lines that are neither comments nor samples are
// dropped.
std::string merge_prometheus(const std::vector<std::string>& expositions);

// What `cudapoolctl ps` shows of a process, read back from format_stats_text's output.
struct DeviceSummary {
  int device = 0;
  std::uint64_t held = 0;
  std::uint64_t in_use = 0;
  std::uint64_t idle = 0;
  std::string framework;  // empty: no framework cache above the pool
  std::uint64_t framework_reserved = 0;
  std::uint64_t framework_allocated = 0;
};
struct ProcessSummary {
  int pid = 0;
  std::string command;
  std::vector<DeviceSummary> devices;
};
// False when `text` has no `pid=` line.
bool parse_stats_text(std::string_view text, ProcessSummary* out);

// Makes a process name safe for one `key=value` word: blanks, '=', quotes and non-printable bytes
// become '_'; empty becomes "?". At most 64 bytes.
std::string sanitize_process_name(std::string_view name);

}  // namespace cudapool
