// The real CUDA runtime functions the shim forwards to, found at run time (DESIGN §4.3).
//
// Order of search: dlsym(RTLD_NEXT) — the runtime a program or its libraries link normally;
// then any libcudart.so.* already loaded, e.g. by a library that Python dlopen()ed with
// RTLD_LOCAL, which RTLD_NEXT cannot see. The shim never links libcudart or libcuda itself.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>

namespace cudapool {

struct RealRuntime {
  // Where the functions came from, for the start-up log.
  const char* origin = "";

  cudaError_t (*cudaMalloc)(void**, size_t) = nullptr;
  cudaError_t (*cudaFree)(void*) = nullptr;
  cudaError_t (*cudaMemGetInfo)(size_t*, size_t*) = nullptr;
  cudaError_t (*cudaDeviceReset)() = nullptr;
  cudaError_t (*cudaIpcGetMemHandle)(cudaIpcMemHandle_t*, void*) = nullptr;
  cudaError_t (*cudaStreamBeginCapture)(cudaStream_t, cudaStreamCaptureMode) = nullptr;
  cudaError_t (*cudaStreamBeginCapture_ptsz)(cudaStream_t, cudaStreamCaptureMode) = nullptr;
  cudaError_t (*cudaStreamBeginCaptureToGraph)(cudaStream_t, cudaGraph_t, const cudaGraphNode_t*,
                                               const cudaGraphEdgeData*, size_t,
                                               cudaStreamCaptureMode) = nullptr;
  cudaError_t (*cudaStreamBeginCaptureToGraph_ptsz)(cudaStream_t, cudaGraph_t,
                                                    const cudaGraphNode_t*,
                                                    const cudaGraphEdgeData*, size_t,
                                                    cudaStreamCaptureMode) = nullptr;
  cudaError_t (*cudaStreamEndCapture)(cudaStream_t, cudaGraph_t*) = nullptr;
  cudaError_t (*cudaStreamEndCapture_ptsz)(cudaStream_t, cudaGraph_t*) = nullptr;
  cudaError_t (*cudaStreamIsCapturing)(cudaStream_t, cudaStreamCaptureStatus*) = nullptr;
  cudaError_t (*cudaGetDevice)(int*) = nullptr;
  cudaError_t (*cudaSetDevice)(int) = nullptr;
  cudaError_t (*cudaGetDeviceCount)(int*) = nullptr;
  cudaError_t (*cudaDeviceSynchronize)() = nullptr;
  cudaError_t (*cudaGetLastError)() = nullptr;
  // Optional: peer access reaches mapped memory only through the pool (pages).
  cudaError_t (*cudaDeviceEnablePeerAccess)(int, unsigned int) = nullptr;
  cudaError_t (*cudaDeviceDisablePeerAccess)(int) = nullptr;

  // A runtime was found but lacks a function the pool needs (named here): the missing ones answer
  // cudaErrorInsufficientDriver, every call goes to the runtime as is and the pool stays off.
  bool passthrough_only = false;
  const char* first_missing = nullptr;

  // True when every function the pool needs was found (the capture variants are optional).
  bool complete() const;
};

// The resolved runtime, once found (real_runtime.cpp).
extern std::atomic<const RealRuntime*> g_real_runtime;
const RealRuntime* resolve_real_runtime();

// Resolves the runtime; null while no runtime is loaded (it may be loaded later: call again).
// Thread-safe; one load after the first success (every interposed call starts here).
inline const RealRuntime* real_runtime() {
  if (const RealRuntime* rt = g_real_runtime.load(std::memory_order_acquire)) [[likely]]
    return rt;
  return resolve_real_runtime();
}

// True when a shared libcudart.so.* (other than this library) is loaded in the process.
bool shared_runtime_loaded();

// Forgets the resolution (after fork the child resolves again; the table itself stays valid).
void reset_real_runtime_after_fork();

}  // namespace cudapool
