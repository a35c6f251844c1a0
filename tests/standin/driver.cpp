// The stand-in's libcuda.so.1: a driver with NVIDIA's entry points for what cudapool and the
// programs it serves use - initialisation, devices, primary contexts and the per-thread context
// stack, device memory (cuMemAlloc_v2, cuMemFree_v2, ...), cuGetProcAddress with versions and
// flags, and virtual memory management (cuMemCreate, cuMemMap, ...).
//
// State. The stand-in runtime owns all of it (devices, capacity, allocations, contexts, the VMM
// registry) and hands this library a table of functions (driver_table.h): at its start it loads
// the driver (as NVIDIA's runtime loads the driver) and attaches it. A program that loads only
// the driver (-lcuda, or dlopen) gets the runtime all the same: cuInit, finding no table, loads
// libcudart.so.13 from the folder above this one (RTLD_LOCAL) and asks it for the table
// (standinDriverStart). Being attached is being initialised: before, every call but
// cuDriverGetVersion, cuGetProcAddress and the error strings returns CUDA_ERROR_NOT_INITIALIZED,
// as NVIDIA's driver does before cuInit; the runtime's own start counts as cuInit, as NVIDIA's
// runtime calls cuInit.
//
// Handles. CUdevice handles are opaque in the driver API: here they are the ordinal plus
// kDeviceHandleBase, so that a caller mistaking a handle for a runtime ordinal fails its tests
// (CUmemLocation::id, on the other hand, is the device ordinal, as in NVIDIA's driver). CUcontext
// handles: one primary context per device, the address of its slot in g_contexts.
//
// Exports: cu* with NVIDIA's signatures and names (the _v2 entry points and the older ones that
// NVIDIA's libcuda.so.1 keeps, the _ptsz variants), standinDriverAttach, and forwarders of the
// runtime's standinGetCounters, standinResetCounters and standinGetAllocationInfo for programs
// that do not load the runtime themselves.
#include <dlfcn.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>

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

namespace {

// cuInit in a process whose runtime has not attached the driver: the stand-in runtime beside this
// library's folder (driver/../libcudart.so.13), loaded privately. If the program loaded that
// runtime itself, dlopen finds it and state is shared. Once per process; the handle is kept.
void start_runtime() {
  static std::mutex mu;
  std::lock_guard lock(mu);
  static bool tried = false;
  if (tried || table() != nullptr) return;
  tried = true;
  Dl_info self{};
  if (dladdr(reinterpret_cast<void*>(&standinDriverAttach), &self) == 0 || !self.dli_fname) return;
  // No std::string: its out-of-line members would be exported from this library.
  char path[4096];
  const int n = snprintf(path, sizeof path, "%s", self.dli_fname);
  if (n <= 0 || static_cast<size_t>(n) >= sizeof path) return;
  for (int strip = 0; strip < 2; ++strip) {  // .../driver/libcuda.so.1 -> .../
    char* slash = strrchr(path, '/');
    if (slash == nullptr) return;
    *slash = '\0';
  }
  if (strlen(path) + sizeof "/libcudart.so.13" > sizeof path) return;
  strcat(path, "/libcudart.so.13");
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return;
  using Start = int (*)(void (*)(const StandinDriverTable*));
  if (auto start = reinterpret_cast<Start>(dlsym(h, "standinDriverStart")))
    start(&standinDriverAttach);
}

}  // namespace

STANDIN_DRIVER_EXPORT CUresult cuInit(unsigned int flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (table() == nullptr) start_runtime();
  if (table() == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
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
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
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

// ---- contexts: one primary context per device, a stack per thread (the runtime's contexts.cpp) --

namespace {

constexpr int kMaxDevices = 64;  // STANDIN_DEVICE_COUNT's limit
char g_contexts[kMaxDevices];

CUcontext context_of(int ordinal) {
  return reinterpret_cast<CUcontext>(&g_contexts[ordinal]);
}

// A CUcontext handle's ordinal, or -1.
int ordinal_of(CUcontext ctx) {
  const char* p = reinterpret_cast<const char*>(ctx);
  if (p < g_contexts || p >= g_contexts + kMaxDevices) return -1;
  const int ordinal = static_cast<int>(p - g_contexts);
  return ordinal < table()->device_count() ? ordinal : -1;
}

// The checks of calls that need a current context; its device in *ordinal.
CUresult with_context(int* ordinal) {
  if (CUresult e = entered()) return e;
  return static_cast<CUresult>(table()->current_device(ordinal));
}

}  // namespace

STANDIN_DRIVER_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  if (CUresult e = entered()) return e;
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(dev);
  if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
  if (CUresult e = table()->primary_retain(ordinal)) return e;
  *pctx = context_of(ordinal);
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  if (CUresult e = entered()) return e;
  const int ordinal = ordinal_of(dev);
  if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
  return table()->primary_release(ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  if (CUresult e = entered()) return e;
  const int ordinal = ordinal_of(dev);
  if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
  return table()->primary_reset(ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags,
                                                          int* active) {
  if (CUresult e = entered()) return e;
  if (flags == nullptr || active == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(dev);
  if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
  return table()->primary_state(ordinal, flags, active);
}

// The current context, or null (success) when the thread has none.
STANDIN_DRIVER_EXPORT CUresult cuCtxGetCurrent(CUcontext* pctx) {
  if (CUresult e = entered()) return e;
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int ordinal = -1;
  table()->ctx_get_current(&ordinal);
  *pctx = ordinal < 0 ? nullptr : context_of(ordinal);
  return CUDA_SUCCESS;
}

// Replaces the top of the thread's stack (pushes onto an empty one); null pops the top.
STANDIN_DRIVER_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  if (CUresult e = entered()) return e;
  if (ctx == nullptr) return table()->ctx_set_current(-1);
  const int ordinal = ordinal_of(ctx);
  if (ordinal < 0) return CUDA_ERROR_INVALID_CONTEXT;
  return table()->ctx_set_current(ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  if (CUresult e = entered()) return e;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(ctx);
  if (ordinal < 0) return CUDA_ERROR_INVALID_CONTEXT;
  return table()->ctx_push(ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* pctx) {
  if (CUresult e = entered()) return e;
  int ordinal = -1;
  if (CUresult e = table()->ctx_pop(&ordinal)) return e;
  if (pctx != nullptr) *pctx = context_of(ordinal);
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuCtxGetDevice(CUdevice* device) {
  if (CUresult e = entered()) return e;
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int ordinal = 0;
  if (int err = table()->current_device(&ordinal)) return static_cast<CUresult>(err);
  *device = ordinal + kDeviceHandleBase;
  return CUDA_SUCCESS;
}

// CUDA 13: of a given context, null for the current one.
STANDIN_DRIVER_EXPORT CUresult cuCtxGetDevice_v2(CUdevice* device, CUcontext ctx) {
  if (ctx == nullptr) return cuCtxGetDevice(device);
  if (CUresult e = entered()) return e;
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(ctx);
  if (ordinal < 0) return CUDA_ERROR_INVALID_CONTEXT;
  *device = ordinal + kDeviceHandleBase;
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuCtxSynchronize() {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->ctx_synchronize(ordinal);
}

// CUDA 13: of a given context, null for the current one.
STANDIN_DRIVER_EXPORT CUresult cuCtxSynchronize_v2(CUcontext ctx) {
  if (ctx == nullptr) return cuCtxSynchronize();
  if (CUresult e = entered()) return e;
  const int ordinal = ordinal_of(ctx);
  if (ordinal < 0) return CUDA_ERROR_INVALID_CONTEXT;
  return table()->ctx_synchronize(ordinal);
}

// Every context is a primary one: destroying it resets it (and pops it if current).
STANDIN_DRIVER_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  if (CUresult e = entered()) return e;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int ordinal = ordinal_of(ctx);
  if (ordinal < 0) return CUDA_ERROR_INVALID_CONTEXT;
  return table()->ctx_destroy(ordinal);
}

// ---- device memory: the runtime's allocations (memory.cpp), on the current context's device ----

STANDIN_DRIVER_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_alloc(dptr, bytesize, ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pPitch,
                                                  size_t WidthInBytes, size_t Height,
                                                  unsigned int ElementSizeBytes) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_alloc_pitch(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes, ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuMemAllocManaged(CUdeviceptr* dptr, size_t bytesize,
                                                 unsigned int flags) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_alloc_managed(dptr, bytesize, flags, ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize,
                                               CUstream hStream) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_alloc_async(dptr, bytesize, hStream, false);
}

STANDIN_DRIVER_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytesize,
                                                    CUstream hStream) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_alloc_async(dptr, bytesize, hStream, true);
}

STANDIN_DRIVER_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_free(dptr);
}

STANDIN_DRIVER_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_free_async(dptr, hStream, false);
}

STANDIN_DRIVER_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_free_async(dptr, hStream, true);
}

STANDIN_DRIVER_EXPORT CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_get_info(free, total, ordinal);
}

STANDIN_DRIVER_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize,
                                                       CUdeviceptr dptr) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->mem_get_address_range(pbase, psize, dptr);
}

STANDIN_DRIVER_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle* pHandle, CUdeviceptr dptr) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return table()->ipc_get_mem_handle(pHandle, dptr);
}

// ---- the older entry points NVIDIA's libcuda.so.1 keeps (cuGetProcAddress below a version) ----
// The stand-in has no device memory below 4 GiB: the 32-bit allocators return
// CUDA_ERROR_NOT_SUPPORTED (after the usual checks), the others behave as the current ones with
// 32-bit values (cuMemGetInfo saturates).
#undef cuMemAlloc
#undef cuMemAllocPitch
#undef cuMemFree
#undef cuMemGetInfo
#undef cuMemGetAddressRange
#undef cuCtxDestroy
#undef cuCtxPushCurrent
#undef cuCtxPopCurrent
#undef cuDevicePrimaryCtxRelease
#undef cuDevicePrimaryCtxReset
#undef cuGetProcAddress

STANDIN_DRIVER_EXPORT CUresult cuMemAlloc(unsigned int* dptr, unsigned int bytesize) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return dptr == nullptr || bytesize == 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_NOT_SUPPORTED;
}

STANDIN_DRIVER_EXPORT CUresult cuMemAllocPitch(unsigned int* dptr, unsigned int* pPitch,
                                               unsigned int WidthInBytes, unsigned int Height,
                                               unsigned int) {
  int ordinal = 0;
  if (CUresult e = with_context(&ordinal)) return e;
  return dptr == nullptr || pPitch == nullptr || WidthInBytes == 0 || Height == 0
             ? CUDA_ERROR_INVALID_VALUE
             : CUDA_ERROR_NOT_SUPPORTED;
}

STANDIN_DRIVER_EXPORT CUresult cuMemFree(unsigned int dptr) {
  return cuMemFree_v2(dptr);
}

STANDIN_DRIVER_EXPORT CUresult cuMemGetInfo(unsigned int* free, unsigned int* total) {
  if (free == nullptr || total == nullptr) return CUDA_ERROR_INVALID_VALUE;
  size_t f = 0, t = 0;
  if (CUresult e = cuMemGetInfo_v2(&f, &t)) return e;
  *free = f > UINT_MAX ? UINT_MAX : static_cast<unsigned>(f);
  *total = t > UINT_MAX ? UINT_MAX : static_cast<unsigned>(t);
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuMemGetAddressRange(unsigned int* pbase, unsigned int* psize,
                                                    unsigned int dptr) {
  CUdeviceptr base = 0;
  size_t size = 0;
  if (CUresult e = cuMemGetAddressRange_v2(&base, &size, dptr)) return e;
  if (pbase != nullptr) *pbase = static_cast<unsigned>(base);
  if (psize != nullptr) *psize = static_cast<unsigned>(size);
  return CUDA_SUCCESS;
}

STANDIN_DRIVER_EXPORT CUresult cuCtxDestroy(CUcontext ctx) {
  return cuCtxDestroy_v2(ctx);
}

STANDIN_DRIVER_EXPORT CUresult cuCtxPushCurrent(CUcontext ctx) {
  return cuCtxPushCurrent_v2(ctx);
}

STANDIN_DRIVER_EXPORT CUresult cuCtxPopCurrent(CUcontext* pctx) {
  return cuCtxPopCurrent_v2(pctx);
}

STANDIN_DRIVER_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
  return cuDevicePrimaryCtxRelease_v2(dev);
}

STANDIN_DRIVER_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) {
  return cuDevicePrimaryCtxReset_v2(dev);
}

// ---- the runtime's extension API, for programs that loaded only the driver --------------------
// -1 (or nothing) before the driver is initialised.

STANDIN_DRIVER_EXPORT int standinGetCounters(int device, StandinCounters* out) {
  return table() ? table()->get_counters(device, out) : -1;
}

STANDIN_DRIVER_EXPORT void standinResetCounters(void) {
  if (table()) table()->reset_counters();
}

STANDIN_DRIVER_EXPORT int standinGetAllocationInfo(const void* ptr, StandinAllocationInfo* out) {
  return table() ? table()->get_allocation_info(ptr, out) : -1;
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

// ---- cuGetProcAddress ---------------------------------------------------------------------------
// Every entry point by its base name and the CUDA version that introduced each ABI of it (as in
// cudaTypedefs.h: PFN_cuMemAlloc_v3020 is cuMemAlloc_v2): a lookup answers the newest version not
// newer than the caller's cudaVersion, and the _ptsz variant when the flags ask for per-thread
// default-stream semantics.

STANDIN_DRIVER_EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion,
                                                cuuint64_t flags);

namespace {

struct ProcEntry {
  const char* name;
  int version;
  void* fn;
  void* per_thread;  // the _ptsz variant, or null (the same function)
};

template <typename F>
void* fn(F* f) {
  return reinterpret_cast<void*>(f);
}

const ProcEntry kProcs[] = {
    {"cuInit", 2000, fn(cuInit), nullptr},
    {"cuDriverGetVersion", 2020, fn(cuDriverGetVersion), nullptr},
    {"cuGetErrorName", 6000, fn(cuGetErrorName), nullptr},
    {"cuGetErrorString", 6000, fn(cuGetErrorString), nullptr},
    {"cuGetProcAddress", 11030, fn(cuGetProcAddress), nullptr},
    {"cuGetProcAddress", 12000, fn(cuGetProcAddress_v2), nullptr},
    {"cuDeviceGet", 2000, fn(cuDeviceGet), nullptr},
    {"cuDeviceGetCount", 2000, fn(cuDeviceGetCount), nullptr},
    {"cuDeviceGetAttribute", 2000, fn(cuDeviceGetAttribute), nullptr},
    {"cuDeviceGetUuid", 9020, fn(cuDeviceGetUuid), nullptr},
    {"cuDeviceGetUuid", 11040, fn(cuDeviceGetUuid_v2), nullptr},
    {"cuDevicePrimaryCtxRetain", 7000, fn(cuDevicePrimaryCtxRetain), nullptr},
    {"cuDevicePrimaryCtxRelease", 7000, fn(cuDevicePrimaryCtxRelease), nullptr},
    {"cuDevicePrimaryCtxRelease", 11000, fn(cuDevicePrimaryCtxRelease_v2), nullptr},
    {"cuDevicePrimaryCtxReset", 7000, fn(cuDevicePrimaryCtxReset), nullptr},
    {"cuDevicePrimaryCtxReset", 11000, fn(cuDevicePrimaryCtxReset_v2), nullptr},
    {"cuDevicePrimaryCtxGetState", 7000, fn(cuDevicePrimaryCtxGetState), nullptr},
    {"cuCtxGetCurrent", 4000, fn(cuCtxGetCurrent), nullptr},
    {"cuCtxSetCurrent", 4000, fn(cuCtxSetCurrent), nullptr},
    {"cuCtxPushCurrent", 2000, fn(cuCtxPushCurrent), nullptr},
    {"cuCtxPushCurrent", 4000, fn(cuCtxPushCurrent_v2), nullptr},
    {"cuCtxPopCurrent", 2000, fn(cuCtxPopCurrent), nullptr},
    {"cuCtxPopCurrent", 4000, fn(cuCtxPopCurrent_v2), nullptr},
    {"cuCtxGetDevice", 2000, fn(cuCtxGetDevice), nullptr},
    {"cuCtxGetDevice", 13000, fn(cuCtxGetDevice_v2), nullptr},
    {"cuCtxSynchronize", 2000, fn(cuCtxSynchronize), nullptr},
    {"cuCtxSynchronize", 13000, fn(cuCtxSynchronize_v2), nullptr},
    {"cuCtxDestroy", 2000, fn(cuCtxDestroy), nullptr},
    {"cuCtxDestroy", 4000, fn(cuCtxDestroy_v2), nullptr},
    {"cuMemAlloc", 2000, fn(cuMemAlloc), nullptr},
    {"cuMemAlloc", 3020, fn(cuMemAlloc_v2), nullptr},
    {"cuMemAllocPitch", 2000, fn(cuMemAllocPitch), nullptr},
    {"cuMemAllocPitch", 3020, fn(cuMemAllocPitch_v2), nullptr},
    {"cuMemFree", 2000, fn(cuMemFree), nullptr},
    {"cuMemFree", 3020, fn(cuMemFree_v2), nullptr},
    {"cuMemGetInfo", 2000, fn(cuMemGetInfo), nullptr},
    {"cuMemGetInfo", 3020, fn(cuMemGetInfo_v2), nullptr},
    {"cuMemGetAddressRange", 2000, fn(cuMemGetAddressRange), nullptr},
    {"cuMemGetAddressRange", 3020, fn(cuMemGetAddressRange_v2), nullptr},
    {"cuMemAllocManaged", 6000, fn(cuMemAllocManaged), nullptr},
    {"cuMemAllocAsync", 11020, fn(cuMemAllocAsync), fn(cuMemAllocAsync_ptsz)},
    {"cuMemFreeAsync", 11020, fn(cuMemFreeAsync), fn(cuMemFreeAsync_ptsz)},
    {"cuIpcGetMemHandle", 4010, fn(cuIpcGetMemHandle), nullptr},
    {"cuMemGetAllocationGranularity", 10020, fn(cuMemGetAllocationGranularity), nullptr},
    {"cuMemCreate", 10020, fn(cuMemCreate), nullptr},
    {"cuMemRelease", 10020, fn(cuMemRelease), nullptr},
    {"cuMemAddressReserve", 10020, fn(cuMemAddressReserve), nullptr},
    {"cuMemAddressFree", 10020, fn(cuMemAddressFree), nullptr},
    {"cuMemMap", 10020, fn(cuMemMap), nullptr},
    {"cuMemUnmap", 10020, fn(cuMemUnmap), nullptr},
    {"cuMemSetAccess", 10020, fn(cuMemSetAccess), nullptr},
    {"cuMemGetAccess", 10020, fn(cuMemGetAccess), nullptr},
};

}  // namespace

// Needs no cuInit (NVIDIA's runtime looks up cuInit itself this way). Errors: null symbol or pfn,
// or unknown flags: CUDA_ERROR_INVALID_VALUE; an unknown name (including a versioned one such as
// "cuMemAlloc_v2": callers pass base names) or one only newer than cudaVersion:
// CUDA_ERROR_NOT_FOUND with *pfn null and symbolStatus saying which.
STANDIN_DRIVER_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion,
                                                   cuuint64_t flags,
                                                   CUdriverProcAddressQueryResult* symbolStatus) {
  constexpr cuuint64_t kKnownFlags =
      CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  if (symbol == nullptr || pfn == nullptr || (flags & ~kKnownFlags) != 0)
    return CUDA_ERROR_INVALID_VALUE;
  *pfn = nullptr;
  const ProcEntry* best = nullptr;
  bool known = false;
  for (const ProcEntry& e : kProcs) {
    if (std::strcmp(e.name, symbol) != 0) continue;
    known = true;
    if (e.version <= cudaVersion && (best == nullptr || e.version > best->version)) best = &e;
  }
  if (best == nullptr) {
    if (symbolStatus != nullptr)
      *symbolStatus =
          known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
  }
  const bool per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  *pfn = per_thread && best->per_thread != nullptr ? best->per_thread : best->fn;
  if (symbolStatus != nullptr) *symbolStatus = CU_GET_PROC_ADDRESS_SUCCESS;
  return CUDA_SUCCESS;
}

// CUDA 11.3's signature, without the status.
STANDIN_DRIVER_EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion,
                                                cuuint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, nullptr);
}
