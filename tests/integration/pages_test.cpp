// The pool on pages (docs/pages.md), on the stand-in's virtual memory management: a process gets
// pages by default, data stays where the program put it while idle pages move around it, a freed
// block that queued work still writes to is not unmapped before the fence, IPC is refused with
// the reason, peer access reaches mapped pages, every VMM call may fail without harm, and a
// reset returns the pages. Registered with small watermarks (CMakeLists.txt).
#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

StandinVmmCounters vmm(int device = -1) {
  using Fn = int (*)(int, StandinVmmCounters*);
  static auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "standinGetVmmCounters"));
  StandinVmmCounters c{};
  EXPECT_NE(fn, nullptr) << "the stand-in has no VMM counters";
  if (fn != nullptr) {
    EXPECT_EQ(0, fn(device, &c));
  }
  return c;
}

void inject(const char* kind, int count) {
  using Fn = void (*)(const char*, int);
  static auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "standinInjectVmmFailures"));
  ASSERT_NE(fn, nullptr);
  fn(kind, count);
}

// The access flags of `device` to the page at `ptr`, as the driver records them.
unsigned long long access_of(int device, const void* ptr) {
  using Fn = CUresult (*)(unsigned long long*, const CUmemLocation*, CUdeviceptr);
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(driver, nullptr);
  auto fn = driver != nullptr ? reinterpret_cast<Fn>(dlsym(driver, "cuMemGetAccess")) : nullptr;
  EXPECT_NE(fn, nullptr);
  unsigned long long flags = ~0ull;
  CUmemLocation location{};
  location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  location.id = device;
  if (fn != nullptr) {
    EXPECT_EQ(CUDA_SUCCESS, fn(&flags, &location, reinterpret_cast<CUdeviceptr>(ptr)));
  }
  return flags;
}

TEST(Pages, AreUsedByDefault) {
  StandinCounters before = counters();
  StandinVmmCounters vbefore = vmm();
  void* a = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 3 * kMiB));
  EXPECT_EQ(before.mallocs, counters().mallocs) << "a segment was allocated on a VMM device";
  StandinVmmCounters v = vmm();
  EXPECT_EQ(vbefore.creates + 2, v.creates) << "3 MiB takes two 2 MiB pages";
  EXPECT_GE(v.set_access_calls, vbefore.set_access_calls + 1);
  cudaPointerAttributes attributes{};
  ASSERT_CUDA_OK(cudaPointerGetAttributes(&attributes, a));
  EXPECT_EQ(cudaMemoryTypeDevice, attributes.type);
  fill_pattern(a, 3 * kMiB, 1);
  void* copy = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&copy, 3 * kMiB));
  ASSERT_CUDA_OK(cudaMemcpy(copy, a, 3 * kMiB, cudaMemcpyDeviceToDevice));
  EXPECT_EQ(-1, pattern_mismatch(copy, 3 * kMiB, 1));
  EXPECT_CUDA_OK(cudaFree(a));
  EXPECT_CUDA_OK(cudaFree(copy));
}

TEST(Pages, DataSurvivesTheRemappingOfItsNeighboursPages) {
  void* keep = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&keep, 5 * kMiB));
  fill_pattern(keep, 5 * kMiB, 7);
  std::vector<void*> blocks;
  for (std::size_t size : {40 * kMiB, 12 * kMiB, 30 * kMiB}) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, size));
    stamp_pattern(p, size, size);
    blocks.push_back(p);
  }
  const unsigned long long unmaps = vmm().unmaps;
  ASSERT_CUDA_OK(cudaFree(blocks[0]));
  ASSERT_CUDA_OK(cudaFree(blocks[2]));
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  // 90 MiB fits no free run: the freed blocks' pages move into a new run.
  void* big = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&big, 90 * kMiB));
  EXPECT_GT(vmm().unmaps, unmaps) << "no idle page moved: the test is weak";
  stamp_pattern(big, 90 * kMiB, 90);
  EXPECT_EQ(-1, pattern_mismatch(keep, 5 * kMiB, 7));
  EXPECT_TRUE(stamps_intact(blocks[1], 12 * kMiB, 12 * kMiB));
  EXPECT_TRUE(stamps_intact(big, 90 * kMiB, 90));
  EXPECT_CUDA_OK(cudaFree(big));
  EXPECT_CUDA_OK(cudaFree(blocks[1]));
  EXPECT_CUDA_OK(cudaFree(keep));
}

// Registered with STANDIN_ASYNC_DELAY_US: queued work runs well after the free.
TEST(Pages, AFreedBlockStillWrittenByQueuedWorkIsNotUnmappedBeforeTheFence) {
  cudaStream_t stream = nullptr;
  ASSERT_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const unsigned long long before = vmm().unmapped_accesses;
  for (int round = 0; round < 4; ++round) {
    void *a = nullptr, *fence_post = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&a, 64 * kMiB));
    ASSERT_CUDA_OK(cudaMalloc(&fence_post, 12 * kMiB));  // after a: b cannot start in a's run
    ASSERT_CUDA_OK(cudaMemsetAsync(a, 0x5A, 64 * kMiB, stream));
    ASSERT_CUDA_OK(cudaFree(a));  // the memset has not run yet
    const unsigned long long unmaps = vmm().unmaps;
    void* b = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&b, 100 * kMiB));  // takes a's pages: only after the memset ran
    EXPECT_GT(vmm().unmaps, unmaps) << "a's pages did not move: the test is weak";
    ASSERT_CUDA_OK(cudaFree(b));
    ASSERT_CUDA_OK(cudaFree(fence_post));
  }
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_EQ(before, vmm().unmapped_accesses) << "queued work found its memory unmapped";
  EXPECT_CUDA_OK(cudaStreamDestroy(stream));
}

INTEG_SCENARIO(ipc_on_pages) {
  void* p = nullptr;
  if (cudaMalloc(&p, 64 * kMiB) != cudaSuccess) return 2;
  cudaIpcMemHandle_t handle{};
  cudaError_t err = cudaIpcGetMemHandle(&handle, p);
  std::printf("ipc=%d last=%d\n", static_cast<int>(err), static_cast<int>(cudaGetLastError()));
  std::fflush(stdout);
  return 0;
}

TEST(Pages, IpcIsRefusedWithTheReasonAndWorksWithVmmOff) {
  ProcessResult r = run_scenario("ipc_on_pages", EnvChanges{{{"CUDAPOOL_LOG_LEVEL", "warn"}}, {}});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("ipc=1 ")) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("CUDAPOOL_VMM=off")) << describe(r);
  r = run_scenario("ipc_on_pages", EnvChanges{{{"CUDAPOOL_VMM", "off"}}, {}});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("ipc=0 ")) << describe(r);
}

// Registered with STANDIN_DEVICE_COUNT=2.
TEST(Pages, PeerAccessReachesMappedPagesOldAndNew) {
  ASSERT_CUDA_OK(cudaSetDevice(1));
  void* before = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&before, 8 * kMiB));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_NONE, access_of(0, before));
  ASSERT_CUDA_OK(cudaSetDevice(0));
  ASSERT_CUDA_OK(cudaDeviceEnablePeerAccess(1, 0));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_READWRITE, access_of(0, before))
      << "device 0 enabled peer access, yet cannot reach device 1's existing pages";
  ASSERT_CUDA_OK(cudaSetDevice(1));
  void* after = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&after, 30 * kMiB));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_READWRITE, access_of(0, after));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_READWRITE, access_of(1, after));
  ASSERT_CUDA_OK(cudaSetDevice(0));
  ASSERT_CUDA_OK(cudaDeviceDisablePeerAccess(1));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_NONE, access_of(0, before));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_NONE, access_of(0, after));
  EXPECT_EQ(CU_MEM_ACCESS_FLAGS_PROT_READWRITE, access_of(1, after));
  int device = -1;
  ASSERT_CUDA_OK(cudaGetDevice(&device));
  EXPECT_EQ(0, device) << "the pool changed the current device";
  EXPECT_CUDA_OK(cudaFree(before));
  EXPECT_CUDA_OK(cudaFree(after));
}

// Each VMM call fails once, on its first use after the injection: the program sees a working
// cudaMalloc (the pool's, or the native fallback), its data intact, and at the end the pool
// returns every page (registration: HIGH_WATERMARK=64MiB, LOW_WATERMARK=0, IDLE_RELEASE_MS=200).
TEST(Pages, EveryVmmCallMayFailWithoutHarm) {
  void* keep = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&keep, 6 * kMiB));
  fill_pattern(keep, 6 * kMiB, 3);
  std::size_t range = 2 * kGiB;
  for (const char* kind : {"create", "map", "set_access", "unmap", "release", "reserve"}) {
    SCOPED_TRACE(kind);
    const unsigned long long injected_before = standinInjectedFaults();
    inject(kind, 1);
    std::vector<void*> blocks;
    range += 256 * kMiB;                                       // larger than any range so far:
    for (std::size_t size : {200 * kMiB, range, 50 * kMiB}) {  // a new one is reserved
      void* p = nullptr;
      ASSERT_CUDA_OK(cudaMalloc(&p, size));
      stamp_pattern(p, size, size);
      blocks.push_back(p);
    }
    for (void* p : blocks)
      ASSERT_CUDA_OK(cudaFree(p));  // idle above the high watermark: released
    void* again = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&again, 120 * kMiB));  // moves pages
    ASSERT_CUDA_OK(cudaFree(again));
    EXPECT_EQ(cudaSuccess, cudaGetLastError());
    // Releases run on cudapool's thread: wait until one used the injected failure.
    EXPECT_TRUE(wait_until(milliseconds(10000), [&] {
      return standinInjectedFaults() > injected_before;
    })) << "the failure was never injected";
    inject(kind, 0);
  }
  EXPECT_EQ(-1, pattern_mismatch(keep, 6 * kMiB, 3));
  EXPECT_CUDA_OK(cudaFree(keep));
  // Everything is idle: the idle timer brings the pool down to the low watermark, 0.
  EXPECT_TRUE(wait_until(milliseconds(10000), [] { return vmm().bytes_physical == 0; }))
      << vmm().bytes_physical << " bytes of pages still held";
}

TEST(Pages, OutOfMemoryMovesIdlePagesBeforeFailing) {
  // Registration: STANDIN_DEVICE_MEMORY=256MiB, no release by the watermarks.
  void* a = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 150 * kMiB));
  ASSERT_CUDA_OK(cudaFree(a));
  void* b = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&b, 200 * kMiB)) << "a's idle pages should have served";
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
  void* c = nullptr;
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&c, 100 * kMiB));
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaGetLastError());
  EXPECT_CUDA_OK(cudaFree(b));
  ASSERT_CUDA_OK(cudaMalloc(&c, 100 * kMiB));
  EXPECT_CUDA_OK(cudaFree(c));
}

TEST(Pages, ResetReturnsThePagesAndRanges) {
  void* a = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 3 * kMiB));
  ASSERT_CUDA_OK(cudaMalloc(&a, 40 * kMiB));
  ASSERT_GT(vmm().bytes_physical, 0u);
  ASSERT_CUDA_OK(cudaDeviceReset());
  StandinVmmCounters v = vmm();
  EXPECT_EQ(0u, v.bytes_physical) << "a reset does not free VMM memory: the pool must";
  EXPECT_EQ(0u, v.pages_mapped);
  EXPECT_EQ(v.reserves, v.address_frees);
  void* b = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&b, 3 * kMiB));  // the pool starts over
  EXPECT_CUDA_OK(cudaFree(b));
}

}  // namespace
}  // namespace integ
