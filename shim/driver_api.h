// The CUDA driver functions the shim calls itself: found at run time in the libcuda.so.1 that the
// runtime loaded (never linked, DESIGN §4.3). A member is null when the driver lacks it.
#pragma once

#include <cuda.h>

namespace cudapool {

struct DriverApi {
  CUresult (*cuCtxGetDevice)(CUdevice*) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
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
};

// The driver's functions once the runtime has loaded it (RTLD_NOLOAD: only the driver the
// runtime itself loaded); null before. Thread-safe; the result never changes once non-null.
const DriverApi* bind_driver_api();

}  // namespace cudapool
