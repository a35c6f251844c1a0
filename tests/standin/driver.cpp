// The stand-in's libcuda.so.1: the driver entry points cudapool uses - the current context's
// device (its hot path), device queries, and virtual memory management (cuMemCreate, cuMemMap,
// ...). The runtime loads this library at its start (as NVIDIA's runtime loads the driver), from
// its own folder, and hands it a table of runtime functions (driver_table.h) that own the state
// (the VMM registry lives in the runtime's vmm.cpp, beside capacity and the stream engine);
// without that hand-over every call fails as an uninitialised driver does. CUdevice handles are
// opaque in the driver API: here they are the ordinal plus kDeviceHandleBase, so that a caller
// mistaking a handle for a runtime ordinal fails its tests (CUmemLocation::id, on the other hand,
// is the device ordinal, as in NVIDIA's driver).
//
// Exports: cu* with NVIDIA's signatures and plain (unversioned) names, and standinDriverAttach.
#include <atomic>
#include <cstddef>

#include "driver_table.h"

#define STANDIN_DRIVER_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kDeviceHandleBase = 1000;
constexpr int kDriverVersion = 13000;

std::atomic<const StandinDriverTable*> g_attached{nullptr};

// The runtime's table, or null before the runtime attached.
const StandinDriverTable* table() {
  return g_attached.load(std::memory_order_acquire);
}

// The checks every call but cuDriverGetVersion starts with.
CUresult entered() {
  const StandinDriverTable* t = table();
  return t == nullptr ? CUDA_ERROR_NOT_INITIALIZED : t->state();
}

// A CUdevice handle's ordinal, or -1.
int ordinal_of(CUdevice dev) {
  if (dev < kDeviceHandleBase) return -1;
  const int ordinal = dev - kDeviceHandleBase;
  return ordinal < table()->device_count() ? ordinal : -1;
}

}  // namespace

STANDIN_DRIVER_EXPORT void standinDriverAttach(const StandinDriverTable* t) {
  if (t != nullptr && t->size >= sizeof(StandinDriverTable))
    g_attached.store(t, std::memory_order_release);
}

STANDIN_DRIVER_EXPORT CUresult cuInit(unsigned int flags) {
  if (table() == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult e = table()->state())
    return e == CUDA_ERROR_NOT_INITIALIZED ? CUDA_ERROR_NO_DEVICE : e;
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuDriverGetVersion(int* version) {
  if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *version = kDriverVersion;
  return CUDA_SUCCESS;
}

namespace {

// Names and strings of the codes the stand-in driver returns; others: CUDA_ERROR_INVALID_VALUE
// with a null string, as NVIDIA's driver answers an unknown code.
struct ErrorText {
  CUresult code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const ErrorText* error_text(CUresult code) {
  for (const ErrorText& e : kErrors)
    if (e.code == code) return &e;
  return nullptr;
}

}  // namespace

STANDIN_DRIVER_EXPORT CUresult cuGetErrorName(CUresult error, const char** str) {
  if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const ErrorText* e = error_text(error);
  *str = e ? e->name : nullptr;
  return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

STANDIN_DRIVER_EXPORT CUresult cuGetErrorString(CUresult error, const char** str) {
  if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const ErrorText* e = error_text(error);
  *str = e ? e->text : nullptr;
  return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

STANDIN_DRIVER_EXPORT CUresult cuDeviceGetCount(int* count) {
  if (CUresult e = entered()) return e;
  if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *count = table()->device_count();
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  if (CUresult e = entered()) return e;
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (ordinal < 0 || ordinal >= table()->device_count()) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal + kDeviceHandleBase;
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attrib,
                                                    CUdevice dev) {
  if (CUresult e = entered()) return e;
  if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(dev);
  if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
  return table()->device_attribute(value, attrib, ordinal);
}

// cuda.h maps cuDeviceGetUuid to cuDeviceGetUuid_v2; both names are exported, as by NVIDIA's
// driver (the _v2 one gives a MIG instance its own UUID; the stand-in has no MIG).
#undef cuDeviceGetUuid
STANDIN_DRIVER_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) {
  if (CUresult e = entered()) return e;
  if (uuid == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(dev);
  if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
  standin_device_uuid(ordinal, uuid->bytes);
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
  return cuDeviceGetUuid_v2(uuid, dev);
}

STANDIN_DRIVER_EXPORT CUresult cuCtxGetDevice(CUdevice* device) {
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (table() == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  int ordinal = 0;
  if (int err = table()->current_device(&ordinal)) return static_cast<CUresult>(err);
  *device = ordinal + kDeviceHandleBase;
  return CUDA_SUCCESS;
}

// A context per device: its handle is a distinct non-null address.
STANDIN_DRIVER_EXPORT CUresult cuCtxGetCurrent(CUcontext* context) {
  static char contexts[64];
  if (context == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (table() == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  int ordinal = 0;
  if (int err = table()->current_device(&ordinal)) return static_cast<CUresult>(err);
  *context =
      ordinal >= 0 && ordinal < 64 ? reinterpret_cast<CUcontext>(&contexts[ordinal]) : nullptr;
  return CUDA_SUCCESS;
}

// ---- virtual memory management: forwarded to the runtime (vmm.cpp) --------------------------

STANDIN_DRIVER_EXPORT CUresult cuMemGetAllocationGranularity(
    size_t* granularity, const CUmemAllocationProp* prop, CUmemAllocationGranularity_flags option) {
  if (CUresult e = entered()) return e;
  return table()->mem_get_allocation_granularity(granularity, prop, option);
}

STANDIN_DRIVER_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                                           const CUmemAllocationProp* prop,
                                           unsigned long long flags) {
  if (CUresult e = entered()) return e;
  return table()->mem_create(handle, size, prop, flags);
}

STANDIN_DRIVER_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  if (CUresult e = entered()) return e;
  return table()->mem_release(handle);
}

STANDIN_DRIVER_EXPORT CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment,
                                                   CUdeviceptr addr, unsigned long long flags) {
  if (CUresult e = entered()) return e;
  return table()->mem_address_reserve(ptr, size, alignment, addr, flags);
}

STANDIN_DRIVER_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  if (CUresult e = entered()) return e;
  return table()->mem_address_free(ptr, size);
}

STANDIN_DRIVER_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                                        CUmemGenericAllocationHandle handle,
                                        unsigned long long flags) {
  if (CUresult e = entered()) return e;
  return table()->mem_map(ptr, size, offset, handle, flags);
}

STANDIN_DRIVER_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  if (CUresult e = entered()) return e;
  return table()->mem_unmap(ptr, size);
}

STANDIN_DRIVER_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size,
                                              const CUmemAccessDesc* desc, size_t count) {
  if (CUresult e = entered()) return e;
  return table()->mem_set_access(ptr, size, desc, count);
}

STANDIN_DRIVER_EXPORT CUresult cuMemGetAccess(unsigned long long* flags,
                                              const CUmemLocation* location, CUdeviceptr ptr) {
  if (CUresult e = entered()) return e;
  return table()->mem_get_access(flags, location, ptr);
}
