#include "shim/shim.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <string>

#include "control/log.h"
#include "control/pipe_server.h"
#include "control/size.h"
#include "shim/python.h"
#include "shim/timeline.h"
#include "shim/trace_recorder.h"

namespace cudapool {

namespace {

enum InitState : int { kUninitialised, kInitialising, kActive, kPassThrough };

std::atomic<int> g_init_state{kUninitialised};
std::atomic<Shim*> g_shim{nullptr};
std::atomic<bool> g_exiting{false};
bool g_handlers_installed = false;        // survives fork: handlers are inherited
std::atomic<bool> g_ever_started{false};  // a call reached the library, here or in a parent

// Logs the pool's rare events. Routine releases go to debug; failures are warnings.
class LogObserver final : public PoolObserver {
 public:
  void on_release(int device, ReleaseReason reason, std::uint64_t bytes,
                  std::uint64_t segments) override {
    log_debug("device {}: released {} in {} driver allocation(s) ({})", device, format_size(bytes),
              segments, to_string(reason));
    timeline_release(device, reason, bytes, segments);
  }
  void on_driver_error(int device, const char* operation, Status status) override {
    if (status == Status::kUnloading) return;
    log_warn_ratelimited(operation, "device {}: driver {} failed (status {}); memory kept", device,
                         operation, static_cast<int>(status));
  }
};

// At exit, one warning when no call ever reached the library although the process used the CUDA
// driver without a shared CUDA runtime: its runtime is linked statically (nvcc's default; CuPy)
// or it allocates through the driver API only. Such a process runs as if the library were not
// loaded; this line says why. (A process with a shared runtime that never called cudaMalloc,
// say one that only counted the devices, gets no warning.) A destructor, so it costs nothing
// before; the logger outlives every destructor (control/log.cpp).
__attribute__((destructor)) void warn_if_never_called() {
  if (g_ever_started.load(std::memory_order_acquire)) return;
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
  if (driver == nullptr) return;  // no CUDA at all: nothing to say
  dlclose(driver);
  try {
    if (shared_runtime_loaded()) return;
    std::vector<std::string> ignored;
    Options options = load_options_from_environment(&ignored);
    if (options.disable) return;
    log_init(options);
    log_warn(
        "this process used the CUDA driver, but no cudaMalloc reached cudapool, through the "
        "runtime or the driver, and nothing was pooled; `cudapoolctl doctor -- COMMAND` says "
        "how it allocates (docs/doctor.md)");
  } catch (...) {
  }
}

}  // namespace

Shim::Shim(const RealRuntime& rt, const Options& options)
    : rt_(rt), options_(options), backend_(rt), observer_(std::make_unique<LogObserver>()) {
  if (options.framework == FrameworkMode::kAuto) frameworks_ = Frameworks::create();
  releaser_.set_framework(frameworks_.get());
}

void Shim::note_called() {
  if (!g_ever_started.load(std::memory_order_relaxed))
    g_ever_started.store(true, std::memory_order_release);
}

Shim* Shim::get(const RealRuntime& rt) {
  if (Shim* s = g_shim.load(std::memory_order_acquire)) return s;
  int state = g_init_state.load(std::memory_order_acquire);
  if (state == kPassThrough) return nullptr;
  return init(rt);
}

Shim* Shim::init(const RealRuntime& rt) {
  int expected = kUninitialised;
  if (!g_init_state.compare_exchange_strong(expected, kInitialising)) {
    // Another thread is starting the Shim: wait for it (start-up is short and never blocks on
    // the device).
    while (g_init_state.load(std::memory_order_acquire) == kInitialising)
      sched_yield();
    return g_shim.load(std::memory_order_acquire);
  }
  note_called();
  Shim* shim = nullptr;
  try {
    std::vector<std::string> warnings;
    Options options = load_options_from_environment(&warnings);
    log_init(options);
    for (const std::string& w : warnings)
      log_warn("{}", w);
    if (!g_handlers_installed) {
      g_handlers_installed = true;
      pthread_atfork(nullptr, nullptr, &Shim::on_fork_child);
      std::atexit(&Shim::on_exit);
    }
    if (options.disable) {
      log_info("cudapool {}: disabled by CUDAPOOL_DISABLE; every call goes to the CUDA runtime",
               CUDAPOOL_VERSION);
    } else {
      shim = new Shim(rt, options);  // never deleted: see the lifecycle in shim.h
      log_info("cudapool {} active (runtime: {}): {}", CUDAPOOL_VERSION, rt.origin,
               describe_options(options));
      if (options.control) shim->start_control();
      shim->start_observability();
      if (std::string why;
          !options.trace_file.empty() && !trace_recorder_start(options.trace_file, &why))
        log_warn("CUDAPOOL_TRACE_FILE: cannot write the trace ({}); not recording", why);
    }
  } catch (const std::exception& e) {
    log_error("cudapool could not start ({}); every call goes to the CUDA runtime", e.what());
    shim = nullptr;
  } catch (...) {
    log_error("cudapool could not start; every call goes to the CUDA runtime");
    shim = nullptr;
  }
  g_shim.store(shim, std::memory_order_release);
  g_init_state.store(shim != nullptr ? kActive : kPassThrough, std::memory_order_release);
  return shim;
}

void Shim::on_fork_child() {
  // The parent's pools describe the parent's device memory and its threads are gone: start over
  // at the child's first call. The old Shim is left as it is (its locks may be held); its control
  // pipe is the parent's: the child closes its descriptor and makes its own pipe.
  if (Shim* old = g_shim.load(std::memory_order_relaxed);
      old != nullptr && old->control_ != nullptr)
    old->control_->abandon_after_fork();
  g_shim.store(nullptr, std::memory_order_relaxed);
  g_init_state.store(kUninitialised, std::memory_order_relaxed);
  reset_real_runtime_after_fork();
  python::after_fork_child();
  log_reopen_after_fork();
}

void Shim::on_exit() {
  g_exiting.store(true, std::memory_order_release);
  if (Shim* s = g_shim.load(std::memory_order_acquire)) {
    s->releaser_.stop();
    if (s->frameworks_ != nullptr) s->frameworks_->stop();
    s->finish_observability();
    trace_recorder_flush();
    if (s->control_ != nullptr) s->control_->shutdown();  // stops commands, removes the FIFO
  }
}

// ---- pools ------------------------------------------------------------------------------------

DevicePool* Shim::create_pool(int device) {
  if (device < 0 || device >= kMaxDevices) return nullptr;
  std::lock_guard lock(pools_mutex_);
  if (DevicePool* p = existing_pool(device)) return p;
  std::uint64_t free = 0, total = 0;
  if (backend_.device_memory(device, &free, &total) != Status::kOk) return nullptr;
  current_device_.bind_driver();  // the runtime has started: it has loaded the driver
  Policy policy = policy_for(total);
  auto* p = new DevicePool(device, backend_, gate_, policy, observer_.get());
  if (policy.vmm == VmmMode::kOn && !p->uses_pages())
    log_warn(
        "device {}: CUDAPOOL_VMM=on, but the device or its driver has no virtual memory "
        "management; the pool uses whole segments",
        device);
  device_totals_[device] = total;
  pools_[device].store(p, std::memory_order_release);
  pool_slots_.store(std::max(pool_slots_.load(std::memory_order_relaxed), device + 1),
                    std::memory_order_release);
  releaser_.add_pool(p);
  if (frameworks_ != nullptr) frameworks_->add_device(device);
  releaser_.start();
  log_debug("device {}: pool ready ({} total, {} free; {})", device, format_size(total),
            format_size(free),
            p->uses_pages() ? "pages of " + format_size(p->stats().page_size) : "segments");
  return p;
}

Policy Shim::policy_for(std::uint64_t device_total) const {
  std::lock_guard options_lock(options_mutex_);
  DeviceLimits limits = resolve_device_limits(options_, device_total);
  Policy p;
  p.high_watermark = limits.high_watermark;
  p.low_watermark = limits.low_watermark;
  p.idle_release_ms = static_cast<std::uint64_t>(options_.idle_release_ms.count());
  p.min_device_free = limits.min_device_free;
  p.limit = limits.limit;
  p.reuse = options_.reuse;
  p.vmm = options_.vmm;
  return p;
}

// ---- interposed calls -------------------------------------------------------------------------

bool Shim::pool_malloc(void** ptr, size_t size, cudaError_t* result) {
  // Zero sizes, null out-pointers and allocations during a capture get the native answer.
  if (ptr == nullptr || size == 0 || gate_.capture_active()) return false;
  int device = 0;
  if (!current_device_.get(&device)) return false;
  DevicePool* pool = this->pool(device);
  if (pool == nullptr) return false;

  unsigned failures = CudaBackend::thread_failures();
  void* p = nullptr;
  Status st = pool->allocate(size, &p);
  if (st == Status::kOk) {
    // A driver failure the pool recovered from must leave no trace (DESIGN §4.4).
    if (failures != CudaBackend::thread_failures()) rt_.cudaGetLastError();
    *ptr = p;
    if (size >= backtrace_min_) [[unlikely]]
      record_stack(p, size);
    trace_alloc(p, size, device);
    *result = cudaSuccess;
    return true;
  }
  if (st == Status::kOutOfMemory && pool->policy().limit != 0) {
    log_warn_ratelimited("limit", "device {}: allocation of {} refused: CUDAPOOL_LIMIT reached",
                         device, format_size(size));
    *result = cudaErrorMemoryAllocation;
    return true;
  }
  // The pool could not serve it: the native call gives the native answer (and last error). It
  // may also succeed where a whole segment could not; that block is then simply not pooled. The
  // pool's own failed attempts must not show in cudaGetLastError after a native success.
  if (failures != CudaBackend::thread_failures()) rt_.cudaGetLastError();
  return false;
}

bool Shim::pool_free(void* ptr, cudaError_t* result) {
  if (ptr == nullptr) return false;
  // Forgotten before the block can be handed out again (by another thread, after the free).
  if (backtrace_min_ != kNoBacktrace) [[unlikely]]
    forget_stack(ptr);
  int slots = pool_slots_.load(std::memory_order_acquire);
  // A block this thread's cache handed out, on any device, needs no pool's lock: first those.
  for (int pass = 0; pass < 2; ++pass) {
    for (int d = 0; d < slots; ++d) {
      DevicePool* pool = existing_pool(d);
      if (pool == nullptr || (pass == 0 && !pool->caches_started())) continue;
      bool wake = false;
      Status st = pass == 0 ? pool->free_cached(ptr, &wake) : pool->free_shared(ptr, &wake);
      if (st == Status::kNotOwned) continue;
      if (st == Status::kOk) {
        if (wake && !g_exiting.load(std::memory_order_relaxed)) releaser_.wake();
        trace_free(ptr, d);
        *result = cudaSuccess;
        return true;
      }
      log_warn_ratelimited("invalid-free",
                           "free of {}: not the start of a live block (double free or interior "
                           "pointer); nothing freed",
                           ptr);
      *result = cudaErrorInvalidValue;
      return true;
    }
  }
  return false;  // not ours: cudaMallocAsync, Managed, Pitch, from before a reset...
}

cudaError_t Shim::mem_get_info(size_t* free, size_t* total) {
  cudaError_t err = rt_.cudaMemGetInfo(free, total);
  if (err != cudaSuccess || free == nullptr || total == nullptr) return err;
  int device = 0;
  if (rt_.cudaGetDevice(&device) != cudaSuccess) return err;
  std::uint64_t f = *free, t = *total, in_use = 0, limit = 0;
  if (DevicePool* pool = existing_pool(device)) {
    PoolStats stats = pool->stats();
    f += stats.idle();  // idle pool memory is free for this process
    in_use = stats.in_use;
    limit = pool->policy().limit;
  } else {
    limit = policy_for(t).limit;
  }
  f = std::min(f, t);  // never more than the device has
  if (limit != 0) {
    t = std::min(t, limit);
    f = std::min(f, limit > in_use ? limit - in_use : 0);
  }
  *free = static_cast<size_t>(f);
  *total = static_cast<size_t>(t);
  return err;
}

bool Shim::block_range(const void* ptr, void** base, size_t* size, cudaError_t* result) {
  const int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots; ++d) {
    DevicePool* pool = existing_pool(d);
    if (pool == nullptr) continue;
    const Status st = pool->live_block_range(ptr, base, size);
    if (st == Status::kNotOwned) continue;
    *result = st == Status::kOk ? cudaSuccess : cudaErrorInvalidValue;
    return true;
  }
  return false;
}

void Shim::drop_device(int device) {
  if (DevicePool* pool = existing_pool(device)) pool->drop_all();
}

cudaError_t Shim::device_reset() {
  int device = 0;
  if (rt_.cudaGetDevice(&device) == cudaSuccess) {
    // The reset frees every segment; returning them ourselves later could free someone else's
    // allocation at the same address.
    if (DevicePool* pool = existing_pool(device)) pool->drop_all();
  }
  return rt_.cudaDeviceReset();
}

cudaError_t Shim::ipc_get_mem_handle(cudaIpcMemHandle_t* handle, void* ptr) {
  int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots && ptr != nullptr; ++d) {
    DevicePool* pool = existing_pool(d);
    if (pool == nullptr) continue;
    Status st = pool->check_ipc_base(ptr);
    if (st == Status::kNotOwned) continue;
    if (st == Status::kOk) break;
    if (pool->uses_pages()) {
      log_warn_ratelimited(
          "ipc",
          "cudaIpcGetMemHandle({}): the block lives on the pool's virtual-memory "
          "pages, which CUDA IPC cannot export; refused. Run with CUDAPOOL_VMM=off "
          "to share CUDA memory between processes",
          ptr);
      return cudaErrorInvalidValue;
    }
    log_warn_ratelimited("ipc",
                         "cudaIpcGetMemHandle({}): the block is part of a larger pooled segment, "
                         "so a handle would map other bytes; refused. Blocks above 10 MiB are "
                         "whole segments and can be shared; or set CUDAPOOL_DISABLE=1",
                         ptr);
    return cudaErrorInvalidValue;
  }
  return rt_.cudaIpcGetMemHandle(handle, ptr);
}

cudaError_t Shim::enable_peer_access(int peer, unsigned int flags) {
  cudaError_t err = rt_.cudaDeviceEnablePeerAccess(peer, flags);
  int current = 0;
  if ((err != cudaSuccess && err != cudaErrorPeerAccessAlreadyEnabled) ||
      rt_.cudaGetDevice(&current) != cudaSuccess)
    return err;
  backend_.grant_peer(peer, current);  // for the pages mapped from now on
  if (DevicePool* pool = existing_pool(peer); pool != nullptr && pool->uses_pages()) {
    if (pool->refresh_access() != Status::kOk)  // and for those mapped already
      log_warn("device {}: could not grant device {} access to the pool's pages", peer, current);
  }
  return err;
}

cudaError_t Shim::disable_peer_access(int peer) {
  cudaError_t err = rt_.cudaDeviceDisablePeerAccess(peer);
  int current = 0;
  if (err != cudaSuccess || rt_.cudaGetDevice(&current) != cudaSuccess) return err;
  backend_.revoke_peer(peer, current);
  if (DevicePool* pool = existing_pool(peer); pool != nullptr && pool->uses_pages()) {
    if (pool->refresh_access() != Status::kOk)
      log_warn("device {}: could not revoke device {}'s access to the pool's pages", peer, current);
  }
  backend_.revocations_applied(peer);
  return err;
}

void Shim::capture_ended(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (rt_.cudaStreamIsCapturing(stream, &status) != cudaSuccess)
    status = cudaStreamCaptureStatusNone;
  if (status != cudaStreamCaptureStatusNone) return;  // the end failed; still capturing
  std::lock_guard lock(capture_mutex_);
  auto it = std::find(capturing_.begin(), capturing_.end(), stream);
  if (it == capturing_.end()) return;
  capturing_.erase(it);
  gate_.end_capture();
  if (!gate_.capture_active()) releaser_.wake();  // releases held back by the capture
}

}  // namespace cudapool
