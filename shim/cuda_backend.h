// The pool's Backend on the real CUDA runtime: segments through the runtime (cudaMalloc,
// cudaFree), pages through the driver's virtual memory management (driver_api.h), where the
// device supports it.
#pragma once

#include <atomic>
#include <cstdint>

#include "allocator/backend.h"
#include "shim/driver_api.h"
#include "shim/real_runtime.h"

namespace cudapool {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const RealRuntime& rt) : rt_(rt) {}

  Status allocate(int device, std::size_t size, void** ptr) override;
  Status release(int device, void* ptr) override;
  Status synchronize(int device) override;
  Status device_memory(int device, std::uint64_t* free, std::uint64_t* total) override;

  // Pages. page_size() binds the driver (the runtime has started by the time a pool is built)
  // and answers 0 where the driver or the device has no virtual memory management.
  std::size_t page_size(int device) override;
  Status reserve(int device, std::size_t size, std::uintptr_t* base) override;
  Status unreserve(int device, std::uintptr_t base, std::size_t size) override;
  Status create_page(int device, PageHandle* handle) override;
  Status release_page(int device, PageHandle handle) override;
  Status map(int device, std::uintptr_t addr, PageHandle handle) override;
  Status set_access(int device, std::uintptr_t addr, std::size_t size) override;
  Status unmap(int device, std::uintptr_t addr) override;

  // cudaDeviceEnablePeerAccess does not cover mapped memory: set_access grants `peer` access to
  // `device`'s pages from now on (grant) or revokes it at the next set_access (revoke).
  void grant_peer(int device, int peer);
  void revoke_peer(int device, int peer);
  // The revocations have been applied by set_access over every mapped run.
  void revocations_applied(int device);

  // Driver failures seen by this thread; the shim compares before and after an allocation to
  // know whether it must clear the runtime's last error after recovering.
  static unsigned thread_failures();

 private:
  static constexpr int kMaxDevices = 64;

  const RealRuntime& rt_;
  std::atomic<const DriverApi*> driver_{nullptr};  // set by page_size() when pages can be used
  std::atomic<std::size_t> page_size_[kMaxDevices] = {};
  std::atomic<std::uint64_t> peers_[kMaxDevices] = {};    // bit p: peer p may use the pages
  std::atomic<std::uint64_t> revoked_[kMaxDevices] = {};  // bit p: to be set to no access
};

Status to_status(cudaError_t err);

}  // namespace cudapool
