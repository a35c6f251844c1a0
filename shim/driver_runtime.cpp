#include "shim/driver_runtime.h"

#include <atomic>
#include <mutex>

namespace cudapool {

namespace {

std::mutex g_mutex;

// Primary contexts retained once per device (kept for the process: the pool's segments live in
// them), for the runtime-like "set device".
constexpr int kMaxDevices = 64;
std::atomic<CUcontext> g_primary[kMaxDevices] = {};

CUcontext primary(const DriverApi& drv, int ordinal) {
  if (ordinal < 0 || ordinal >= kMaxDevices) return nullptr;
  if (CUcontext c = g_primary[ordinal].load(std::memory_order_acquire)) return c;
  std::lock_guard lock(g_mutex);
  if (CUcontext c = g_primary[ordinal].load(std::memory_order_relaxed)) return c;
  CUdevice dev = 0;
  CUcontext ctx = nullptr;
  if (drv.cuDeviceGet(&dev, ordinal) != CUDA_SUCCESS ||
      drv.cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS)
    return nullptr;
  g_primary[ordinal].store(ctx, std::memory_order_release);
  return ctx;
}

// ---- the RealRuntime functions, on the driver --------------------------------------------------

const DriverApi& drv() {
  return *bind_driver_api();
}  // set before any of these runs

cudaError_t d_malloc(void** ptr, size_t size) {
  CUdeviceptr p = 0;
  const CUresult r = drv().cuMemAlloc_v2(&p, size);
  if (r == CUDA_SUCCESS) *ptr = reinterpret_cast<void*>(p);
  return from_cu(r);
}
cudaError_t d_free(void* ptr) {
  return from_cu(drv().cuMemFree_v2(reinterpret_cast<CUdeviceptr>(ptr)));
}
cudaError_t d_mem_get_info(size_t* free, size_t* total) {
  return from_cu(drv().cuMemGetInfo_v2(free, total));
}
cudaError_t d_get_device(int* device) {
  CUdevice dev = 0;
  if (CUresult r = drv().cuCtxGetDevice(&dev); r != CUDA_SUCCESS) return from_cu(r);
  *device = driver_ordinal(drv(), dev);
  return *device >= 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t d_set_device(int device) {
  CUcontext ctx = primary(drv(), device);
  if (ctx == nullptr) return cudaErrorInvalidDevice;
  return from_cu(drv().cuCtxSetCurrent(ctx));
}
cudaError_t d_get_device_count(int* count) {
  return from_cu(drv().cuDeviceGetCount(count));
}
cudaError_t d_synchronize() {
  return from_cu(drv().cuCtxSynchronize());
}
cudaError_t d_get_last_error() {
  return cudaSuccess;
}  // the driver keeps no sticky error
cudaError_t d_device_reset() {
  CUdevice dev = 0;
  if (CUresult r = drv().cuCtxGetDevice(&dev); r != CUDA_SUCCESS) return from_cu(r);
  return from_cu(drv().cuDevicePrimaryCtxReset_v2(dev));
}
cudaError_t d_ipc_get_mem_handle(cudaIpcMemHandle_t* handle, void* ptr) {
  static_assert(sizeof(cudaIpcMemHandle_t) == sizeof(CUipcMemHandle));
  return from_cu(drv().cuIpcGetMemHandle(reinterpret_cast<CUipcMemHandle*>(handle),
                                         reinterpret_cast<CUdeviceptr>(ptr)));
}
cudaError_t d_stream_is_capturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  // Driver-API captures (cuStreamBeginCapture) are not seen: docs/driver-api.md.
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t d_stream_end_capture(cudaStream_t, cudaGraph_t*) {
  return cudaErrorNotSupported;
}

}  // namespace

const RealRuntime* driver_runtime() {
  static std::atomic<const RealRuntime*> built{nullptr};
  if (const RealRuntime* rt = built.load(std::memory_order_acquire)) return rt;
  const DriverApi* d = bind_driver_api();
  if (d == nullptr || !d->has_allocation()) return nullptr;  // asked again at the next call
  std::lock_guard lock(g_mutex);
  if (const RealRuntime* rt = built.load(std::memory_order_relaxed)) return rt;
  {
    auto* r = new RealRuntime();  // never freed: the Shim keeps a reference
    r->origin = "the CUDA driver (no shared runtime is loaded)";
    r->cudaMalloc = &d_malloc;
    r->cudaFree = &d_free;
    r->cudaMemGetInfo = &d_mem_get_info;
    r->cudaDeviceReset = &d_device_reset;
    r->cudaIpcGetMemHandle = &d_ipc_get_mem_handle;
    r->cudaStreamEndCapture = &d_stream_end_capture;
    r->cudaStreamIsCapturing = &d_stream_is_capturing;
    r->cudaGetDevice = &d_get_device;
    r->cudaSetDevice = &d_set_device;
    r->cudaGetDeviceCount = &d_get_device_count;
    r->cudaDeviceSynchronize = &d_synchronize;
    r->cudaGetLastError = &d_get_last_error;
    built.store(r, std::memory_order_release);
    return r;
  }
}

int driver_ordinal(const DriverApi& d, CUdevice dev) {
  int count = 0;
  if (d.cuDeviceGetCount(&count) != CUDA_SUCCESS) return -1;
  for (int i = 0; i < count && i < kMaxDevices; ++i) {
    CUdevice h = 0;
    if (d.cuDeviceGet(&h, i) == CUDA_SUCCESS && h == dev) return i;
  }
  return -1;
}

bool current_is_primary(const DriverApi& d, int* device) {
  CUcontext ctx = nullptr;
  CUdevice dev = 0;
  if (d.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == nullptr ||
      d.cuCtxGetDevice(&dev) != CUDA_SUCCESS)
    return false;
  const int ordinal = driver_ordinal(d, dev);
  if (ordinal < 0) return false;
  unsigned flags = 0;
  int active = 0;
  if (d.cuDevicePrimaryCtxGetState == nullptr ||
      d.cuDevicePrimaryCtxGetState(dev, &flags, &active) != CUDA_SUCCESS || active == 0)
    return false;
  // The primary context's handle, without retaining it again: retained once per device.
  if (ctx != primary(d, ordinal)) return false;
  *device = ordinal;
  return true;
}

CUresult to_cu(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return CUDA_SUCCESS;
    case cudaErrorInvalidValue:
      return CUDA_ERROR_INVALID_VALUE;
    case cudaErrorMemoryAllocation:
      return CUDA_ERROR_OUT_OF_MEMORY;
    case cudaErrorInitializationError:
      return CUDA_ERROR_NOT_INITIALIZED;
    case cudaErrorCudartUnloading:
      return CUDA_ERROR_DEINITIALIZED;
    case cudaErrorInvalidDevice:
      return CUDA_ERROR_INVALID_DEVICE;
    default:
      return CUDA_ERROR_UNKNOWN;
  }
}

cudaError_t from_cu(CUresult res) {
  switch (res) {
    case CUDA_SUCCESS:
      return cudaSuccess;
    case CUDA_ERROR_INVALID_VALUE:
      return cudaErrorInvalidValue;
    case CUDA_ERROR_OUT_OF_MEMORY:
      return cudaErrorMemoryAllocation;
    case CUDA_ERROR_NOT_INITIALIZED:
      return cudaErrorInitializationError;
    case CUDA_ERROR_DEINITIALIZED:
      return cudaErrorCudartUnloading;
    case CUDA_ERROR_INVALID_DEVICE:
      return cudaErrorInvalidDevice;
    case CUDA_ERROR_INVALID_CONTEXT:
      return cudaErrorDeviceUninitialized;
    default:
      return cudaErrorUnknown;
  }
}

}  // namespace cudapool
