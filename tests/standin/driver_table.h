// The hand-over between the stand-in runtime (libcudart.so.13) and the stand-in driver
// (libcuda.so.1, driver.cpp). The runtime owns all state (devices, capacity, the VMM registry in
// vmm.cpp); at its start it loads the driver and passes it this table through
// standinDriverAttach. The driver's cu* entry points check that the table is there (else
// CUDA_ERROR_NOT_INITIALIZED), translate CUdevice handles (ordinal + 1000) and forward.
// Internal to the two libraries: not installed, not part of cuda_standin.h.
#pragma once

#include <cuda.h>

#include <cstddef>

extern "C" {

struct StandinDriverTable {
  size_t size;  // sizeof(StandinDriverTable) as the runtime was built
  // The calling thread's current device ordinal; 0 or a CUresult.
  int (*current_device)(int* ordinal);
  // 0 when driver calls may proceed, else the CUresult every call returns (fork child, exit).
  CUresult (*state)();
  int (*device_count)();
  // A device attribute of device `ordinal` (valid), by the runtime's cudaDeviceGetAttribute
  // numbering (equal to the driver's): CUDA_ERROR_INVALID_VALUE for an unknown attribute.
  CUresult (*device_attribute)(int* value, int attribute, int ordinal);
  // Virtual memory management, with the driver API's signatures and semantics (vmm.cpp).
  CUresult (*mem_get_allocation_granularity)(size_t* granularity, const CUmemAllocationProp* prop,
                                             CUmemAllocationGranularity_flags option);
  CUresult (*mem_create)(CUmemGenericAllocationHandle* handle, size_t size,
                         const CUmemAllocationProp* prop, unsigned long long flags);
  CUresult (*mem_release)(CUmemGenericAllocationHandle handle);
  CUresult (*mem_address_reserve)(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                  unsigned long long flags);
  CUresult (*mem_address_free)(CUdeviceptr ptr, size_t size);
  CUresult (*mem_map)(CUdeviceptr ptr, size_t size, size_t offset,
                      CUmemGenericAllocationHandle handle, unsigned long long flags);
  CUresult (*mem_unmap)(CUdeviceptr ptr, size_t size);
  CUresult (*mem_set_access)(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc,
                             size_t count);
  CUresult (*mem_get_access)(unsigned long long* flags, const CUmemLocation* location,
                             CUdeviceptr ptr);
};

}  // extern "C"

// The UUID of device `ordinal`, the same for cudaGetDeviceProperties (runtime) and cuDeviceGetUuid
// (driver): distinct per device, stable across runs.
inline void standin_device_uuid(int ordinal, char (&bytes)[16]) {
  for (int i = 0; i < 16; ++i)
    bytes[i] = static_cast<char>(0x50 + i + 16 * ordinal);
}
