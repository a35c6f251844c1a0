// The pool's only way to reach device memory. The shim implements it with the CUDA runtime
// (shim/cuda_backend.cpp); tests and benchmarks use SimulatedBackend.
//
// Every call may block (a driver call); the pool never holds its lock across one. Calls must
// leave the calling thread's current device as it was.
#pragma once

#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace cudapool {

class Backend {
 public:
  virtual ~Backend() = default;

  // Obtains `size` bytes of device memory on `device`.
  virtual Status allocate(int device, std::size_t size, void** ptr) = 0;
  // Returns a pointer obtained from allocate. kUnloading counts as success for the pool.
  virtual Status release(int device, void* ptr) = 0;
  // Waits until all work issued to `device` before the call has finished.
  virtual Status synchronize(int device) = 0;
  // Free and total bytes of the device, all processes included.
  virtual Status device_memory(int device, std::uint64_t* free, std::uint64_t* total) = 0;
};

}  // namespace cudapool
