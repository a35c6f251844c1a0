// A stand-in "static runtime": what NVIDIA's libcudart_static.a is to a program built with nvcc's
// default -cudart static - its own copy of the runtime's allocation path, linked into the program,
// that reaches the driver only through dlopen("libcuda.so.1") and cuGetProcAddress (found with
// dlsym on that handle). No libcudart.so is linked or loaded by it; the driver loads the stand-in
// runtime privately to own the state (driver.cpp), so its allocations count as driver_mallocs
// and driver_frees (the static runtime is a driver-API client), read through the driver's
// standinGetCounters.
//
// CMake target cudart_static_standin; it carries a RUNPATH to the stand-in driver's folder, so a
// program linked with it finds the stand-in libcuda.so.1 by its soname.
//
// Semantics as the shared runtime's: a per-thread current device (0 at first) whose primary
// context is made current at a thread's first call; cudaMalloc of 0 bytes gives nullptr,
// cudaFree(nullptr) succeeds. Errors: cudaErrorInsufficientDriver (35) when libcuda.so.1 or an
// entry point is missing; else the driver's code as a cudaError_t (equal numbers:
// CUDA_ERROR_OUT_OF_MEMORY = cudaErrorMemoryAllocation = 2, ...).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

cudaError_t static_cudaMalloc(void** devPtr, size_t size);
cudaError_t static_cudaFree(void* devPtr);
cudaError_t static_cudaMemGetInfo(size_t* free, size_t* total);
cudaError_t static_cudaSetDevice(int device);
cudaError_t static_cudaDeviceSynchronize();
