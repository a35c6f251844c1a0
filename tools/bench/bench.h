// cudapool-bench's subcommands. Each parent part runs its measurements in worker processes of the
// same executable (`cudapool-bench worker ...`): one with libcudapool.so preloaded, one without it
// (pass-through), so that both sides come from one run. Workers print "R key=value ..." lines.
#pragma once

#include <string>
#include <vector>

namespace cudapool::bench {

using Args = std::vector<std::string>;

int hotpath_main(const Args& args);
int scale_main(const Args& args);
int replay_main(const Args& args);

int hotpath_worker(const Args& args);
int scale_worker(const Args& args);
int replay_worker(const Args& args);

// Options every subcommand takes.
struct CommonOptions {
  bool quick = false;
  bool json = false;
  std::string library;  // libcudapool.so
  unsigned long long seed = 1;
  // Pass-through call latency given to the stand-in runtime (µs); see docs/benchmarks.md.
  double malloc_latency_us = 0;
  double free_latency_us = 0;
};
// Takes the common options out of `args` (leaving the rest); false with a message on error.
bool parse_common(Args* args, CommonOptions* out, std::string* error);
// The latency figures used for the pass-through runs on the stand-in runtime, from a real GPU:
// NVIDIA H200, cudaMalloc+cudaFree of 512 B to 64 KiB, 6.1 and 6.7 us per pair in two runs of
// tests/gpu/run_gpu_bench.sh (hotpath_native), split evenly (the benchmark times pairs) and in
// whole microseconds (the stand-in's unit).
inline constexpr double kDefaultMallocLatencyUs = 3;
inline constexpr double kDefaultFreeLatencyUs = 3;

}  // namespace cudapool::bench
