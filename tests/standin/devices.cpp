// Device management: count, current device, properties, attributes, synchronisation, reset,
// versions. The devices look like a modest Hopper-class GPU named "cudapool stand-in".
#include <cstdio>
#include <cstring>

#include "driver_table.h"
#include "standin_internal.h"

// CUDA 12 headers renamed cudaGetDeviceProperties to this; CUDA 13 dropped the rename. Exported
// too, for programs built against the older header.
extern "C" __attribute__((visibility("default"))) cudaError_t cudaGetDeviceProperties_v2(
    struct cudaDeviceProp* prop, int device);

namespace standin {
namespace {

constexpr int kMajor = 9;
constexpr int kMinor = 0;
constexpr int kSms = 132;
constexpr int kDriverVersion = 13000;

Device* current_device() {
  return rt().device(tls().device);
}

cudaError_t checked_device(int device, Device** out) {
  *out = rt().device(device);
  return *out ? cudaSuccess : cudaErrorInvalidDevice;
}

int attribute_value(cudaDeviceAttr attr, const Device& d, bool* known) {
  *known = true;
  // NOLINTBEGIN(bugprone-branch-clone): a table of values, equal neighbours are fine
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      return 1024;
    case cudaDevAttrMaxBlockDimX:
      return 1024;
    case cudaDevAttrMaxBlockDimY:
      return 1024;
    case cudaDevAttrMaxBlockDimZ:
      return 64;
    case cudaDevAttrMaxGridDimX:
      return 2147483647;
    case cudaDevAttrMaxGridDimY:
      return 65535;
    case cudaDevAttrMaxGridDimZ:
      return 65535;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      return 48 * 1024;
    case cudaDevAttrTotalConstantMemory:
      return 64 * 1024;
    case cudaDevAttrWarpSize:
      return 32;
    case cudaDevAttrMaxPitch:
      return 2147483647;
    case cudaDevAttrMaxRegistersPerBlock:
      return 65536;
    case cudaDevAttrClockRate:
      return 1980000;
    case cudaDevAttrTextureAlignment:
      return 512;
    case cudaDevAttrGpuOverlap:
      return 1;
    case cudaDevAttrMultiProcessorCount:
      return kSms;
    case cudaDevAttrIntegrated:
      return 0;
    case cudaDevAttrCanMapHostMemory:
      return 1;
    case cudaDevAttrComputeMode:
      return 0;
    case cudaDevAttrConcurrentKernels:
      return 1;
    case cudaDevAttrEccEnabled:
      return 0;
    case cudaDevAttrPciBusId:
      return d.index + 1;
    case cudaDevAttrPciDeviceId:
      return 0;
    case cudaDevAttrPciDomainId:
      return 0;
    case cudaDevAttrGlobalMemoryBusWidth:
      return 5120;
    case cudaDevAttrL2CacheSize:
      return 50 * 1024 * 1024;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
      return 2048;
    case cudaDevAttrAsyncEngineCount:
      return 3;
    case cudaDevAttrUnifiedAddressing:
      return 1;
    case cudaDevAttrComputeCapabilityMajor:
      return kMajor;
    case cudaDevAttrComputeCapabilityMinor:
      return kMinor;
    case cudaDevAttrStreamPrioritiesSupported:
      return 1;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      return 228 * 1024;
    case cudaDevAttrManagedMemory:
      return 1;
    case cudaDevAttrConcurrentManagedAccess:
      return 1;
    case cudaDevAttrCooperativeLaunch:
      return 1;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      return 227 * 1024;
    case cudaDevAttrHostRegisterSupported:
      return 1;
    case cudaDevAttrMaxBlocksPerMultiprocessor:
      return 32;
    case cudaDevAttrMemoryPoolsSupported:
      return 1;
    case cudaDevAttrIpcEventSupport:
      return 1;
    case cudaDevAttrNumaId:
      return -1;
    case cudaDevAttrHostNumaId:
      return -1;
    default:
      *known = attr > 0 && attr < cudaDevAttrMax;
      return 0;  // other valid attributes: 0 (not supported / not applicable)
  }
  // NOLINTEND(bugprone-branch-clone)
}

cudaError_t get_properties(cudaDeviceProp* prop, int device) {
  STANDIN_ENTER();
  if (!prop) return ret(cudaErrorInvalidValue);
  Device* d = nullptr;
  if (cudaError_t e = checked_device(device, &d)) return ret(e);
  cudaDeviceProp p;
  memset(&p, 0, sizeof p);
  snprintf(p.name, sizeof p.name, "cudapool stand-in");
  standin_device_uuid(d->index, p.uuid.bytes);
  p.totalGlobalMem = d->capacity;
  p.sharedMemPerBlock = size_t{48} * 1024;
  p.regsPerBlock = 65536;
  p.warpSize = 32;
  p.memPitch = 2147483647;
  p.maxThreadsPerBlock = 1024;
  p.maxThreadsDim[0] = 1024;
  p.maxThreadsDim[1] = 1024;
  p.maxThreadsDim[2] = 64;
  p.maxGridSize[0] = 2147483647;
  p.maxGridSize[1] = 65535;
  p.maxGridSize[2] = 65535;
  p.totalConstMem = size_t{64} * 1024;
  p.major = kMajor;
  p.minor = kMinor;
  p.textureAlignment = 512;
  p.texturePitchAlignment = 32;
  p.multiProcessorCount = kSms;
  p.canMapHostMemory = 1;
  p.surfaceAlignment = 512;
  p.concurrentKernels = 1;
  p.pciBusID = d->index + 1;
  p.asyncEngineCount = 3;
  p.unifiedAddressing = 1;
  p.memoryBusWidth = 5120;
  p.l2CacheSize = 50 * 1024 * 1024;
  p.maxThreadsPerMultiProcessor = 2048;
  p.streamPrioritiesSupported = 1;
  p.sharedMemPerMultiprocessor = size_t{228} * 1024;
  p.regsPerMultiprocessor = 65536;
  p.managedMemory = 1;
  p.concurrentManagedAccess = 1;
  p.cooperativeLaunch = 1;
  p.sharedMemPerBlockOptin = size_t{227} * 1024;
  p.maxBlocksPerMultiProcessor = 32;
  p.hostRegisterSupported = 1;
  p.memoryPoolsSupported = 1;
  p.ipcEventSupported = 1;
  p.deviceNumaId = -1;
  p.hostNumaId = -1;
  *prop = p;
  return cudaSuccess;
}

}  // namespace

bool device_attribute(int attr, int device, int* value) {
  Device* d = rt().device(device);
  if (!d) return false;
  bool known = false;
  const int v = attribute_value(static_cast<cudaDeviceAttr>(attr), *d, &known);
  if (!known) return false;
  *value = v;
  return true;
}

}  // namespace standin

using namespace standin;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  const cudaError_t e = enter();
  if (e == cudaErrorNoDevice && count) *count = 0;
  if (e) return ret(e);  // no driver: *count stays untouched, as with NVIDIA's runtime
  if (!count) return ret(cudaErrorInvalidValue);
  *count = static_cast<int>(rt().devices.size());
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  STANDIN_ENTER();
  if (!device) return ret(cudaErrorInvalidValue);
  *device = tls().device;
  if (Device* d = rt().device(*device)) d->counters.get_device_calls.fetch_add(1);
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  STANDIN_ENTER();
  if (!rt().device(device)) return ret(cudaErrorInvalidDevice);
  set_runtime_device(device);  // its primary context becomes current (contexts.cpp)
  return cudaSuccess;
}

cudaError_t cudaInitDevice(int device, unsigned int, unsigned int) {
  STANDIN_ENTER();
  return ret(rt().device(device) ? cudaSuccess : cudaErrorInvalidDevice);
}

cudaError_t cudaSetValidDevices(int* device_arr, int len) {
  STANDIN_ENTER();
  if (len < 0 || (len > 0 && !device_arr)) return ret(cudaErrorInvalidValue);
  for (int i = 0; i < len; ++i)
    if (!rt().device(device_arr[i])) return ret(cudaErrorInvalidDevice);
  return cudaSuccess;
}

cudaError_t cudaChooseDevice(int* device, const struct cudaDeviceProp* prop) {
  STANDIN_ENTER();
  if (!device || !prop) return ret(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  STANDIN_ENTER();
  if (!value) return ret(cudaErrorInvalidValue);
  Device* d = nullptr;
  if (cudaError_t e = checked_device(device, &d)) return ret(e);
  bool known = false;
  const int v = attribute_value(attr, *d, &known);
  if (!known) return ret(cudaErrorInvalidValue);
  *value = v;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  return get_properties(prop, device);
}

cudaError_t cudaGetDeviceProperties_v2(struct cudaDeviceProp* prop, int device) {
  return get_properties(prop, device);
}

cudaError_t cudaDeviceSynchronize(void) {
  STANDIN_ENTER();
  // Like NVIDIA's runtime: through the driver's cuCtxSynchronize, as cuGetProcAddress answered
  // (for 13000 the _v2 taking a context; null: the current one). Same work as below.
  if (auto sync = driver_functions().ctx_synchronize)
    return ret(static_cast<cudaError_t>(sync(nullptr)));
  const int device = tls().device;
  // Every capture mode forbids it: the capture is invalidated and the call fails.
  if (invalidate_captures(device, nullptr)) return ret(cudaErrorStreamCaptureUnsupported);
  drain_device(device);
  rt().device(device)->counters.device_syncs.fetch_add(1);
  return cudaSuccess;
}

cudaError_t cudaDeviceReset(void) {
  STANDIN_ENTER();
  reset_device(tls().device);  // contexts.cpp; cudaMallocAsync memory survives
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* driverVersion) {
  if (!driverVersion) return ret(cudaErrorInvalidValue);
  // Like NVIDIA's runtime: without a driver this succeeds and reports 0.
  *driverVersion = rt().config.no_driver ? 0 : kDriverVersion;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* runtimeVersion) {
  if (!runtimeVersion) return ret(cudaErrorInvalidValue);
  *runtimeVersion = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaSetDeviceFlags(unsigned int flags) {
  STANDIN_ENTER();
  constexpr unsigned kKnown =
      cudaDeviceScheduleMask | cudaDeviceMapHost | cudaDeviceLmemResizeToMax | cudaDeviceSyncMemops;
  if (flags & ~kKnown) return ret(cudaErrorInvalidValue);
  current_device()->flags.store(flags);
  return cudaSuccess;
}

cudaError_t cudaGetDeviceFlags(unsigned int* flags) {
  STANDIN_ENTER();
  if (!flags) return ret(cudaErrorInvalidValue);
  *flags = current_device()->flags.load() | cudaDeviceMapHost;
  return cudaSuccess;
}

cudaError_t cudaDeviceCanAccessPeer(int* canAccessPeer, int device, int peerDevice) {
  STANDIN_ENTER();
  if (!canAccessPeer) return ret(cudaErrorInvalidValue);
  if (!rt().device(device) || !rt().device(peerDevice)) return ret(cudaErrorInvalidDevice);
  *canAccessPeer = device != peerDevice ? 1 : 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceEnablePeerAccess(int peerDevice, unsigned int flags) {
  STANDIN_ENTER();
  if (flags != 0) return ret(cudaErrorInvalidValue);
  if (!rt().device(peerDevice) || peerDevice == tls().device) return ret(cudaErrorInvalidDevice);
  return cudaSuccess;
}

cudaError_t cudaDeviceDisablePeerAccess(int peerDevice) {
  STANDIN_ENTER();
  if (!rt().device(peerDevice) || peerDevice == tls().device) return ret(cudaErrorInvalidDevice);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char* pciBusId, int len, int device) {
  STANDIN_ENTER();
  if (!pciBusId || len <= 0) return ret(cudaErrorInvalidValue);
  Device* d = nullptr;
  if (cudaError_t e = checked_device(device, &d)) return ret(e);
  snprintf(pciBusId, static_cast<size_t>(len), "0000:%02x:00.0", d->index + 1);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetByPCIBusId(int* device, const char* pciBusId) {
  STANDIN_ENTER();
  if (!device || !pciBusId) return ret(cudaErrorInvalidValue);
  unsigned domain = 0, bus = 0, dev = 0, fn = 0;
  if (sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4 || bus == 0 ||
      !rt().device(static_cast<int>(bus) - 1))
    return ret(cudaErrorInvalidDevice);
  *device = static_cast<int>(bus) - 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceSetLimit(enum cudaLimit limit, size_t) {
  STANDIN_ENTER();
  if (limit < cudaLimitStackSize || limit > cudaLimitPersistingL2CacheSize)
    return ret(cudaErrorUnsupportedLimit);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetLimit(size_t* pValue, enum cudaLimit limit) {
  STANDIN_ENTER();
  if (!pValue) return ret(cudaErrorInvalidValue);
  switch (limit) {
    case cudaLimitStackSize:
      *pValue = 1024;
      return cudaSuccess;
    case cudaLimitPrintfFifoSize:
      *pValue = 1 << 20;
      return cudaSuccess;
    case cudaLimitMallocHeapSize:
      *pValue = 8 << 20;
      return cudaSuccess;
    case cudaLimitDevRuntimeSyncDepth:
      *pValue = 2;
      return cudaSuccess;
    case cudaLimitDevRuntimePendingLaunchCount:
      *pValue = 2048;
      return cudaSuccess;
    case cudaLimitMaxL2FetchGranularity:
      *pValue = 64;
      return cudaSuccess;
    case cudaLimitPersistingL2CacheSize:
      *pValue = 0;
      return cudaSuccess;
  }
  return ret(cudaErrorUnsupportedLimit);
}

// No device code runs here: kernels cannot be launched.
cudaError_t cudaLaunchKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  STANDIN_ENTER();
  return ret(cudaErrorInvalidDeviceFunction);
}
cudaError_t cudaLaunchKernel_ptsz(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  STANDIN_ENTER();
  return ret(cudaErrorInvalidDeviceFunction);
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void*) {
  STANDIN_ENTER();
  if (!attr) return ret(cudaErrorInvalidValue);
  return ret(cudaErrorInvalidDeviceFunction);
}

}  // extern "C"
