// The hand-over between the stand-in runtime (libcudart.so.13) and the stand-in driver
// (libcuda.so.1, driver.cpp). The runtime owns all state (devices, capacity, allocations, the
// per-thread context stacks, the VMM registry in vmm.cpp); at its start it loads the driver and
// passes it this table through standinDriverAttach (or the driver, at a cuInit before that, loads
// the runtime and asks for it: standinDriverStart). The driver's cu* entry points check that the
// table is there (else CUDA_ERROR_NOT_INITIALIZED), translate CUdevice handles (ordinal + 1000)
// and CUcontext handles (one primary context per device) to ordinals, and forward.
// Device arguments are valid ordinals; the driver has checked them.
// Internal to the two libraries: not installed, not part of cuda_standin.h.
#pragma once

#include <cuda.h>

#include <cstddef>

#include "cuda_standin.h"

extern "C" {

struct StandinDriverTable {
  size_t size;  // sizeof(StandinDriverTable) as the runtime was built
  // The device of the calling thread's current context; 0, or CUDA_ERROR_INVALID_CONTEXT without
  // one (or another CUresult).
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

  // Contexts (contexts.cpp): the calling thread's stack of primary contexts, by device ordinal.
  // The runtime's current device follows the top of the stack.
  void (*ctx_get_current)(int* ordinal);     // -1: no current context
  CUresult (*ctx_set_current)(int ordinal);  // -1: unbind (pops the top, if any)
  CUresult (*ctx_push)(int ordinal);
  CUresult (*ctx_pop)(int* ordinal);  // CUDA_ERROR_INVALID_CONTEXT when the stack is empty
  CUresult (*primary_retain)(int ordinal);
  CUresult (*primary_release)(int ordinal);  // the last release resets, unless the runtime uses it
  CUresult (*primary_reset)(int ordinal);    // as cudaDeviceReset
  CUresult (*primary_state)(int ordinal, unsigned* flags, int* active);
  CUresult (*ctx_destroy)(int ordinal);  // of a primary context: a reset, popped if current
  CUresult (*ctx_synchronize)(int ordinal);

  // Device memory (memory.cpp), with the driver API's arguments and errors. `ordinal`: the
  // current context's device. Counted as driver_mallocs/driver_frees unless the stand-in runtime
  // made the call (its cudaMalloc and cudaFree call cuMemAlloc_v2/cuMemFree_v2).
  CUresult (*mem_alloc)(CUdeviceptr* dptr, size_t bytesize, int ordinal);
  CUresult (*mem_alloc_pitch)(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height,
                              unsigned element_size, int ordinal);
  CUresult (*mem_alloc_managed)(CUdeviceptr* dptr, size_t bytesize, unsigned flags, int ordinal);
  CUresult (*mem_alloc_async)(CUdeviceptr* dptr, size_t bytesize, CUstream stream, bool per_thread);
  CUresult (*mem_free)(CUdeviceptr dptr);
  CUresult (*mem_free_async)(CUdeviceptr dptr, CUstream stream, bool per_thread);
  CUresult (*mem_get_info)(size_t* free, size_t* total, int ordinal);
  CUresult (*mem_get_address_range)(CUdeviceptr* base, size_t* size, CUdeviceptr dptr);
  CUresult (*ipc_get_mem_handle)(CUipcMemHandle* handle, CUdeviceptr dptr);

  // The extension API (cuda_standin.h), for the driver's forwarding exports.
  int (*get_counters)(int device, StandinCounters* out);
  void (*reset_counters)();
  int (*get_allocation_info)(const void* ptr, StandinAllocationInfo* out);
};

// Exported by the runtime (libcudart.so.13): starts it and hands `attach` the table. The driver's
// cuInit calls it after loading the runtime itself (a program that loaded only the driver).
// 0, or CUDA_ERROR_NOT_INITIALIZED (STANDIN_NO_DRIVER).
__attribute__((visibility("default"))) int standinDriverStart(
    void (*attach)(const StandinDriverTable*));

}  // extern "C"

// The UUID of device `ordinal`, the same for cudaGetDeviceProperties (runtime) and cuDeviceGetUuid
// (driver): distinct per device, stable across runs.
inline void standin_device_uuid(int ordinal, char (&bytes)[16]) {
  for (int i = 0; i < 16; ++i)
    bytes[i] = static_cast<char>(0x50 + i + 16 * ordinal);
}
