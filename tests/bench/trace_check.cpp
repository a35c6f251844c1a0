// trace_check FILE ALLOCS FREES [SIZE...]: reads a recorded trace, checks its counts (and that
// the given sizes were allocated), and replays it through the pool on the simulated backend.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "tools/bench/sim_replay.h"
#include "tools/bench/trace.h"

int main(int argc, char** argv) {
  using namespace cudapool::bench;
  if (argc < 4) {
    fprintf(stderr, "usage: trace_check FILE ALLOCS FREES [SIZE...]\n");
    return 2;
  }
  Trace t;
  std::string error;
  if (!load_trace(argv[1], &t, &error)) {
    fprintf(stderr, "trace_check: %s\n", error.c_str());
    return 1;
  }
  unsigned long allocs = 0, frees = 0;
  std::multiset<std::uint64_t> sizes;
  std::set<std::uint32_t> threads;
  for (const TraceEvent& e : t.events) {
    if (e.action == Action::kAlloc) {
      ++allocs;
      sizes.insert(e.size);
    }
    if (e.action == Action::kFree) ++frees;
    threads.insert(e.thread);
  }
  int status = 0;
  if (allocs != std::strtoul(argv[2], nullptr, 10) || frees != std::strtoul(argv[3], nullptr, 10)) {
    fprintf(stderr, "trace_check: %lu allocs and %lu frees, expected %s and %s\n", allocs, frees,
            argv[2], argv[3]);
    status = 1;
  }
  for (int i = 4; i < argc; ++i)
    if (!sizes.contains(std::strtoull(argv[i], nullptr, 10))) {
      fprintf(stderr, "trace_check: no allocation of %s bytes\n", argv[i]);
      status = 1;
    }
  if (t.repaired != 0) {
    fprintf(stderr, "trace_check: %llu events repaired\n",
            static_cast<unsigned long long>(t.repaired));
    status = 1;
  }
  cudapool::Policy policy;
  SimResult r = replay_simulated(t, SimMode::kPool, policy, false);
  if (r.failures != 0 || r.app_calls != allocs + frees) {
    fprintf(stderr, "trace_check: the replay failed %llu allocations\n",
            static_cast<unsigned long long>(r.failures));
    status = 1;
  }
  printf(
      "trace_check: %lu allocs, %lu frees, %zu threads, replayed: %llu application calls, "
      "%llu driver calls\n",
      allocs, frees, threads.size(), static_cast<unsigned long long>(r.app_calls),
      static_cast<unsigned long long>(r.driver_calls()));
  return status;
}
