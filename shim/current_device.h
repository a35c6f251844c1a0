// CurrentDevice: the runtime's current device, for the cudaMalloc hot path.
//
// NVIDIA's cudaGetDevice costs about 70 ns, the driver's cuCtxGetDevice about 14 (H200 host,
// `cudapool-bench hotpath`, docs/benchmarks.md). Runtime calls operate on the driver context
// current to the calling thread (CUDA runtime API, "Interactions with the CUDA Driver API"), so
// while one is current its device is the device cudaMalloc allocates on. The driver names devices
// by CUdevice handles, not by runtime ordinals: a small table learns handle -> ordinal from one
// cudaGetDevice per handle (both calls describe the context current to the same thread at that
// moment); the mapping never changes within a process.
//
// Invariants: a table entry, once published, is never changed or removed (readers need no lock;
// writers take learn_mutex_, at most once per device). Without the driver entry point, or when
// it fails (no current context, driver not initialised), get() is cudaGetDevice.
#pragma once

#include <atomic>
#include <mutex>

#include <cuda.h>

#include "shim/real_runtime.h"

namespace cudapool {

class CurrentDevice {
 public:
  explicit CurrentDevice(const RealRuntime& rt) : rt_(rt) {}

  // Finds cuCtxGetDevice in libcuda.so.1 if the runtime has loaded it (driver_api.h); a dlopen,
  // so only off the hot path (pool creation, which runs after the runtime has started).
  void bind_driver();

  bool get(int* device) {
    if (auto ctx_get_device = ctx_get_device_.load(std::memory_order_acquire)) {
      int handle = 0;
      if (ctx_get_device(&handle) == 0) {
        if (lookup(handle, device)) return true;
        return learn(handle, device);
      }
    }
    return rt_.cudaGetDevice(device) == cudaSuccess;
  }

 private:
  static constexpr unsigned kSlots = 64;  // power of two, one per device (Shim::kMaxDevices)
  struct Slot {
    std::atomic<long long> key{0};  // 0: empty, else handle - INT_MIN + 1
    std::atomic<int> ordinal{-1};
  };
  static long long key_of(int handle) { return static_cast<long long>(handle) + (1ll << 31) + 1; }

  bool lookup(int handle, int* ordinal) const {
    const long long key = key_of(handle);
    for (unsigned i = 0, at = static_cast<unsigned>(handle); i < kSlots; ++i, ++at) {
      const Slot& s = slots_[at & (kSlots - 1)];
      const long long k = s.key.load(std::memory_order_acquire);
      if (k == 0) return false;
      if (k == key) {
        *ordinal = s.ordinal.load(std::memory_order_relaxed);
        return true;
      }
    }
    return false;
  }
  bool learn(int handle, int* ordinal);

  const RealRuntime& rt_;
  std::atomic<CUresult (*)(CUdevice*)> ctx_get_device_{nullptr};
  std::mutex learn_mutex_;
  Slot slots_[kSlots];
};

}  // namespace cudapool
