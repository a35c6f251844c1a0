// The Shim as the control pipe's target (control/command.h): stats, trim, get/set of run-time
// options, reset-peaks. Runs on the pipe server's thread, never on the allocation path.
//
// `set` changes the Shim's options (under options_mutex_) and gives every existing pool its new
// Policy, resolved with that device's total memory (percentages). A REUSE change is safe both
// ways: fence -> immediate lets later frees skip the fence (blocks already pending still wait for
// one); immediate -> fence makes later frees wait for a fence.
#include <cuda.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <exception>

#include "control/log.h"
#include "control/pipe_server.h"
#include "control/stats_format.h"
#include "shim/shim.h"

#include "shim/driver_runtime.h"

namespace cudapool {
namespace {

// The device's UUID from the driver the runtime loaded (for the metrics' UUID label, which joins
// with NVIDIA's DCGM exporter); empty when there is no such driver or it does not say. Runs on the
// pipe thread only; cuDeviceGet/cuDeviceGetUuid need no context.
std::string device_uuid(int device) {
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (driver == nullptr) return "";
  using GetDevice = CUresult (*)(CUdevice*, int);
  using GetUuid = CUresult (*)(CUuuid*, CUdevice);
  auto get_device = reinterpret_cast<GetDevice>(dlsym(driver, "cuDeviceGet"));
  auto get_uuid = reinterpret_cast<GetUuid>(dlsym(driver, "cuDeviceGetUuid_v2"));
  if (get_uuid == nullptr) get_uuid = reinterpret_cast<GetUuid>(dlsym(driver, "cuDeviceGetUuid"));
  std::string uuid;
  CUdevice handle{};
  CUuuid bytes{};
  if (get_device != nullptr && get_uuid != nullptr && get_device(&handle, device) == CUDA_SUCCESS &&
      get_uuid(&bytes, handle) == CUDA_SUCCESS) {
    unsigned char raw[16];
    for (int i = 0; i < 16; ++i)
      raw[i] = static_cast<unsigned char>(bytes.bytes[i]);
    uuid = format_gpu_uuid(raw);
  }
  dlclose(driver);  // drops only the reference RTLD_NOLOAD took
  return uuid;
}

}  // namespace

void Shim::start_control() {
  try {
    std::string dir;
    {
      std::lock_guard lock(options_mutex_);
      dir = resolve_control_dir(options_);
    }
    control_ = PipeServer::start(dir, *this);
  } catch (...) {
    log_warn("control pipe off: internal error while starting it");
    control_ = nullptr;
  }
}

int Shim::pid() const {
  return static_cast<int>(getpid());
}

std::string Shim::process_name() const {
  char name[64] = {};
  if (FILE* f = std::fopen("/proc/self/comm", "re")) {
    if (std::fgets(name, sizeof name, f) == nullptr) name[0] = '\0';
    std::fclose(f);
  }
  std::string result(name);
  while (!result.empty() && result.back() == '\n')
    result.pop_back();
  return result;
}

std::vector<DeviceReport> Shim::devices() {
  std::vector<DeviceReport> reports;
  const int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots; ++d) {
    DevicePool* pool = existing_pool(d);
    if (pool == nullptr) continue;
    DeviceReport r;
    r.device = d;
    r.stats = pool->stats();
    r.policy = pool->policy();
    r.device_total = device_totals_[d];
    std::uint64_t free = 0, total = 0;
    if (pool->device_memory(&free, &total) == Status::kOk) r.device_free = free;
    r.uuid = device_uuid(d);
    if (frameworks_ != nullptr) {
      if (FrameworkUsage fw = frameworks_->usage(d); fw.known) {
        r.framework = frameworks_->attached();
        r.framework_reserved = fw.reserved;
        r.framework_allocated = fw.allocated;
      }
    }
    reports.push_back(r);
  }
  return reports;
}

RouteCounts Shim::routes() {
  // The runtime's calls are the pools' calls less the driver's: no counter of their own on the
  // hot path.
  RouteCounts r;
  r.driver_calls = g_driver_calls.load(std::memory_order_relaxed);
  r.dlsym_lookups = g_dlsym_lookups.load(std::memory_order_relaxed);
  r.proc_address_lookups = g_proc_address_lookups.load(std::memory_order_relaxed);
  std::uint64_t pool_calls = 0;
  const int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots; ++d) {
    if (DevicePool* pool = existing_pool(d)) {
      const PoolStats s = pool->stats();
      pool_calls += s.app_mallocs + s.app_frees;
    }
  }
  r.runtime_calls = pool_calls - std::min(pool_calls, r.driver_calls);
  return r;
}

bool Shim::trim(int device, const SizeSpec& keep, std::vector<TrimReport>* out,
                std::string* error) {
  const int slots = pool_slots_.load(std::memory_order_acquire);
  if (device >= 0 && existing_pool(device) == nullptr) {
    *error = "device " + std::to_string(device) + " has no pool";
    return false;
  }
  // The framework's cache first: its blocks come back to the pools as frees, and what it keeps
  // counts against `keep`. Never during a capture (PyTorch does not empty its cache then either).
  const bool framework = frameworks_ != nullptr && !gate_.capture_active();
  if (framework) frameworks_->release(device);
  bool capture_blocked = false;
  for (int d = 0; d < slots; ++d) {
    if (device >= 0 && d != device) continue;
    DevicePool* pool = existing_pool(d);
    if (pool == nullptr) continue;
    if (pool->capture_active()) {
      capture_blocked = true;
      continue;
    }
    TrimReport t;
    t.device = d;
    std::uint64_t keep_idle = keep.resolve(device_totals_[d]);
    if (framework) {
      const FrameworkUsage fw = frameworks_->usage(d);
      t.framework = fw.known;
      t.framework_reserved_after = fw.reserved;
      keep_idle -= std::min(keep_idle, fw.cached());
    }
    t.released = pool->release_idle(keep_idle, ReleaseReason::kTrim);
    const PoolStats stats = pool->stats();
    t.held_after = stats.held;
    t.idle_after = stats.idle();
    out->push_back(t);
  }
  if (capture_blocked) {
    *error = "a CUDA stream capture is active: nothing can be released until it ends";
    return false;
  }
  std::uint64_t released = 0;
  for (const TrimReport& t : *out)
    released += t.released;
  log_info("control: trim released {}", format_size(released));
  return true;
}

bool Shim::set_option(std::string_view name, std::string_view value, std::string* error,
                      std::string* note) {
  Options changed;
  {
    std::lock_guard lock(options_mutex_);
    changed = options_;
    if (!cudapool::set_option(&changed, name, value, error, /*runtime_only=*/true, note))
      return false;
    options_ = changed;
  }
  log_set_level(changed.log_level);
  const int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots; ++d) {
    if (DevicePool* pool = existing_pool(d)) pool->set_policy(policy_for(device_totals_[d]));
  }
  releaser_.wake();  // new watermarks or timer apply now, not at the next free
  const OptionInfo* info = find_option(name);
  log_info("control: {} set to {}", info != nullptr ? info->name : name,
           cudapool::get_option(changed, name).value_or("?"));
  return true;
}

std::optional<std::string> Shim::get_option(std::string_view name) {
  std::lock_guard lock(options_mutex_);
  return cudapool::get_option(options_, name);
}

void Shim::reset_peaks() {
  const int slots = pool_slots_.load(std::memory_order_acquire);
  for (int d = 0; d < slots; ++d) {
    if (DevicePool* pool = existing_pool(d)) pool->reset_peaks();
  }
}

}  // namespace cudapool
