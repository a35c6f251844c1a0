// cudapool-hotpath: the CPU cost of a pool hit, next to glibc malloc/free.
//
//   LD_PRELOAD=build/shim/libcudapool.so build/tools/cudapool-hotpath
//
// Measures, in one run, the median cost of a cudaMalloc+cudaFree pair and of a malloc+free pair
// over the same sizes, in these patterns (--pattern selects some; all by default):
//   alloc-free   random sizes (512 B to 64 KiB from a fixed seed): allocate, then free at once;
//   window-64    the same sizes; keep 64 blocks live; each step frees the oldest and allocates a
//                new one;
//   fixed-SIZE   one fixed size (512B, 4KiB, 16KiB, 64KiB, 1MiB, 8MiB): allocate, then free at
//                once, every pair the same size (the case a per-thread cache of free blocks
//                serves).
// Each workload is warmed up first (so the pool holds what it needs), then timed in batches of N
// pairs, cudaMalloc and malloc batches alternating; ns/pair = batch time / N, and the table shows
// the median and the 99th percentile over the batches. Then every thread runs all batches back to
// back, one allocator at a time, for the throughput (million pairs per second, all threads).
// With --threads T every thread runs the same loops on its own blocks at the same time.
//
// Without the shim the numbers are the runtime's own cudaMalloc/cudaFree ("pass-through"): on a
// GPU, run it both ways. The stand-in runtime's counters (found with dlsym, so the binary also
// runs on NVIDIA's runtime) show how many calls reached the runtime during the timed part: 0 for
// pool hits; the pool's fences show up as device synchronisations.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <stdlib.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/standin/cuda_standin.h"  // the counters' layout only; functions come from dlsym
#include "tools/distribution.h"
#include "tools/paths.h"

namespace {

using cudapool::tools::Distribution;
using cudapool::tools::library_of;
using cudapool::tools::summarize;

constexpr std::size_t kMinSize = 512;
constexpr std::size_t kMaxSize = 64 * 1024;
constexpr std::size_t kWindowBlocks = 64;
constexpr std::size_t kSequence = 1 << 16;  // sizes, cycled

// The patterns, in the order of the table's rows.
enum class Kind { kAllocFree, kWindow, kFixed };
struct Pattern {
  Kind kind;
  std::size_t size;  // kFixed: the one size
  const char* name;
};
constexpr Pattern kPatterns[] = {
    {Kind::kAllocFree, 0, "alloc-free"},       {Kind::kWindow, 0, "window-64"},
    {Kind::kFixed, 512, "fixed-512B"},         {Kind::kFixed, 4 * 1024, "fixed-4KiB"},
    {Kind::kFixed, 16 * 1024, "fixed-16KiB"},  {Kind::kFixed, 64 * 1024, "fixed-64KiB"},
    {Kind::kFixed, 1024 * 1024, "fixed-1MiB"}, {Kind::kFixed, 8 * 1024 * 1024, "fixed-8MiB"},
};
constexpr std::size_t kPatternCount = sizeof(kPatterns) / sizeof(kPatterns[0]);

struct Args {
  int pairs = 1000;
  int batches = 200;
  int warmup = 20;
  int threads = 1;
  std::uint64_t seed = 1;
  bool json = false;
  bool selected[kPatternCount] = {};  // none given: all
};

void usage(FILE* out) {
  fprintf(
      out,
      "usage: [LD_PRELOAD=libcudapool.so] cudapool-hotpath [--pairs N] [--batches N]\n"
      "                              [--warmup N] [--threads T] [--seed S]\n"
      "                              [--pattern NAME[,NAME...]]... [--json]\n"
      "\n"
      "Median CPU cost of a cudaMalloc+cudaFree pair (a pool hit under cudapool) vs a glibc\n"
      "malloc+free pair of the same sizes, single thread or T threads, in these patterns:\n"
      "  alloc-free    random sizes, 512 B to 64 KiB: allocate, then free at once\n"
      "  window-64     the same sizes, 64 blocks live: free the oldest, allocate a new one\n"
      "  fixed-512B, fixed-4KiB, fixed-16KiB, fixed-64KiB, fixed-1MiB, fixed-8MiB\n"
      "                one size every pair: allocate, then free at once\n"
      "  --pairs N     pairs per timed batch (default 1000)\n"
      "  --batches N   timed batches per workload (default 200)\n"
      "  --warmup N    untimed batches before (default 20)\n"
      "  --threads T   run the same loop in T threads at once (default 1)\n"
      "  --seed S      seed of the size sequence (default 1)\n"
      "  --pattern P   run only these patterns, comma-separated or the option repeated\n"
      "                (\"fixed\": all fixed-*, \"all\"); default: all, in the order above\n"
      "  --json        print JSON instead of the table\n"
      "\n"
      "Instruction counts of the pool-hit path (callgrind) are taken on the first two:\n"
      "  CUDAPOOL_CONTROL=0 LD_PRELOAD=libcudapool.so valgrind --tool=callgrind \\\n"
      "    cudapool-hotpath --pairs 1000 --batches 20 --warmup 2 --pattern alloc-free,window-64\n");
}

// Marks the patterns named in a comma-separated list; false on an unknown name.
bool select_patterns(const std::string& list, Args* a) {
  std::size_t begin = 0;
  while (begin <= list.size()) {
    std::size_t end = list.find(',', begin);
    if (end == std::string::npos) end = list.size();
    std::string name = list.substr(begin, end - begin);
    begin = end + 1;
    if (name.empty()) continue;
    bool known = false;
    for (std::size_t i = 0; i < kPatternCount; ++i) {
      const Pattern& p = kPatterns[i];
      if (name == "all" || name == p.name || (name == "fixed" && p.kind == Kind::kFixed)) {
        a->selected[i] = true;
        known = true;
      }
    }
    if (!known) return false;
  }
  return true;
}

bool parse_args(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "--json") {
      a->json = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      exit(0);
    }
    const char* v = value();
    if (v == nullptr) {
      fprintf(stderr, "cudapool-hotpath: %s needs a value\n", arg.c_str());
      return false;
    }
    if (arg == "--pattern") {
      if (!select_patterns(v, a)) {
        fprintf(stderr, "cudapool-hotpath: unknown pattern in %s\n", v);
        return false;
      }
      continue;
    }
    long long n = atoll(v);
    if (arg == "--pairs" && n > 0) {
      a->pairs = static_cast<int>(n);
    } else if (arg == "--batches" && n > 0) {
      a->batches = static_cast<int>(n);
    } else if (arg == "--warmup" && n >= 0) {
      a->warmup = static_cast<int>(n);
    } else if (arg == "--threads" && n > 0 && n <= 256) {
      a->threads = static_cast<int>(n);
    } else if (arg == "--seed") {
      a->seed = static_cast<std::uint64_t>(n);
    } else {
      fprintf(stderr, "cudapool-hotpath: bad argument %s %s\n", arg.c_str(), v);
      return false;
    }
  }
  bool any = false;
  for (bool s : a->selected)
    any = any || s;
  if (!any)
    for (bool& s : a->selected)
      s = true;
  return true;
}

// Keeps the compiler from eliding a malloc/free pair.
inline void escape(void* p) {
  asm volatile("" : : "r"(p) : "memory");
}

struct Counters {
  int (*get)(int, StandinCounters*) =
      reinterpret_cast<int (*)(int, StandinCounters*)>(dlsym(RTLD_DEFAULT, "standinGetCounters"));
  bool present() const { return get != nullptr; }
  StandinCounters read() const {
    StandinCounters c{};
    if (get != nullptr) get(-1, &c);
    return c;
  }
};

// ---- the two allocators and the two patterns --------------------------------------------------

struct CudaAlloc {
  static void* allocate(std::size_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, n) != cudaSuccess) {
      fprintf(stderr, "cudapool-hotpath: cudaMalloc(%zu) failed: %s\n", n,
              cudaGetErrorString(cudaGetLastError()));
      exit(1);
    }
    return p;
  }
  static void release(void* p) {
    cudaError_t err = cudaFree(p);
    if (err != cudaSuccess) {
      fprintf(stderr, "cudapool-hotpath: cudaFree failed: %s\n", cudaGetErrorString(err));
      exit(1);
    }
  }
};

struct HostAlloc {
  static void* allocate(std::size_t n) {
    void* p = malloc(n);
    escape(p);
    if (p == nullptr) {
      fprintf(stderr, "cudapool-hotpath: malloc(%zu) failed\n", n);
      exit(1);
    }
    return p;
  }
  static void release(void* p) {
    escape(p);
    free(p);
  }
};

// One thread's state for one allocator: its place in the size sequence and its live window.
template <typename Alloc>
class Runner {
 public:
  Runner(const std::vector<std::uint32_t>& sizes, std::size_t start)
      : sizes_(sizes), next_(start) {}
  ~Runner() { drain(); }

  // Runs n pairs; returns nanoseconds.
  double run(const Pattern& pattern, int n) {
    auto t0 = std::chrono::steady_clock::now();
    if (pattern.kind == Kind::kFixed) {
      for (int i = 0; i < n; ++i)
        Alloc::release(Alloc::allocate(pattern.size));
    } else if (pattern.kind == Kind::kAllocFree) {
      for (int i = 0; i < n; ++i)
        Alloc::release(Alloc::allocate(next_size()));
    } else {
      if (window_.empty()) fill();
      for (int i = 0; i < n; ++i) {
        Alloc::release(window_[slot_]);
        window_[slot_] = Alloc::allocate(next_size());
        slot_ = (slot_ + 1) % kWindowBlocks;
      }
    }
    auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count();
  }

  void drain() {
    for (void* p : window_)
      Alloc::release(p);
    window_.clear();
    slot_ = 0;
  }

 private:
  std::size_t next_size() {
    std::size_t s = sizes_[next_];
    next_ = (next_ + 1) % sizes_.size();
    return s;
  }
  void fill() {
    for (std::size_t i = 0; i < kWindowBlocks; ++i)
      window_.push_back(Alloc::allocate(next_size()));
  }

  const std::vector<std::uint32_t>& sizes_;
  std::size_t next_;
  std::vector<void*> window_;
  std::size_t slot_ = 0;
};

struct Row {
  const Pattern* pattern;
  Distribution cuda, host;                  // ns per pair, over all threads' batches
  double cuda_mpairs = 0, host_mpairs = 0;  // total throughput, million pairs per second
  long long driver_calls = -1;  // cudaMalloc+cudaFree that reached the runtime (timed part)
  long long device_syncs = -1;  // cudaDeviceSynchronize calls (the pool's fences)
};

// Runs one pattern with `threads` threads: warm-up, then timed batches alternating cudaMalloc and
// malloc (which one goes first alternates too). Every thread starts each batch at the same time
// (a barrier), so with several threads they contend for the same allocator.
Row measure(const Pattern& pattern, const Args& args, const std::vector<std::uint32_t>& sizes,
            const Counters& counters) {
  using Clock = std::chrono::steady_clock;
  struct Span {
    Clock::time_point start, end;
  };
  Row row;
  row.pattern = &pattern;
  int t = args.threads;
  std::vector<std::vector<double>> cuda_ns(t), host_ns(t);
  std::vector<Span> cuda_run(t), host_run(t);
  std::barrier sync_point(t);
  StandinCounters before{}, after{};

  auto body = [&](int id) {
    std::size_t start = static_cast<std::size_t>(id) * (sizes.size() / t);
    Runner<CudaAlloc> cuda(sizes, start);
    Runner<HostAlloc> host(sizes, start);
    for (int b = 0; b < args.warmup; ++b) {
      cuda.run(pattern, args.pairs);
      host.run(pattern, args.pairs);
    }
    sync_point.arrive_and_wait();
    if (id == 0) before = counters.read();
    for (int b = 0; b < args.batches; ++b) {
      bool cuda_first = b % 2 == 0;
      for (int k = 0; k < 2; ++k) {
        sync_point.arrive_and_wait();
        if ((k == 0) == cuda_first)
          cuda_ns[id].push_back(cuda.run(pattern, args.pairs) / args.pairs);
        else
          host_ns[id].push_back(host.run(pattern, args.pairs) / args.pairs);
      }
    }
    // Throughput: every thread runs all its batches back to back, one allocator at a time.
    for (int k = 0; k < 2; ++k) {
      sync_point.arrive_and_wait();
      Span span;
      span.start = Clock::now();
      for (int b = 0; b < args.batches; ++b) {
        if (k == 0)
          cuda.run(pattern, args.pairs);
        else
          host.run(pattern, args.pairs);
      }
      span.end = Clock::now();
      (k == 0 ? cuda_run : host_run)[id] = span;
    }
    sync_point.arrive_and_wait();
    if (id == 0) after = counters.read();
  };
  std::vector<std::thread> pool;
  for (int id = 1; id < t; ++id)
    pool.emplace_back(body, id);
  body(0);
  for (auto& th : pool)
    th.join();

  // Throughput: all threads' pairs over the time from the first thread's start to the last
  // thread's end.
  auto wall_ns = [&](const std::vector<Span>& spans) {
    Clock::time_point first = spans[0].start, last = spans[0].end;
    for (const Span& sp : spans) {
      first = std::min(first, sp.start);
      last = std::max(last, sp.end);
    }
    return std::chrono::duration<double, std::nano>(last - first).count();
  };
  double pairs_total = static_cast<double>(t) * args.batches * args.pairs;
  double cuda_wall = wall_ns(cuda_run), host_wall = wall_ns(host_run);
  row.cuda_mpairs = cuda_wall > 0 ? pairs_total / cuda_wall * 1e3 : 0;
  row.host_mpairs = host_wall > 0 ? pairs_total / host_wall * 1e3 : 0;

  std::vector<double> all_cuda, all_host;
  for (int id = 0; id < t; ++id) {
    all_cuda.insert(all_cuda.end(), cuda_ns[id].begin(), cuda_ns[id].end());
    all_host.insert(all_host.end(), host_ns[id].begin(), host_ns[id].end());
  }
  row.cuda = summarize(all_cuda);
  row.host = summarize(all_host);
  if (counters.present()) {
    row.driver_calls = static_cast<long long>(
        (after.mallocs + after.malloc_failures + after.frees + after.free_failures) -
        (before.mallocs + before.malloc_failures + before.frees + before.free_failures));
    row.device_syncs = static_cast<long long>(after.device_syncs - before.device_syncs);
  }
  return row;
}

std::string opt_count(long long v) {
  return v < 0 ? "-" : std::to_string(v);
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, &args)) {
    usage(stderr);
    return 2;
  }

  std::string malloc_lib = library_of("cudaMalloc");
  std::string runtime_lib = library_of("cudaGetDeviceCount");
  bool preloaded = malloc_lib.find("libcudapool") != std::string::npos;
  const char* disable = getenv("CUDAPOOL_DISABLE");
  bool disabled = preloaded && disable != nullptr && *disable != '\0' && strcmp(disable, "0") != 0;
  bool pooled = preloaded && !disabled;
  const char* label = pooled ? "cudapool" : "pass-through";
  Counters counters;

  cudaError_t err = cudaFree(nullptr);  // starts the runtime outside the timed part
  if (err != cudaSuccess) {
    fprintf(stderr, "cudapool-hotpath: the CUDA runtime did not start: %s (%d)\n",
            cudaGetErrorString(err), static_cast<int>(err));
    return 1;
  }

  std::vector<std::uint32_t> sizes(kSequence);
  std::mt19937_64 rng(args.seed);
  std::uniform_int_distribution<std::uint32_t> dist(kMinSize, kMaxSize);
  for (auto& s : sizes)
    s = dist(rng);

  std::vector<Row> rows;
  bool any_fixed = false;
  for (std::size_t i = 0; i < kPatternCount; ++i) {
    if (!args.selected[i]) continue;
    rows.push_back(measure(kPatterns[i], args, sizes, counters));
    any_fixed = any_fixed || kPatterns[i].kind == Kind::kFixed;
  }

  if (args.json) {
    printf(
        "{\n  \"cuda_malloc_from\": \"%s\",\n  \"runtime\": \"%s\",\n  \"runtime_library\": "
        "\"%s\",\n",
        malloc_lib.c_str(), counters.present() ? "standin" : "real", runtime_lib.c_str());
    printf(
        "  \"mode\": \"%s\",\n  \"threads\": %d,\n  \"pairs\": %d,\n  \"batches\": %d,\n"
        "  \"warmup\": %d,\n  \"seed\": %" PRIu64 ",\n  \"workloads\": [",
        label, args.threads, args.pairs, args.batches, args.warmup, args.seed);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      printf(
          "%s\n    {\"name\": \"%s\", \"cuda_ns_per_pair\": %.2f, \"cuda_p99\": %.2f, "
          "\"glibc_ns_per_pair\": %.2f, \"glibc_p99\": %.2f, \"ratio\": %.3f, "
          "\"cuda_mpairs_per_s\": %.3f, \"glibc_mpairs_per_s\": %.3f, "
          "\"driver_calls\": %s, \"device_syncs\": %s%s}",
          i ? "," : "", r.pattern->name, r.cuda.median, r.cuda.p99, r.host.median, r.host.p99,
          r.host.median > 0 ? r.cuda.median / r.host.median : 0, r.cuda_mpairs, r.host_mpairs,
          r.driver_calls < 0 ? "null" : std::to_string(r.driver_calls).c_str(),
          r.device_syncs < 0 ? "null" : std::to_string(r.device_syncs).c_str(),
          r.pattern->kind == Kind::kFixed
              ? (", \"size_bytes\": " + std::to_string(r.pattern->size)).c_str()
              : "");
    }
    printf("\n  ]\n}\n");
    return 0;
  }

  printf("cudapool-hotpath: cudaMalloc from %s (%s%s)\n", malloc_lib.c_str(), label,
         disabled ? ": CUDAPOOL_DISABLE is set" : "");
  printf("runtime: %s (%s)\n", counters.present() ? "stand-in" : "NVIDIA", runtime_lib.c_str());
  printf(
      "%d thread%s, %d batches of %d pairs after %d warm-up batches; sizes %zu B to %zu KiB, "
      "uniform (seed %" PRIu64 ")\n",
      args.threads, args.threads > 1 ? "s" : "", args.batches, args.pairs, args.warmup, kMinSize,
      kMaxSize / 1024, args.seed);
  if (any_fixed) printf("fixed-SIZE rows: that one size every pair, allocated and freed at once\n");
  printf("\n");
  std::string cuda_col = std::string(label) + " ns/pair";
  printf("%-12s %21s %9s %15s %9s %7s %21s %14s\n", "workload", cuda_col.c_str(), "p99",
         "glibc ns/pair", "p99", "ratio", (std::string(label) + " Mpair/s").c_str(),
         "glibc Mpair/s");
  for (const Row& r : rows) {
    double ratio = r.host.median > 0 ? r.cuda.median / r.host.median : 0;
    printf("%-12s %21.1f %9.1f %15.1f %9.1f %7.2f %21.2f %14.2f\n", r.pattern->name, r.cuda.median,
           r.cuda.p99, r.host.median, r.host.p99, ratio, r.cuda_mpairs, r.host_mpairs);
  }
  printf("\n");
  for (const Row& r : rows) {
    if (r.driver_calls < 0) {
      printf("%s: driver calls during the timed part not visible (NVIDIA's runtime)\n",
             r.pattern->name);
    } else {
      printf(
          "%s: %s cudaMalloc/cudaFree reached the runtime during the timed part (%lld pairs), "
          "%s device synchronisations%s\n",
          r.pattern->name, opt_count(r.driver_calls).c_str(),
          2LL * args.threads * args.batches * args.pairs, opt_count(r.device_syncs).c_str(),
          pooled ? " (the pool's fences)" : "");
    }
  }
  if (!pooled && !disabled)
    printf("(pass-through: run with LD_PRELOAD=<build>/shim/libcudapool.so to measure the pool)\n");
  return 0;
}
