// cudapool-bench hotpath and scale: the CPU cost of a cudaMalloc+cudaFree pair served by the pool,
// beside host allocators and the pass-through path, and how it grows with the live blocks.
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "allocator/device_pool.h"
#include "allocator/simulated_backend.h"
#include "allocator/sync_gate.h"
#include "control/preload.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"

namespace cudapool::bench {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kKiB = 1024, kMiB = 1024 * kKiB;

inline void escape(void* p) {
  asm volatile("" : : "r"(p) : "memory");
}

// ---- allocators, all called through the same function pointers -------------------------------

struct Allocator {
  std::string name;
  void* (*alloc)(std::size_t) = nullptr;
  void (*release)(void*) = nullptr;
  std::string missing;  // why it is not available ("" when it is)
};

std::atomic<bool> g_cuda_failed{false};

void* cuda_alloc(std::size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n) != cudaSuccess) {
    g_cuda_failed.store(true);
    return nullptr;
  }
  return p;
}
void cuda_release(void* p) {
  if (p != nullptr && cudaFree(p) != cudaSuccess) g_cuda_failed.store(true);
}
void* glibc_alloc(std::size_t n) {
  void* p = malloc(n);
  escape(p);
  return p;
}
void glibc_release(void* p) {
  escape(p);
  free(p);
}

void* (*g_je_malloc)(std::size_t) = nullptr;
void (*g_je_free)(void*) = nullptr;
void* (*g_mi_malloc)(std::size_t) = nullptr;
void (*g_mi_free)(void*) = nullptr;
void* je_alloc(std::size_t n) {
  void* p = g_je_malloc(n);
  escape(p);
  return p;
}
void je_release(void* p) {
  escape(p);
  g_je_free(p);
}
void* mi_alloc(std::size_t n) {
  void* p = g_mi_malloc(n);
  escape(p);
  return p;
}
void mi_release(void* p) {
  escape(p);
  g_mi_free(p);
}

// jemalloc and mimalloc, loaded beside glibc with RTLD_LOCAL: their malloc/free serve only the
// calls made through these pointers.
Allocator load_host(const std::string& name) {
  Allocator a{name, nullptr, nullptr, ""};
  if (name == "glibc") {
    a.alloc = glibc_alloc;
    a.release = glibc_release;
    return a;
  }
  const char* lib = name == "jemalloc" ? "libjemalloc.so.2" : "libmimalloc.so.2";
  void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    const char* why = dlerror();
    a.missing =
        why != nullptr && strstr(why, "static TLS") != nullptr ? "no static TLS" : "not installed";
    return a;
  }
  auto m = reinterpret_cast<void* (*)(std::size_t)>(dlsym(h, "malloc"));
  auto f = reinterpret_cast<void (*)(void*)>(dlsym(h, "free"));
  if (m == nullptr || f == nullptr) {
    a.missing = "no malloc/free";
    return a;
  }
  if (name == "jemalloc") {
    g_je_malloc = m;
    g_je_free = f;
    a.alloc = je_alloc;
    a.release = je_release;
  } else {
    g_mi_malloc = m;
    g_mi_free = f;
    a.alloc = mi_alloc;
    a.release = mi_release;
  }
  return a;
}

// ---- size classes ------------------------------------------------------------------------------

struct SizeClass {
  const char* name;
  std::size_t lo, hi;  // uniform sizes
  std::size_t window;  // live blocks per thread
  int pairs;           // pairs per timed batch
};
const SizeClass kClasses[] = {
    {"512B-64KiB", 512, 64 * kKiB, 64, 1000},
    {"64KiB-1MiB", 64 * kKiB, 1 * kMiB, 64, 1000},
    {"1-10MiB", 1 * kMiB + 1, 10 * kMiB, 16, 200},
    {"10-64MiB", 10 * kMiB + 1, 64 * kMiB, 8, 100},
};

// One thread's state for one allocator: a window of live blocks; each pair frees the oldest block
// and allocates the next size of the sequence in its place.
class Window {
 public:
  Window(const Allocator& a, const std::vector<std::size_t>& sizes, std::size_t start,
         std::size_t blocks)
      : a_(a), sizes_(sizes), next_(start % sizes.size()) {
    for (std::size_t i = 0; i < blocks; ++i)
      live_.push_back(a_.alloc(next_size()));
  }
  ~Window() {
    for (void* p : live_)
      a_.release(p);
  }
  // Runs n pairs; returns nanoseconds.
  double run(int n) {
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      a_.release(live_[slot_]);
      live_[slot_] = a_.alloc(next_size());
      if (++slot_ == live_.size()) slot_ = 0;
    }
    return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
  }

 private:
  std::size_t next_size() {
    std::size_t s = sizes_[next_];
    if (++next_ == sizes_.size()) next_ = 0;
    return s;
  }
  const Allocator& a_;
  const std::vector<std::size_t>& sizes_;
  std::size_t next_;
  std::vector<void*> live_;
  std::size_t slot_ = 0;
};

struct Measured {
  Distribution ns;
  double mpairs = 0;
};

// Runs every allocator on the same sizes with `threads` threads; batches alternate between the
// allocators (rotating the order), each batch starting on all threads at once.
std::vector<Measured> measure(const std::vector<Allocator>& allocs, const SizeClass& cls,
                              int threads, int pairs, int batches, int warmup,
                              const std::vector<std::size_t>& sizes) {
  std::size_t n = allocs.size();
  std::vector<std::vector<std::vector<double>>> ns(n, std::vector<std::vector<double>>(threads));
  std::vector<std::vector<std::vector<double>>> per_thread_wall(
      n, std::vector<std::vector<double>>(batches, std::vector<double>(threads, 0)));
  std::barrier sync(threads);
  auto body = [&](int id) {
    std::vector<std::unique_ptr<Window>> windows;
    for (const Allocator& a : allocs)
      windows.push_back(
          std::make_unique<Window>(a, sizes, static_cast<std::size_t>(id) * 7919, cls.window));
    for (int b = 0; b < warmup; ++b)
      for (auto& w : windows)
        w->run(pairs);
    for (int b = 0; b < batches; ++b) {
      for (std::size_t k = 0; k < n; ++k) {
        std::size_t i = (k + static_cast<std::size_t>(b)) % n;
        sync.arrive_and_wait();
        double t = windows[i]->run(pairs);
        ns[i][id].push_back(t / pairs);
        per_thread_wall[i][b][id] = t;
      }
    }
    sync.arrive_and_wait();
  };
  std::vector<std::thread> pool;
  for (int id = 1; id < threads; ++id)
    pool.emplace_back(body, id);
  body(0);
  for (auto& t : pool)
    t.join();
  std::vector<Measured> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<double> all;
    for (auto& v : ns[i])
      all.insert(all.end(), v.begin(), v.end());
    out[i].ns = summarize(all);
    // Throughput of a batch: all threads' pairs over the slowest thread's time; the median over
    // the batches (robust to batches that another process on the machine interrupted).
    std::vector<double> rates;
    for (auto& b : per_thread_wall[i]) {
      double wall = *std::max_element(b.begin(), b.end());
      if (wall > 0) rates.push_back(static_cast<double>(threads) * pairs / wall * 1e3);
    }
    out[i].mpairs = summarize(rates).median;
  }
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string item;
  for (char c : s) {
    if (c == sep) {
      if (!item.empty()) out.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  if (!item.empty()) out.push_back(item);
  return out;
}

bool take_value(Args* args, const std::string& name, std::string* out) {
  for (std::size_t i = 0; i + 1 < args->size(); ++i) {
    if ((*args)[i] == name) {
      *out = (*args)[i + 1];
      args->erase(args->begin() + static_cast<long>(i), args->begin() + static_cast<long>(i) + 2);
      return true;
    }
  }
  return false;
}

bool start_runtime() {
  cudaError_t err = cudaFree(nullptr);
  if (err != cudaSuccess) {
    fprintf(stderr, "cudapool-bench: the CUDA runtime did not start: %s\n",
            cudaGetErrorString(err));
    return false;
  }
  return true;
}

std::string malloc_origin() {
  std::string lib = library_of("cudaMalloc");
  return lib.find("libcudapool") != std::string::npos ? "cudapool" : "runtime";
}

// Environment of the workers: the stand-in gets room for the large classes; jemalloc needs static
// TLS space to be dlopen'ed.
std::vector<std::string> base_worker_env() {
  return {"STANDIN_DEVICE_MEMORY=256GiB", "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536",
          "CUDAPOOL_LOG_LEVEL=warn", "CUDAPOOL_CONTROL=0"};
}

// A row line's values end at a space: the worker sends "not installed" as "not_installed".
std::string replace_char(std::string s, char from, char to) {
  std::replace(s.begin(), s.end(), from, to);
  return s;
}

std::string fmt_ns(double v) {
  if (v < 0) return "-";
  return v >= 100000 ? format("%.0fk", v / 1000) : v >= 100 ? format("%.0f", v) : format("%.1f", v);
}

}  // namespace

// ---- hotpath -----------------------------------------------------------------------------------

// What the calls the shim makes on every cudaMalloc cost on this runtime, in ns: cudaGetDevice,
// and the driver's cuCtxGetCurrent when libcuda.so.1 is there (NVIDIA's runtime).
Row call_costs() {
  constexpr int kCalls = 1000000;
  auto time_ns = [](auto&& call) {
    call();
    auto t0 = Clock::now();
    for (int i = 0; i < kCalls; ++i)
      call();
    return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / kCalls;
  };
  Row r{{"probe", "calls"}};
  int device = 0;
  r["cudaGetDevice_ns"] = format("%.1f", time_ns([&] { cudaGetDevice(&device); }));
  using CtxGetCurrent = int (*)(void**);
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  auto get_ctx = h ? reinterpret_cast<CtxGetCurrent>(dlsym(h, "cuCtxGetCurrent")) : nullptr;
  if (get_ctx != nullptr) {
    void* ctx = nullptr;
    r["cuCtxGetCurrent_ns"] = format("%.1f", time_ns([&] { get_ctx(&ctx); }));
  }
  return r;
}

int hotpath_worker(const Args& in) {
  Args args = in;
  std::string allocs_s = "cuda", threads_s = "1,2", batches_s = "200", warmup_s = "20",
              seed_s = "1", label = "cudapool", pairs_div_s = "1";
  take_value(&args, "--allocs", &allocs_s);
  take_value(&args, "--threads", &threads_s);
  take_value(&args, "--batches", &batches_s);
  take_value(&args, "--warmup", &warmup_s);
  take_value(&args, "--seed", &seed_s);
  take_value(&args, "--cuda-label", &label);
  take_value(&args, "--pairs-divisor", &pairs_div_s);
  int batches = atoi(batches_s.c_str()), warmup = atoi(warmup_s.c_str());
  int pairs_div = std::max(1, atoi(pairs_div_s.c_str()));
  std::vector<Allocator> allocs;
  std::vector<Row> missing;
  for (const std::string& name : split(allocs_s, ',')) {
    if (name == "cuda") {
      if (!start_runtime()) return 1;
      allocs.push_back({label, cuda_alloc, cuda_release, ""});
    } else {
      Allocator a = load_host(name);
      if (a.missing.empty())
        allocs.push_back(a);
      else
        missing.push_back({{"alloc", name}, {"missing", replace_char(a.missing, ' ', '_')}});
    }
  }
  for (const Row& m : missing)
    printf("%s\n", row_line(m).c_str());
  if (allocs_s.find("cuda") != std::string::npos) printf("%s\n", row_line(call_costs()).c_str());
  printf("%s\n", row_line({{"malloc_from", malloc_origin()},
                           {"runtime", StandinProbe::read().present ? "standin" : "nvidia"}})
                     .c_str());
  for (const SizeClass& cls : kClasses) {
    std::mt19937_64 rng(std::stoull(seed_s));
    std::uniform_int_distribution<std::size_t> dist(cls.lo, cls.hi);
    std::vector<std::size_t> sizes(1 << 14);
    for (auto& s : sizes)
      s = dist(rng);
    for (const std::string& t : split(threads_s, ',')) {
      int threads = atoi(t.c_str());
      StandinProbe before = StandinProbe::read();
      int pairs = std::max(1, cls.pairs / pairs_div);
      std::vector<Measured> m = measure(allocs, cls, threads, pairs, batches, warmup, sizes);
      StandinProbe after = StandinProbe::read();
      for (std::size_t i = 0; i < allocs.size(); ++i) {
        Row r{{"class", cls.name},
              {"alloc", allocs[i].name},
              {"threads", t},
              {"median", format("%.2f", m[i].ns.median)},
              {"p99", format("%.2f", m[i].ns.p99)},
              {"mpairs", format("%.4f", m[i].mpairs)}};
        if (allocs[i].alloc == cuda_alloc && after.present) {
          r["driver_calls"] =
              std::to_string((after.mallocs + after.frees) - (before.mallocs + before.frees));
          r["syncs"] = std::to_string(after.syncs - before.syncs);
          r["app_calls"] = std::to_string(2ull * threads * (batches + warmup) * pairs +
                                          2ull * threads * cls.window);
        }
        printf("%s\n", row_line(r).c_str());
      }
      fflush(stdout);
    }
  }
  if (g_cuda_failed.load()) {
    fprintf(stderr, "cudapool-bench: a cudaMalloc or cudaFree failed\n");
    return 1;
  }
  return 0;
}

// The common options of a subcommand that takes no others, and the library: the exit status when
// either is wrong (2: usage, 1: no library), else 0.
static int setup(const char* subcommand, const Args& in, CommonOptions* o, std::string* lib) {
  Args args = in;
  std::string error;
  if (!parse_common(&args, o, &error) || !args.empty()) {
    fprintf(stderr, "cudapool-bench %s: %s\n", subcommand,
            error.empty() ? ("unexpected " + args[0]).c_str() : error.c_str());
    return 2;
  }
  *lib = find_cudapool(o->library);
  if (lib->empty()) {
    fprintf(stderr, "cudapool-bench: libcudapool.so not found; give it with --library PATH\n");
    return 1;
  }
  return 0;
}

int hotpath_main(const Args& in) {
  CommonOptions o;
  std::string lib;
  if (int status = setup("hotpath", in, &o, &lib)) return status;
  std::string error;
  bool standin = StandinProbe::read().present;
  std::string batches = o.quick ? "100" : "400", warmup = o.quick ? "10" : "40";
  std::string seed = std::to_string(o.seed);
  // 1, 2 and 4 threads on every machine; with fewer than 4 cores the 4-thread rows share cores
  // (the table says so), which keeps the rows and the JSON the same everywhere.
  unsigned cores = std::thread::hardware_concurrency();
  const char* kThreads[] = {"1", "2", "4"};
  const std::string threads_list = "1,2,4";
  std::vector<Row> pool_rows, pass_rows;
  std::vector<std::string> env = base_worker_env();
  env.push_back("LD_PRELOAD=" + preload_with_cudapool(getenv("LD_PRELOAD"), lib));
  // A sanitizer replaces malloc and free: the "glibc" row would time its allocator, and its large
  // blocks cost milliseconds. Sanitized builds (the test trees) time the pool alone.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  const char* host_allocs = "cuda";
  fprintf(stderr, "cudapool-bench hotpath: sanitized build, host allocators left out\n");
#else
  const char* host_allocs = "cuda,glibc,jemalloc,mimalloc";
#endif
  if (!run_worker(
          {"worker", "hotpath", "--allocs", host_allocs, "--threads", threads_list, "--batches",
           batches, "--warmup", warmup, "--seed", seed, "--cuda-label", "cudapool"},
          env, &pool_rows, &error)) {
    fprintf(stderr, "cudapool-bench hotpath: pool worker: %s\n", error.c_str());
    return 1;
  }
  env = base_worker_env();
  env.push_back("LD_PRELOAD=" + preload_without_cudapool(getenv("LD_PRELOAD")));
  if (standin) {
    env.push_back(format("STANDIN_MALLOC_LATENCY_US=%g", o.malloc_latency_us));
    env.push_back(format("STANDIN_FREE_LATENCY_US=%g", o.free_latency_us));
  }
  if (!run_worker({"worker", "hotpath", "--allocs", "cuda", "--threads", threads_list, "--batches",
                   o.quick ? "8" : "30", "--warmup", "1", "--seed", seed, "--cuda-label",
                   "pass-through", "--pairs-divisor", "20"},
                  env, &pass_rows, &error)) {
    fprintf(stderr, "cudapool-bench hotpath: pass-through worker: %s\n", error.c_str());
    return 1;
  }
  for (Row& r : pool_rows)
    if (r.count("malloc_from") && r["malloc_from"] != "cudapool") {
      fprintf(stderr, "cudapool-bench: %s was preloaded but cudaMalloc did not come from it\n",
              lib.c_str());
      return 1;
    }

  // (class, threads, alloc) -> row
  std::map<std::string, Row> by;
  std::map<std::string, std::string> missing;
  Row calls;  // call_costs() of the pool worker
  for (auto* rows : {&pool_rows, &pass_rows})
    for (Row& r : *rows) {
      if (r.count("missing")) missing[r["alloc"]] = replace_char(r["missing"], '_', ' ');
      if (r.count("probe") && rows == &pool_rows) calls = r;
      if (r.count("class")) by[r["class"] + "/" + r["threads"] + "/" + r["alloc"]] = r;
    }
  const char* names[] = {"cudapool", "glibc", "jemalloc", "mimalloc", "pass-through"};
  auto cell = [&](const std::string& key, const char* field) -> std::string {
    auto it = by.find(key);
    if (it == by.end()) return "-";
    return fmt_ns(row_number(it->second, field));
  };

  if (o.json) {
    printf("{\n  \"benchmark\": \"hotpath\",\n  \"runtime\": \"%s\",\n  \"cores\": %u,\n",
           standin ? "standin" : "nvidia", cores);
    printf("  \"pass_through_latency_us\": {\"malloc\": %g, \"free\": %g},\n",
           standin ? o.malloc_latency_us : 0.0, standin ? o.free_latency_us : 0.0);
    if (calls.count("cudaGetDevice_ns"))
      printf("  \"call_ns\": {\"cudaGetDevice\": %s%s},\n", calls["cudaGetDevice_ns"].c_str(),
             calls.count("cuCtxGetCurrent_ns")
                 ? (", \"cuCtxGetCurrent\": " + calls["cuCtxGetCurrent_ns"]).c_str()
                 : "");
    printf("  \"rows\": [");
    bool first = true;
    for (auto& [key, r] : by) {
      printf("%s\n    {", first ? "" : ",");
      first = false;
      bool f2 = true;
      for (auto& [k, v] : r) {
        bool num = k != "class" && k != "alloc";
        printf("%s\"%s\": %s%s%s", f2 ? "" : ", ", k.c_str(), num ? "" : "\"", v.c_str(),
               num ? "" : "\"");
        f2 = false;
      }
      printf("}");
    }
    printf("\n  ],\n  \"missing\": {");
    bool f3 = true;
    for (auto& [k, v] : missing) {
      printf("%s\"%s\": \"%s\"", f3 ? "" : ", ", k.c_str(), v.c_str());
      f3 = false;
    }
    printf("}\n}\n");
    return 0;
  }

  printf(
      "cudapool-bench hotpath: CPU cost of one allocation+free pair, ns (median / p99 over "
      "timed batches)\n");
  printf("cudapool: %s; runtime: %s", lib.c_str(), standin ? "stand-in" : "NVIDIA");
  if (standin)
    printf("; pass-through latency %g us per cudaMalloc, %g us per cudaFree", o.malloc_latency_us,
           o.free_latency_us);
  printf(
      "\n%s batches after %s warm-up; each pair frees the oldest block of a window and "
      "allocates a new size (uniform in the class)\n\n",
      batches.c_str(), warmup.c_str());
  std::vector<std::string> header = {"class", "thr"};
  for (const char* n : names) {
    std::string m = missing.count(n) ? std::string(" (") + missing[n] + ")" : "";
    header.push_back(std::string(n) + m);
  }
  header.push_back("pool/jemalloc");
  header.push_back("driver calls");
  Table t(header);
  for (const SizeClass& cls : kClasses) {
    for (const char* th : kThreads) {
      std::vector<std::string> row = {cls.name, th};
      for (const char* n : names) {
        std::string key = std::string(cls.name) + "/" + th + "/" + n;
        row.push_back(by.count(key) ? cell(key, "median") + " / " + cell(key, "p99") : "-");
      }
      std::string pk = std::string(cls.name) + "/" + th + "/cudapool";
      std::string jk = std::string(cls.name) + "/" + th + "/jemalloc";
      double p = by.count(pk) ? row_number(by[pk], "median") : -1;
      double j = by.count(jk) ? row_number(by[jk], "median") : -1;
      row.push_back(p > 0 && j > 0 ? format("%.2fx", p / j) : "-");
      row.push_back(by.count(pk) && by[pk].count("driver_calls")
                        ? by[pk]["driver_calls"] + " of " + by[pk]["app_calls"]
                        : "-");
      t.add(row);
    }
  }
  printf("%s\n", t.render().c_str());
  printf(
      "throughput with 2 threads and with 4 threads / with 1 thread (median over batches of all "
      "threads' pairs / the slowest thread's time):\n");
  Table s({"class", "thr", "cudapool", "glibc", "jemalloc", "mimalloc"});
  for (const SizeClass& cls : kClasses) {
    for (const char* th : {"2", "4"}) {
      std::vector<std::string> row = {cls.name, th};
      for (const char* n : {"cudapool", "glibc", "jemalloc", "mimalloc"}) {
        std::string k1 = std::string(cls.name) + "/1/" + n;
        std::string kt = std::string(cls.name) + "/" + th + "/" + n;
        double a = by.count(k1) ? row_number(by[k1], "mpairs") : -1;
        double b = by.count(kt) ? row_number(by[kt], "mpairs") : -1;
        row.push_back(a > 0 && b > 0 ? format("%.2fx", b / a) : "-");
      }
      s.add(row);
    }
  }
  printf("%s", s.render().c_str());
  if (cores == 0)
    printf("(the number of cores is unknown: the 4-thread rows may share cores)\n");
  else if (cores < 4)
    printf(
        "(this machine has %u core%s: the 4 threads take turns on them, so the 4-thread rows "
        "measure sharing a core, not scaling; read them on a machine with 4 cores or more)\n",
        cores, cores == 1 ? "" : "s");
  if (calls.count("cudaGetDevice_ns"))
    printf("\nruntime calls on every cudaMalloc: cudaGetDevice %s ns%s\n",
           calls["cudaGetDevice_ns"].c_str(),
           calls.count("cuCtxGetCurrent_ns")
               ? (" (the driver's cuCtxGetCurrent: " + calls["cuCtxGetCurrent_ns"] + " ns)").c_str()
               : "");
  return 0;
}

// ---- scale -------------------------------------------------------------------------------------

namespace {

constexpr std::size_t kScaleMin = 512, kScaleMax = 8 * kKiB;

struct ScaleResult {
  Distribution ns;
};

// Fills `live` blocks, then replaces random live blocks in timed batches.
template <typename Alloc, typename Free>
ScaleResult scale_run(std::size_t live, int batches, int pairs, std::uint64_t seed, Alloc&& alloc,
                      Free&& release) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> size(kScaleMin, kScaleMax);
  std::uniform_int_distribution<std::size_t> slot(0, live - 1);
  std::vector<void*> blocks(live);
  for (auto& p : blocks)
    p = alloc(size(rng));
  // Pre-drawn, so that the timed loop does not time the generator.
  std::vector<std::pair<std::size_t, std::size_t>> ops(static_cast<std::size_t>(pairs) * batches);
  for (auto& op : ops)
    op = {slot(rng), size(rng)};
  std::vector<double> ns;
  std::size_t k = 0;
  for (int b = 0; b < batches; ++b) {
    auto t0 = Clock::now();
    for (int i = 0; i < pairs; ++i, ++k) {
      auto [s, n] = ops[k];
      release(blocks[s]);
      blocks[s] = alloc(n);
    }
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / pairs);
  }
  for (void* p : blocks)
    release(p);
  return {summarize(ns)};
}

const std::size_t kScaleCounts[] = {1000, 10000, 100000, 1000000};

}  // namespace

int scale_worker(const Args& in) {
  Args args = in;
  std::string batches_s = "100", pairs_s = "2000", seed_s = "1";
  take_value(&args, "--batches", &batches_s);
  take_value(&args, "--pairs", &pairs_s);
  take_value(&args, "--seed", &seed_s);
  if (!start_runtime()) return 1;
  printf("%s\n", row_line({{"malloc_from", malloc_origin()}}).c_str());
  for (std::size_t live : kScaleCounts) {
    StandinProbe before = StandinProbe::read();
    ScaleResult r = scale_run(live, atoi(batches_s.c_str()), atoi(pairs_s.c_str()),
                              std::stoull(seed_s), cuda_alloc, cuda_release);
    StandinProbe after = StandinProbe::read();
    printf("%s\n", row_line({{"live", std::to_string(live)},
                             {"median", format("%.2f", r.ns.median)},
                             {"p99", format("%.2f", r.ns.p99)},
                             {"driver_calls", std::to_string((after.mallocs + after.frees) -
                                                             (before.mallocs + before.frees))}})
                       .c_str());
    fflush(stdout);
  }
  return g_cuda_failed.load() ? 1 : 0;
}

int scale_main(const Args& in) {
  CommonOptions o;
  std::string lib;
  if (int status = setup("scale", in, &o, &lib)) return status;
  std::string error;
  int batches = o.quick ? 20 : 100, pairs = o.quick ? 1000 : 5000;
  std::vector<Row> rows;
  std::vector<std::string> env = base_worker_env();
  env.push_back("LD_PRELOAD=" + preload_with_cudapool(getenv("LD_PRELOAD"), lib));
  if (!run_worker({"worker", "scale", "--batches", std::to_string(batches), "--pairs",
                   std::to_string(pairs), "--seed", std::to_string(o.seed)},
                  env, &rows, &error)) {
    fprintf(stderr, "cudapool-bench scale: worker: %s\n", error.c_str());
    return 1;
  }
  for (Row& r : rows)
    if (r.count("malloc_from") && r["malloc_from"] != "cudapool") {
      fprintf(stderr, "cudapool-bench: cudaMalloc did not come from %s\n", lib.c_str());
      return 1;
    }
  // The allocator alone (DevicePool on the simulated backend), in this process.
  std::map<std::size_t, ScaleResult> alone;
  for (std::size_t live : kScaleCounts) {
    SimulatedBackend backend(std::uint64_t{1} << 40);
    SyncGate gate;
    Policy policy;
    DevicePool pool(0, backend, gate, policy);
    bool failed = false;
    alone[live] = scale_run(
        live, batches, pairs, o.seed,
        [&](std::size_t n) {
          void* p = nullptr;
          if (pool.allocate(n, &p) != Status::kOk) failed = true;
          return p;
        },
        [&](void* p) {
          bool wake = false;
          pool.free(p, &wake);
        });
    if (failed) {
      fprintf(stderr, "cudapool-bench scale: the simulated pool failed an allocation\n");
      return 1;
    }
  }
  std::map<std::size_t, Row> shim;
  for (Row& r : rows)
    if (r.count("live")) shim[static_cast<std::size_t>(row_number(r, "live"))] = r;
  double base_shim = shim.count(1000) ? row_number(shim[1000], "median") : -1;
  double base_alone = alone[1000].ns.median;
  if (o.json) {
    printf("{\n  \"benchmark\": \"scale\",\n  \"rows\": [");
    bool first = true;
    for (std::size_t live : kScaleCounts) {
      Row& r = shim[live];
      printf(
          "%s\n    {\"live\": %zu, \"cudapool_median\": %s, \"cudapool_p99\": %s, "
          "\"driver_calls\": %s, \"allocator_median\": %.2f, \"allocator_p99\": %.2f}",
          first ? "" : ",", live, r["median"].c_str(), r["p99"].c_str(), r["driver_calls"].c_str(),
          alone[live].ns.median, alone[live].ns.p99);
      first = false;
    }
    printf("\n  ]\n}\n");
    return 0;
  }
  printf(
      "cudapool-bench scale: cost of a free+allocation pair with N live blocks (sizes %zu B to "
      "%zu KiB, random block replaced), ns, median / p99 over %d batches of %d pairs\n",
      kScaleMin, kScaleMax / kKiB, batches, pairs);
  printf(
      "cudapool = through libcudapool.so on the stand-in runtime (%s); allocator = DevicePool "
      "on the simulated backend, no shim\n\n",
      lib.c_str());
  Table t({"live blocks", "cudapool", "x 10^3", "driver calls", "allocator", "x 10^3"});
  for (std::size_t live : kScaleCounts) {
    Row& r = shim[live];
    double m = row_number(r, "median");
    t.add({std::to_string(live), fmt_ns(m) + " / " + fmt_ns(row_number(r, "p99")),
           base_shim > 0 && m > 0 ? format("%.2f", m / base_shim) : "-", r["driver_calls"],
           fmt_ns(alone[live].ns.median) + " / " + fmt_ns(alone[live].ns.p99),
           format("%.2f", alone[live].ns.median / base_alone)});
  }
  printf("%s", t.render().c_str());
  return 0;
}

}  // namespace cudapool::bench
