// The driver's side of the shim (docs/driver-api.md): for processes without a shared CUDA runtime
// (a program linked with -lcuda, a static runtime, numba, JAX), a RealRuntime made of driver calls,
// so that the pool runs on the driver alone.
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>

#include "shim/driver_api.h"
#include "shim/real_runtime.h"

namespace cudapool {

// A RealRuntime whose functions are driver calls on the devices' primary contexts, or null when
// no driver is loaded or it lacks a function. Used only where no shared runtime is loaded.
const RealRuntime* driver_runtime();

// The device ordinal of `dev`, or -1.
int driver_ordinal(const DriverApi& drv, CUdevice dev);

// The current context is `device`'s primary context (the pool serves only those: memory of
// another context is not the primary context's to share).
bool current_is_primary(const DriverApi& drv, int* device);

// How calls reached the pool (RouteCounts, `stats`): driver entry points that the pool served, and
// lookups answered with cudapool's function (entry_points.cpp).
extern std::atomic<std::uint64_t> g_driver_calls;
extern std::atomic<std::uint64_t> g_dlsym_lookups;
extern std::atomic<std::uint64_t> g_proc_address_lookups;

// CUresult for a pool answer, and back.
CUresult to_cu(cudaError_t err);
cudaError_t from_cu(CUresult res);

}  // namespace cudapool
