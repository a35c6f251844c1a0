// Shim: the process-wide state behind the interposed functions, and its lifecycle.
//
// Lifecycle (DESIGN §4.2, §4.11):
//   - nothing happens at load time; the first interposed call builds the Shim (options, log,
//     real runtime) and each device's pool is built at its first allocation, together with the
//     release thread;
//   - after fork the child forgets the parent's Shim (its pools describe the parent's device
//     memory) and builds a fresh one at its first call;
//   - at exit the release thread stops acting; the Shim is never destroyed, so cudaFree calls
//     from static destructors still find their blocks, and nothing is freed or synchronised.
#pragma once

#include <atomic>
#include <mutex>
#include <vector>

#include "allocator/device_pool.h"
#include "allocator/releaser.h"
#include "allocator/sync_gate.h"
#include "control/command.h"
#include "control/options.h"
#include "shim/cuda_backend.h"
#include "shim/current_device.h"
#include "shim/frameworks.h"
#include "shim/real_runtime.h"

namespace cudapool {

class PipeServer;

// The Shim is also what the control pipe acts on (ControlTarget, defined in shim_control.cpp).
class Shim final : public ControlTarget {
 public:
  static constexpr int kMaxDevices = 64;

  // The active Shim, built on first use; null when the library passes everything through
  // (CUDAPOOL_DISABLE=1 or a failed start).
  static Shim* get(const RealRuntime& rt);
  // A call reached the library (the pool may still be off): no "never called" warning at exit.
  static void note_called();

  cudaError_t malloc(void** ptr, size_t size) {
    cudaError_t result;
    return pool_malloc(ptr, size, &result) ? result : rt_.cudaMalloc(ptr, size);
  }
  cudaError_t free(void* ptr) {
    cudaError_t result;
    return pool_free(ptr, &result) ? result : rt_.cudaFree(ptr);
  }
  // The pool's part of malloc and free, for the runtime's and the driver's entry points alike:
  // false when the call is not the pool's (the caller makes the native call), else true with the
  // answer in *result.
  bool pool_malloc(void** ptr, size_t size, cudaError_t* result);
  bool pool_free(void* ptr, cudaError_t* result);
  // The live block holding `ptr` (cuMemGetAddressRange); false when no pool owns the address.
  bool block_range(const void* ptr, void** base, size_t* size, cudaError_t* result);
  // The device's memory is gone (its primary context was reset or destroyed): forget it.
  void drop_device(int device);
  cudaError_t mem_get_info(size_t* free, size_t* total);
  cudaError_t device_reset();
  cudaError_t ipc_get_mem_handle(cudaIpcMemHandle_t* handle, void* ptr);
  // Peer access: the pool grants (or revokes) the current device's access to `peer`'s pages.
  cudaError_t enable_peer_access(int peer, unsigned int flags);
  cudaError_t disable_peer_access(int peer);

  // Stream capture: the pool must neither synchronise nor release while one is active.
  template <typename Begin>
  cudaError_t begin_capture(cudaStream_t stream, Begin&& begin);
  template <typename End>
  cudaError_t end_capture(cudaStream_t stream, End&& end);

  const RealRuntime& runtime() const { return rt_; }

  // ControlTarget (shim_control.cpp): the control pipe's commands.
  int pid() const override;
  std::string process_name() const override;
  std::vector<DeviceReport> devices() override;
  RouteCounts routes() override;
  bool trim(int device, const SizeSpec& keep, std::vector<TrimReport>* out,
            std::string* error) override;
  bool set_option(std::string_view name, std::string_view value, std::string* error,
                  std::string* note) override;
  std::optional<std::string> get_option(std::string_view name) override;
  void reset_peaks() override;
  bool snapshot(Snapshot* out, std::string* error) override;  // observe.cpp

 private:
  Shim(const RealRuntime& rt, const Options& options);
  static Shim* init(const RealRuntime& rt);
  static void on_fork_child();
  static void on_exit();

  // The device's pool, built on first use (null if it cannot be).
  DevicePool* pool(int device) {
    if (DevicePool* p = existing_pool(device)) [[likely]]
      return p;
    return create_pool(device);
  }
  DevicePool* existing_pool(int device) const {
    if (device < 0 || device >= kMaxDevices) return nullptr;
    return pools_[device].load(std::memory_order_acquire);
  }
  DevicePool* create_pool(int device);
  Policy policy_for(std::uint64_t device_total) const;
  void capture_ended(cudaStream_t stream);
  void start_control();  // the control pipe, when CUDAPOOL_CONTROL is on (shim_control.cpp)
  // Allocation stacks, timeline, exit report (observe.cpp).
  void start_observability();
  void finish_observability();  // at exit
  void record_stack(void* ptr, std::size_t size);
  void forget_stack(void* ptr);

  const RealRuntime& rt_;
  Options options_;
  CudaBackend backend_;
  CurrentDevice current_device_{rt_};
  SyncGate gate_;
  Releaser releaser_;
  std::unique_ptr<Frameworks> frameworks_;  // PyTorch's and CuPy's caches, or null (no Python)
  std::unique_ptr<PoolObserver> observer_;
  std::mutex pools_mutex_;  // serialises pool creation
  std::atomic<DevicePool*> pools_[kMaxDevices] = {};
  std::atomic<int> pool_slots_{0};                 // 1 + highest device with a pool
  std::uint64_t device_totals_[kMaxDevices] = {};  // per pool, to resolve percentages on `set`
  mutable std::mutex options_mutex_;               // options_ may change through `set`
  PipeServer* control_ = nullptr;                  // the control pipe, or null
  // CUDAPOOL_BACKTRACE: stacks are recorded for blocks of at least this size (kNoBacktrace: off;
  // set once at start, so the allocation path tests one plain member).
  static constexpr std::uint64_t kNoBacktrace = UINT64_MAX;
  std::uint64_t backtrace_min_ = kNoBacktrace;
  struct Observability;
  Observability* observe_ = nullptr;  // stacks and timeline, or null
  std::mutex capture_mutex_;
  std::vector<cudaStream_t> capturing_;  // streams this process is capturing on
};

template <typename Begin>
cudaError_t Shim::begin_capture(cudaStream_t stream, Begin&& begin) {
  gate_.begin_capture();  // waits for a fence or release in progress
  cudaError_t err = begin();
  if (err != cudaSuccess) {
    gate_.end_capture();
    return err;
  }
  std::lock_guard lock(capture_mutex_);
  capturing_.push_back(stream);
  return err;
}

template <typename End>
cudaError_t Shim::end_capture(cudaStream_t stream, End&& end) {
  cudaError_t err = end();
  capture_ended(stream);
  return err;
}

}  // namespace cudapool
