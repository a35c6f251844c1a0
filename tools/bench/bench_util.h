// Helpers shared by cudapool-bench's parts: statistics, tables, child processes, the runtimes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tools/distribution.h"
#include "tools/paths.h"

namespace cudapool::bench {

using tools::Distribution;
using tools::summarize;

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string human_bytes(double bytes);  // "1.50 GiB", "12 MiB", "512 B"

// A text table: columns right-aligned except the first; printed with one space of padding.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// One "R key=value ..." line of a worker, as a map.
using Row = std::map<std::string, std::string>;
std::string row_line(const Row& row);  // "R k=v k=v" (values must not contain spaces)
bool parse_row_line(const std::string& line, Row* row);
double row_number(const Row& row, const std::string& key, double fallback = -1);

// Runs this executable with `args` and the current environment plus `env` (NAME=value; an empty
// value removes the variable). Returns the worker's "R" lines; false (and the reason) when it
// could not run or exited with an error.
bool run_worker(const std::vector<std::string>& args, const std::vector<std::string>& env,
                std::vector<Row>* rows, std::string* error);

using tools::dir_of;
using tools::file_exists;
using tools::library_of;
using tools::real_path;
using tools::self_exe;
// libcudapool.so: `given`, else beside this executable's folder (build tree: ../shim, installed:
// ../lib). "" when not found.
std::string find_cudapool(const std::string& given);

// Stand-in runtime counters (null functions on NVIDIA's runtime).
struct StandinProbe {
  bool present = false;
  // mallocs/frees: driver allocations and frees, cudaMalloc/cudaFree and the pool's pages
  // (cuMemCreate/cuMemRelease); maps/unmaps: cuMemMap/cuMemUnmap.
  std::uint64_t mallocs = 0, frees = 0, maps = 0, unmaps = 0, syncs = 0, held = 0, peak_held = 0;
  static StandinProbe read();
};

// Bytes in use on the device, all processes (cuMemGetInfo through libcuda.so.1), for NVIDIA's
// runtime; false when the driver API is not there.
bool device_used_bytes(std::uint64_t* used);

}  // namespace cudapool::bench
