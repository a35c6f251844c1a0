// The stand-in static runtime (static_runtime.h): dlopen + cuGetProcAddress, as
// libcudart_static.a reaches the driver.
#include "static_runtime.h"

#include <cuda.h>
#include <dlfcn.h>

#include <mutex>
#include <type_traits>

namespace {

constexpr int kCudaVersion = 13000;

struct Driver {
  bool ok = false;
  CUresult (*init)(unsigned) = nullptr;
  CUresult (*device_get)(CUdevice*, int) = nullptr;
  CUresult (*primary_retain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*ctx_get_current)(CUcontext*) = nullptr;
  CUresult (*ctx_set_current)(CUcontext) = nullptr;
  CUresult (*mem_alloc)(CUdeviceptr*, size_t) = nullptr;  // cuMemAlloc_v2
  CUresult (*mem_free)(CUdeviceptr) = nullptr;            // cuMemFree_v2
  CUresult (*mem_get_info)(size_t*, size_t*) = nullptr;   // cuMemGetInfo_v2
  CUresult (*ctx_synchronize)(CUcontext) = nullptr;       // cuCtxSynchronize_v2
  CUresult init_result = CUDA_ERROR_NOT_INITIALIZED;
};

Driver load() {
  Driver d;
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);  // kept for the process's life
  if (h == nullptr) return d;
  using GetProcAddress =
      CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get = reinterpret_cast<GetProcAddress>(dlsym(h, "cuGetProcAddress_v2"));
  if (get == nullptr) return d;
  bool all = true;
  auto lookup = [&](const char* name, auto* slot) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult status{};
    if (get(name, &fn, kCudaVersion, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS)
      all = false;
    *slot = reinterpret_cast<std::remove_pointer_t<decltype(slot)>>(fn);
  };
  lookup("cuInit", &d.init);
  lookup("cuDeviceGet", &d.device_get);
  lookup("cuDevicePrimaryCtxRetain", &d.primary_retain);
  lookup("cuCtxGetCurrent", &d.ctx_get_current);
  lookup("cuCtxSetCurrent", &d.ctx_set_current);
  lookup("cuMemAlloc", &d.mem_alloc);
  lookup("cuMemFree", &d.mem_free);
  lookup("cuMemGetInfo", &d.mem_get_info);
  lookup("cuCtxSynchronize", &d.ctx_synchronize);
  if (!all) return d;
  d.ok = true;
  d.init_result = d.init(0);
  return d;
}

const Driver& driver() {
  static const Driver d = load();
  return d;
}

thread_local int t_device = 0;
thread_local bool t_bound = false;

cudaError_t rt_error(CUresult e) {
  return static_cast<cudaError_t>(e);  // the codes used here are equal in both enums
}

// The primary context of `device` (retained once per device and process, as the runtime does).
CUresult primary(int device, CUcontext* ctx) {
  static std::mutex mu;
  static CUcontext contexts[64] = {};
  if (device < 0 || device >= 64) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lock(mu);
  if (contexts[device] == nullptr) {
    CUdevice dev = 0;
    if (CUresult e = driver().device_get(&dev, device)) return e;
    if (CUresult e = driver().primary_retain(&contexts[device], dev)) return e;
  }
  *ctx = contexts[device];
  return CUDA_SUCCESS;
}

// Every call's start: the driver is there and initialised, and the thread has a context.
cudaError_t enter() {
  const Driver& d = driver();
  if (!d.ok) return cudaErrorInsufficientDriver;
  if (d.init_result != CUDA_SUCCESS) return rt_error(d.init_result);
  if (t_bound) return cudaSuccess;
  CUcontext current = nullptr;
  if (CUresult e = d.ctx_get_current(&current)) return rt_error(e);
  if (current == nullptr) {
    CUcontext ctx = nullptr;
    if (CUresult e = primary(t_device, &ctx)) return rt_error(e);
    if (CUresult e = d.ctx_set_current(ctx)) return rt_error(e);
  }
  t_bound = true;
  return cudaSuccess;
}

}  // namespace

cudaError_t static_cudaMalloc(void** devPtr, size_t size) {
  if (cudaError_t e = enter()) return e;
  if (devPtr == nullptr) return cudaErrorInvalidValue;
  if (size == 0) {
    *devPtr = nullptr;
    return cudaSuccess;
  }
  CUdeviceptr p = 0;
  if (CUresult e = driver().mem_alloc(&p, size)) return rt_error(e);
  *devPtr = reinterpret_cast<void*>(p);  // NOLINT(performance-no-int-to-ptr)
  return cudaSuccess;
}

cudaError_t static_cudaFree(void* devPtr) {
  if (cudaError_t e = enter()) return e;
  if (devPtr == nullptr) return cudaSuccess;
  return rt_error(driver().mem_free(reinterpret_cast<CUdeviceptr>(devPtr)));
}

cudaError_t static_cudaMemGetInfo(size_t* free, size_t* total) {
  if (cudaError_t e = enter()) return e;
  if (free == nullptr || total == nullptr) return cudaErrorInvalidValue;
  return rt_error(driver().mem_get_info(free, total));
}

cudaError_t static_cudaSetDevice(int device) {
  if (cudaError_t e = enter()) return e;
  CUcontext ctx = nullptr;
  if (CUresult e = primary(device, &ctx)) return rt_error(e);
  if (CUresult e = driver().ctx_set_current(ctx)) return rt_error(e);
  t_device = device;
  return cudaSuccess;
}

cudaError_t static_cudaDeviceSynchronize() {
  if (cudaError_t e = enter()) return e;
  return rt_error(driver().ctx_synchronize(nullptr));
}
