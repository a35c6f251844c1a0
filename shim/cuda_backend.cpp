#include "shim/cuda_backend.h"

namespace cudapool {

namespace {

thread_local unsigned t_failures __attribute__((tls_model("initial-exec"))) = 0;

// Makes `device` current for the scope and restores the caller's device after it (DESIGN §4.10).
class DeviceScope {
 public:
  DeviceScope(const RealRuntime& rt, int device) : rt_(rt) {
    if (rt_.cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    ok_ = previous_ == device || rt_.cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceScope() {
    int now = -1;
    if (previous_ >= 0 && rt_.cudaGetDevice(&now) == cudaSuccess && now != previous_)
      rt_.cudaSetDevice(previous_);
  }
  bool ok() const { return ok_; }

 private:
  const RealRuntime& rt_;
  int previous_ = -1;
  bool ok_ = false;
};

Status checked(cudaError_t err) {
  Status st = to_status(err);
  if (st != Status::kOk) ++t_failures;
  return st;
}

}  // namespace

Status to_status(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return Status::kOk;
    case cudaErrorMemoryAllocation:
      return Status::kOutOfMemory;
    case cudaErrorCudartUnloading:
      return Status::kUnloading;
    default:
      return Status::kError;
  }
}

unsigned CudaBackend::thread_failures() { return t_failures; }

Status CudaBackend::allocate(int device, std::size_t size, void** ptr) {
  DeviceScope scope(rt_, device);
  if (!scope.ok()) return checked(cudaErrorInvalidDevice);
  return checked(rt_.cudaMalloc(ptr, size));
}

Status CudaBackend::release(int device, void* ptr) {
  DeviceScope scope(rt_, device);
  return checked(rt_.cudaFree(ptr));
}

Status CudaBackend::synchronize(int device) {
  DeviceScope scope(rt_, device);
  if (!scope.ok()) return checked(cudaErrorInvalidDevice);
  return checked(rt_.cudaDeviceSynchronize());
}

Status CudaBackend::device_memory(int device, std::uint64_t* free, std::uint64_t* total) {
  DeviceScope scope(rt_, device);
  if (!scope.ok()) return checked(cudaErrorInvalidDevice);
  size_t f = 0, t = 0;
  Status st = checked(rt_.cudaMemGetInfo(&f, &t));
  *free = f;
  *total = t;
  return st;
}

}  // namespace cudapool
