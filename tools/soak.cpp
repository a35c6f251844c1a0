// cudapool-soak: a soak and chaos run of libcudapool.so against the stand-in CUDA runtime.
//
// Many threads allocate blocks of mixed sizes on several devices, write patterns into them (from
// the host and with cudaMemsetAsync on their own asynchronous streams), verify and free them, while
//   - the stand-in injects cudaMalloc failures (STANDIN_FAIL_MALLOC_RATE) and random latencies
//     (STANDIN_LATENCY_JITTER_US on every driver call and stream operation);
//   - another process (forked before the first CUDA call, so it never touches CUDA) fires trim,
//     set, get, stats and garbage at this process's control pipe;
//   - the program forks now and then; each child makes a few CUDA calls and exits.
// It checks after every step:
//   - every cudaMalloc answer is one the native runtime could give (success, or
//     cudaErrorMemoryAllocation; in a fork child also cudaErrorInitializationError), a success
//     leaves cudaGetLastError clean, and the calling thread's device is unchanged;
//   - a returned block is aligned to 512 bytes, lies inside one live driver allocation, and
//     overlaps no other live block of any thread;
//   - every pattern survives until its block is freed (a block freed while its cudaMemsetAsync is
//     still queued must not be handed out before that write lands);
//   - at pauses (every --check-ms), the pool's counters (stats through the pipe) equal the
//     stand-in's: held = bytes the driver holds, segments = driver mallocs - frees, live blocks and
//     bytes in use match what the threads hold;
//   - at the end, after all frees and a trim, the driver holds nothing.
// It prints a summary (operations, faults injected, trims, violations) and exits 1 on any
// violation (2 on a usage or set-up error).
//
// Running it: from the build tree, `tools/cudapool-soak --seconds 3600` (the one-hour soak). When
// libcudapool.so is not preloaded, the program starts itself again with LD_PRELOAD naming the
// library (--library=PATH, else ../shim/libcudapool.so or ../lib/libcudapool.so beside the
// executable). Under a preload already set (the tests: sanitizer runtime first) it runs as is.
// STANDIN_* and CUDAPOOL_* variables already in the environment win over the soak's defaults.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "control/client.h"
#include "control/preload.h"
#include "tests/standin/cuda_standin.h"  // the counters' layout only; functions come from dlsym
#include "tools/paths.h"

namespace {

using cudapool::tools::file_exists;
using cudapool::tools::self_exe;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;
constexpr std::size_t kHeadBytes = 256;  // written by cudaMemsetAsync or the host
constexpr std::size_t kStampBytes = 16;  // host-written stamps after the head
constexpr std::size_t kStampStride = 256 * kKiB;
constexpr int kMaxLiveBlocksPerThread = 48;

// ---- options
// -------------------------------------------------------------------------------------

struct Options {
  double seconds = 20;
  int threads = 4;
  std::uint64_t seed = 1;
  int fork_every_ms = 2000;  // 0: no forks
  bool pipe_chaos = true;
  int check_ms = 500;
  int devices = 2;
  std::string device_memory = "2GiB";
  std::string fail_rate = "0.02";
  std::string jitter_us = "50";
  std::string library;
  std::string summary_file;
};

[[noreturn]] void usage(const char* why) {
  const bool help = why == nullptr;
  fprintf(help ? stdout : stderr,
          "cudapool-soak: %s\n"
          "usage: cudapool-soak [--seconds N] [--threads N] [--seed S] [--fork-every MS]\n"
          "                     [--pipe-chaos | --no-pipe-chaos] [--check-ms MS] [--devices N]\n"
          "                     [--device-memory SIZE] [--fail-rate R] [--jitter-us N]\n"
          "                     [--library PATH] [--summary FILE]\n"
          "defaults: --seconds 20 --threads 4 --seed 1 --fork-every 2000 --pipe-chaos\n"
          "          --check-ms 500 --devices 2 --device-memory 2GiB --fail-rate 0.02\n"
          "          --jitter-us 50; docs/reliability.md describes the checks\n",
          help ? "soak and chaos run of libcudapool.so on the stand-in CUDA runtime" : why);
  exit(help ? 0 : 2);
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    const std::size_t eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto next = [&]() -> std::string {
      if (eq != std::string::npos) return value;
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--help" || a == "-h") usage(nullptr);
    try {
      if (a == "--seconds")
        o.seconds = std::stod(next());
      else if (a == "--threads")
        o.threads = std::stoi(next());
      else if (a == "--seed")
        o.seed = std::stoull(next());
      else if (a == "--fork-every")
        o.fork_every_ms = std::stoi(next());
      else if (a == "--pipe-chaos")
        o.pipe_chaos = true;
      else if (a == "--no-pipe-chaos")
        o.pipe_chaos = false;
      else if (a == "--check-ms")
        o.check_ms = std::stoi(next());
      else if (a == "--devices")
        o.devices = std::stoi(next());
      else if (a == "--device-memory")
        o.device_memory = next();
      else if (a == "--fail-rate")
        o.fail_rate = next();
      else if (a == "--jitter-us")
        o.jitter_us = next();
      else if (a == "--library")
        o.library = next();
      else if (a == "--summary")
        o.summary_file = next();
      else
        usage(("unknown argument " + a).c_str());
    } catch (const std::exception&) {
      usage(("bad value for " + a).c_str());
    }
  }
  if (o.threads < 1 || o.threads > 256 || o.devices < 1 || o.seconds < 0 || o.check_ms < 10)
    usage("value out of range");
  return o;
}

// ---- the process
// ---------------------------------------------------------------------------------

bool shim_preloaded() {
  void* addr = dlsym(RTLD_DEFAULT, "cudaMalloc");
  Dl_info info;
  if (addr == nullptr || dladdr(addr, &info) == 0 || info.dli_fname == nullptr) return false;
  return strstr(info.dli_fname, "libcudapool") != nullptr;
}

// Starts this program again with libcudapool.so preloaded; returns only on failure.
void reexec_with_preload(const Options& o, char** argv) {
  std::string lib = o.library;
  if (lib.empty()) {
    const std::string exe = self_exe();
    const std::string dir = exe.substr(0, exe.rfind('/'));
    for (const char* rel : {"/../shim/libcudapool.so", "/../lib/libcudapool.so", "/libcudapool.so"})
      if (file_exists(dir + rel)) {
        lib = dir + rel;
        break;
      }
  }
  if (lib.empty() || !file_exists(lib)) usage("libcudapool.so not found (use --library PATH)");
  setenv("LD_PRELOAD", cudapool::preload_with_cudapool(getenv("LD_PRELOAD"), lib).c_str(), 1);
  execv("/proc/self/exe", argv);
  fprintf(stderr, "cudapool-soak: exec failed: %s\n", strerror(errno));
  exit(2);
}

// ---- the stand-in
// --------------------------------------------------------------------------------

struct Standin {
  int (*get_counters)(int, StandinCounters*) = nullptr;
  int (*allocation_info)(const void*, StandinAllocationInfo*) = nullptr;
  unsigned long long (*injected_faults)() = nullptr;
};
Standin g_standin;

StandinCounters counters(int device) {
  StandinCounters c{};
  g_standin.get_counters(device, &c);
  return c;
}

// ---- violations and counts
// -----------------------------------------------------------------------

std::atomic<std::uint64_t> g_violations{0};
std::mutex g_report_mu;

void violation(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void violation(const char* fmt, ...) {
  const std::uint64_t n = g_violations.fetch_add(1) + 1;
  if (n > 50) return;  // the first ones say enough
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::lock_guard g(g_report_mu);
  fprintf(stderr, "cudapool-soak: VIOLATION: %s\n", buf);
}

struct Counts {
  std::atomic<std::uint64_t> operations{0};  // every checked step below
  std::atomic<std::uint64_t> mallocs{0};
  std::atomic<std::uint64_t> malloc_failures{0};  // cudaErrorMemoryAllocation seen by the app
  std::atomic<std::uint64_t> frees{0};
  std::atomic<std::uint64_t> async_writes{0};
  std::atomic<std::uint64_t> frees_with_queued_write{0};
  std::atomic<std::uint64_t> verifies{0};
  std::atomic<std::uint64_t> bytes_allocated{0};
  std::atomic<std::uint64_t> counter_checks{0};
  std::atomic<std::uint64_t> counter_checks_skipped{0};  // the driver never stood still
  std::atomic<std::uint64_t> counter_checks_waited{0};   // agreed after a release finished
  std::atomic<std::uint64_t> forks{0};
  std::atomic<std::uint64_t> native_blocks{0};  // served by the runtime after the pool failed
};
Counts g_counts;

// ---- live blocks of every thread
// -----------------------------------------------------------------

struct LiveTotals {
  std::uint64_t blocks = 0, bytes = 0;             // pool blocks
  std::uint64_t native = 0, native_accounted = 0;  // native blocks, bytes as the driver counts
};
std::mutex g_live_mu;
std::map<std::uintptr_t, std::pair<std::size_t, bool>> g_live;  // start -> size, native
LiveTotals g_live_totals;                                       // guarded by g_live_mu

void register_block(const void* p, std::size_t n, bool native) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard g(g_live_mu);
  auto next = g_live.lower_bound(a);
  if (next != g_live.end() && next->first < a + n)
    violation("block %p+%zu overlaps live block %#lx+%zu", p, n, next->first, next->second.first);
  if (next != g_live.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.first > a)
      violation("block %p+%zu overlaps live block %#lx+%zu", p, n, prev->first, prev->second.first);
  }
  g_live[a] = {n, native};
  if (native) {
    ++g_live_totals.native;
    g_live_totals.native_accounted += (n + 511) / 512 * 512;
  } else {
    ++g_live_totals.blocks;
    g_live_totals.bytes += n;
  }
}

void unregister_block(const void* p) {
  std::lock_guard g(g_live_mu);
  auto it = g_live.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == g_live.end()) {
    violation("freeing %p, which is not live", p);
    return;
  }
  const auto [n, native] = it->second;
  if (native) {
    --g_live_totals.native;
    g_live_totals.native_accounted -= (n + 511) / 512 * 512;
  } else {
    --g_live_totals.blocks;
    g_live_totals.bytes -= n;
  }
  g_live.erase(it);
}

// ---- patterns
// ------------------------------------------------------------------------------------

std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

template <typename F>
void for_each_stamp(std::size_t n, F&& f) {
  if (n < kHeadBytes + kStampBytes) return;
  std::size_t last = kHeadBytes;
  for (std::size_t off = kHeadBytes; off + kStampBytes <= n; off += kStampStride)
    f(last = off);
  if (n - kStampBytes >= last + kStampBytes) f(n - kStampBytes);  // the end, when apart
}

void write_stamps(unsigned char* p, std::size_t n, std::uint64_t seed) {
  for_each_stamp(n, [&](std::size_t off) {
    const std::uint64_t v[2] = {mix(seed ^ off), mix(seed + off)};
    memcpy(p + off, v, kStampBytes);
  });
}

bool stamps_intact(const unsigned char* p, std::size_t n, std::uint64_t seed, std::size_t* bad) {
  bool ok = true;
  for_each_stamp(n, [&](std::size_t off) {
    const std::uint64_t v[2] = {mix(seed ^ off), mix(seed + off)};
    if (ok && memcmp(p + off, v, kStampBytes) != 0) {
      ok = false;
      *bad = off;
    }
  });
  return ok;
}

// ---- pausing the workers for the counter checks
// --------------------------------------------------

// Never destroyed: a fork child's exit() would wait in the condition variable's destructor for
// the parent's waiting threads, which do not exist in the child.
std::mutex& g_pause_mu = *new std::mutex;
std::condition_variable& g_pause_cv = *new std::condition_variable;
bool g_pause_requested = false;  // guarded by g_pause_mu
int g_paused = 0;                // guarded by g_pause_mu
int g_running_workers = 0;       // guarded by g_pause_mu
std::atomic<bool> g_pause_flag{false};
std::atomic<bool> g_stop{false};

void pause_point() {
  if (!g_pause_flag.load(std::memory_order_acquire)) return;
  std::unique_lock lk(g_pause_mu);
  if (!g_pause_requested) return;
  ++g_paused;
  g_pause_cv.notify_all();
  g_pause_cv.wait(lk, [] { return !g_pause_requested; });
  --g_paused;
}

// ---- one worker thread
// ---------------------------------------------------------------------------

struct Block {
  unsigned char* p = nullptr;
  std::size_t size = 0;
  int device = 0;
  std::uint64_t seed = 0;
  int stream = -1;          // the stream whose cudaMemsetAsync writes the head, or -1
  bool head_known = false;  // the head holds `head` for sure (written by the host or synced)
  unsigned char head = 0;
};

class Worker {
 public:
  Worker(int index, const Options& o) : index_(index), options_(o), rng_(mix(o.seed + index)) {}

  void run() {
    // Two streams per device: one non-blocking, one blocking (orders with the legacy stream).
    for (int d = 0; d < options_.devices; ++d) {
      check_call(cudaSetDevice(d), "cudaSetDevice");
      cudaStream_t s1 = nullptr, s2 = nullptr;
      check_call(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), "cudaStreamCreate");
      check_call(cudaStreamCreate(&s2), "cudaStreamCreate");
      streams_.push_back({s1, s2});
    }
    while (!g_stop.load(std::memory_order_relaxed)) {
      pause_point();
      step();
    }
    // Drain: everything verified (after syncing) and freed.
    for (auto& per_device : streams_)
      for (cudaStream_t s : per_device)
        check_call(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    while (!blocks_.empty())
      free_block(blocks_.size() - 1, /*sync_first=*/true);
    for (auto& per_device : streams_)
      for (cudaStream_t s : per_device)
        check_call(cudaStreamDestroy(s), "cudaStreamDestroy");
  }

 private:
  void check_call(cudaError_t e, const char* what) {
    g_counts.operations.fetch_add(1, std::memory_order_relaxed);
    if (e != cudaSuccess)
      violation("thread %d: %s returned %d (%s)", index_, what, static_cast<int>(e),
                cudaGetErrorName(e));
  }

  void check_device(int expected, const char* after) {
    int current = -1;
    cudaGetDevice(&current);
    if (current != expected)
      violation("thread %d: current device %d after %s, was %d", index_, current, after, expected);
  }

  // Never a multiple of 512: a block the runtime served natively (the pool fell back) is then
  // told apart from a pool segment, whose size is always a multiple of 512.
  std::size_t pick_size() {
    const unsigned kind = rng_() % 100;
    std::size_t size = 0;
    if (kind < 70)
      size = 1 + rng_() % (64 * kKiB);  // small
    else if (kind < 95)
      size = 64 * kKiB + rng_() % (4 * kMiB);  // medium
    else
      size = 4 * kMiB + rng_() % (96 * kMiB);  // large
    return size % 512 == 0 ? size + 1 : size;
  }

  void step() {
    const unsigned what = rng_() % 100;
    if (blocks_.empty() || (blocks_.size() < kMaxLiveBlocksPerThread && what < 45)) {
      allocate();
    } else if (what < 85) {
      free_block(rng_() % blocks_.size(), rng_() % 2 == 0);
    } else if (what < 95) {
      verify(blocks_[rng_() % blocks_.size()], rng_() % 4 == 0);
    } else {
      for (Block& b : blocks_)
        verify(b, false);
    }
  }

  void allocate() {
    const int device = static_cast<int>(rng_() % options_.devices);
    check_call(cudaSetDevice(device), "cudaSetDevice");
    const std::size_t size = pick_size();
    (void)cudaGetLastError();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, size);
    g_counts.operations.fetch_add(1, std::memory_order_relaxed);
    check_device(device, "cudaMalloc");
    if (e == cudaErrorMemoryAllocation) {
      g_counts.malloc_failures.fetch_add(1, std::memory_order_relaxed);
      (void)cudaGetLastError();
      return;
    }
    if (e != cudaSuccess) {
      violation("thread %d: cudaMalloc(%zu) returned %d (%s), which the runtime cannot give here",
                index_, size, static_cast<int>(e), cudaGetErrorName(e));
      return;
    }
    const cudaError_t last = cudaGetLastError();
    if (last != cudaSuccess)
      violation("thread %d: cudaMalloc(%zu) succeeded but cudaGetLastError says %d", index_, size,
                static_cast<int>(last));
    if (p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 512 != 0) {
      violation("thread %d: cudaMalloc(%zu) returned %p (null or not 512-aligned)", index_, size,
                p);
      return;
    }
    StandinAllocationInfo info{};
    if (g_standin.allocation_info(p, &info) != 0 || info.device != device ||
        reinterpret_cast<std::uintptr_t>(p) + size > info.base + info.size)
      violation("thread %d: block %p+%zu is not inside one live driver allocation of device %d",
                index_, p, size, device);
    // Served by the runtime itself (the pool could not, and the native call could): its own
    // driver allocation of exactly the request.
    const bool native = info.base == reinterpret_cast<std::uintptr_t>(p) && info.size == size;
    if (native) g_counts.native_blocks.fetch_add(1, std::memory_order_relaxed);
    g_counts.mallocs.fetch_add(1, std::memory_order_relaxed);
    g_counts.bytes_allocated.fetch_add(size, std::memory_order_relaxed);
    register_block(p, size, native);

    Block b;
    b.p = static_cast<unsigned char*>(p);
    b.size = size;
    b.device = device;
    b.seed = mix(rng_());
    b.head = static_cast<unsigned char>(b.seed >> 56);
    write_stamps(b.p, size, b.seed);
    const std::size_t head = std::min(size, kHeadBytes);
    if (rng_() % 2 == 0) {
      b.stream = static_cast<int>(rng_() % 2);
      check_call(cudaMemsetAsync(b.p, b.head, head, streams_[device][b.stream]), "cudaMemsetAsync");
      g_counts.async_writes.fetch_add(1, std::memory_order_relaxed);
    } else {
      memset(b.p, b.head, head);
      b.head_known = true;
    }
    blocks_.push_back(b);
  }

  void verify(Block& b, bool sync_first) {
    if (sync_first && b.stream >= 0) {
      check_call(cudaStreamSynchronize(streams_[b.device][b.stream]), "cudaStreamSynchronize");
      b.head_known = true;
    }
    g_counts.verifies.fetch_add(1, std::memory_order_relaxed);
    g_counts.operations.fetch_add(1, std::memory_order_relaxed);
    std::size_t bad = 0;
    if (!stamps_intact(b.p, b.size, b.seed, &bad))
      violation("thread %d: block %p+%zu (device %d): stamp at offset %zu overwritten", index_,
                static_cast<void*>(b.p), b.size, b.device, bad);
    if (b.head_known) {
      const std::size_t head = std::min(b.size, kHeadBytes);
      for (std::size_t i = 0; i < head; ++i)
        if (b.p[i] != b.head) {
          violation("thread %d: block %p+%zu (device %d): byte %zu is %u, expected %u", index_,
                    static_cast<void*>(b.p), b.size, b.device, i, b.p[i], b.head);
          break;
        }
    }
  }

  void free_block(std::size_t i, bool sync_first) {
    Block b = blocks_[i];
    blocks_[i] = blocks_.back();
    blocks_.pop_back();
    verify(b, sync_first);
    if (b.stream >= 0 && !b.head_known)
      g_counts.frees_with_queued_write.fetch_add(1, std::memory_order_relaxed);
    unregister_block(b.p);
    // Free from another current device now and then (a pointer may be freed anywhere).
    const int device = rng_() % 4 == 0 ? static_cast<int>(rng_() % options_.devices) : b.device;
    check_call(cudaSetDevice(device), "cudaSetDevice");
    check_call(cudaFree(b.p), "cudaFree");
    check_device(device, "cudaFree");
    g_counts.frees.fetch_add(1, std::memory_order_relaxed);
  }

  int index_;
  const Options& options_;
  std::mt19937_64 rng_;
  std::vector<std::vector<cudaStream_t>> streams_;  // [device][0: non-blocking, 1: blocking]
  std::vector<Block> blocks_;
};

// ---- the pool's counters through its own control pipe
// --------------------------------------------

std::string g_pipe;

struct PoolTotals {
  std::uint64_t held = 0, in_use = 0, segments = 0, live_blocks = 0;
};

std::map<std::string, std::uint64_t> key_values(const std::string& line) {
  std::map<std::string, std::uint64_t> kv;
  std::istringstream in(line);
  std::string item;
  while (in >> item) {
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) continue;
    kv[item.substr(0, eq)] = strtoull(item.c_str() + eq + 1, nullptr, 10);
  }
  return kv;
}

bool pool_totals(PoolTotals* out, std::string* error) {
  const cudapool::ClientReply r =
      cudapool::request(g_pipe, "stats text", std::chrono::milliseconds(20000));
  if (r.status != cudapool::ClientReply::Status::kOk) {
    *error = "stats: status " + std::to_string(static_cast<int>(r.status)) + " " + r.error;
    return false;
  }
  *out = PoolTotals{};
  std::istringstream lines(r.body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("device=", 0) != 0) continue;
    auto kv = key_values(line);
    out->held += kv["held"];
    out->in_use += kv["in_use"];
    out->segments += kv["segments"];
    out->live_blocks += kv["live_blocks"];
  }
  return true;
}

bool same_driver_state(const StandinCounters& a, const StandinCounters& b) {
  return a.mallocs == b.mallocs && a.frees == b.frees && a.bytes_held == b.bytes_held;
}

// With every worker paused: the pool's figures against the stand-in's and the threads' own.
// The pool's `held` leaves out segments it is returning right now (a release thread or a trim may
// be inside cudaFree, which waits for every stream's queued work), so the figures must agree once
// the driver is quiet: up to 10 s of retries, then a mismatch is a violation.
void check_counters() {
  std::string mismatch;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int attempt = 0;; ++attempt) {
    if (attempt > 0) {
      if (std::chrono::steady_clock::now() > give_up) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const StandinCounters before = counters(-1);
    PoolTotals pool;
    std::string error;
    if (!pool_totals(&pool, &error)) {
      violation("the control pipe did not answer: %s", error.c_str());
      return;
    }
    const StandinCounters after = counters(-1);
    if (!same_driver_state(before, after)) continue;  // a release ran meanwhile: again
    LiveTotals live;
    {
      std::lock_guard g(g_live_mu);
      live = g_live_totals;
    }
    char buf[512];
    mismatch.clear();
    // Blocks the runtime served natively are driver allocations the pool does not hold.
    if (pool.held + live.native_accounted != after.bytes_held) {
      snprintf(buf, sizeof buf, "pool holds %llu bytes (+%llu in native blocks), the driver %llu; ",
               static_cast<unsigned long long>(pool.held),
               static_cast<unsigned long long>(live.native_accounted), after.bytes_held);
      mismatch += buf;
    }
    if (pool.segments + live.native != after.mallocs - after.frees) {
      snprintf(buf, sizeof buf, "pool has %llu segments (+%llu native blocks), the driver %llu; ",
               static_cast<unsigned long long>(pool.segments),
               static_cast<unsigned long long>(live.native), after.mallocs - after.frees);
      mismatch += buf;
    }
    if (pool.live_blocks != live.blocks) {
      snprintf(buf, sizeof buf, "pool counts %llu live blocks, the threads hold %llu; ",
               static_cast<unsigned long long>(pool.live_blocks),
               static_cast<unsigned long long>(live.blocks));
      mismatch += buf;
    }
    if (pool.in_use < live.bytes || pool.in_use > pool.held) {
      snprintf(buf, sizeof buf, "pool's in_use %llu: threads hold %llu bytes, pool holds %llu; ",
               static_cast<unsigned long long>(pool.in_use),
               static_cast<unsigned long long>(live.bytes),
               static_cast<unsigned long long>(pool.held));
      mismatch += buf;
    }
    if (!mismatch.empty()) continue;
    g_counts.counter_checks.fetch_add(1, std::memory_order_relaxed);
    g_counts.operations.fetch_add(1, std::memory_order_relaxed);
    if (attempt > 0) g_counts.counter_checks_waited.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (mismatch.empty()) {
    g_counts.counter_checks_skipped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  violation("counters disagree for 10 s: %s", mismatch.c_str());
}

void pause_and_check(int workers) {
  {
    std::unique_lock lk(g_pause_mu);
    g_pause_requested = true;
    g_pause_flag.store(true, std::memory_order_release);
    g_pause_cv.wait(lk, [&] { return g_paused == g_running_workers; });
  }
  (void)workers;
  check_counters();
  {
    std::lock_guard lk(g_pause_mu);
    g_pause_requested = false;
    g_pause_flag.store(false, std::memory_order_release);
  }
  g_pause_cv.notify_all();
}

// ---- forks
// ---------------------------------------------------------------------------------------

// The child of a pooling, multi-threaded process: its CUDA calls get the runtime's own answers
// (the stand-in refuses every call in such a child with cudaErrorInitializationError, like a
// CUDA context that does not survive fork), and it exits normally through the library's exit path.
void fork_once() {
  g_counts.forks.fetch_add(1, std::memory_order_relaxed);
  g_counts.operations.fetch_add(1, std::memory_order_relaxed);
  const pid_t pid = fork();
  if (pid < 0) {
    violation("fork failed: %s", strerror(errno));
    return;
  }
  if (pid == 0) {
    alarm(30);  // a hang here is a violation, seen by the parent as SIGALRM
    int code = 0;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, 1 * kMiB);
    if (e == cudaSuccess) {
      memset(p, 0x5a, kMiB);
      if (cudaFree(p) != cudaSuccess) code = 11;
    } else if (e != cudaErrorInitializationError && e != cudaErrorMemoryAllocation) {
      code = 10;
    }
    exit(code);
  }
  int status = 0;
  for (int waited_ms = 0;; waited_ms += 10) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) {
      violation("waitpid: %s", strerror(errno));
      return;
    }
    if (waited_ms > 60000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      violation("fork child %d hung", static_cast<int>(pid));
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (WIFSIGNALED(status))
    violation("fork child died of signal %d", WTERMSIG(status));
  else if (WEXITSTATUS(status) != 0)
    violation("fork child got a wrong answer (exit code %d)", WEXITSTATUS(status));
}

// ---- the chaos process
// ---------------------------------------------------------------------------

volatile sig_atomic_t g_chaos_stop = 0;
void on_sigterm(int) {
  g_chaos_stop = 1;
}

struct ChaosCounts {
  std::uint64_t sent = 0, answered = 0, refused = 0, unexpected_refusals = 0, timeouts = 0,
                no_pipe = 0, trims = 0, sets = 0, stats = 0, garbage = 0;
};

// Runs in a child forked before any CUDA call: it never touches CUDA (the library stays inert in
// it). Writes its counts to `out_fd` when SIGTERM arrives.
[[noreturn]] void chaos_main(const std::string& pipe, std::uint64_t seed, int out_fd) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  signal(SIGTERM, on_sigterm);
  std::mt19937_64 rng(mix(seed ^ 0xC4A05));
  ChaosCounts c;
  while (!g_chaos_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2 + rng() % 40));
    std::string command;
    bool valid = true;
    const unsigned what = rng() % 100;
    if (what < 30) {
      static const char* kTrims[] = {"trim", "trim 32MiB", "trim 0 device=1", "trim 5%",
                                     "trim 1GiB device=0"};
      command = kTrims[rng() % 5];
      ++c.trims;
    } else if (what < 55) {
      static const char* kStats[] = {"stats", "stats json", "stats prometheus", "stats text"};
      command = kStats[rng() % 4];
      ++c.stats;
    } else if (what < 85) {
      // Values keep LOW <= HIGH whatever the order: HIGH in [256MiB, 2GiB], LOW in [0, 192MiB].
      switch (rng() % 5) {
        case 0:
          command = "set HIGH_WATERMARK " + std::to_string(256 + rng() % 1793) + "MiB";
          break;
        case 1:
          command = "set low_watermark " + std::to_string(rng() % 193) + "MiB";
          break;
        case 2:
          command = "set IDLE_RELEASE_MS " + std::to_string(rng() % 300);
          break;
        case 3:
          command = "set CUDAPOOL_MIN_DEVICE_FREE " + std::to_string(rng() % 3) + "%";
          break;
        default:
          command = "set LOG_LEVEL " + std::string(rng() % 2 ? "warn" : "error");
          break;
      }
      ++c.sets;
    } else if (what < 93) {
      static const char* kOther[] = {"get HIGH_WATERMARK", "get REUSE", "reset-peaks", "help"};
      command = kOther[rng() % 4];
    } else {
      static const char* kGarbage[] = {
          "trim -5",   "set REUSE sometimes",     "set DISABLE 1", "frobnicate",
          "stats xml", "set HIGH_WATERMARK 1ZiB", "get",           "trim 1GiB device=99"};
      command = kGarbage[rng() % 8];
      valid = false;
      ++c.garbage;
    }
    ++c.sent;
    if (rng() % 4 == 0) {  // fire and forget, as `echo trim > pipe`
      std::string error;
      if (!cudapool::send_line(pipe, command, &error)) ++c.no_pipe;
      continue;
    }
    const cudapool::ClientReply r = cudapool::request(pipe, command, std::chrono::seconds(10));
    using S = cudapool::ClientReply::Status;
    switch (r.status) {
      case S::kOk:
        ++c.answered;
        break;
      case S::kRefused:
        ++c.refused;
        if (valid) {
          ++c.unexpected_refusals;
          fprintf(stderr, "cudapool-soak: VIOLATION: '%s' refused: %s\n", command.c_str(),
                  r.error.c_str());
        }
        break;
      case S::kTimeout:
        ++c.timeouts;
        break;
      case S::kNoPipe:
      case S::kNoServer:
        ++c.no_pipe;
        break;
      default:
        ++c.timeouts;
        break;
    }
  }
  char line[512];
  const int n = snprintf(
      line, sizeof line,
      "sent=%llu answered=%llu refused=%llu unexpected_refusals=%llu timeouts=%llu no_pipe=%llu "
      "trims=%llu sets=%llu stats=%llu garbage=%llu\n",
      (unsigned long long)c.sent, (unsigned long long)c.answered, (unsigned long long)c.refused,
      (unsigned long long)c.unexpected_refusals, (unsigned long long)c.timeouts,
      (unsigned long long)c.no_pipe, (unsigned long long)c.trims, (unsigned long long)c.sets,
      (unsigned long long)c.stats, (unsigned long long)c.garbage);
  if (write(out_fd, line, static_cast<std::size_t>(n)) < 0) _exit(3);
  _exit(0);
}

// ---- main
// ----------------------------------------------------------------------------------------

void set_default(const char* name, const std::string& value) {
  setenv(name, value.c_str(), 0);
}

std::string now_text() {
  const time_t t = time(nullptr);
  char buf[64];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_options(argc, argv);
  if (!shim_preloaded()) reexec_with_preload(o, argv);

  g_standin.get_counters =
      reinterpret_cast<int (*)(int, StandinCounters*)>(dlsym(RTLD_DEFAULT, "standinGetCounters"));
  g_standin.allocation_info = reinterpret_cast<int (*)(const void*, StandinAllocationInfo*)>(
      dlsym(RTLD_DEFAULT, "standinGetAllocationInfo"));
  g_standin.injected_faults =
      reinterpret_cast<unsigned long long (*)()>(dlsym(RTLD_DEFAULT, "standinInjectedFaults"));
  if (!g_standin.get_counters || !g_standin.allocation_info || !g_standin.injected_faults)
    usage("the soak needs the stand-in CUDA runtime (tests/standin), not NVIDIA's");

  // The device model, the faults and the policy, before the first CUDA call reads them.
  set_default("STANDIN_DEVICE_COUNT", std::to_string(o.devices));
  set_default("STANDIN_DEVICE_MEMORY", o.device_memory);
  set_default("STANDIN_FAIL_MALLOC_RATE", o.fail_rate);
  set_default("STANDIN_SEED", std::to_string(o.seed));
  set_default("STANDIN_LATENCY_JITTER_US", o.jitter_us);
  set_default("STANDIN_ASYNC_DELAY_US", "20");
  set_default("CUDAPOOL_HIGH_WATERMARK", "512MiB");
  set_default("CUDAPOOL_LOW_WATERMARK", "64MiB");
  set_default("CUDAPOOL_IDLE_RELEASE_MS", "100");
  set_default("CUDAPOOL_LOG_LEVEL", "warn");
  std::string made_dir;
  const char* dir_env = getenv("CUDAPOOL_CONTROL_DIR");
  std::string dir = dir_env != nullptr && *dir_env != '\0' ? dir_env : "";
  if (dir.empty()) {
    char tmpl[] = "/tmp/cudapool-soak-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) usage("cannot make a control folder");
    made_dir = dir = tmpl;
    setenv("CUDAPOOL_CONTROL_DIR", dir.c_str(), 1);
    // Registered before the first CUDA call, so it runs after the library removed its pipe.
    static std::string s_made_dir = made_dir;
    atexit([] { rmdir(s_made_dir.c_str()); });
  }
  g_pipe = cudapool::pipe_path(dir, getpid());
  if (o.devices != atoi(getenv("STANDIN_DEVICE_COUNT")))
    usage("--devices and STANDIN_DEVICE_COUNT differ");

  // The chaos process: forked now, before any thread or CUDA call.
  int chaos_fd[2] = {-1, -1};
  pid_t chaos = -1;
  if (o.pipe_chaos) {
    if (pipe(chaos_fd) != 0) usage("pipe failed");
    chaos = fork();
    if (chaos == 0) {
      close(chaos_fd[0]);
      chaos_main(g_pipe, o.seed, chaos_fd[1]);
    }
    close(chaos_fd[1]);
  }

  const std::string started = now_text();
  const auto t0 = std::chrono::steady_clock::now();
  if (cudaFree(nullptr) != cudaSuccess) violation("cudaFree(nullptr) failed");

  std::vector<std::thread> threads;
  {
    std::lock_guard lk(g_pause_mu);
    g_running_workers = o.threads;
  }
  for (int i = 0; i < o.threads; ++i)
    threads.emplace_back([i, &o] {
      Worker w(i, o);
      w.run();
      std::lock_guard lk(g_pause_mu);
      --g_running_workers;
      g_pause_cv.notify_all();
    });

  const auto deadline = t0 + std::chrono::duration<double>(o.seconds);
  auto next_check = t0 + std::chrono::milliseconds(o.check_ms);
  auto next_fork = t0 + std::chrono::milliseconds(o.fork_every_ms > 0 ? o.fork_every_ms : 0);
  auto next_progress = t0 + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_check) {
      pause_and_check(o.threads);
      next_check = std::chrono::steady_clock::now() + std::chrono::milliseconds(o.check_ms);
    }
    if (o.fork_every_ms > 0 && now >= next_fork) {
      fork_once();
      next_fork = std::chrono::steady_clock::now() + std::chrono::milliseconds(o.fork_every_ms);
    }
    if (now >= next_progress) {
      fprintf(stderr, "cudapool-soak: %.0f s: %llu operations, %llu violations\n",
              std::chrono::duration<double>(now - t0).count(),
              static_cast<unsigned long long>(g_counts.operations.load()),
              static_cast<unsigned long long>(g_violations.load()));
      next_progress += std::chrono::seconds(60);
    }
  }
  g_stop.store(true);
  for (auto& t : threads)
    t.join();

  // The chaos process stops; its counts come back through the pipe.
  std::string chaos_line = "off";
  if (chaos > 0) {
    kill(chaos, SIGTERM);
    int status = 0;
    waitpid(chaos, &status, 0);
    char buf[512] = {};
    const ssize_t n = read(chaos_fd[0], buf, sizeof buf - 1);
    close(chaos_fd[0]);
    chaos_line = n > 0 ? std::string(buf, static_cast<std::size_t>(n - 1)) : "no report";
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      violation("the chaos process ended badly (status %#x)", status);
    auto kv = key_values(chaos_line);
    if (kv["unexpected_refusals"] != 0)
      violation("%llu valid commands were refused",
                static_cast<unsigned long long>(kv["unexpected_refusals"]));
  }

  // Everything is freed: one last check, then a trim must leave the driver holding nothing.
  check_counters();
  std::uint64_t left = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    const cudapool::ClientReply r =
        cudapool::request(g_pipe, "trim", std::chrono::milliseconds(20000));
    if (r.status != cudapool::ClientReply::Status::kOk)
      violation("final trim: status %d %s", static_cast<int>(r.status), r.error.c_str());
    left = counters(-1).bytes_held;
    if (left == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (left != 0)
    violation("after all frees and a trim the driver still holds %llu bytes",
              static_cast<unsigned long long>(left));
  const StandinCounters end = counters(-1);
  if (end.mallocs != end.frees)
    violation("driver allocations %llu != driver frees %llu", end.mallocs, end.frees);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  char summary[2048];
  snprintf(summary, sizeof summary,
           "cudapool-soak summary\n"
           "  started        %s, %.0f s, %d threads, %d devices, seed %llu\n"
           "  faults         fail rate %s, jitter %s us, forks every %d ms, pipe chaos %s\n"
           "  operations     %llu (mallocs %llu, malloc failures seen %llu, frees %llu, "
           "frees with a queued write %llu, async writes %llu, verifies %llu, bytes allocated "
           "%llu)\n"
           "  faults injected %llu (driver mallocs %llu, malloc failures %llu)\n"
           "  counter checks %llu (after waiting for a release in flight: %llu, skipped: %llu)\n"
           "  native blocks  %llu (served by the runtime after the pool could not)\n"
           "  forks          %llu\n"
           "  pipe chaos     %s\n"
           "  final          driver holds %llu bytes\n"
           "  violations     %llu\n",
           started.c_str(), secs, o.threads, o.devices, static_cast<unsigned long long>(o.seed),
           getenv("STANDIN_FAIL_MALLOC_RATE"), getenv("STANDIN_LATENCY_JITTER_US"), o.fork_every_ms,
           o.pipe_chaos ? "on" : "off", static_cast<unsigned long long>(g_counts.operations.load()),
           static_cast<unsigned long long>(g_counts.mallocs.load()),
           static_cast<unsigned long long>(g_counts.malloc_failures.load()),
           static_cast<unsigned long long>(g_counts.frees.load()),
           static_cast<unsigned long long>(g_counts.frees_with_queued_write.load()),
           static_cast<unsigned long long>(g_counts.async_writes.load()),
           static_cast<unsigned long long>(g_counts.verifies.load()),
           static_cast<unsigned long long>(g_counts.bytes_allocated.load()),
           g_standin.injected_faults(), end.mallocs, end.malloc_failures,
           static_cast<unsigned long long>(g_counts.counter_checks.load()),
           static_cast<unsigned long long>(g_counts.counter_checks_waited.load()),
           static_cast<unsigned long long>(g_counts.counter_checks_skipped.load()),
           static_cast<unsigned long long>(g_counts.native_blocks.load()),
           static_cast<unsigned long long>(g_counts.forks.load()), chaos_line.c_str(),
           static_cast<unsigned long long>(left),
           static_cast<unsigned long long>(g_violations.load()));
  fputs(summary, stdout);
  fflush(stdout);
  if (!o.summary_file.empty()) {
    FILE* f = fopen(o.summary_file.c_str(), "w");
    if (f != nullptr) {
      fputs(summary, f);
      fclose(f);
    }
  }
  return g_violations.load() == 0 ? 0 : 1;
}
