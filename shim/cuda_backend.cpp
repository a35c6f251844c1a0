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

Status from_driver(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS:
      return Status::kOk;
    case CUDA_ERROR_OUT_OF_MEMORY:
      return Status::kOutOfMemory;
    case CUDA_ERROR_DEINITIALIZED:
      return Status::kUnloading;
    default:
      return Status::kError;
  }
}

CUmemAllocationProp page_properties(int device) {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;  // the device's ordinal, as the driver numbers visible devices too
  return prop;
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

unsigned CudaBackend::thread_failures() {
  return t_failures;
}

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

namespace cudapool {

// ---- pages ------------------------------------------------------------------------------------

std::size_t CudaBackend::page_size(int device) {
  if (device < 0 || device >= kMaxDevices) return 0;
  if (std::size_t known = page_size_[device].load(std::memory_order_acquire)) return known;
  const DriverApi* api = bind_driver_api();
  if (api == nullptr || !api->has_vmm()) return 0;
  DeviceScope scope(rt_, device);
  if (!scope.ok()) return 0;
  CUdevice dev = 0;
  int supported = 0;
  if (api->cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      api->cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                dev) != CUDA_SUCCESS ||
      supported == 0)
    return 0;
  CUmemAllocationProp prop = page_properties(device);
  size_t granularity = 0;
  if (api->cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) !=
      CUDA_SUCCESS)
    return 0;
  driver_.store(api, std::memory_order_release);
  page_size_[device].store(granularity, std::memory_order_release);
  return granularity;
}

Status CudaBackend::reserve(int device, std::size_t size, std::uintptr_t* base) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr) return Status::kError;
  DeviceScope scope(rt_, device);
  CUdeviceptr ptr = 0;
  Status st = from_driver(api->cuMemAddressReserve(&ptr, size, page_size_[device], 0, 0));
  *base = static_cast<std::uintptr_t>(ptr);
  return st;
}

Status CudaBackend::unreserve(int device, std::uintptr_t base, std::size_t size) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr) return Status::kError;
  DeviceScope scope(rt_, device);
  return from_driver(api->cuMemAddressFree(static_cast<CUdeviceptr>(base), size));
}

Status CudaBackend::create_page(int device, PageHandle* handle) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr) return Status::kError;
  DeviceScope scope(rt_, device);
  CUmemAllocationProp prop = page_properties(device);
  CUmemGenericAllocationHandle h = 0;
  Status st = from_driver(api->cuMemCreate(&h, page_size_[device], &prop, 0));
  *handle = h;
  return st;
}

Status CudaBackend::release_page(int device, PageHandle handle) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr) return Status::kError;
  DeviceScope scope(rt_, device);
  return from_driver(api->cuMemRelease(handle));
}

Status CudaBackend::map(int device, std::uintptr_t addr, PageHandle handle) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr) return Status::kError;
  DeviceScope scope(rt_, device);
  return from_driver(
      api->cuMemMap(static_cast<CUdeviceptr>(addr), page_size_[device], 0, handle, 0));
}

Status CudaBackend::set_access(int device, std::uintptr_t addr, std::size_t size) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr || device < 0 || device >= kMaxDevices) return Status::kError;
  CUmemAccessDesc desc[kMaxDevices + 1];
  std::size_t count = 0;
  auto add = [&](int location, CUmemAccess_flags flags) {
    desc[count].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc[count].location.id = location;
    desc[count].flags = flags;
    ++count;
  };
  add(device, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  std::uint64_t peers = peers_[device].load(std::memory_order_acquire);
  std::uint64_t revoked = revoked_[device].load(std::memory_order_acquire);
  for (int p = 0; p < kMaxDevices; ++p) {
    if (p == device) continue;
    if (peers >> p & 1)
      add(p, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    else if (revoked >> p & 1)
      add(p, CU_MEM_ACCESS_FLAGS_PROT_NONE);
  }
  DeviceScope scope(rt_, device);
  return from_driver(api->cuMemSetAccess(static_cast<CUdeviceptr>(addr), size, desc, count));
}

Status CudaBackend::unmap(int device, std::uintptr_t addr) {
  const DriverApi* api = driver_.load(std::memory_order_acquire);
  if (api == nullptr) return Status::kError;
  DeviceScope scope(rt_, device);
  return from_driver(api->cuMemUnmap(static_cast<CUdeviceptr>(addr), page_size_[device]));
}

void CudaBackend::grant_peer(int device, int peer) {
  if (device < 0 || device >= kMaxDevices || peer < 0 || peer >= kMaxDevices) return;
  revoked_[device].fetch_and(~(std::uint64_t{1} << peer), std::memory_order_acq_rel);
  peers_[device].fetch_or(std::uint64_t{1} << peer, std::memory_order_acq_rel);
}

void CudaBackend::revoke_peer(int device, int peer) {
  if (device < 0 || device >= kMaxDevices || peer < 0 || peer >= kMaxDevices) return;
  peers_[device].fetch_and(~(std::uint64_t{1} << peer), std::memory_order_acq_rel);
  revoked_[device].fetch_or(std::uint64_t{1} << peer, std::memory_order_acq_rel);
}

void CudaBackend::revocations_applied(int device) {
  if (device >= 0 && device < kMaxDevices) revoked_[device].store(0, std::memory_order_release);
}

}  // namespace cudapool
