// Replays a trace through the pool on the simulated backend (allocator/simulated_backend.h), in
// the trace's own time: no sleeping, no threads, the same result on every machine.
//
// The release thread is played by calling Releaser::tick() at every 100 ms of trace time and
// whenever a free asks for a release (as Releaser::wake() would). The release events are
// recorded with their trace time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "allocator/types.h"
#include "tools/bench/trace.h"

namespace cudapool::bench {

enum class SimMode {
  kPool,          // cudapool's DevicePool with the given policy, on pages (a GPU with VMM)
  kPoolSegments,  // the same on whole segments (CUDAPOOL_VMM=off, or a device without VMM)
  kCache,         // the same pool, never releasing (a framework cache: PyTorch's default)
  kPassThrough,   // one driver allocation per allocation, freed at once (no pool)
};
const char* to_string(SimMode mode);

struct HeldAt {
  std::string label;
  std::uint64_t held = 0;
  std::uint64_t in_use = 0;
  std::uint64_t driver_calls = 0;  // driver allocations and frees so far
  std::uint64_t app_calls = 0;     // application calls so far
};

struct SimResult {
  SimMode mode = SimMode::kPool;
  std::uint64_t app_calls = 0;       // allocations + frees replayed
  std::uint64_t driver_mallocs = 0;  // driver allocations (segments or pages obtained)
  std::uint64_t driver_frees = 0;    // driver frees (segments or pages returned)
  std::uint64_t page_maps = 0;       // pages mapped and unmapped (0 on segments)
  std::uint64_t page_unmaps = 0;
  std::uint64_t fences = 0;          // device synchronisations
  std::uint64_t peak_held = 0;       // bytes held from the driver, at the highest
  std::uint64_t peak_in_use = 0;     // bytes handed out (as rounded by the pool), at the highest
  std::uint64_t peak_requested = 0;  // bytes requested by the trace, at the highest
  std::vector<HeldAt> at_marks;      // at each mark event
  std::uint64_t held_end = 0;        // at the end of the trace (after its idle period)
  std::uint64_t held_after_trim = 0;
  std::uint64_t failures = 0;  // allocations that failed (should be 0)
  double replay_ms = 0;        // wall time of the replay on this machine (no instrumentation)

  // For the plots: samples of held and in-use bytes (max per time bucket) and release events.
  struct Sample {
    double t_s;
    std::uint64_t held, in_use;
  };
  std::vector<Sample> timeline;
  struct Release {
    double t_s;
    std::string reason;
    std::uint64_t bytes;
  };
  std::vector<Release> releases;

  std::uint64_t driver_calls() const { return driver_mallocs + driver_frees; }
  // Driver calls and application calls between two marks (0, 0 if either is missing).
  void calls_between(const std::string& from, const std::string& to, std::uint64_t* driver,
                     std::uint64_t* app) const;
};

// Replays `trace` twice: once timed without instrumentation, once with the timeline (when
// `timeline` is set) and the counters.
SimResult replay_simulated(const Trace& trace, SimMode mode, const Policy& policy, bool timeline);

}  // namespace cudapool::bench
