// A test interposer (LD_PRELOAD) for standin.driver: interposes dlsym, and answers lookups of
// cuGetProcAddress_v2 with a wrapper that substitutes counting wrappers for cuMemAlloc,
// cuMemFree, cuMemGetInfo and cuCtxSynchronize - what an interposer that pools the driver does.
// standinTestInterposedCalls(name) reads the counts ("lookups": cuGetProcAddress_v2 calls).
#include <cuda.h>
#include <dlfcn.h>

#include <atomic>
#include <cstring>

namespace {

using DlsymFn = void* (*)(void*, const char*);
using GetProcAddressFn = CUresult (*)(const char*, void**, int, cuuint64_t,
                                      CUdriverProcAddressQueryResult*);

DlsymFn real_dlsym() {
  static DlsymFn fn = [] {
    auto f = reinterpret_cast<DlsymFn>(dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34"));
    return f ? f : reinterpret_cast<DlsymFn>(dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5"));
  }();
  return fn;
}

std::atomic<unsigned long long> g_lookups{0}, g_alloc{0}, g_free{0}, g_info{0}, g_sync{0};
GetProcAddressFn g_real_get = nullptr;
CUresult (*g_alloc_fn)(CUdeviceptr*, size_t) = nullptr;
CUresult (*g_free_fn)(CUdeviceptr) = nullptr;
CUresult (*g_info_fn)(size_t*, size_t*) = nullptr;
CUresult (*g_sync_fn)(CUcontext) = nullptr;

CUresult alloc_wrapper(CUdeviceptr* p, size_t n) {
  g_alloc.fetch_add(1);
  return g_alloc_fn(p, n);
}
CUresult free_wrapper(CUdeviceptr p) {
  g_free.fetch_add(1);
  return g_free_fn(p);
}
CUresult info_wrapper(size_t* f, size_t* t) {
  g_info.fetch_add(1);
  return g_info_fn(f, t);
}
CUresult sync_wrapper(CUcontext c) {
  g_sync.fetch_add(1);
  return g_sync_fn(c);
}

template <typename F>
void substitute(void** pfn, F** real, F* wrapper) {
  *real = reinterpret_cast<F*>(*pfn);
  *pfn = reinterpret_cast<void*>(wrapper);
}

CUresult get_proc_address(const char* symbol, void** pfn, int version, cuuint64_t flags,
                          CUdriverProcAddressQueryResult* status) {
  g_lookups.fetch_add(1);
  const CUresult r = g_real_get(symbol, pfn, version, flags, status);
  if (r != CUDA_SUCCESS || version < 13000) return r;  // wrappers of the 13000 ABIs only
  if (std::strcmp(symbol, "cuMemAlloc") == 0) substitute(pfn, &g_alloc_fn, alloc_wrapper);
  if (std::strcmp(symbol, "cuMemFree") == 0) substitute(pfn, &g_free_fn, free_wrapper);
  if (std::strcmp(symbol, "cuMemGetInfo") == 0) substitute(pfn, &g_info_fn, info_wrapper);
  if (std::strcmp(symbol, "cuCtxSynchronize") == 0) substitute(pfn, &g_sync_fn, sync_wrapper);
  return r;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) void* dlsym(void* handle, const char* name) {
  void* p = real_dlsym()(handle, name);
  if (p != nullptr && std::strcmp(name, "cuGetProcAddress_v2") == 0) {
    g_real_get = reinterpret_cast<GetProcAddressFn>(p);
    return reinterpret_cast<void*>(get_proc_address);
  }
  return p;
}

extern "C" __attribute__((visibility("default"))) unsigned long long standinTestInterposedCalls(
    const char* name) {
  if (std::strcmp(name, "lookups") == 0) return g_lookups.load();
  if (std::strcmp(name, "cuMemAlloc") == 0) return g_alloc.load();
  if (std::strcmp(name, "cuMemFree") == 0) return g_free.load();
  if (std::strcmp(name, "cuMemGetInfo") == 0) return g_info.load();
  if (std::strcmp(name, "cuCtxSynchronize") == 0) return g_sync.load();
  return 0;
}
