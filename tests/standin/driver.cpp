// The stand-in's libcuda.so.1: the driver entry points cudapool reads on its hot path, answered
// from the stand-in runtime's per-thread current device. The runtime loads this library at its
// start (as NVIDIA's runtime loads the driver), from its own folder, and hands it the function
// that reads the current device; without that hand-over every call fails as an uninitialised
// driver does. CUdevice handles are opaque in the driver API: here they are the ordinal plus
// kDeviceHandleBase, so that a caller mistaking a handle for a runtime ordinal fails its tests.
#define STANDIN_DRIVER_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kCudaErrorNotInitialized = 3;
constexpr int kCudaErrorInvalidValue = 1;
constexpr int kDeviceHandleBase = 1000;

int (*g_current_device)(int*) = nullptr;

}  // namespace

STANDIN_DRIVER_EXPORT void standinDriverAttach(int (*current_device)(int*)) {
  g_current_device = current_device;
}

STANDIN_DRIVER_EXPORT int cuCtxGetDevice(int* device) {
  if (device == nullptr) return kCudaErrorInvalidValue;
  if (g_current_device == nullptr) return kCudaErrorNotInitialized;
  int ordinal = 0;
  if (int err = g_current_device(&ordinal)) return err;
  *device = ordinal + kDeviceHandleBase;
  return 0;
}

// A context per device: its handle is a distinct non-null address.
STANDIN_DRIVER_EXPORT int cuCtxGetCurrent(void** context) {
  static char contexts[64];
  if (context == nullptr) return kCudaErrorInvalidValue;
  if (g_current_device == nullptr) return kCudaErrorNotInitialized;
  int ordinal = 0;
  if (int err = g_current_device(&ordinal)) return err;
  *context = ordinal >= 0 && ordinal < 64 ? &contexts[ordinal] : nullptr;
  return 0;
}
