// Error names and strings, and the per-thread last error.
#include "standin_internal.h"

namespace standin {
namespace {

struct ErrorRow {
  int code;
  const char* name;
  const char* doc;
};

const ErrorRow kErrors[] = {
#include "error_table.inc"
};

// NVIDIA's cudaGetErrorString text for the codes programs meet most; other codes use the first
// sentence of the header's documentation.
const ErrorRow kStrings[] = {
    {cudaSuccess, nullptr, "no error"},
    {cudaErrorInvalidValue, nullptr, "invalid argument"},
    {cudaErrorMemoryAllocation, nullptr, "out of memory"},
    {cudaErrorInitializationError, nullptr, "initialization error"},
    {cudaErrorCudartUnloading, nullptr, "driver shutting down"},
    {cudaErrorInvalidMemcpyDirection, nullptr, "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, nullptr,
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDeviceFunction, nullptr, "invalid device function"},
    {cudaErrorNoDevice, nullptr, "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, nullptr, "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, nullptr, "invalid resource handle"},
    {cudaErrorNotReady, nullptr, "device not ready"},
    {cudaErrorIllegalAddress, nullptr, "an illegal memory access was encountered"},
    {cudaErrorLaunchFailure, nullptr, "unspecified launch failure"},
    {cudaErrorNotPermitted, nullptr, "operation not permitted"},
    {cudaErrorNotSupported, nullptr, "operation not supported"},
    {cudaErrorStreamCaptureUnsupported, nullptr,
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, nullptr,
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureImplicit, nullptr,
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {cudaErrorStreamCaptureWrongThread, nullptr,
     "attempt to terminate a thread-local capture sequence from another thread"},
    {cudaErrorUnknown, nullptr, "unknown error"},
};

const ErrorRow* find_row(const ErrorRow* rows, size_t n, int code) {
  for (size_t i = 0; i < n; ++i)
    if (rows[i].code == code) return &rows[i];
  return nullptr;
}

}  // namespace

const char* error_name(cudaError_t e) {
  const ErrorRow* row = find_row(kErrors, std::size(kErrors), e);
  return row ? row->name : nullptr;
}

ThreadState& tls() {
  thread_local ThreadState state;
  return state;
}

}  // namespace standin

using namespace standin;

extern "C" {

const char* cudaGetErrorName(cudaError_t error) {
  const char* name = error_name(error);
  return name ? name : "unrecognized error code";
}

const char* cudaGetErrorString(cudaError_t error) {
  if (const ErrorRow* row = find_row(kStrings, std::size(kStrings), error)) return row->doc;
  if (const ErrorRow* row = find_row(kErrors, std::size(kErrors), error)) return row->doc;
  return "unrecognized error code";
}

cudaError_t cudaGetLastError(void) {
  ThreadState& t = tls();
  const cudaError_t e = t.last_error;
  t.last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  return tls().last_error;
}

}  // extern "C"
