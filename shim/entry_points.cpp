// Lookups that never see an export (docs/driver-api.md): cuGetProcAddress (and _v2) and the
// runtime's cudaGetDriverEntryPoint (and ByVersion, and their per-thread forms) answer with
// cudapool's own function where the real lookup found a function cudapool serves, so that a
// program that obtains its driver functions that way (the static CUDA runtime, CuPy, XLA) is
// pooled. Never an invented entry point: the real lookup runs first and decides the ABI version
// (cuMemAlloc with cudaVersion 3020 or later is cuMemAlloc_v2, before it the v1 that cudapool
// does not serve); only its answer is replaced. No double pooling: lookups made by a shared CUDA
// runtime (NVIDIA's libcudart.so gets its own driver functions this way) get the real answer,
// since cudapool already serves that runtime's callers at the runtime's names.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>
#include <cstring>

#include "shim/driver_api.h"
#include "shim/driver_runtime.h"
#include "shim/entry_points.h"
#include "shim/real_runtime.h"

#define CUDAPOOL_EXPORT extern "C" __attribute__((visibility("default")))

#undef cuGetProcAddress  // cuda.h: a macro for cuGetProcAddress_v2; both are exported here

namespace cudapool {

std::atomic<std::uint64_t> g_proc_address_lookups{0};
std::atomic<std::uint64_t> g_dlsym_lookups{0};

namespace {

int self_marker;

// True when `address` lies in a shared CUDA runtime (libcudart.so*) or in this library.
bool from_runtime_or_self(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return false;
  Dl_info self{};
  if (dladdr(&self_marker, &self) != 0 && self.dli_fbase == info.dli_fbase) return true;
  const char* base = std::strrchr(info.dli_fname, '/');
  base = base != nullptr ? base + 1 : info.dli_fname;
  return std::strncmp(base, "libcudart.so", 12) == 0;
}

// This library's own function of the same name as the driver or runtime function at `real`, or
// null when cudapool has none (or `real` is no exported function of libcuda/libcudart).
void* own_function_for(void* real) {
  Dl_info info{};
  if (real == nullptr || dladdr(real, &info) == 0 || info.dli_sname == nullptr ||
      info.dli_saddr != real || info.dli_fname == nullptr)
    return nullptr;
  const char* base = std::strrchr(info.dli_fname, '/');
  base = base != nullptr ? base + 1 : info.dli_fname;
  if (std::strncmp(base, "libcuda.so", 10) != 0 && std::strncmp(base, "libcudart.so", 12) != 0)
    return nullptr;
  static void* self = [] {
    Dl_info me{};
    return dladdr(&self_marker, &me) != 0 ? dlopen(me.dli_fname, RTLD_LAZY | RTLD_NOLOAD) : nullptr;
  }();
  if (self == nullptr) return nullptr;
  void* own = dlsym(self, info.dli_sname);
  // dlsym on our handle may find a dependency's definition: only our own counts.
  Dl_info own_info{};
  if (own == nullptr || dladdr(own, &own_info) == 0) return nullptr;
  Dl_info me{};
  dladdr(&self_marker, &me);
  return own_info.dli_fbase == me.dli_fbase ? own : nullptr;
}

// A successful cuGetProcAddress or cudaGetDriverEntryPoint lookup made from `caller`.
void substitute(void** pfn, const void* caller) {
  if (substitute_entry_point(pfn, caller))
    g_proc_address_lookups.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

bool substitute_entry_point(void** pfn, const void* caller) {
  if (pfn == nullptr || *pfn == nullptr || from_runtime_or_self(caller)) return false;
  void* own = own_function_for(*pfn);
  if (own == nullptr) return false;
  *pfn = own;
  return true;
}

}  // namespace cudapool

CUDAPOOL_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion,
                                             cuuint64_t flags,
                                             CUdriverProcAddressQueryResult* symbolStatus) {
  const void* caller = __builtin_return_address(0);
  const cudapool::DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->get_proc_address_v2 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = drv->get_proc_address_v2(symbol, pfn, cudaVersion, flags, symbolStatus);
  if (r == CUDA_SUCCESS) cudapool::substitute(pfn, caller);
  return r;
}

// The CUDA 11 form, without the status.
CUDAPOOL_EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion,
                                          cuuint64_t flags) {
  const void* caller = __builtin_return_address(0);
  const cudapool::DriverApi* drv = cudapool::bind_driver_api();
  if (drv == nullptr || drv->get_proc_address_v1 == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = drv->get_proc_address_v1(symbol, pfn, cudaVersion, flags);
  if (r == CUDA_SUCCESS) cudapool::substitute(pfn, caller);
  return r;
}

namespace {

// The runtime's own entry point `name`, found as the real runtime functions are (RTLD_NEXT, then
// a runtime loaded privately).
template <typename Fn>
Fn* next_runtime_function(const char* name) {
  if (void* f = dlsym(RTLD_NEXT, name)) return reinterpret_cast<Fn*>(f);
  return nullptr;
}

using EntryPointFn = cudaError_t(const char*, void**, unsigned long long,
                                 cudaDriverEntryPointQueryResult*);
using EntryPointByVersionFn = cudaError_t(const char*, void**, unsigned int, unsigned long long,
                                          cudaDriverEntryPointQueryResult*);

}  // namespace

#define CUDAPOOL_ENTRY_POINT(NAME)                                                               \
  CUDAPOOL_EXPORT cudaError_t NAME(const char* symbol, void** funcPtr, unsigned long long flags, \
                                   cudaDriverEntryPointQueryResult* driverStatus) {              \
    const void* caller = __builtin_return_address(0);                                            \
    static EntryPointFn* real = next_runtime_function<EntryPointFn>(#NAME);                      \
    if (real == nullptr) return cudaErrorNotSupported;                                           \
    cudaError_t err = real(symbol, funcPtr, flags, driverStatus);                                \
    if (err == cudaSuccess) cudapool::substitute(funcPtr, caller);                               \
    return err;                                                                                  \
  }
#define CUDAPOOL_ENTRY_POINT_BY_VERSION(NAME)                                                    \
  CUDAPOOL_EXPORT cudaError_t NAME(const char* symbol, void** funcPtr, unsigned int cudaVersion, \
                                   unsigned long long flags,                                     \
                                   cudaDriverEntryPointQueryResult* driverStatus) {              \
    const void* caller = __builtin_return_address(0);                                            \
    static EntryPointByVersionFn* real = next_runtime_function<EntryPointByVersionFn>(#NAME);    \
    if (real == nullptr) return cudaErrorNotSupported;                                           \
    cudaError_t err = real(symbol, funcPtr, cudaVersion, flags, driverStatus);                   \
    if (err == cudaSuccess) cudapool::substitute(funcPtr, caller);                               \
    return err;                                                                                  \
  }

CUDAPOOL_ENTRY_POINT(cudaGetDriverEntryPoint)
CUDAPOOL_ENTRY_POINT(cudaGetDriverEntryPoint_ptsz)
CUDAPOOL_ENTRY_POINT_BY_VERSION(cudaGetDriverEntryPointByVersion)
CUDAPOOL_ENTRY_POINT_BY_VERSION(cudaGetDriverEntryPointByVersion_ptsz)
