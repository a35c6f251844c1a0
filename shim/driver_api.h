// The CUDA driver functions the shim calls itself: found at run time in the libcuda.so.1 that the
// runtime loaded (never linked, DESIGN §4.3). A member is null when the driver lacks it.
#pragma once

#include <cuda.h>

namespace cudapool {

struct DriverApi {
  CUresult (*cuCtxGetDevice)(CUdevice*) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
  // Contexts and allocations: what the exported cu* functions forward to, and what the pool runs
  // on where no shared runtime is loaded (driver_runtime.h).
  CUresult (*cuCtxGetCurrent)(CUcontext*) = nullptr;
  CUresult (*cuCtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*cuCtxSynchronize)() = nullptr;
  CUresult (*cuCtxDestroy_v2)(CUcontext) = nullptr;
  CUresult (*cuDeviceGetCount)(int*) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxReset_v2)(CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxGetState)(CUdevice, unsigned*, int*) = nullptr;
  CUresult (*cuMemAlloc_v2)(CUdeviceptr*, size_t) = nullptr;
  CUresult (*cuMemFree_v2)(CUdeviceptr) = nullptr;
  CUresult (*cuMemGetInfo_v2)(size_t*, size_t*) = nullptr;
  CUresult (*cuMemGetAddressRange_v2)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*cuIpcGetMemHandle)(CUipcMemHandle*, CUdeviceptr) = nullptr;
  // cuGetProcAddress (CUDA 11's, without a status) and cuGetProcAddress_v2: cuda.h makes the
  // first name a macro for the second, hence these names.
  CUresult (*get_proc_address_v1)(const char*, void**, int, cuuint64_t) = nullptr;
  CUresult (*get_proc_address_v2)(const char*, void**, int, cuuint64_t,
                                  CUdriverProcAddressQueryResult*) = nullptr;
  CUresult (*cuDeviceGetAttribute)(int*, CUdevice_attribute, CUdevice) = nullptr;
  // Virtual memory management (the pool's pages, docs/pages.md).
  CUresult (*cuMemGetAllocationGranularity)(size_t*, const CUmemAllocationProp*,
                                            CUmemAllocationGranularity_flags) = nullptr;
  CUresult (*cuMemCreate)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                          unsigned long long) = nullptr;
  CUresult (*cuMemRelease)(CUmemGenericAllocationHandle) = nullptr;
  CUresult (*cuMemAddressReserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr,
                                  unsigned long long) = nullptr;
  CUresult (*cuMemAddressFree)(CUdeviceptr, size_t) = nullptr;
  CUresult (*cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                       unsigned long long) = nullptr;
  CUresult (*cuMemUnmap)(CUdeviceptr, size_t) = nullptr;
  CUresult (*cuMemSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;

  // Every function the pool's pages need is there.
  bool has_vmm() const;
  // Every function the pool needs to run on the driver alone is there.
  bool has_allocation() const;
};

// The driver's own functions (never cudapool's exports) once the process has loaded it
// (RTLD_NOLOAD: only a driver the runtime or the program loaded); null before. Thread-safe; the
// result never changes once non-null.
const DriverApi* bind_driver_api();

}  // namespace cudapool
