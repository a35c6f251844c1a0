// A CUDA runtime that is only partly there (libcudart_partial.so): cudaMalloc, cudaFree,
// cudaGetDevice, cudaSetDevice and cudaGetLastError, nothing else the pool needs (no
// cudaMemGetInfo, cudaDeviceSynchronize, cudaStreamIsCapturing, ...). Device memory is host memory
// from aligned_alloc. partialRuntimeCalls() counts the calls that reached it.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdlib>

namespace {
std::atomic<int> g_calls{0};
thread_local cudaError_t t_last = cudaSuccess;
}  // namespace

extern "C" {

__attribute__((visibility("default"))) int partialRuntimeCalls() {
  return g_calls.load();
}

__attribute__((visibility("default"))) cudaError_t cudaMalloc(void** p, size_t size) {
  ++g_calls;
  if (p == nullptr) return t_last = cudaErrorInvalidValue;
  if (size == 0) {
    *p = nullptr;
    return cudaSuccess;
  }
  if (size > (size_t{1} << 40)) return t_last = cudaErrorMemoryAllocation;
  *p = aligned_alloc(512, (size + 511) / 512 * 512);
  return *p != nullptr ? cudaSuccess : (t_last = cudaErrorMemoryAllocation);
}

__attribute__((visibility("default"))) cudaError_t cudaFree(void* p) {
  ++g_calls;
  free(p);
  return cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGetDevice(int* d) {
  ++g_calls;
  *d = 0;
  return cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaSetDevice(int d) {
  ++g_calls;
  return d == 0 ? cudaSuccess : (t_last = cudaErrorInvalidDevice);
}

__attribute__((visibility("default"))) cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e;
}

}  // extern "C"
