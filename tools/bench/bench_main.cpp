// cudapool-bench: the benchmark suite (docs/benchmarks.md).
//
//   cudapool-bench hotpath [--quick] [--json]      pool-hit pair vs glibc, jemalloc, mimalloc and
//                                                  pass-through, 1, 2 and 4 threads, per size
//                                                  class
//   cudapool-bench scale [--quick] [--json]        cost per pair with 10^3 .. 10^6 live blocks
//   cudapool-bench replay [TRACE...] [--svg DIR]   traces through the pool (simulated backend and
//                                                  libcudapool.so on the runtime) vs pass-through
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tools/bench/bench.h"

namespace cudapool::bench {

bool parse_common(Args* args, CommonOptions* o, std::string* error) {
  o->malloc_latency_us = kDefaultMallocLatencyUs;
  o->free_latency_us = kDefaultFreeLatencyUs;
  Args rest;
  for (std::size_t i = 0; i < args->size(); ++i) {
    const std::string& a = (*args)[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args->size()) {
        *error = a + " needs a value";
        return false;
      }
      *out = (*args)[++i];
      return true;
    };
    std::string v;
    if (a == "--quick") {
      o->quick = true;
    } else if (a == "--json") {
      o->json = true;
    } else if (a == "--library") {
      if (!value(&o->library)) return false;
    } else if (a == "--seed") {
      if (!value(&v)) return false;
      o->seed = std::strtoull(v.c_str(), nullptr, 10);
    } else if (a == "--malloc-latency-us" || a == "--free-latency-us") {
      // Whole microseconds: the stand-in's unit.
      if (!value(&v)) return false;
      char* end = nullptr;
      const unsigned long long us = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || *end != '\0' || us > 1000000) {
        *error = a + " takes whole microseconds (0 to 1000000), not " + v;
        return false;
      }
      (a == "--malloc-latency-us" ? o->malloc_latency_us : o->free_latency_us) =
          static_cast<double>(us);
    } else {
      rest.push_back(a);
    }
  }
  *args = rest;
  return true;
}

}  // namespace cudapool::bench

namespace {

void usage(FILE* out) {
  fprintf(
      out,
      "usage: cudapool-bench hotpath|scale|replay [options]\n"
      "\n"
      "  hotpath               CPU cost of a cudaMalloc+cudaFree pair served by the pool, per\n"
      "                        size class, 1, 2 and 4 threads, beside glibc, jemalloc, mimalloc\n"
      "                        and the pass-through path (no pool)\n"
      "  scale                 cost per pair with 10^3, 10^4, 10^5 and 10^6 live blocks\n"
      "  replay [TRACE...]     replay traces (CSV files or generated: burst, transformer, cnn,\n"
      "                        churn; default all four) through the pool and pass-through\n"
      "    --svg DIR           write DIR/<trace>.svg: held and in-use bytes over time\n"
      "    --scale X           length of the generated traces, 0 < X <= 1 (--quick: 0.15)\n"
      "    --sim-only          only the simulated backend (no worker processes)\n"
      "    --check             exit 1 (CHECK FAILED lines) when a count is off: driver calls\n"
      "                        on churn above 1%%, held after the burst above in use + low\n"
      "                        watermark + one segment, failed calls, a trim that did not answer\n"
      "\n"
      "common options:\n"
      "  --quick               shorter runs (under a minute each on 2 cores)\n"
      "  --json                JSON instead of tables\n"
      "  --library PATH        libcudapool.so (default: ../shim or ../lib beside this program)\n"
      "  --seed S              seed of sizes and generated traces (default 1)\n"
      "  --malloc-latency-us X, --free-latency-us Y\n"
      "                        pass-through call latency on the stand-in runtime (default %g "
      "and %g,\n"
      "                        see docs/benchmarks.md)\n",
      cudapool::bench::kDefaultMallocLatencyUs, cudapool::bench::kDefaultFreeLatencyUs);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace cudapool::bench;
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  if (cmd == "worker" && argc >= 3) {
    Args args(argv + 3, argv + argc);
    std::string kind = argv[2];
    if (kind == "hotpath") return hotpath_worker(args);
    if (kind == "scale") return scale_worker(args);
    if (kind == "replay") return replay_worker(args);
    return 2;
  }
  Args args(argv + 2, argv + argc);
  if (cmd == "hotpath") return hotpath_main(args);
  if (cmd == "scale") return scale_main(args);
  if (cmd == "replay") return replay_main(args);
  fprintf(stderr, "cudapool-bench: unknown command %s\n", cmd.c_str());
  usage(stderr);
  return 2;
}
