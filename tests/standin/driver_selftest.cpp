// The stand-in driver's entry points as a program that also runs the stand-in runtime reaches
// them (dlopen("libcuda.so.1") finds the driver the runtime loaded): cuGetProcAddress by version
// and flags, contexts agreeing with the runtime's current device, the driver's error codes, mixed
// frees across the two APIs, and the counters that tell the APIs apart. Tests that need their own
// environment run in a child (selftest_child.h). `standin.driver` in CTest.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "cuda_standin.h"
#include "selftest_child.h"

using standin_test::ExpectChildPasses;
using standin_test::InChild;

namespace {

constexpr size_t kMiB = size_t{1} << 20;

#define REQUIRE_CHILD() \
  if (!InChild()) GTEST_SKIP() << "runs as a child of its Env test"

void* DriverHandle() {
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);  // the runtime starts and loads its driver
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(h, nullptr) << "the runtime did not load the stand-in driver";
  return h;
}

// Opened once: the first call starts the runtime (a runtime call on the calling thread).
void* Driver() {
  static void* h = DriverHandle();
  return h;
}

template <typename F>
F Sym(const char* name) {
  void* h = Driver();
  void* p = h ? dlsym(h, name) : nullptr;
  EXPECT_NE(p, nullptr) << name;
  return reinterpret_cast<F>(p);
}

#define DRV(name) Sym<decltype(&::name)>(#name)

StandinCounters Counters(int device = -1) {
  StandinCounters c{};
  EXPECT_EQ(standinGetCounters(device, &c), 0);
  return c;
}

// cuGetProcAddress_v2's answer, or null; *status and *result filled.
void* Lookup(const char* name, int version, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT,
             CUresult* result = nullptr, CUdriverProcAddressQueryResult* status = nullptr) {
  void* fn = reinterpret_cast<void*>(1);
  CUdriverProcAddressQueryResult s = static_cast<CUdriverProcAddressQueryResult>(-1);
  const CUresult r = DRV(cuGetProcAddress_v2)(name, &fn, version, flags, &s);
  if (result) *result = r;
  if (status) *status = s;
  if (r != CUDA_SUCCESS) {
    EXPECT_EQ(fn, nullptr) << name << ": *pfn not cleared";
  }
  return r == CUDA_SUCCESS ? fn : nullptr;
}

void* Export(const char* name) {
  return Driver() ? dlsym(Driver(), name) : nullptr;
}

CUcontext Primary(int ordinal) {
  CUdevice dev = 0;
  EXPECT_EQ(DRV(cuDeviceGet)(&dev, ordinal), CUDA_SUCCESS);
  CUcontext ctx = nullptr;
  EXPECT_EQ(DRV(cuDevicePrimaryCtxRetain)(&ctx, dev), CUDA_SUCCESS);
  EXPECT_NE(ctx, nullptr);
  EXPECT_EQ(DRV(cuDevicePrimaryCtxRelease_v2)(dev), CUDA_SUCCESS);  // the runtime holds it too
  return ctx;
}

CUcontext Current() {
  CUcontext ctx = reinterpret_cast<CUcontext>(1);
  EXPECT_EQ(DRV(cuCtxGetCurrent)(&ctx), CUDA_SUCCESS);
  return ctx;
}

int RuntimeDevice() {
  int d = -1;
  EXPECT_EQ(cudaGetDevice(&d), cudaSuccess);
  return d;
}

// ---- cuGetProcAddress -------------------------------------------------------------------------

TEST(ProcAddress, AnswersTheAbiOfTheVersionAsked) {
  ASSERT_NE(Export("cuMemAlloc"), Export("cuMemAlloc_v2"));
  EXPECT_EQ(Lookup("cuMemAlloc", 13000), Export("cuMemAlloc_v2"));
  EXPECT_EQ(Lookup("cuMemAlloc", 3020), Export("cuMemAlloc_v2"));
  EXPECT_EQ(Lookup("cuMemAlloc", 3010), Export("cuMemAlloc"));
  EXPECT_EQ(Lookup("cuMemFree", 12000), Export("cuMemFree_v2"));
  EXPECT_EQ(Lookup("cuMemFree", 2000), Export("cuMemFree"));
  EXPECT_EQ(Lookup("cuMemGetInfo", 13000), Export("cuMemGetInfo_v2"));
  EXPECT_EQ(Lookup("cuCtxDestroy", 4000), Export("cuCtxDestroy_v2"));
  EXPECT_EQ(Lookup("cuCtxDestroy", 3020), Export("cuCtxDestroy"));
  EXPECT_EQ(Lookup("cuDevicePrimaryCtxReset", 11000), Export("cuDevicePrimaryCtxReset_v2"));
  EXPECT_EQ(Lookup("cuDevicePrimaryCtxReset", 10020), Export("cuDevicePrimaryCtxReset"));
  EXPECT_EQ(Lookup("cuDevicePrimaryCtxRelease", 12000), Export("cuDevicePrimaryCtxRelease_v2"));
  EXPECT_EQ(Lookup("cuDevicePrimaryCtxRelease", 7000), Export("cuDevicePrimaryCtxRelease"));
  // CUDA 13 gave cuCtxSynchronize and cuCtxGetDevice a context argument.
  EXPECT_EQ(Lookup("cuCtxSynchronize", 13000), Export("cuCtxSynchronize_v2"));
  EXPECT_EQ(Lookup("cuCtxSynchronize", 12090), Export("cuCtxSynchronize"));
  EXPECT_EQ(Lookup("cuCtxGetDevice", 12000), Export("cuCtxGetDevice"));
  EXPECT_EQ(Lookup("cuGetProcAddress", 12000), Export("cuGetProcAddress_v2"));
  EXPECT_EQ(Lookup("cuGetProcAddress", 11030), Export("cuGetProcAddress"));
  EXPECT_EQ(Lookup("cuMemCreate", 13000), Export("cuMemCreate"));
}

TEST(ProcAddress, UnknownAndTooNewNamesAreNotFound) {
  CUresult r = CUDA_SUCCESS;
  CUdriverProcAddressQueryResult s{};
  EXPECT_EQ(Lookup("cuNoSuchFunction", 13000, 0, &r, &s), nullptr);
  EXPECT_EQ(r, CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(s, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  // Callers pass base names: a versioned name is not one.
  EXPECT_EQ(Lookup("cuMemAlloc_v2", 13000, 0, &r, &s), nullptr);
  EXPECT_EQ(s, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  EXPECT_EQ(Lookup("cuMemAllocAsync", 11010, 0, &r, &s), nullptr);
  EXPECT_EQ(r, CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(s, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  EXPECT_EQ(Lookup("cuInit", 1000, 0, &r, &s), nullptr);
  EXPECT_EQ(s, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  EXPECT_NE(Lookup("cuMemAllocAsync", 11020, 0, &r, &s), nullptr);
  EXPECT_EQ(s, CU_GET_PROC_ADDRESS_SUCCESS);
}

TEST(ProcAddress, FlagsPickThePerThreadVariants) {
  ASSERT_NE(Export("cuMemAllocAsync_ptsz"), nullptr);
  EXPECT_EQ(Lookup("cuMemAllocAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM),
            Export("cuMemAllocAsync_ptsz"));
  EXPECT_EQ(Lookup("cuMemFreeAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM),
            Export("cuMemFreeAsync_ptsz"));
  EXPECT_EQ(Lookup("cuMemAllocAsync", 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM),
            Export("cuMemAllocAsync"));
  EXPECT_EQ(Lookup("cuMemAllocAsync", 13000, CU_GET_PROC_ADDRESS_DEFAULT),
            Export("cuMemAllocAsync"));
  // No per-thread variant: the one function.
  EXPECT_EQ(Lookup("cuMemAlloc", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM),
            Export("cuMemAlloc_v2"));
  void* fn = nullptr;
  EXPECT_EQ(DRV(cuGetProcAddress_v2)("cuMemAlloc", &fn, 13000, 4, nullptr),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuGetProcAddress_v2)(nullptr, &fn, 13000, 0, nullptr), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuGetProcAddress_v2)("cuMemAlloc", nullptr, 13000, 0, nullptr),
            CUDA_ERROR_INVALID_VALUE);
  // The 11.3 signature, without the status.
  using V1 = CUresult (*)(const char*, void**, int, cuuint64_t);
  auto v1 = reinterpret_cast<V1>(Export("cuGetProcAddress"));
  ASSERT_NE(v1, nullptr);
  ASSERT_EQ(v1("cuMemAlloc", &fn, 13000, 0), CUDA_SUCCESS);
  EXPECT_EQ(fn, Export("cuMemAlloc_v2"));
  EXPECT_EQ(v1("cuNoSuchFunction", &fn, 13000, 0), CUDA_ERROR_NOT_FOUND);
}

// ---- contexts and the runtime's current device ------------------------------------------------

TEST(Contexts, OnePrimaryContextPerDeviceIsCurrentAfterARuntimeCall) {
  RuntimeDevice();
  const CUcontext p0 = Primary(0);
  EXPECT_EQ(Primary(0), p0) << "one primary context per device";
  EXPECT_EQ(Current(), p0);
  CUdevice dev = 0;
  ASSERT_EQ(DRV(cuCtxGetDevice)(&dev), CUDA_SUCCESS);
  EXPECT_EQ(dev, 1000);
  unsigned flags = 99;
  int active = -1;
  ASSERT_EQ(DRV(cuDevicePrimaryCtxGetState)(1000, &flags, &active), CUDA_SUCCESS);
  EXPECT_EQ(active, 1) << "the runtime uses it";
  EXPECT_EQ(DRV(cuDevicePrimaryCtxGetState)(0, &flags, &active), CUDA_ERROR_INVALID_DEVICE);
}

TEST(Contexts, AFreshThreadHasNoContextUntilARuntimeCall) {
  std::thread([] {
    EXPECT_EQ(Current(), nullptr);
    CUdevice dev = 0;
    EXPECT_EQ(DRV(cuCtxGetDevice)(&dev), CUDA_ERROR_INVALID_CONTEXT);
    CUdeviceptr p = 0;
    EXPECT_EQ(DRV(cuMemAlloc_v2)(&p, 4096), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_EQ(DRV(cuCtxSynchronize)(), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_EQ(DRV(cuCtxPopCurrent_v2)(nullptr), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_EQ(RuntimeDevice(), 0);
    EXPECT_EQ(Current(), Primary(0)) << "the runtime made its device's primary context current";
  }).join();
}

TEST(DISABLED_Child, ContextsAndTheCurrentDeviceAgree) {
  REQUIRE_CHILD();
  const CUcontext p0 = Primary(0), p1 = Primary(1);
  ASSERT_NE(p0, p1);
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  EXPECT_EQ(Current(), p1) << "cudaSetDevice makes the device's primary context current";
  CUdevice dev = 0;
  ASSERT_EQ(DRV(cuCtxGetDevice)(&dev), CUDA_SUCCESS);
  EXPECT_EQ(dev, 1001);
  ASSERT_EQ(DRV(cuCtxSetCurrent)(p0), CUDA_SUCCESS);
  EXPECT_EQ(RuntimeDevice(), 0) << "cuCtxSetCurrent moves the runtime's device";
  ASSERT_EQ(DRV(cuCtxPushCurrent_v2)(p1), CUDA_SUCCESS);
  EXPECT_EQ(RuntimeDevice(), 1);
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, kMiB), cudaSuccess);
  StandinAllocationInfo info{};
  ASSERT_EQ(standinGetAllocationInfo(p, &info), 0);
  EXPECT_EQ(info.device, 1) << "cudaMalloc allocates on the current context's device";
  CUdeviceptr q = 0;
  ASSERT_EQ(DRV(cuMemAlloc_v2)(&q, kMiB), CUDA_SUCCESS);
  ASSERT_EQ(standinGetAllocationInfo(reinterpret_cast<void*>(q), &info), 0);
  EXPECT_EQ(info.device, 1);
  EXPECT_EQ(info.api, STANDIN_API_DRIVER);
  CUcontext popped = nullptr;
  ASSERT_EQ(DRV(cuCtxPopCurrent_v2)(&popped), CUDA_SUCCESS);
  EXPECT_EQ(popped, p1);
  EXPECT_EQ(Current(), p0);
  EXPECT_EQ(RuntimeDevice(), 0) << "popping returns to the context below";
  ASSERT_EQ(DRV(cuCtxSetCurrent)(nullptr), CUDA_SUCCESS);  // pops the last one
  EXPECT_EQ(Current(), nullptr);
  EXPECT_EQ(DRV(cuCtxGetDevice_v2)(&dev, p1), CUDA_SUCCESS) << "of a given context";
  EXPECT_EQ(dev, 1001);
  EXPECT_EQ(RuntimeDevice(), 0);
  EXPECT_EQ(Current(), p0) << "a runtime call binds its device's primary context again";
  EXPECT_EQ(DRV(cuCtxSetCurrent)(reinterpret_cast<CUcontext>(&dev)), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(DRV(cuCtxPushCurrent_v2)(nullptr), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(DRV(cuMemFree_v2)(q), CUDA_SUCCESS);
}

TEST(Env, ContextsAndTheCurrentDeviceAgree) {
  ExpectChildPasses("DISABLED_Child.ContextsAndTheCurrentDeviceAgree", {"STANDIN_DEVICE_COUNT=2"});
}

// cuDevicePrimaryCtxReset_v2 and cuCtxDestroy_v2 of a primary context free its device's
// allocations, as cudaDeviceReset does (no frees counted); the context stays usable.
TEST(Contexts, ResetAndDestroyFreeTheDevicesAllocations) {
  const CUcontext p0 = Primary(0);
  for (int destroy = 0; destroy < 2; ++destroy) {
    const StandinCounters before = Counters();
    void* a = nullptr;
    CUdeviceptr b = 0;
    ASSERT_EQ(cudaMalloc(&a, kMiB), cudaSuccess);
    ASSERT_EQ(DRV(cuMemAlloc_v2)(&b, kMiB), CUDA_SUCCESS);
    EXPECT_EQ(Counters().bytes_held, before.bytes_held + 2 * kMiB);
    if (destroy) {
      ASSERT_EQ(DRV(cuCtxDestroy_v2)(p0), CUDA_SUCCESS);
      EXPECT_EQ(Current(), nullptr) << "the destroyed current context is popped";
      ASSERT_EQ(DRV(cuCtxSetCurrent)(p0), CUDA_SUCCESS);
    } else {
      ASSERT_EQ(DRV(cuDevicePrimaryCtxReset_v2)(1000), CUDA_SUCCESS);
    }
    StandinAllocationInfo info{};
    EXPECT_EQ(standinGetAllocationInfo(a, &info), -1);
    EXPECT_EQ(standinGetAllocationInfo(reinterpret_cast<void*>(b), &info), -1);
    const StandinCounters after = Counters();
    EXPECT_EQ(after.bytes_held, before.bytes_held);
    EXPECT_EQ(after.frees + after.driver_frees, before.frees + before.driver_frees);
    EXPECT_EQ(DRV(cuMemFree_v2)(b), CUDA_ERROR_INVALID_VALUE) << "already freed by the reset";
    EXPECT_EQ(Current(), p0);
  }
}

// ---- device memory: error codes, mixed frees, counters ---------------------------------------

TEST(Memory, DriverErrorCodes) {
  RuntimeDevice();
  CUdeviceptr p = 0;
  EXPECT_EQ(DRV(cuMemAlloc_v2)(&p, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuMemAlloc_v2)(nullptr, 4096), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuMemAllocManaged)(&p, 0, CU_MEM_ATTACH_GLOBAL), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuMemAllocManaged)(&p, 4096, 0), CUDA_ERROR_INVALID_VALUE);
  size_t pitch = 0;
  EXPECT_EQ(DRV(cuMemAllocPitch_v2)(&p, &pitch, 100, 10, 3), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuMemAllocAsync)(&p, 0, nullptr), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuMemFree_v2)(0), CUDA_ERROR_INVALID_VALUE);
  // Larger than the device (16 GiB by default).
  const StandinCounters before = Counters();
  EXPECT_EQ(DRV(cuMemAlloc_v2)(&p, size_t{32} << 30), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(Counters().malloc_failures, before.malloc_failures + 1);
  // Injected failures apply to driver allocations too.
  standinInjectMallocFailures(1);
  EXPECT_EQ(DRV(cuMemAlloc_v2)(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_EQ(DRV(cuMemAlloc_v2)(&p, 4096), CUDA_SUCCESS);
  // Interior and double frees fail and leave the allocation and its neighbour intact.
  CUdeviceptr q = 0;
  ASSERT_EQ(DRV(cuMemAlloc_v2)(&q, 4096), CUDA_SUCCESS);
  std::memset(reinterpret_cast<void*>(q), 0x5a, 4096);
  EXPECT_EQ(DRV(cuMemFree_v2)(p + 8), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(DRV(cuMemFree_v2)(p), CUDA_SUCCESS);
  EXPECT_EQ(DRV(cuMemFree_v2)(p), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(reinterpret_cast<unsigned char*>(q)[4095], 0x5a);
  CUdeviceptr base = 0;
  size_t size = 0;
  ASSERT_EQ(DRV(cuMemGetAddressRange_v2)(&base, &size, q + 100), CUDA_SUCCESS);
  EXPECT_EQ(base, q);
  EXPECT_EQ(size, 4096u);
  EXPECT_EQ(DRV(cuMemGetAddressRange_v2)(&base, &size, p), CUDA_ERROR_NOT_FOUND);
  // The 32-bit allocator has no memory to give.
  using V1 = CUresult (*)(unsigned*, unsigned);
  unsigned small = 0;
  EXPECT_EQ(reinterpret_cast<V1>(Export("cuMemAlloc"))(&small, 4096), CUDA_ERROR_NOT_SUPPORTED);
  ASSERT_EQ(DRV(cuMemFree_v2)(q), CUDA_SUCCESS);
}

TEST(DISABLED_Child, InjectedFreeFailure) {
  REQUIRE_CHILD();
  RuntimeDevice();
  CUdeviceptr p = 0;
  ASSERT_EQ(DRV(cuMemAlloc_v2)(&p, 4096), CUDA_SUCCESS);
  EXPECT_EQ(DRV(cuMemFree_v2)(p), CUDA_ERROR_LAUNCH_FAILED);
  EXPECT_EQ(DRV(cuMemFree_v2)(p), CUDA_SUCCESS) << "the injected failure freed nothing";
  EXPECT_EQ(standinInjectedFaults(), 1u);
}

TEST(Env, InjectedFreeFailuresApplyToTheDriver) {
  ExpectChildPasses("DISABLED_Child.InjectedFreeFailure", {"STANDIN_FAIL_FREE_AT=1"});
}

TEST(Memory, MixedFreesAndCountersTellTheApisApart) {
  RuntimeDevice();
  const StandinCounters c0 = Counters();
  void* a = nullptr;
  ASSERT_EQ(cudaMalloc(&a, kMiB), cudaSuccess);
  const StandinCounters c1 = Counters();
  EXPECT_EQ(c1.mallocs, c0.mallocs + 1);
  EXPECT_EQ(c1.driver_mallocs, c0.driver_mallocs) << "the runtime's own cuMemAlloc_v2 counted";
  ASSERT_EQ(DRV(cuMemFree_v2)(reinterpret_cast<CUdeviceptr>(a)), CUDA_SUCCESS);
  const StandinCounters c2 = Counters();
  EXPECT_EQ(c2.driver_frees, c1.driver_frees + 1);
  EXPECT_EQ(c2.frees, c1.frees);
  EXPECT_EQ(c2.bytes_held, c0.bytes_held);

  CUdeviceptr b = 0;
  ASSERT_EQ(DRV(cuMemAlloc_v2)(&b, kMiB), CUDA_SUCCESS);
  const StandinCounters c3 = Counters();
  EXPECT_EQ(c3.driver_mallocs, c2.driver_mallocs + 1);
  EXPECT_EQ(c3.mallocs, c2.mallocs);
  ASSERT_EQ(cudaFree(reinterpret_cast<void*>(b)), cudaSuccess);
  const StandinCounters c4 = Counters();
  EXPECT_EQ(c4.frees, c3.frees + 1);
  EXPECT_EQ(c4.driver_frees, c3.driver_frees);
  EXPECT_EQ(c4.bytes_held, c0.bytes_held);
  EXPECT_EQ(cudaFree(reinterpret_cast<void*>(b)), cudaErrorInvalidValue);

  // Managed, pitched and stream-ordered driver allocations count as driver calls too.
  CUdeviceptr m = 0, pitched = 0, async = 0;
  size_t pitch = 0;
  ASSERT_EQ(DRV(cuMemAllocManaged)(&m, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
  ASSERT_EQ(DRV(cuMemAllocPitch_v2)(&pitched, &pitch, 100, 10, 4), CUDA_SUCCESS);
  EXPECT_EQ(pitch % 512, 0u);
  EXPECT_GE(pitch, 100u);
  ASSERT_EQ(DRV(cuMemAllocAsync)(&async, 4096, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(Counters().driver_mallocs, c4.driver_mallocs + 3);
  ASSERT_EQ(DRV(cuMemFreeAsync)(async, nullptr), CUDA_SUCCESS);
  ASSERT_EQ(DRV(cuCtxSynchronize)(), CUDA_SUCCESS);
  EXPECT_EQ(DRV(cuMemFree_v2)(m), CUDA_SUCCESS);
  EXPECT_EQ(DRV(cuMemFree_v2)(pitched), CUDA_SUCCESS);
  const StandinCounters c5 = Counters();
  EXPECT_EQ(c5.driver_frees, c4.driver_frees + 3);
  EXPECT_EQ(c5.bytes_held, c0.bytes_held);
  EXPECT_GE(c5.device_syncs, c4.device_syncs + 1) << "cuCtxSynchronize counts a device sync";
}

TEST(Memory, InfoAndIpcAgreeWithTheRuntime) {
  RuntimeDevice();
  size_t f1 = 0, t1 = 0, f2 = 0, t2 = 0;
  ASSERT_EQ(cudaMemGetInfo(&f1, &t1), cudaSuccess);
  ASSERT_EQ(DRV(cuMemGetInfo_v2)(&f2, &t2), CUDA_SUCCESS);
  EXPECT_EQ(f1, f2);
  EXPECT_EQ(t1, t2);
  CUdeviceptr p = 0;
  ASSERT_EQ(DRV(cuMemAlloc_v2)(&p, 4 * kMiB), CUDA_SUCCESS);
  ASSERT_EQ(cudaMemGetInfo(&f1, &t1), cudaSuccess);
  EXPECT_EQ(f1, f2 - 4 * kMiB);
  CUipcMemHandle dh{};
  cudaIpcMemHandle_t rh{};
  ASSERT_EQ(DRV(cuIpcGetMemHandle)(&dh, p + 64), CUDA_SUCCESS);
  ASSERT_EQ(cudaIpcGetMemHandle(&rh, reinterpret_cast<void*>(p)), cudaSuccess);
  EXPECT_EQ(std::memcmp(&dh, &rh, sizeof dh), 0) << "interior pointers name the allocation";
  CUdeviceptr m = 0;
  ASSERT_EQ(DRV(cuMemAllocManaged)(&m, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
  EXPECT_EQ(DRV(cuIpcGetMemHandle)(&dh, m), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(DRV(cuMemFree_v2)(m), CUDA_SUCCESS);
  EXPECT_EQ(DRV(cuMemFree_v2)(p), CUDA_SUCCESS);
}

// ---- the runtime reaches the driver through cuGetProcAddress ----------------------------------
// proc_interposer.cpp (preloaded in the child) interposes dlsym and answers the runtime's
// cuGetProcAddress_v2 lookups with counting wrappers, as an interposer would: the runtime's
// allocations then come back through them.

TEST(DISABLED_Child, RuntimeAllocatesThroughTheLookedUpFunctions) {
  REQUIRE_CHILD();
  using Count = unsigned long long (*)(const char*);
  auto calls = reinterpret_cast<Count>(dlsym(RTLD_DEFAULT, "standinTestInterposedCalls"));
  ASSERT_NE(calls, nullptr) << "the interposer is not preloaded";
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, kMiB), cudaSuccess);
  EXPECT_EQ(calls("lookups"), 4u) << "cuMemAlloc, cuMemFree, cuMemGetInfo, cuCtxSynchronize";
  EXPECT_EQ(calls("cuMemAlloc"), 1u);
  size_t f = 0, t = 0;
  ASSERT_EQ(cudaMemGetInfo(&f, &t), cudaSuccess);
  EXPECT_EQ(calls("cuMemGetInfo"), 1u);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(calls("cuCtxSynchronize"), 1u);
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(calls("cuMemFree"), 1u);
  EXPECT_EQ(Counters().mallocs, 1u);
  EXPECT_EQ(Counters().driver_mallocs, 0u) << "the runtime's calls count as runtime calls";
}

TEST(Env, RuntimeAllocatesThroughTheLookedUpFunctions) {
  if (!std::string(STANDIN_SANITIZER_PRELOAD).empty())
    GTEST_SKIP() << "the test's dlsym interposer (proc_interposer.cpp) crashes a sanitizer's "
                    "start, which resolves its interceptors through dlsym; the plain tree runs it";
  ExpectChildPasses("DISABLED_Child.RuntimeAllocatesThroughTheLookedUpFunctions",
                    {std::string("LD_PRELOAD=") +
                     (std::string(STANDIN_SANITIZER_PRELOAD).empty()
                          ? std::string()
                          : std::string(STANDIN_SANITIZER_PRELOAD) + ":") +
                     STANDIN_PROC_INTERPOSER});
}

}  // namespace
