// cudapool-demo: plays the problem of DESIGN §1 and shows what cudapool changes.
//
// An inference worker loads its weights (load), serves one batch of 4 (burst: ~12 GiB of
// activations at the peak), then many batches of 1 (steady: ~3 GiB each), then sits idle (quiet).
// The same workload runs three times, each in a child process of this executable:
//   framework cache        the workload keeps every freed block for reuse and never returns
//                          memory (like PyTorch's caching allocator);
//   no cache               one cudaMalloc/cudaFree per tensor (PYTORCH_NO_CUDA_MEMORY_CACHING=1);
//   no cache + cudapool    the same, with LD_PRELOAD=libcudapool.so.
// For each phase the parent prints the bytes the driver holds for the child (at the end of the
// phase and at its peak), the driver calls (cudaMalloc + cudaFree that reached the CUDA runtime)
// and the wall time.
//
// Measurement:
//   stand-in runtime   exact: the stand-in's counters (bytes_held, peak_bytes_held, mallocs,
//                      frees), found with dlsym so that this binary also runs on NVIDIA's runtime;
//   NVIDIA runtime     device-wide: cuMemGetInfo (total - free) minus the value at the child's
//                      start, sampled after every allocation (the sampling time is not counted in
//                      the wall time). Other processes on the GPU change it. Driver calls are not
//                      visible ("-").
// The workload writes only 4 KiB per layer output (cudaMemsetAsync), so on the stand-in, whose
// device memory is host memory, it commits a few MiB of RAM at most.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "control/options.h"
#include "control/preload.h"
#include "control/size.h"
#include "tests/standin/cuda_standin.h"  // the counters' layout only; functions come from dlsym
#include "tools/native_symbol.h"
#include "tools/paths.h"

extern char** environ;

namespace {

using cudapool::tools::dir_of;
using cudapool::tools::file_exists;
using cudapool::tools::library_of;
using cudapool::tools::real_path;
using cudapool::tools::self_exe;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;
constexpr std::uint64_t kGiB = 1024 * kMiB;

constexpr const char* kDefaultIdleReleaseMs = "2000";
constexpr const char* kDefaultStandinMemory = "24GiB";

// ---- small helpers ---------------------------------------------------------------------------

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string human(double bytes) {
  if (bytes < 0) return "-" + human(-bytes);
  if (bytes >= kGiB) return format("%.2f GiB", bytes / kGiB);
  if (bytes >= 10 * kMiB) return format("%.0f MiB", bytes / kMiB);
  if (bytes >= kMiB) return format("%.1f MiB", bytes / kMiB);
  if (bytes >= kKiB) return format("%.0f KiB", bytes / kKiB);
  return format("%.0f B", bytes);
}

std::string human_ms(double ms) {
  if (ms >= 10000) return format("%.1f s", ms / 1000);
  if (ms >= 100) return format("%.0f ms", ms);
  return format("%.1f ms", ms);
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void cuda_fail(const char* what, cudaError_t err) {
  throw std::runtime_error(
      format("%s failed: %s (%d)", what, cudaGetErrorString(err), static_cast<int>(err)));
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) cuda_fail(what, err);
}

const char* env_or_null(const char* name) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

// ---- the two runtimes ------------------------------------------------------------------------

// The stand-in's extension API, when the loaded libcudart.so.13 is the stand-in.
struct StandinApi {
  int (*get_counters)(int, StandinCounters*) = nullptr;
  int (*get_vmm_counters)(int, StandinVmmCounters*) = nullptr;  // with its VMM API
  void (*reset_counters)() = nullptr;

  static StandinApi find() {
    StandinApi api;
    api.get_counters =
        reinterpret_cast<int (*)(int, StandinCounters*)>(dlsym(RTLD_DEFAULT, "standinGetCounters"));
    api.get_vmm_counters = reinterpret_cast<int (*)(int, StandinVmmCounters*)>(
        dlsym(RTLD_DEFAULT, "standinGetVmmCounters"));
    api.reset_counters = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "standinResetCounters"));
    return api;
  }
  bool present() const { return get_counters != nullptr; }
  StandinCounters counters() const {
    StandinCounters c{};
    if (get_counters != nullptr) get_counters(-1, &c);
    return c;
  }
  StandinVmmCounters vmm_counters() const {
    StandinVmmCounters c{};
    if (get_vmm_counters != nullptr) get_vmm_counters(-1, &c);
    return c;
  }
  // Driver allocations and frees: cudaMalloc/cudaFree, and the pool's pages (cuMemCreate and
  // cuMemRelease), failed ones included.
  std::uint64_t driver_calls() const {
    StandinCounters c = counters();
    StandinVmmCounters v = vmm_counters();
    return c.mallocs + c.malloc_failures + c.frees + c.free_failures + v.creates +
           v.create_failures + v.releases;
  }
};

// The driver API, for the bytes a real GPU holds. Loaded with dlopen: nothing links libcuda.
struct DriverApi {
  int (*init)(unsigned) = nullptr;
  int (*device_count)(int*) = nullptr;
  int (*mem_info)(size_t*, size_t*) = nullptr;
  int (*device_get)(int*, int) = nullptr;
  int (*ctx_get_current)(void**) = nullptr;
  int (*ctx_set_current)(void*) = nullptr;
  int (*primary_ctx_retain)(void**, int) = nullptr;

  static const DriverApi* load() {
    static const DriverApi* api = []() -> const DriverApi* {
      void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
      if (h == nullptr) return nullptr;
      auto* a = new DriverApi;
      a->init = reinterpret_cast<int (*)(unsigned)>(dlsym(h, "cuInit"));
      a->device_count = reinterpret_cast<int (*)(int*)>(dlsym(h, "cuDeviceGetCount"));
      // The device as the driver sees it, not cudapool's answer (tools/native_symbol.h).
      a->mem_info = reinterpret_cast<int (*)(size_t*, size_t*)>(
          cudapool::tools::native_symbol("libcuda.so", "cuMemGetInfo_v2"));
      a->device_get = reinterpret_cast<int (*)(int*, int)>(dlsym(h, "cuDeviceGet"));
      a->ctx_get_current = reinterpret_cast<int (*)(void**)>(dlsym(h, "cuCtxGetCurrent"));
      a->ctx_set_current = reinterpret_cast<int (*)(void*)>(dlsym(h, "cuCtxSetCurrent"));
      a->primary_ctx_retain =
          reinterpret_cast<int (*)(void**, int)>(dlsym(h, "cuDevicePrimaryCtxRetain"));
      if (a->init == nullptr || a->device_count == nullptr || a->mem_info == nullptr)
        return nullptr;
      return a;
    }();
    return api;
  }
};

// True when the driver loads and reports at least one device.
bool real_gpu_present() {
  const DriverApi* api = DriverApi::load();
  if (api == nullptr || api->init(0) != 0) return false;
  int count = 0;
  return api->device_count(&count) == 0 && count > 0;
}

// The CUDA toolkit's library folder, for children that must load NVIDIA's runtime.
std::string toolkit_lib_dir() {
  std::vector<std::string> candidates;
  if (const char* home = env_or_null("CUDA_HOME")) {
    candidates.push_back(std::string(home) + "/lib64");
    candidates.push_back(std::string(home) + "/targets/x86_64-linux/lib");
    candidates.push_back(std::string(home) + "/lib");
  }
  candidates.push_back("/usr/local/cuda/lib64");
  candidates.push_back("/usr/local/cuda/targets/x86_64-linux/lib");
  for (const std::string& dir : candidates)
    if (file_exists(dir + "/libcudart.so.13")) return dir;
  return "";
}

// ---- in the child: what the driver holds -----------------------------------------------------

class HeldMeter {
 public:
  // After the runtime made its context current (cudaFree(0)).
  void start(bool standin) {
    standin_ = standin;
    if (standin_) {
      api_ = StandinApi::find();
      baseline_ = api_.counters().bytes_held;
    } else {
      driver_ = DriverApi::load();
      if (driver_ == nullptr)
        throw std::runtime_error("libcuda.so.1 (cuMemGetInfo_v2) is not available");
      make_context_current();
      baseline_ = device_used();
    }
  }
  std::uint64_t held() {
    std::uint64_t used = standin_ ? api_.counters().bytes_held : device_used();
    return used > baseline_ ? used - baseline_ : 0;
  }
  void begin_phase() {
    if (standin_) {
      if (api_.reset_counters != nullptr) api_.reset_counters();  // peak := held
      calls_at_start_ = api_.driver_calls();
      peak_ = 0;
    } else {
      peak_ = held();
    }
    overhead_ms_ = 0;
  }
  // Called after every allocation: the real GPU has no peak counter.
  void sample() {
    if (standin_ && api_.reset_counters != nullptr) return;
    double t0 = now_ms();
    peak_ = std::max(peak_, held());
    overhead_ms_ += now_ms() - t0;
  }
  std::uint64_t phase_peak() {
    std::uint64_t h = held();
    if (standin_ && api_.reset_counters != nullptr) {
      std::uint64_t p = api_.counters().peak_bytes_held;
      return std::max(h, p > baseline_ ? p - baseline_ : 0);
    }
    return std::max(peak_, h);
  }
  long long phase_calls() const {
    if (!standin_) return -1;
    return static_cast<long long>(api_.driver_calls() - calls_at_start_);
  }
  double overhead_ms() const { return overhead_ms_; }

 private:
  // The runtime makes the device's primary context current in the thread that called it; should
  // it not have, make it current here so that cuMemGetInfo answers for the same device.
  void make_context_current() {
    void* ctx = nullptr;
    if (driver_->ctx_get_current == nullptr || driver_->ctx_get_current(&ctx) != 0 ||
        ctx != nullptr)
      return;
    int ordinal = 0, dev = 0;
    if (cudaGetDevice(&ordinal) != cudaSuccess || driver_->device_get == nullptr ||
        driver_->primary_ctx_retain == nullptr || driver_->ctx_set_current == nullptr ||
        driver_->device_get(&dev, ordinal) != 0 || driver_->primary_ctx_retain(&ctx, dev) != 0)
      return;
    driver_->ctx_set_current(ctx);
  }
  std::uint64_t device_used() {
    size_t free = 0, total = 0;
    int rc = driver_->mem_info(&free, &total);
    if (rc != 0) throw std::runtime_error(format("cuMemGetInfo_v2 failed (%d)", rc));
    return total - free;
  }

  bool standin_ = true;
  StandinApi api_;
  const DriverApi* driver_ = nullptr;
  std::uint64_t baseline_ = 0;
  std::uint64_t peak_ = 0;
  std::uint64_t calls_at_start_ = 0;
  double overhead_ms_ = 0;
};

// ---- in the child: the two ways a framework gets device memory -------------------------------

class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void release(void* ptr) = 0;
};

// One cudaMalloc/cudaFree per tensor.
class DirectAllocator final : public DeviceAllocator {
 public:
  void* allocate(std::size_t bytes) override {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) cuda_fail(format("cudaMalloc(%s)", human(bytes).c_str()).c_str(), err);
    return p;
  }
  void release(void* ptr) override { check(cudaFree(ptr), "cudaFree"); }
};

// A caching allocator modelled on PyTorch's default one (CUDACachingAllocator): requests are
// rounded to 512 B; up to 1 MiB they are carved from 2 MiB segments, up to 10 MiB from 20 MiB
// segments, larger ones get a segment of their own rounded to 2 MiB. Freed blocks are kept,
// coalesced with free neighbours and reused best fit (splitting larger ones); segments are
// returned only when cudaMalloc runs out of memory (then every wholly free one, and retry).
class CachingAllocator final : public DeviceAllocator {
 public:
  void* allocate(std::size_t bytes) override {
    std::size_t size = round_up(std::max<std::size_t>(bytes, 1), 512);
    bool small = size <= kMiB;
    auto& pool = free_[small ? 1 : 0];
    Block key{0, size, nullptr, nullptr, true, small};
    Block* b = nullptr;
    auto it = pool.lower_bound(&key);
    if (it != pool.end()) {
      b = *it;
      pool.erase(it);
    } else {
      b = new_segment(small, size);
    }
    std::size_t rest = b->size - size;
    if (small ? rest >= 512 : rest > kMiB) {
      auto* r = new Block{b->addr + size, rest, b, b->next, true, small};
      if (b->next != nullptr) b->next->prev = r;
      b->next = r;
      b->size = size;
      pool.insert(r);
    }
    b->free = false;
    live_[b->addr] = b;
    return reinterpret_cast<void*>(b->addr);
  }

  void release(void* ptr) override {
    auto it = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == live_.end()) throw std::runtime_error("caching allocator: unknown pointer freed");
    Block* b = it->second;
    live_.erase(it);
    auto& pool = free_[b->small ? 1 : 0];
    b->free = true;
    if (Block* n = b->next; n != nullptr && n->free) {
      pool.erase(n);
      b->size += n->size;
      b->next = n->next;
      if (n->next != nullptr) n->next->prev = b;
      delete n;
    }
    if (Block* p = b->prev; p != nullptr && p->free) {
      pool.erase(p);
      p->size += b->size;
      p->next = b->next;
      if (b->next != nullptr) b->next->prev = p;
      delete b;
      b = p;
    }
    pool.insert(b);
  }

 private:
  struct Block {
    std::uintptr_t addr;
    std::size_t size;
    Block* prev;  // neighbours within the segment
    Block* next;
    bool free;
    bool small;
  };
  struct BySize {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->addr < b->addr;
    }
  };

  static std::size_t round_up(std::size_t v, std::size_t to) { return (v + to - 1) / to * to; }

  Block* new_segment(bool small, std::size_t size) {
    std::size_t seg = small ? 2 * kMiB : size < 10 * kMiB ? 20 * kMiB : round_up(size, 2 * kMiB);
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, seg);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached();  // what PyTorch does before it reports out of memory
      err = cudaMalloc(&p, seg);
    }
    if (err != cudaSuccess) cuda_fail(format("cudaMalloc(%s)", human(seg).c_str()).c_str(), err);
    return new Block{reinterpret_cast<std::uintptr_t>(p), seg, nullptr, nullptr, true, small};
  }

  void release_cached() {
    for (auto& pool : free_) {
      for (auto it = pool.begin(); it != pool.end();) {
        Block* b = *it;
        if (b->prev == nullptr && b->next == nullptr) {
          check(cudaFree(reinterpret_cast<void*>(b->addr)), "cudaFree");
          delete b;
          it = pool.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  std::set<Block*, BySize> free_[2];  // [0] large pool, [1] small pool
  std::unordered_map<std::uintptr_t, Block*> live_;
};

// ---- in the child: the workload --------------------------------------------------------------

// Sizes follow an image encoder-decoder in fp32 at 768x768: 4 levels (192, 384, 768, 768
// channels at 768, 384, 192, 96 pixels), 3 residual blocks per level on the way down, whose
// outputs stay live as skip connections until the way up consumes them, and attention over 96x96
// tokens in the middle, one head at a time. Live activations therefore peak in the middle at
// ~3.1 GiB per image. Each block also makes a few small tensors (norm statistics, embeddings,
// masks: 512 B to 64 KiB) and a pooled feature of 0.4 to 7 MiB.
class Workload {
 public:
  Workload(DeviceAllocator& alloc, HeldMeter& meter, double scale)
      : alloc_(alloc), meter_(meter), scale_(scale) {}

  std::uint64_t live() const { return live_; }
  std::uint64_t live_peak() const { return live_peak_; }
  void begin_phase() { live_peak_ = live_; }

  // ~1.5 GiB of weights in 96 tensors of mixed sizes; they stay live.
  void load_weights() {
    std::mt19937_64 rng(7);
    std::vector<double> sizes;
    double big_total = 0, small_total = 0;
    for (int layer = 0; layer < 24; ++layer) {
      double w = 60.0 * kMiB * std::uniform_real_distribution<double>(0.5, 1.5)(rng);
      double m = kMiB * std::uniform_real_distribution<double>(2, 8)(rng);
      double bias = kKiB * std::uniform_real_distribution<double>(1, 16)(rng);
      double norm = std::uniform_real_distribution<double>(512, 4096)(rng);
      sizes.insert(sizes.end(), {w, m, bias, norm});
      big_total += w;
      small_total += m + bias + norm;
    }
    // Scale the big weights so that the whole model is 1.5 GiB.
    double k = (1.5 * kGiB - small_total) / big_total;
    for (std::size_t i = 0; i < sizes.size(); i += 4)
      sizes[i] *= k;
    for (double s : sizes) {
      void* p = alloc(static_cast<std::uint64_t>(s) & ~std::uint64_t{3});
      touch(p);
      weights_.push_back(p);
    }
    sync();
  }

  void run_batch(int batch) {
    static constexpr int kLevels = 4;
    static constexpr int kChannels[kLevels] = {160, 320, 640, 640};
    static constexpr int kPixels[kLevels] = {768, 384, 192, 96};
    static constexpr int kBlocks = 3;
    auto feature = [&](int level, int channel_factor = 1) {
      return std::uint64_t{4} * batch * channel_factor * kChannels[level] * kPixels[level] *
             kPixels[level];
    };
    auto pooled = [&](int level) {
      return std::uint64_t{4} * batch * kChannels[level] * (kPixels[level] / 8) *
             (kPixels[level] / 8);
    };
    std::mt19937_64 rng(1000 + batch_count_++);

    void* x = alloc(feature(0));  // the input, already embedded
    touch(x);
    bool x_is_skip = false;
    std::vector<void*> skips;
    for (int level = 0; level < kLevels; ++level) {
      for (int b = 0; b < kBlocks; ++b) {
        void* y = res_block(feature(level), feature(level), pooled(level), batch, rng);
        if (!x_is_skip) release(x);  // a skip stays live for the way up
        skips.push_back(y);
        x = y;
        x_is_skip = true;
      }
      if (level + 1 < kLevels) {  // strided convolution
        void* down = alloc(feature(level + 1));
        touch(down);
        x = down;
        x_is_skip = false;
      }
    }
    // Middle: attention over the 96x96 tokens of the last level, one head of 8 at a time.
    {
      std::uint64_t tokens = std::uint64_t{kPixels[kLevels - 1]} * kPixels[kLevels - 1];
      void* q = alloc(feature(kLevels - 1));
      void* k = alloc(feature(kLevels - 1));
      void* v = alloc(feature(kLevels - 1));
      void* out = alloc(feature(kLevels - 1));
      for (int head = 0; head < 8; ++head) {
        void* scores = alloc(4 * batch * tokens * tokens);
        void* probs = alloc(4 * batch * tokens * tokens);
        touch(probs);
        release(scores);
        small_tensors(rng, 2);
        release(probs);
      }
      release(q);
      release(k);
      release(v);
      void* y = alloc(feature(kLevels - 1));
      touch(y);
      release(out);
      if (!x_is_skip) release(x);
      x = y;
    }
    // Up: each block concatenates its input with the matching skip (twice the channels).
    for (int level = kLevels - 1; level >= 0; --level) {
      for (int b = 0; b < kBlocks; ++b) {
        void* skip = skips.back();
        skips.pop_back();
        void* cat = alloc(feature(level, 2));
        touch(cat);
        release(skip);
        release(x);
        void* y = res_block(feature(level, 2), feature(level), pooled(level), batch, rng);
        release(cat);
        x = y;
      }
      if (level > 0) {  // upsampling
        void* up = alloc(feature(level - 1));
        touch(up);
        release(x);
        x = up;
      }
    }
    void* image = alloc(std::uint64_t{4} * batch * 3 * 768 * 768);
    touch(image);
    release(x);
    sync();  // copy the result out
    release(image);
    if (!skips.empty()) throw std::runtime_error("workload: unbalanced skips");
  }

  void sync() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

 private:
  // norm -> SiLU -> conv -> norm -> SiLU -> conv (+ pooled gate and small tensors), then the
  // residual sum. Returns the block's output; frees its temporaries, not its input.
  void* res_block(std::uint64_t in_bytes, std::uint64_t out_bytes, std::uint64_t pooled_bytes,
                  int batch, std::mt19937_64& rng) {
    void* stats = alloc(std::uint64_t{256} * batch);
    void* h = alloc(in_bytes);  // group norm
    release(stats);
    void* a = alloc(in_bytes);  // SiLU
    release(h);
    small_tensors(rng, 3);
    void* c = alloc(out_bytes);  // convolution
    touch(c);
    release(a);
    void* emb = alloc(std::uint64_t{4} * batch * 1280);  // time/condition embedding
    void* gate = alloc(pooled_bytes);
    h = alloc(out_bytes);
    release(c);
    a = alloc(out_bytes);
    release(h);
    c = alloc(out_bytes);
    touch(c);
    release(a);
    release(gate);
    release(emb);
    small_tensors(rng, 3);
    void* out = alloc(out_bytes);  // residual sum
    touch(out);
    release(c);
    return out;
  }

  void small_tensors(std::mt19937_64& rng, int n) {
    std::vector<void*> ps;
    for (int i = 0; i < n; ++i) {
      double log_size =
          std::uniform_real_distribution<double>(std::log(512.0), std::log(65536.0))(rng);
      ps.push_back(alloc(static_cast<std::uint64_t>(std::exp(log_size)) & ~std::uint64_t{3}));
    }
    for (void* p : ps)
      release(p);
  }

  void* alloc(std::uint64_t bytes) {
    std::uint64_t size = std::max<std::uint64_t>(
        4, static_cast<std::uint64_t>(static_cast<double>(bytes) * scale_) & ~std::uint64_t{3});
    void* p = alloc_.allocate(size);
    sizes_[p] = size;
    live_ += size;
    live_peak_ = std::max(live_peak_, live_);
    meter_.sample();
    return p;
  }

  void release(void* p) {
    auto it = sizes_.find(p);
    if (it == sizes_.end()) throw std::runtime_error("workload: unknown tensor");
    live_ -= it->second;
    sizes_.erase(it);
    alloc_.release(p);
  }

  // A kernel's output: writes 4 KiB on the legacy stream, asynchronously.
  void touch(void* p) {
    std::uint64_t size = sizes_.at(p);
    check(cudaMemsetAsync(p, 0, std::min<std::uint64_t>(size, 4096), nullptr), "cudaMemsetAsync");
  }

  DeviceAllocator& alloc_;
  HeldMeter& meter_;
  double scale_;
  std::unordered_map<void*, std::uint64_t> sizes_;
  std::vector<void*> weights_;
  std::uint64_t live_ = 0;
  std::uint64_t live_peak_ = 0;
  int batch_count_ = 0;
};

// ---- options ---------------------------------------------------------------------------------

enum class Mode { kFramework, kNoCache, kCudapool };
constexpr Mode kModes[] = {Mode::kFramework, Mode::kNoCache, Mode::kCudapool};

const char* mode_arg(Mode m) {
  switch (m) {
    case Mode::kFramework:
      return "framework-cache";
    case Mode::kNoCache:
      return "no-cache";
    case Mode::kCudapool:
      return "no-cache-cudapool";
  }
  return "";
}
const char* mode_title(Mode m) {
  switch (m) {
    case Mode::kFramework:
      return "framework cache";
    case Mode::kNoCache:
      return "no cache";
    case Mode::kCudapool:
      return "no cache + cudapool";
  }
  return "";
}
const char* mode_key(Mode m) {
  switch (m) {
    case Mode::kFramework:
      return "framework_cache";
    case Mode::kNoCache:
      return "no_cache";
    case Mode::kCudapool:
      return "no_cache_cudapool";
  }
  return "";
}

struct Args {
  std::string runtime = "auto";  // standin | real | auto
  std::string library;           // --library: libcudapool.so to preload (default: found)
  double scale = 1.0;
  double quiet_seconds = 3.0;
  int settle_ms = 300;  // pause after each busy phase before the bytes are read
  int steady_batches = 20;
  unsigned driver_latency_us = 0;  // stand-in only; 0 = leave STANDIN_*_LATENCY_US alone
  int child_timeout_s = 300;
  bool json = false;
  bool verbose = false;
  // child
  std::string workload;
  int report_fd = -1;
};

void usage(FILE* out) {
  fprintf(out,
          "usage: cudapool-demo [--runtime standin|real|auto] [--scale F] [--quiet-seconds N]\n"
          "                     [--steady-batches N] [--settle-ms N] [--driver-latency-us N]\n"
          "                     [--library PATH] [--json] [--verbose]\n"
          "\n"
          "Plays an inference worker (load 1.5 GiB of weights, one batch of 4 with ~12 GiB of\n"
          "activations, batches of 1, then quiet) three times: with a framework-style caching\n"
          "allocator, with one cudaMalloc/cudaFree per tensor, and the same under cudapool\n"
          "(LD_PRELOAD=libcudapool.so). Prints the bytes the driver holds in each phase.\n"
          "\n"
          "  --runtime R          standin: the stand-in CUDA runtime (CPU only); real: NVIDIA's\n"
          "                       runtime from the CUDA toolkit (CUDA_HOME or /usr/local/cuda);\n"
          "                       auto (default): real if the driver reports a GPU\n"
          "  --scale F            multiply every size by F (default 1; try 0.25 on a small GPU)\n"
          "  --quiet-seconds N    length of the quiet phase (default 3)\n"
          "  --steady-batches N   batches of 1 in the steady phase (default 20)\n"
          "  --settle-ms N        pause after load, burst and steady before the held bytes are\n"
          "                       read, like the gap before the next request (default 300)\n"
          "  --driver-latency-us N  stand-in only: cost of each cudaMalloc/cudaFree (default:\n"
          "                       STANDIN_MALLOC_LATENCY_US/STANDIN_FREE_LATENCY_US or 0)\n"
          "  --library PATH       the libcudapool.so to preload (default: see below)\n"
          "  --json               print JSON instead of the table\n"
          "  --verbose            show the children's stderr (cudapool's log)\n"
          "\n"
          "cudapool is found at --library PATH, <exe dir>/../shim/libcudapool.so (build tree)\n"
          "or <exe dir>/../lib/libcudapool.so (installed). CUDAPOOL_* variables are passed on;\n"
          "CUDAPOOL_IDLE_RELEASE_MS defaults to %s here so that the quiet phase shows the idle\n"
          "timer.\n",
          kDefaultIdleReleaseMs);
}

bool parse_args(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        fprintf(stderr, "cudapool-demo: %s needs a value\n", arg.c_str());
        exit(2);
      }
      return argv[++i];
    };
    if (arg == "--runtime") {
      a->runtime = value();
      if (a->runtime != "standin" && a->runtime != "real" && a->runtime != "auto") {
        fprintf(stderr, "cudapool-demo: --runtime takes standin, real or auto\n");
        return false;
      }
    } else if (arg == "--scale") {
      a->scale = atof(value());
      if (!(a->scale > 0 && a->scale <= 16)) {
        fprintf(stderr, "cudapool-demo: --scale must be in (0, 16]\n");
        return false;
      }
    } else if (arg == "--quiet-seconds") {
      a->quiet_seconds = atof(value());
      if (!(a->quiet_seconds >= 0)) return false;
    } else if (arg == "--settle-ms") {
      a->settle_ms = atoi(value());
      if (a->settle_ms < 0) return false;
    } else if (arg == "--steady-batches") {
      a->steady_batches = atoi(value());
      if (a->steady_batches < 0) return false;
    } else if (arg == "--driver-latency-us") {
      a->driver_latency_us = static_cast<unsigned>(atoi(value()));
    } else if (arg == "--child-timeout") {
      a->child_timeout_s = atoi(value());
    } else if (arg == "--library") {
      a->library = value();
    } else if (arg == "--json") {
      a->json = true;
    } else if (arg == "--verbose") {
      a->verbose = true;
    } else if (arg == "--workload") {
      a->workload = value();
    } else if (arg == "--report-fd") {
      a->report_fd = atoi(value());
    } else if (arg == "-h" || arg == "--help") {
      usage(stdout);
      exit(0);
    } else {
      fprintf(stderr, "cudapool-demo: unknown argument %s\n", arg.c_str());
      return false;
    }
  }
  return true;
}

// ---- the child -------------------------------------------------------------------------------

struct PhaseResult {
  std::string name;
  std::uint64_t live = 0, live_peak = 0, held = 0, held_peak = 0;
  long long calls = -1;
  double wall_ms = 0;
};

const char* const kPhaseNames[] = {"load", "burst", "steady", "quiet"};

int run_child(const Args& args) {
  FILE* report = fdopen(args.report_fd, "w");
  if (report == nullptr) {
    fprintf(stderr, "cudapool-demo: bad --report-fd\n");
    return 2;
  }
  setvbuf(report, nullptr, _IOLBF, 0);
  if (args.child_timeout_s > 0) alarm(static_cast<unsigned>(args.child_timeout_s));
  try {
    Mode mode;
    if (args.workload == mode_arg(Mode::kFramework)) {
      mode = Mode::kFramework;
    } else if (args.workload == mode_arg(Mode::kNoCache)) {
      mode = Mode::kNoCache;
    } else if (args.workload == mode_arg(Mode::kCudapool)) {
      mode = Mode::kCudapool;
    } else {
      throw std::runtime_error("unknown workload " + args.workload);
    }

    check(cudaFree(nullptr), "cudaFree(0) (runtime start)");
    bool standin = StandinApi::find().present();
    std::string runtime_lib = library_of("cudaGetDeviceCount");
    if (args.runtime == "standin" && !standin)
      throw std::runtime_error("the stand-in runtime was asked for, but libcudart.so.13 is " +
                               runtime_lib);
    if (args.runtime == "real" && standin)
      throw std::runtime_error("NVIDIA's runtime was asked for, but the stand-in was loaded (" +
                               runtime_lib + ")");
    std::string malloc_lib = library_of("cudaMalloc");
    bool interposed = malloc_lib.find("libcudapool") != std::string::npos;
    if ((mode == Mode::kCudapool) != interposed)
      throw std::runtime_error("cudaMalloc comes from " + malloc_lib +
                               (interposed ? ": cudapool is preloaded where it should not be"
                                           : ": cudapool is not preloaded"));
    fprintf(report, "runtime %s %s\n", standin ? "standin" : "real", runtime_lib.c_str());
    fprintf(report, "cudamalloc %s\n", malloc_lib.c_str());

    HeldMeter meter;
    meter.start(standin);
    DirectAllocator direct;
    CachingAllocator caching;
    DeviceAllocator& alloc =
        mode == Mode::kFramework ? static_cast<DeviceAllocator&>(caching) : direct;
    Workload work(alloc, meter, args.scale);

    for (const char* phase : kPhaseNames) {
      meter.begin_phase();
      work.begin_phase();
      double t0 = now_ms();
      std::string name = phase;
      if (name == "load") {
        work.load_weights();
      } else if (name == "burst") {
        work.run_batch(4);
      } else if (name == "steady") {
        for (int i = 0; i < args.steady_batches; ++i)
          work.run_batch(1);
      } else {
        std::this_thread::sleep_for(
            std::chrono::milliseconds(static_cast<long long>(args.quiet_seconds * 1000)));
      }
      PhaseResult r;
      r.wall_ms = now_ms() - t0 - meter.overhead_ms();
      // A server has gaps between requests: give cudapool's release thread (woken when idle
      // bytes cross the high watermark) the same short pause before reading what is held.
      if (name != "quiet" && args.settle_ms > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(args.settle_ms));
      r.live = work.live();
      r.live_peak = work.live_peak();
      r.held = meter.held();
      r.held_peak = meter.phase_peak();
      r.calls = meter.phase_calls();
      fprintf(report, "phase %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %lld %.3f\n", phase,
              r.live, r.live_peak, r.held, r.held_peak, r.calls, r.wall_ms);
    }
    fprintf(report, "done\n");
    fflush(report);
    // Exit without freeing: the weights go with the process, as in a server that stops.
    _exit(0);
  } catch (const std::exception& e) {
    fprintf(report, "error %s\n", e.what());
    fflush(report);
    fprintf(stderr, "cudapool-demo (%s): %s\n", args.workload.c_str(), e.what());
    _exit(1);
  }
}

// ---- the parent ------------------------------------------------------------------------------

struct ChildResult {
  bool ok = false;
  std::string error;
  std::string runtime;      // standin | real
  std::string runtime_lib;  // the libcudart.so.13 it loaded
  std::string malloc_lib;   // where its cudaMalloc came from
  std::vector<PhaseResult> phases;
  std::string stderr_text;
  double wall_ms = 0;
};

std::string find_cudapool(const std::string& given) {
  if (!given.empty()) return given;
  std::string dir = dir_of(self_exe());
  for (const char* rel : {"/../shim/libcudapool.so", "/../lib/libcudapool.so",
                          "/../lib64/libcudapool.so", "/libcudapool.so"}) {
    std::string p = dir + rel;
    if (file_exists(p)) return real_path(p);
  }
  return "";
}

struct ChildEnv {
  std::vector<std::string> vars;  // NAME=value
  void set(const std::string& name, const std::string& value) {
    for (auto& v : vars)
      if (v.compare(0, name.size() + 1, name + "=") == 0) {
        v = name + "=" + value;
        return;
      }
    vars.push_back(name + "=" + value);
  }
  void unset(const std::string& name) {
    vars.erase(std::remove_if(vars.begin(), vars.end(),
                              [&](const std::string& v) {
                                return v.compare(0, name.size() + 1, name + "=") == 0;
                              }),
               vars.end());
  }
};

struct RunPlan {
  bool real = false;
  std::string lib_dir;   // prepended to the children's LD_LIBRARY_PATH ("" = none)
  std::string cudapool;  // the preload library
  bool idle_default = false;
  bool standin_memory_default = false;
  std::string standin_latency;  // "malloc/free" in microseconds, for the header
};

ChildEnv child_env(const Args& args, const RunPlan& plan, Mode mode) {
  ChildEnv env;
  for (char** e = environ; *e != nullptr; ++e)
    env.vars.push_back(*e);
  if (!plan.lib_dir.empty()) {
    const char* cur = env_or_null("LD_LIBRARY_PATH");
    env.set("LD_LIBRARY_PATH", plan.lib_dir + (cur != nullptr ? std::string(":") + cur : ""));
  }
  const char* current = env_or_null("LD_PRELOAD");
  const std::string preload = mode == Mode::kCudapool
                                  ? cudapool::preload_with_cudapool(current, plan.cudapool)
                                  : cudapool::preload_without_cudapool(current);
  if (preload.empty())
    env.unset("LD_PRELOAD");
  else
    env.set("LD_PRELOAD", preload);
  if (mode == Mode::kCudapool && plan.idle_default)
    env.set("CUDAPOOL_IDLE_RELEASE_MS", kDefaultIdleReleaseMs);
  if (!plan.real) {
    if (plan.standin_memory_default) env.set("STANDIN_DEVICE_MEMORY", kDefaultStandinMemory);
    if (args.driver_latency_us != 0) {
      env.set("STANDIN_MALLOC_LATENCY_US", std::to_string(args.driver_latency_us));
      env.set("STANDIN_FREE_LATENCY_US", std::to_string(args.driver_latency_us));
    }
  }
  return env;
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

ChildResult run_workload(const Args& args, const RunPlan& plan, Mode mode) {
  ChildResult result;
  int fds[2];
  if (pipe(fds) != 0) {
    result.error = std::string("pipe: ") + strerror(errno);
    return result;
  }
  FILE* err_file = args.verbose ? nullptr : tmpfile();
  std::string exe = self_exe();
  std::vector<std::string> argv_s = {exe,
                                     "--workload",
                                     mode_arg(mode),
                                     "--report-fd",
                                     std::to_string(fds[1]),
                                     "--runtime",
                                     plan.real ? "real" : "standin",
                                     "--scale",
                                     format("%.17g", args.scale),
                                     "--quiet-seconds",
                                     format("%.17g", args.quiet_seconds),
                                     "--settle-ms",
                                     std::to_string(args.settle_ms),
                                     "--steady-batches",
                                     std::to_string(args.steady_batches),
                                     "--child-timeout",
                                     std::to_string(args.child_timeout_s)};
  ChildEnv env = child_env(args, plan, mode);
  std::vector<char*> argv_c, envp_c;
  for (auto& s : argv_s)
    argv_c.push_back(s.data());
  argv_c.push_back(nullptr);
  for (auto& s : env.vars)
    envp_c.push_back(s.data());
  envp_c.push_back(nullptr);

  double t0 = now_ms();
  fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    result.error = std::string("fork: ") + strerror(errno);
    return result;
  }
  if (pid == 0) {
    close(fds[0]);
    if (err_file != nullptr) dup2(fileno(err_file), STDERR_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);  // keep the parent's table clean
    execve(exe.c_str(), argv_c.data(), envp_c.data());
    fprintf(stderr, "cudapool-demo: cannot run %s: %s\n", exe.c_str(), strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  std::string report = read_all(fds[0]);
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.wall_ms = now_ms() - t0;
  if (err_file != nullptr) {
    fflush(err_file);
    rewind(err_file);
    result.stderr_text = read_all(fileno(err_file));
    fclose(err_file);
  }

  std::size_t pos = 0;
  bool done = false;
  while (pos < report.size()) {
    std::size_t nl = report.find('\n', pos);
    if (nl == std::string::npos) nl = report.size();
    std::string line = report.substr(pos, nl - pos);
    pos = nl + 1;
    char name[32];
    PhaseResult r;
    unsigned long long live, live_peak, held, held_peak;
    if (line.rfind("runtime ", 0) == 0) {
      std::size_t sp = line.find(' ', 8);
      result.runtime = line.substr(8, sp - 8);
      if (sp != std::string::npos) result.runtime_lib = line.substr(sp + 1);
    } else if (line.rfind("cudamalloc ", 0) == 0) {
      result.malloc_lib = line.substr(11);
    } else if (line.rfind("error ", 0) == 0) {
      result.error = line.substr(6);
    } else if (line == "done") {
      done = true;
    } else if (sscanf(line.c_str(), "phase %31s %llu %llu %llu %llu %lld %lf", name, &live,
                      &live_peak, &held, &held_peak, &r.calls, &r.wall_ms) == 7) {
      r.name = name;
      r.live = live;
      r.live_peak = live_peak;
      r.held = held;
      r.held_peak = held_peak;
      result.phases.push_back(r);
    }
  }
  bool exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  result.ok = exited_ok && done && result.error.empty();
  if (!result.ok && result.error.empty()) {
    if (WIFSIGNALED(status))
      result.error = format("killed by signal %d%s", WTERMSIG(status),
                            WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
    else
      result.error = format("exited with status %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  return result;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += format("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

const PhaseResult* find_phase(const ChildResult& r, const std::string& name) {
  for (const PhaseResult& p : r.phases)
    if (p.name == name) return &p;
  return nullptr;
}

long long total_calls(const ChildResult& r) {
  long long sum = 0;
  for (const PhaseResult& p : r.phases) {
    if (p.calls < 0) return -1;
    sum += p.calls;
  }
  return sum;
}

double total_ms(const ChildResult& r) {
  double sum = 0;
  for (const PhaseResult& p : r.phases)
    if (p.name != "quiet") sum += p.wall_ms;
  return sum;
}

// The high watermark cudapool runs with: CUDAPOOL_HIGH_WATERMARK when it is a valid size in
// bytes, else the options table's default; 0 when it is a percentage (the device's size is not
// known here).
std::uint64_t high_watermark_setting() {
  cudapool::SizeSpec spec;
  const char* v = env_or_null("CUDAPOOL_HIGH_WATERMARK");
  if (v == nullptr || !cudapool::parse_size(v, true, &spec, nullptr))
    cudapool::parse_size(cudapool::find_option("HIGH_WATERMARK")->default_value, true, &spec,
                         nullptr);
  return spec.is_percent ? 0 : spec.bytes;
}

// Plain-language conclusions computed from the numbers.
std::vector<std::string> conclusions(const std::map<Mode, ChildResult>& results, const Args& args) {
  std::vector<std::string> out;
  const ChildResult& fw = results.at(Mode::kFramework);
  const ChildResult& nc = results.at(Mode::kNoCache);
  const ChildResult& cp = results.at(Mode::kCudapool);
  if (!fw.ok || !nc.ok || !cp.ok) return out;
  const PhaseResult* fw_burst = find_phase(fw, "burst");
  const PhaseResult* cp_burst = find_phase(cp, "burst");
  const PhaseResult* fw_steady = find_phase(fw, "steady");
  const PhaseResult* cp_steady = find_phase(cp, "steady");
  const PhaseResult* nc_steady = find_phase(nc, "steady");
  const PhaseResult* fw_quiet = find_phase(fw, "quiet");
  const PhaseResult* cp_quiet = find_phase(cp, "quiet");
  if (!fw_burst || !cp_burst || !fw_steady || !cp_steady || !nc_steady || !fw_quiet || !cp_quiet)
    return out;
  out.push_back(format(
      "After the burst, cudapool holds %s where the framework cache keeps %s (%s of it in use); "
      "after the quiet phase %s vs %s.",
      human(cp_burst->held).c_str(), human(fw_burst->held).c_str(), human(fw_burst->live).c_str(),
      human(cp_quiet->held).c_str(), human(fw_quiet->held).c_str()));
  long long cp_calls = total_calls(cp), nc_calls = total_calls(nc), fw_calls = total_calls(fw);
  if (cp_calls >= 0 && nc_calls >= 0) {
    out.push_back(format(
        "Driver calls over the run: %lld with cudapool vs %lld without a cache (%lld with the "
        "framework cache); time of load+burst+steady: %s vs %s (%s).",
        cp_calls, nc_calls, fw_calls, human_ms(total_ms(cp)).c_str(),
        human_ms(total_ms(nc)).c_str(), human_ms(total_ms(fw)).c_str()));
  } else {
    out.push_back(
        format("Time of load+burst+steady: %s with cudapool vs %s without a cache (%s "
               "with the framework cache); driver calls are not visible on a real GPU.",
               human_ms(total_ms(cp)).c_str(), human_ms(total_ms(nc)).c_str(),
               human_ms(total_ms(fw)).c_str()));
  }
  const PhaseResult* nc_burst = find_phase(nc, "burst");
  if (nc_burst != nullptr)
    out.push_back(
        format("Peak held during the burst: %s with cudapool, %s with the framework "
               "cache, %s without a cache (peak in use %s).",
               human(cp_burst->held_peak).c_str(), human(fw_burst->held_peak).c_str(),
               human(nc_burst->held_peak).c_str(), human(fw_burst->live_peak).c_str()));
  std::uint64_t working_set = cp_steady->live_peak - cp_steady->live;
  std::uint64_t high = high_watermark_setting();
  if (args.steady_batches > 0 && cp_steady->calls >= 5LL * args.steady_batches && high != 0 &&
      working_set > high) {
    out.push_back(format(
        "In the steady phase cudapool still made %lld driver calls (%.0f per batch): each batch "
        "of 1 needs %s, more than the pool may keep idle (CUDAPOOL_HIGH_WATERMARK: %s), so it "
        "grows and releases every batch; a high watermark above that keeps it pooled.",
        cp_steady->calls, static_cast<double>(cp_steady->calls) / args.steady_batches,
        human(working_set).c_str(), human(high).c_str()));
  } else if (cp_steady->calls >= 0) {
    out.push_back(
        format("In the steady phase cudapool made %lld driver calls in %d batches of 1 "
               "(%lld without a cache).",
               cp_steady->calls, args.steady_batches, nc_steady->calls));
  } else if (args.steady_batches > 0) {
    out.push_back(
        format("In the steady phase (%d batches of 1) cudapool peaked at %s (framework "
               "cache %s, no cache %s) and took %s (framework cache %s, no cache %s).",
               args.steady_batches, human(cp_steady->held_peak).c_str(),
               human(fw_steady->held_peak).c_str(), human(nc_steady->held_peak).c_str(),
               human_ms(cp_steady->wall_ms).c_str(), human_ms(fw_steady->wall_ms).c_str(),
               human_ms(nc_steady->wall_ms).c_str()));
  }
  return out;
}

void print_table(const std::map<Mode, ChildResult>& results, const Args& args,
                 const RunPlan& plan) {
  const ChildResult& first = results.at(Mode::kFramework);
  printf("cudapool-demo: %s runtime (%s), scale %g\n", plan.real ? "NVIDIA" : "stand-in",
         first.runtime_lib.empty() ? "?" : first.runtime_lib.c_str(), args.scale);
  printf("cudapool: %s", plan.cudapool.c_str());
  if (plan.idle_default)
    printf(" (CUDAPOOL_IDLE_RELEASE_MS=%s set by the demo for the quiet phase)",
           kDefaultIdleReleaseMs);
  printf("\n");
  if (plan.real)
    printf(
        "held = device memory in use (cuMemGetInfo, whole device) minus its value at the "
        "child's start; driver calls are not visible on a real GPU\n");
  else
    printf(
        "held = bytes the stand-in runtime has handed out (its counters); driver calls = "
        "cudaMalloc + cudaFree that reached the runtime, and cuMemCreate + cuMemRelease of the "
        "pool's pages; stand-in latency per call: %s us (--driver-latency-us)\n",
        plan.standin_latency.c_str());
  printf(
      "phases: load 1.5 GiB of weights; burst 1 batch of 4; steady %d batches of 1; quiet "
      "%gs without traffic; held is read %d ms after the last call of each phase\n\n",
      args.steady_batches, args.quiet_seconds, args.settle_ms);

  const char* hdr = "%-7s %-21s %-20s %-21s %12s %9s\n";
  printf(hdr, "phase", "in use (peak)", "mode", "held (peak)", "driver calls", "time");
  printf("%s\n", std::string(95, '-').c_str());
  for (const char* phase : kPhaseNames) {
    bool first_row = true;
    for (Mode m : kModes) {
      const ChildResult& r = results.at(m);
      const PhaseResult* p = find_phase(r, phase);
      std::string in_use, held, calls, time;
      if (p != nullptr) {
        in_use = human(p->live) + " (" + human(p->live_peak) + ")";
        held = human(p->held) + " (" + human(p->held_peak) + ")";
        calls = p->calls < 0 ? "-" : std::to_string(p->calls);
        time = human_ms(p->wall_ms);
      } else {
        held = "failed";
      }
      if (!first_row) in_use.clear();
      printf("%-7s %-21s %-20s %-21s %12s %9s\n", first_row ? phase : "", in_use.c_str(),
             mode_title(m), held.c_str(), calls.c_str(), time.c_str());
      first_row = false;
    }
  }
  printf("\n");
  for (const std::string& line : conclusions(results, args))
    printf("%s\n", line.c_str());
}

void print_json(const std::map<Mode, ChildResult>& results, const Args& args, const RunPlan& plan) {
  printf("{\n  \"runtime\": \"%s\",\n  \"runtime_library\": \"%s\",\n  \"cudapool\": \"%s\",\n",
         plan.real ? "real" : "standin",
         json_escape(results.at(Mode::kFramework).runtime_lib).c_str(),
         json_escape(plan.cudapool).c_str());
  printf("  \"scale\": %g,\n  \"quiet_seconds\": %g,\n  \"steady_batches\": %d,\n", args.scale,
         args.quiet_seconds, args.steady_batches);
  printf("  \"idle_release_ms_set_by_demo\": %s,\n", plan.idle_default ? "true" : "false");
  printf("  \"phases\": [");
  bool first_phase = true;
  for (const char* phase : kPhaseNames) {
    const PhaseResult* any = nullptr;
    for (Mode m : kModes)
      if (!any) any = find_phase(results.at(m), phase);
    printf("%s\n    {\"name\": \"%s\"", first_phase ? "" : ",", phase);
    first_phase = false;
    if (any != nullptr)
      printf(", \"in_use\": %" PRIu64 ", \"in_use_peak\": %" PRIu64, any->live, any->live_peak);
    for (Mode m : kModes) {
      const PhaseResult* p = find_phase(results.at(m), phase);
      if (p == nullptr) {
        printf(", \"%s\": null", mode_key(m));
        continue;
      }
      printf(", \"%s\": {\"held\": %" PRIu64 ", \"held_peak\": %" PRIu64
             ", \"driver_calls\": %s, \"wall_ms\": %.3f}",
             mode_key(m), p->held, p->held_peak,
             p->calls < 0 ? "null" : std::to_string(p->calls).c_str(), p->wall_ms);
    }
    printf("}");
  }
  printf("\n  ],\n  \"failures\": {");
  bool first = true;
  for (Mode m : kModes) {
    const ChildResult& r = results.at(m);
    if (r.ok) continue;
    printf("%s\"%s\": \"%s\"", first ? "" : ", ", mode_key(m), json_escape(r.error).c_str());
    first = false;
  }
  printf("},\n  \"conclusions\": [");
  first = true;
  for (const std::string& line : conclusions(results, args)) {
    printf("%s\n    \"%s\"", first ? "" : ",", json_escape(line).c_str());
    first = false;
  }
  printf("\n  ]\n}\n");
}

int run_parent(const Args& args) {
  RunPlan plan;
  if (args.runtime == "real") {
    plan.real = true;
  } else if (args.runtime == "auto") {
    plan.real = real_gpu_present();
  }
  if (plan.real) {
    plan.lib_dir = toolkit_lib_dir();
    if (plan.lib_dir.empty())
      fprintf(stderr,
              "cudapool-demo: no libcudart.so.13 under $CUDA_HOME or /usr/local/cuda; the "
              "children use whatever libcudart.so.13 the loader finds\n");
  } else {
    // Children find the stand-in the way this process did (RUNPATH), unless LD_LIBRARY_PATH
    // points elsewhere: then name the stand-in's folder first.
    std::string beside = dir_of(self_exe()) + "/../tests/standin";  // the build tree
    if (StandinApi::find().present()) {
      plan.lib_dir = dir_of(library_of("standinIsStandin"));
    } else if (file_exists(beside + "/libcudart.so.13")) {
      plan.lib_dir = real_path(beside);
    } else {
      fprintf(stderr,
              "cudapool-demo: the stand-in runtime is not loaded (libcudart.so.13 is %s); "
              "run from the build tree, or use --runtime real on a machine with a GPU\n",
              library_of("cudaGetDeviceCount").c_str());
      return 2;
    }
  }
  plan.cudapool = find_cudapool(args.library);
  if (plan.cudapool.empty() || !file_exists(plan.cudapool)) {
    fprintf(stderr,
            "cudapool-demo: libcudapool.so not found (looked at --library, "
            "<exe dir>/../shim and <exe dir>/../lib); give it with --library PATH\n");
    return 2;
  }
  plan.idle_default = env_or_null("CUDAPOOL_IDLE_RELEASE_MS") == nullptr;
  plan.standin_memory_default = env_or_null("STANDIN_DEVICE_MEMORY") == nullptr;
  if (args.driver_latency_us != 0) {
    plan.standin_latency = std::to_string(args.driver_latency_us);
  } else {
    const char* m = env_or_null("STANDIN_MALLOC_LATENCY_US");
    const char* f = env_or_null("STANDIN_FREE_LATENCY_US");
    plan.standin_latency = std::string(m ? m : "0") + "/" + (f ? f : "0");
    if (plan.standin_latency == "0/0") plan.standin_latency = "0";
  }

  std::map<Mode, ChildResult> results;
  bool all_ok = true;
  for (Mode m : kModes) {
    if (!args.json) fprintf(stderr, "running: %s ...\n", mode_title(m));
    results[m] = run_workload(args, plan, m);
    if (!results[m].ok) all_ok = false;
  }
  if (args.json)
    print_json(results, args, plan);
  else
    print_table(results, args, plan);
  for (Mode m : kModes) {
    const ChildResult& r = results.at(m);
    if (r.ok) continue;
    fprintf(stderr, "\ncudapool-demo: the %s run failed: %s\n", mode_title(m), r.error.c_str());
    if (!r.stderr_text.empty()) fprintf(stderr, "its stderr:\n%s", r.stderr_text.c_str());
  }
  return all_ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, &args)) {
    usage(stderr);
    return 2;
  }
  if (!args.workload.empty()) return run_child(args);
  return run_parent(args);
}
