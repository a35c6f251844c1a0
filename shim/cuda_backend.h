// The pool's Backend on the real CUDA runtime.
#pragma once

#include "allocator/backend.h"
#include "shim/real_runtime.h"

namespace cudapool {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const RealRuntime& rt) : rt_(rt) {}

  Status allocate(int device, std::size_t size, void** ptr) override;
  Status release(int device, void* ptr) override;
  Status synchronize(int device) override;
  Status device_memory(int device, std::uint64_t* free, std::uint64_t* total) override;

  // Driver failures seen by this thread; the shim compares before and after an allocation to
  // know whether it must clear the runtime's last error after recovering.
  static unsigned thread_failures();

 private:
  const RealRuntime& rt_;
};

Status to_status(cudaError_t err);

}  // namespace cudapool
