// The exported cu* entry points (docs/driver-api.md): the driver's allocation calls, served from
// the same per-device pools as cudaMalloc, with the driver's answers. A call the pool does not
// serve (another context than the device's primary one, no pool, a foreign pointer) goes to the
// real driver as is. Nothing may escape as an exception (DESIGN §4.1).
#include <cuda.h>

#include <atomic>

#include "control/log.h"
#include "shim/driver_runtime.h"
#include "shim/shim.h"

#define CUDAPOOL_EXPORT extern "C" __attribute__((visibility("default")))

namespace cudapool {

std::atomic<std::uint64_t> g_driver_calls{0};  // driver_runtime.h

namespace {

// The Shim for a driver call: the one the runtime's calls use, built on the shared runtime when
// one is loaded, else on the driver alone. Null: pass through.
Shim* driver_shim() {
  const RealRuntime* rt = real_runtime();
  if (rt == nullptr || rt->passthrough_only) rt = driver_runtime();
  if (rt == nullptr) return nullptr;
  Shim::note_called();
  return Shim::get(*rt);
}

// The driver's answer before the pool is asked: not initialised, no current context; else
// CUDA_SUCCESS with `device` the current context's if it is that device's primary context
// (-1: another context, which the pool does not serve).
CUresult enter(const DriverApi& drv, int* device) {
  CUcontext ctx = nullptr;
  if (CUresult r = drv.cuCtxGetCurrent(&ctx); r != CUDA_SUCCESS) return r;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (!current_is_primary(drv, device)) *device = -1;
  return CUDA_SUCCESS;
}

template <typename Pooled, typename Native>
CUresult guarded(Pooled&& pooled, Native&& native) {
  try {
    return pooled();
  } catch (...) {
    log_error_ratelimited("exception", "internal error; the call goes to the CUDA driver");
  }
  return native();
}

}  // namespace
}  // namespace cudapool

using cudapool::DriverApi;
using cudapool::Shim;

CUDAPOOL_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuMemAlloc_v2 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuMemAlloc_v2(dptr, bytesize); };
  return cudapool::guarded(
      [&] {
        int device = -1;
        if (CUresult r = cudapool::enter(*drv, &device); r != CUDA_SUCCESS) return r;
        if (dptr == nullptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
        Shim* shim = device >= 0 ? cudapool::driver_shim() : nullptr;
        if (shim == nullptr) return native();
        void* p = nullptr;
        cudaError_t result;
        if (!shim->pool_malloc(&p, bytesize, &result)) return native();
        cudapool::g_driver_calls.fetch_add(1, std::memory_order_relaxed);
        if (result == cudaSuccess) *dptr = reinterpret_cast<CUdeviceptr>(p);
        return cudapool::to_cu(result);
      },
      native);
}

CUDAPOOL_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuMemFree_v2 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuMemFree_v2(dptr); };
  return cudapool::guarded(
      [&] {
        int device = -1;
        if (CUresult r = cudapool::enter(*drv, &device); r != CUDA_SUCCESS) return r;
        Shim* shim = cudapool::driver_shim();
        cudaError_t result;
        if (shim == nullptr || !shim->pool_free(reinterpret_cast<void*>(dptr), &result))
          return native();
        cudapool::g_driver_calls.fetch_add(1, std::memory_order_relaxed);
        return cudapool::to_cu(result);
      },
      native);
}

CUDAPOOL_EXPORT CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuMemGetInfo_v2 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuMemGetInfo_v2(free, total); };
  return cudapool::guarded(
      [&] {
        int device = -1;
        if (CUresult r = cudapool::enter(*drv, &device); r != CUDA_SUCCESS) return r;
        Shim* shim = device >= 0 ? cudapool::driver_shim() : nullptr;
        if (shim == nullptr) return native();
        return cudapool::to_cu(shim->mem_get_info(free, total));
      },
      native);
}

CUDAPOOL_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize,
                                                 CUdeviceptr dptr) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuMemGetAddressRange_v2 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuMemGetAddressRange_v2(pbase, psize, dptr); };
  return cudapool::guarded(
      [&] {
        int device = -1;
        if (CUresult r = cudapool::enter(*drv, &device); r != CUDA_SUCCESS) return r;
        Shim* shim = cudapool::driver_shim();
        void* base = nullptr;
        size_t size = 0;
        cudaError_t result;
        if (shim == nullptr ||
            !shim->block_range(reinterpret_cast<void*>(dptr), &base, &size, &result))
          return native();
        if (result != cudaSuccess) return cudapool::to_cu(result);
        if (pbase != nullptr) *pbase = reinterpret_cast<CUdeviceptr>(base);
        if (psize != nullptr) *psize = size;
        return CUDA_SUCCESS;
      },
      native);
}

CUDAPOOL_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle* handle, CUdeviceptr dptr) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuIpcGetMemHandle == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuIpcGetMemHandle(handle, dptr); };
  return cudapool::guarded(
      [&] {
        Shim* shim = cudapool::driver_shim();
        if (shim == nullptr) return native();
        // The cudaIpcGetMemHandle rule: only a block that is a whole segment has a handle.
        return cudapool::to_cu(shim->ipc_get_mem_handle(
            reinterpret_cast<cudaIpcMemHandle_t*>(handle), reinterpret_cast<void*>(dptr)));
      },
      native);
}

CUDAPOOL_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuDevicePrimaryCtxReset_v2 == nullptr)
    return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuDevicePrimaryCtxReset_v2(dev); };
  return cudapool::guarded(
      [&] {
        // The reset frees the context's memory: the device's pool forgets its segments first.
        if (Shim* shim = cudapool::driver_shim())
          shim->drop_device(cudapool::driver_ordinal(*drv, dev));
        return native();
      },
      native);
}

CUDAPOOL_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  const DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->cuCtxDestroy_v2 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  auto native = [&] { return drv->cuCtxDestroy_v2(ctx); };
  return cudapool::guarded(
      [&] {
        int device = -1;
        CUcontext current = nullptr;
        // A primary context destroyed while current: as a reset of its device.
        if (drv->cuCtxGetCurrent(&current) == CUDA_SUCCESS && current == ctx &&
            cudapool::current_is_primary(*drv, &device)) {
          if (Shim* shim = cudapool::driver_shim()) shim->drop_device(device);
        }
        return native();
      },
      native);
}
