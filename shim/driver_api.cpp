#include "shim/driver_api.h"

#include <dlfcn.h>

#include <atomic>
#include <mutex>

namespace cudapool {

namespace {

std::atomic<const DriverApi*> g_driver{nullptr};
std::mutex g_bind_mutex;

template <typename Fn>
void bind(void* handle, const char* name, Fn*& slot) {
  slot = reinterpret_cast<Fn*>(dlsym(handle, name));
}

}  // namespace

bool DriverApi::has_vmm() const {
  return cuDeviceGet != nullptr && cuDeviceGetAttribute != nullptr &&
         cuMemGetAllocationGranularity != nullptr && cuMemCreate != nullptr &&
         cuMemRelease != nullptr && cuMemAddressReserve != nullptr && cuMemAddressFree != nullptr &&
         cuMemMap != nullptr && cuMemUnmap != nullptr && cuMemSetAccess != nullptr;
}

bool DriverApi::has_allocation() const {
  return cuCtxGetCurrent && cuCtxSetCurrent && cuCtxGetDevice && cuCtxSynchronize && cuDeviceGet &&
         cuDeviceGetCount && cuDevicePrimaryCtxRetain && cuDevicePrimaryCtxReset_v2 &&
         cuDevicePrimaryCtxGetState && cuMemAlloc_v2 && cuMemFree_v2 && cuMemGetInfo_v2 &&
         cuIpcGetMemHandle;
}

const DriverApi* bind_driver_api() {
  if (const DriverApi* api = g_driver.load(std::memory_order_acquire)) return api;
  std::lock_guard lock(g_bind_mutex);
  if (const DriverApi* api = g_driver.load(std::memory_order_relaxed)) return api;
  // The handle keeps the driver loaded for the process's life.
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (driver == nullptr) return nullptr;
  auto* api = new DriverApi();  // never freed: pointers to it are handed out
  bind(driver, "cuCtxGetDevice", api->cuCtxGetDevice);
  bind(driver, "cuDeviceGet", api->cuDeviceGet);
  bind(driver, "cuDeviceGetAttribute", api->cuDeviceGetAttribute);
  bind(driver, "cuMemGetAllocationGranularity", api->cuMemGetAllocationGranularity);
  bind(driver, "cuMemCreate", api->cuMemCreate);
  bind(driver, "cuMemRelease", api->cuMemRelease);
  bind(driver, "cuMemAddressReserve", api->cuMemAddressReserve);
  bind(driver, "cuMemAddressFree", api->cuMemAddressFree);
  bind(driver, "cuMemMap", api->cuMemMap);
  bind(driver, "cuMemUnmap", api->cuMemUnmap);
  bind(driver, "cuMemSetAccess", api->cuMemSetAccess);
  bind(driver, "cuCtxGetCurrent", api->cuCtxGetCurrent);
  bind(driver, "cuCtxSetCurrent", api->cuCtxSetCurrent);
  bind(driver, "cuCtxSynchronize", api->cuCtxSynchronize);
  bind(driver, "cuCtxDestroy_v2", api->cuCtxDestroy_v2);
  bind(driver, "cuDeviceGetCount", api->cuDeviceGetCount);
  bind(driver, "cuDevicePrimaryCtxRetain", api->cuDevicePrimaryCtxRetain);
  bind(driver, "cuDevicePrimaryCtxReset_v2", api->cuDevicePrimaryCtxReset_v2);
  bind(driver, "cuDevicePrimaryCtxGetState", api->cuDevicePrimaryCtxGetState);
  bind(driver, "cuMemAlloc_v2", api->cuMemAlloc_v2);
  bind(driver, "cuMemFree_v2", api->cuMemFree_v2);
  bind(driver, "cuMemGetInfo_v2", api->cuMemGetInfo_v2);
  bind(driver, "cuMemGetAddressRange_v2", api->cuMemGetAddressRange_v2);
  bind(driver, "cuIpcGetMemHandle", api->cuIpcGetMemHandle);
  bind(driver, "cuGetProcAddress", api->get_proc_address_v1);
  bind(driver, "cuGetProcAddress_v2", api->get_proc_address_v2);
  g_driver.store(api, std::memory_order_release);
  return api;
}

}  // namespace cudapool
