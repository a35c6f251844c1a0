// Self-tests of the stand-in driver's virtual memory management API (cuMemCreate, cuMemMap, ...):
// the driver is reached as a program reaches it, through dlopen("libcuda.so.1") once the runtime
// has started (and loaded it). Tests that need their own environment (STANDIN_* variables are
// read once per process) run in a child: a parent test re-runs this binary with the variables set
// and only one DISABLED_Child test selected, and checks that it ran and passed.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cuda_standin.h"
#include "selftest_child.h"

extern char** environ;

namespace {

constexpr size_t kMiB = 1ull << 20;
constexpr size_t kGiB = 1ull << 30;
constexpr size_t kG = 2 * kMiB;  // the default granularity
constexpr size_t kReserve = 64 * kGiB;

// Holds a stream's queue until open(): work queued behind it has not run, however slow the
// machine (a host function on the stream waits for the flag). The destructor opens it and waits
// until the host function has let go of the gate.
class Gate {
 public:
  explicit Gate(cudaStream_t s) {
    EXPECT_EQ(cudaLaunchHostFunc(s, &Gate::wait, this), cudaSuccess);
  }
  ~Gate() {
    open();
    while (!done_.load())
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void open() { open_.store(true); }

 private:
  static void wait(void* self) {
    auto* gate = static_cast<Gate*>(self);
    while (!gate->open_.load())
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    gate->done_.store(true);  // the last touch of the gate
  }
  std::atomic<bool> open_{false};
  std::atomic<bool> done_{false};
};

// ---- the driver, as a program finds it ---------------------------------------------------------

struct Driver {
  void* handle = nullptr;
  decltype(&::cuInit) Init = nullptr;
  decltype(&::cuDriverGetVersion) DriverGetVersion = nullptr;
  decltype(&::cuDeviceGet) DeviceGet = nullptr;
  decltype(&::cuDeviceGetCount) DeviceGetCount = nullptr;
  decltype(&::cuDeviceGetAttribute) DeviceGetAttribute = nullptr;
  decltype(&::cuCtxGetDevice) CtxGetDevice = nullptr;
  decltype(&::cuGetErrorName) GetErrorName = nullptr;
  decltype(&::cuMemGetAllocationGranularity) MemGetAllocationGranularity = nullptr;
  decltype(&::cuMemCreate) MemCreate = nullptr;
  decltype(&::cuMemRelease) MemRelease = nullptr;
  decltype(&::cuMemAddressReserve) MemAddressReserve = nullptr;
  decltype(&::cuMemAddressFree) MemAddressFree = nullptr;
  decltype(&::cuMemMap) MemMap = nullptr;
  decltype(&::cuMemUnmap) MemUnmap = nullptr;
  decltype(&::cuMemSetAccess) MemSetAccess = nullptr;
  decltype(&::cuMemGetAccess) MemGetAccess = nullptr;
};

template <typename F>
void Resolve(void* h, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(h, name));
  if (*out == nullptr) ADD_FAILURE() << "libcuda.so.1 does not export " << name;
}

Driver Open(void* h) {
  Driver d;
  d.handle = h;
  if (h == nullptr) return d;
  Resolve(h, "cuInit", &d.Init);
  Resolve(h, "cuDriverGetVersion", &d.DriverGetVersion);
  Resolve(h, "cuDeviceGet", &d.DeviceGet);
  Resolve(h, "cuDeviceGetCount", &d.DeviceGetCount);
  Resolve(h, "cuDeviceGetAttribute", &d.DeviceGetAttribute);
  Resolve(h, "cuCtxGetDevice", &d.CtxGetDevice);
  Resolve(h, "cuGetErrorName", &d.GetErrorName);
  Resolve(h, "cuMemGetAllocationGranularity", &d.MemGetAllocationGranularity);
  Resolve(h, "cuMemCreate", &d.MemCreate);
  Resolve(h, "cuMemRelease", &d.MemRelease);
  Resolve(h, "cuMemAddressReserve", &d.MemAddressReserve);
  Resolve(h, "cuMemAddressFree", &d.MemAddressFree);
  Resolve(h, "cuMemMap", &d.MemMap);
  Resolve(h, "cuMemUnmap", &d.MemUnmap);
  Resolve(h, "cuMemSetAccess", &d.MemSetAccess);
  Resolve(h, "cuMemGetAccess", &d.MemGetAccess);
  return d;
}

// The runtime starts (and loads its driver, as NVIDIA's does); the program then opens
// libcuda.so.1 by name, which finds the loaded stand-in by its soname.
const Driver& Cu() {
  static const Driver d = [] {
    EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    EXPECT_NE(h, nullptr) << dlerror();
    if (h) {
      EXPECT_NE(dlsym(h, "standinDriverAttach"), nullptr) << "not the stand-in driver";
    }
    return Open(h);
  }();
  if (d.handle == nullptr) ADD_FAILURE() << "no driver";
  return d;
}

// ---- helpers -----------------------------------------------------------------------------------

CUmemAllocationProp Prop(int device = 0) {
  CUmemAllocationProp p{};
  p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.location.id = device;
  return p;
}

CUmemAccessDesc Access(int device, CUmemAccess_flags flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
  CUmemAccessDesc d{};
  d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  d.location.id = device;
  d.flags = flags;
  return d;
}

CUmemLocation Location(int device) {
  CUmemLocation l{};
  l.type = CU_MEM_LOCATION_TYPE_DEVICE;
  l.id = device;
  return l;
}

StandinVmmCounters Vmm(int device = -1) {
  StandinVmmCounters c{};
  EXPECT_EQ(standinGetVmmCounters(device, &c), 0);
  return c;
}

StandinCounters Counters(int device = -1) {
  StandinCounters c{};
  EXPECT_EQ(standinGetCounters(device, &c), 0);
  return c;
}

char* Ptr(CUdeviceptr p) {
  return reinterpret_cast<char*>(static_cast<uintptr_t>(p));
}

// The permissions /proc/self/maps shows for the page holding `a` ("rw-s", "---p"), "" if none.
std::string Perms(uintptr_t a) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long long lo = 0, hi = 0;
    char perms[8] = {};
    if (sscanf(line.c_str(), "%llx-%llx %7s", &lo, &hi, perms) != 3) continue;
    if (a >= lo && a < hi) return perms;
  }
  return "";
}

size_t FreeBytes() {
  size_t free = 0, total = 0;
  EXPECT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
  return free;
}

// Creates, maps at `at` and grants device 0 read-write access: a pool's page.
CUmemGenericAllocationHandle MapPage(CUdeviceptr at, size_t size = kG) {
  const Driver& d = Cu();
  CUmemGenericAllocationHandle h = 0;
  const CUmemAllocationProp prop = Prop();
  EXPECT_EQ(d.MemCreate(&h, size, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(d.MemMap(at, size, 0, h, 0), CUDA_SUCCESS);
  const CUmemAccessDesc rw = Access(0);
  EXPECT_EQ(d.MemSetAccess(at, size, &rw, 1), CUDA_SUCCESS);
  return h;
}

// ---- child processes ---------------------------------------------------------------------------

using standin_test::ChildResult;
using standin_test::ExpectChildPasses;
using standin_test::RunChild;

#define REQUIRE_CHILD() \
  if (!standin_test::InChild()) GTEST_SKIP() << "runs in a child process with its own environment"

// ================================================================================================
// In-process tests (default configuration: one device of 16 GiB, 2 MiB granularity).

TEST(Driver, InitVersionDevicesAndAttributes) {
  const Driver& d = Cu();
  ASSERT_NE(d.handle, nullptr);
  EXPECT_EQ(d.Init(0), CUDA_SUCCESS);
  EXPECT_EQ(d.Init(1), CUDA_ERROR_INVALID_VALUE);
  int v = 0;
  ASSERT_EQ(d.DriverGetVersion(&v), CUDA_SUCCESS);
  EXPECT_EQ(v, 13000);
  EXPECT_EQ(d.DriverGetVersion(nullptr), CUDA_ERROR_INVALID_VALUE);
  int n = 0;
  ASSERT_EQ(d.DeviceGetCount(&n), CUDA_SUCCESS);
  EXPECT_EQ(n, 1);
  CUdevice dev = -1;
  ASSERT_EQ(d.DeviceGet(&dev, 0), CUDA_SUCCESS);
  EXPECT_EQ(dev, 1000);  // opaque handles: ordinal + 1000
  EXPECT_EQ(d.DeviceGet(&dev, 1), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(d.DeviceGet(&dev, -1), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(d.DeviceGet(nullptr, 0), CUDA_ERROR_INVALID_VALUE);
  CUdevice cur = -1;
  ASSERT_EQ(d.CtxGetDevice(&cur), CUDA_SUCCESS);
  EXPECT_EQ(cur, 1000);

  ASSERT_EQ(d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1000),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 1);
  v = -1;
  ASSERT_EQ(d.DeviceGetAttribute(
                &v, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, 1000),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 0);
  ASSERT_EQ(d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 1000),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 9);  // as cudaDeviceGetAttribute answers
  EXPECT_EQ(d.DeviceGetAttribute(&v, static_cast<CUdevice_attribute>(100000), 1000),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.DeviceGetAttribute(&v, static_cast<CUdevice_attribute>(0), 1000),
            CUDA_ERROR_INVALID_VALUE);
  // A runtime ordinal is not a device handle.
  EXPECT_EQ(d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0),
            CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1001),
            CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(
      d.DeviceGetAttribute(nullptr, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1000),
      CUDA_ERROR_INVALID_VALUE);
  const char* name = nullptr;
  ASSERT_EQ(d.GetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &name), CUDA_SUCCESS);
  EXPECT_STREQ(name, "CUDA_ERROR_OUT_OF_MEMORY");
  EXPECT_EQ(d.GetErrorName(static_cast<CUresult>(123456), &name), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(name, nullptr);
}

TEST(Vmm, Granularity) {
  const Driver& d = Cu();
  size_t g = 0;
  CUmemAllocationProp prop = Prop();
  ASSERT_EQ(d.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_SUCCESS);
  EXPECT_EQ(g, kG);
  g = 0;
  ASSERT_EQ(d.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
            CUDA_SUCCESS);
  EXPECT_EQ(g, kG);
  EXPECT_EQ(
      d.MemGetAllocationGranularity(&g, &prop, static_cast<CUmemAllocationGranularity_flags>(7)),
      CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemGetAllocationGranularity(nullptr, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, nullptr, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_INVALID_VALUE);
  CUmemAllocationProp bad = Prop();
  bad.type = CU_MEM_ALLOCATION_TYPE_INVALID;
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, &bad, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_INVALID_VALUE);
  bad = Prop();
  bad.location.type = CU_MEM_LOCATION_TYPE_HOST;
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, &bad, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_INVALID_VALUE);
  // location.id is the device ordinal, not a CUdevice handle.
  bad = Prop(1);
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, &bad, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_INVALID_DEVICE);
  bad = Prop(1000);
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, &bad, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_INVALID_DEVICE);
}

TEST(Vmm, CreateChecksItsArgumentsAndHandlesAreNeverReused) {
  const Driver& d = Cu();
  const StandinVmmCounters before = Vmm();
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h = 0;
  EXPECT_EQ(d.MemCreate(&h, 0, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemCreate(&h, kG - 4096, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemCreate(&h, kG + 4096, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemCreate(&h, kG, &prop, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemCreate(nullptr, kG, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemCreate(&h, kG, nullptr, 0), CUDA_ERROR_INVALID_VALUE);
  CUmemAllocationProp bad = Prop(1);
  EXPECT_EQ(d.MemCreate(&h, kG, &bad, 0), CUDA_ERROR_INVALID_DEVICE);
  bad = Prop();
  bad.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;  // attribute says 0
  EXPECT_EQ(d.MemCreate(&h, kG, &bad, 0), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(h, 0u) << "a failed create wrote a handle";
  StandinVmmCounters mid = Vmm();
  EXPECT_EQ(mid.create_failures - before.create_failures, 8u);
  EXPECT_EQ(mid.creates, before.creates);
  EXPECT_EQ(mid.bytes_physical, before.bytes_physical);

  std::vector<CUmemGenericAllocationHandle> seen;
  for (int i = 0; i < 4; ++i) {
    CUmemGenericAllocationHandle x = 0;
    ASSERT_EQ(d.MemCreate(&x, kG * (i + 1), &prop, 0), CUDA_SUCCESS);
    EXPECT_NE(x, 0u);
    for (auto y : seen)
      EXPECT_NE(x, y);
    seen.push_back(x);
    ASSERT_EQ(d.MemRelease(x), CUDA_SUCCESS);
  }
  const StandinVmmCounters after = Vmm();
  EXPECT_EQ(after.creates - before.creates, 4u);
  EXPECT_EQ(after.releases - before.releases, 4u);
  EXPECT_EQ(after.bytes_physical, before.bytes_physical);
  for (auto x : seen)
    EXPECT_EQ(d.MemRelease(x), CUDA_ERROR_INVALID_VALUE) << "released twice";
  EXPECT_EQ(d.MemRelease(0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemRelease(0x12345), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Vmm().other_failures - after.other_failures, 6u);
}

TEST(Vmm, CapacityIsSharedWithCudaMalloc) {
  const Driver& d = Cu();
  const CUmemAllocationProp prop = Prop();
  const size_t free0 = FreeBytes();
  const StandinCounters c0 = Counters();
  const StandinVmmCounters v0 = Vmm();
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, 4 * kMiB, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(free0 - FreeBytes(), 4 * kMiB) << "cudaMemGetInfo does not see cuMemCreate";
  EXPECT_EQ(Counters().bytes_held - c0.bytes_held, 4 * kMiB);
  EXPECT_GE(Counters().peak_bytes_held, Counters().bytes_held);
  EXPECT_EQ(Vmm().bytes_physical - v0.bytes_physical, 4 * kMiB);
  // cudaMalloc takes all but 3 MiB: one more granule fits, a second does not.
  void* big = nullptr;
  ASSERT_EQ(cudaMalloc(&big, FreeBytes() - 3 * kMiB), cudaSuccess);
  CUmemGenericAllocationHandle h2 = 0, h3 = 0;
  ASSERT_EQ(d.MemCreate(&h2, kG, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(d.MemCreate(&h3, kG, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
  void* small = nullptr;
  EXPECT_EQ(cudaMalloc(&small, 2 * kMiB), cudaErrorMemoryAllocation) << "cudaMalloc ignores VMM";
  cudaGetLastError();
  ASSERT_EQ(d.MemRelease(h2), CUDA_SUCCESS);
  // Other processes' memory counts too.
  standinSetOtherMemory(0, 2 * kMiB);
  EXPECT_EQ(d.MemCreate(&h3, kG, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
  standinSetOtherMemory(0, 0);
  ASSERT_EQ(d.MemCreate(&h3, kG, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h3), CUDA_SUCCESS);
  ASSERT_EQ(cudaFree(big), cudaSuccess);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  EXPECT_EQ(FreeBytes(), free0);
  EXPECT_EQ(Counters().bytes_held, c0.bytes_held);
  EXPECT_EQ(Vmm().bytes_physical, v0.bytes_physical);
  EXPECT_EQ(Vmm().create_failures - v0.create_failures, 2u);
}

TEST(Vmm, ReservationsAreCheapAlignedAndFreedWhole) {
  const Driver& d = Cu();
  const StandinVmmCounters v0 = Vmm();
  CUdeviceptr p = 0;
  // 64 GiB of address space costs no memory (the sanitizer trees cannot always find a hole of a
  // terabyte in theirs).
  ASSERT_EQ(d.MemAddressReserve(&p, kReserve, 0, 0, 0), CUDA_SUCCESS);
  EXPECT_EQ(p % kG, 0u);
  EXPECT_EQ(Perms(p), "---p");
  EXPECT_EQ(Perms(p + kReserve - 1), "---p");
  EXPECT_EQ(d.MemAddressFree(p, kReserve - kG), CUDA_ERROR_INVALID_VALUE);  // not whole
  EXPECT_EQ(d.MemAddressFree(p + kG, kReserve - kG), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(d.MemAddressFree(p, kReserve), CUDA_SUCCESS);
  EXPECT_EQ(Perms(p), "");
  EXPECT_EQ(d.MemAddressFree(p, kReserve), CUDA_ERROR_INVALID_VALUE);  // already freed

  CUdeviceptr q = 0;
  ASSERT_EQ(d.MemAddressReserve(&q, kG, kGiB, 0, 0), CUDA_SUCCESS);
  EXPECT_EQ(q % kGiB, 0u) << "alignment not honoured";
  ASSERT_EQ(d.MemAddressFree(q, kG), CUDA_SUCCESS);
  // The address hint is taken where it is free.
  CUdeviceptr r = 0;
  ASSERT_EQ(d.MemAddressReserve(&r, 4 * kG, 0, q, 0), CUDA_SUCCESS);
  EXPECT_EQ(r, q);
  ASSERT_EQ(d.MemAddressFree(r, 4 * kG), CUDA_SUCCESS);

  EXPECT_EQ(d.MemAddressReserve(nullptr, kG, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemAddressReserve(&r, 0, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemAddressReserve(&r, kG + 4096, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemAddressReserve(&r, kG, 3 * kMiB, 0, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemAddressReserve(&r, kG, 0, 0, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemAddressFree(0, kG), CUDA_ERROR_INVALID_VALUE);
  const StandinVmmCounters v1 = Vmm();
  EXPECT_EQ(v1.reserves - v0.reserves, 3u);
  EXPECT_EQ(v1.address_frees - v0.address_frees, 3u);
}

TEST(Vmm, MappedMemoryIsDeviceMemoryOnceAccessible) {
  const Driver& d = Cu();
  const StandinVmmCounters v0 = Vmm();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 8 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, 2 * kG, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemMap(base, 2 * kG, 0, h, 0), CUDA_SUCCESS);
  EXPECT_EQ(Vmm().pages_mapped - v0.pages_mapped, 2u);
  // Mapped, not yet accessible.
  EXPECT_EQ(Perms(base), "---s");
  const CUmemLocation dev0 = Location(0);
  unsigned long long flags = 99;
  ASSERT_EQ(d.MemGetAccess(&flags, &dev0, base), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_NONE);
  EXPECT_EQ(cudaMemset(Ptr(base), 1, 64), cudaErrorInvalidValue);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, Ptr(base)), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeUnregistered);
  cudaGetLastError();

  const CUmemAccessDesc rw = Access(0);
  ASSERT_EQ(d.MemSetAccess(base, 2 * kG, &rw, 1), CUDA_SUCCESS);
  EXPECT_EQ(Perms(base), "rw-s");
  EXPECT_EQ(Perms(base + 2 * kG), "---p") << "past the mapping: still only reserved";
  ASSERT_EQ(d.MemGetAccess(&flags, &dev0, base + kG + 17), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  ASSERT_EQ(cudaMemset(Ptr(base), 0x5A, 2 * kG), cudaSuccess);
  EXPECT_EQ(static_cast<unsigned char>(Ptr(base)[2 * kG - 1]), 0x5A);
  ASSERT_EQ(cudaPointerGetAttributes(&attr, Ptr(base + 100)), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attr.device, 0);
  EXPECT_EQ(attr.devicePointer, Ptr(base + 100));
  EXPECT_EQ(attr.hostPointer, nullptr);
  StandinAllocationInfo info{};
  ASSERT_EQ(standinGetAllocationInfo(Ptr(base + kG), &info), 0);
  EXPECT_EQ(info.base, base);
  EXPECT_EQ(info.size, 2 * kG);
  EXPECT_EQ(info.device, 0);
  EXPECT_EQ(info.api, STANDIN_API_VMM);
  EXPECT_EQ(standinGetAllocationInfo(Ptr(base + 2 * kG), &info), -1);
  // Copies to and from it, and into cudaMalloc memory.
  std::vector<unsigned char> host(4096, 0);
  ASSERT_EQ(cudaMemcpy(host.data(), Ptr(base + 10), host.size(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(host[4095], 0x5A);
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 4096), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, Ptr(base), 4096, cudaMemcpyDeviceToDevice), cudaSuccess);
  EXPECT_EQ(static_cast<unsigned char*>(dev)[7], 0x5A);
  EXPECT_EQ(cudaMemcpy(Ptr(base), host.data(), 2 * kG + 1, cudaMemcpyHostToDevice),
            cudaErrorInvalidValue)
      << "runs past the mapped range";
  ASSERT_EQ(cudaFree(dev), cudaSuccess);

  // The same handle at a second address shows the same bytes, and after unmapping both and
  // mapping again elsewhere too.
  ASSERT_EQ(d.MemMap(base + 4 * kG, 2 * kG, 0, h, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemSetAccess(base + 4 * kG, 2 * kG, &rw, 1), CUDA_SUCCESS);
  EXPECT_EQ(static_cast<unsigned char>(Ptr(base + 4 * kG)[12345]), 0x5A);
  Ptr(base)[3] = 0x11;
  EXPECT_EQ(Ptr(base + 4 * kG)[3], 0x11);
  ASSERT_EQ(d.MemUnmap(base, 2 * kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemUnmap(base + 4 * kG, 2 * kG), CUDA_SUCCESS);
  EXPECT_EQ(Perms(base), "---p") << "unmapped addresses are reserved again";
  EXPECT_EQ(cudaMemset(Ptr(base), 1, 64), cudaErrorInvalidValue);
  cudaGetLastError();
  ASSERT_EQ(d.MemMap(base + 6 * kG, 2 * kG, 0, h, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemSetAccess(base + 6 * kG, 2 * kG, &rw, 1), CUDA_SUCCESS);
  EXPECT_EQ(Ptr(base + 6 * kG)[3], 0x11);
  EXPECT_EQ(static_cast<unsigned char>(Ptr(base + 6 * kG)[2 * kG - 1]), 0x5A);
  ASSERT_EQ(d.MemUnmap(base + 6 * kG, 2 * kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 8 * kG), CUDA_SUCCESS);
  const StandinVmmCounters v1 = Vmm();
  EXPECT_EQ(v1.maps - v0.maps, 3u);
  EXPECT_EQ(v1.unmaps - v0.unmaps, 3u);
  EXPECT_EQ(v1.set_access_calls - v0.set_access_calls, 3u);
  EXPECT_EQ(v1.pages_mapped, v0.pages_mapped);
  EXPECT_EQ(v1.bytes_physical, v0.bytes_physical);
}

TEST(Vmm, MapRules) {
  const Driver& d = Cu();
  CUdeviceptr base = 0, other = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 4 * kG, 0, 0, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressReserve(&other, 4 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, 2 * kG, &prop, 0), CUDA_SUCCESS);
  const StandinVmmCounters v0 = Vmm();
  EXPECT_EQ(d.MemMap(base + 4096, kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);  // unaligned ptr
  EXPECT_EQ(d.MemMap(base, kG / 2, 0, h, 0), CUDA_ERROR_INVALID_VALUE);     // unaligned size
  EXPECT_EQ(d.MemMap(base, kG, 4096, h, 0), CUDA_ERROR_INVALID_VALUE);      // unaligned offset
  EXPECT_EQ(d.MemMap(base, 0, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemMap(base, kG, 0, h, 1), CUDA_ERROR_INVALID_VALUE);               // flags
  EXPECT_EQ(d.MemMap(base, 3 * kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);           // > handle
  EXPECT_EQ(d.MemMap(base, 2 * kG, kG, h, 0), CUDA_ERROR_INVALID_VALUE);          // offset + size
  EXPECT_EQ(d.MemMap(base + 3 * kG, 2 * kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);  // past the end
  EXPECT_EQ(d.MemMap(base, kG, 0, h + 0x10000, 0), CUDA_ERROR_INVALID_VALUE);     // no handle
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 4 * kG), cudaSuccess);
  const CUdeviceptr unreserved = (reinterpret_cast<uintptr_t>(dev) + kG - 1) / kG * kG;
  EXPECT_EQ(d.MemMap(unreserved, kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE) << "not reserved";
  ASSERT_EQ(cudaFree(dev), cudaSuccess);
  EXPECT_EQ(Vmm().other_failures - v0.other_failures, 10u);
  EXPECT_EQ(Vmm().maps, v0.maps);

  // An offset maps the handle's later granules.
  ASSERT_EQ(d.MemMap(base, 2 * kG, 0, h, 0), CUDA_SUCCESS);
  const CUmemAccessDesc rw = Access(0);
  ASSERT_EQ(d.MemSetAccess(base, 2 * kG, &rw, 1), CUDA_SUCCESS);
  Ptr(base)[kG] = 0x42;
  ASSERT_EQ(d.MemMap(other, kG, kG, h, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemSetAccess(other, kG, &rw, 1), CUDA_SUCCESS);
  EXPECT_EQ(Ptr(other)[0], 0x42);
  // Nothing already mapped may be mapped over: the same range, its head or tail, around it.
  EXPECT_EQ(d.MemMap(base, 2 * kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemMap(base + kG, kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemMap(base + kG, 2 * kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemMap(other, 2 * kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Ptr(base)[kG], 0x42) << "a refused map changed the mapping";
  // A released handle cannot be mapped again.
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  EXPECT_EQ(d.MemMap(base + 2 * kG, kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(d.MemUnmap(base, 2 * kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemUnmap(other, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(other, 4 * kG), CUDA_SUCCESS);
}

TEST(Vmm, UnmapTakesWholeMappingsAndAddressFreeWaitsForIt) {
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 8 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemGenericAllocationHandle a = MapPage(base, 2 * kG);   // [0, 2)
  const CUmemGenericAllocationHandle b = MapPage(base + 2 * kG);  // [2, 3)
  const CUmemGenericAllocationHandle c = MapPage(base + 4 * kG);  // [4, 5)
  const StandinVmmCounters v0 = Vmm();
  EXPECT_EQ(d.MemUnmap(base, kG), CUDA_ERROR_INVALID_VALUE) << "part of a mapping";
  EXPECT_EQ(d.MemUnmap(base + kG, 2 * kG), CUDA_ERROR_INVALID_VALUE) << "tail of one, all of b";
  EXPECT_EQ(d.MemUnmap(base + 2 * kG, 3 * kG), CUDA_ERROR_INVALID_VALUE) << "a gap";
  EXPECT_EQ(d.MemUnmap(base + 3 * kG, kG), CUDA_ERROR_INVALID_VALUE) << "not mapped";
  EXPECT_EQ(d.MemUnmap(base + 4096, kG), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemUnmap(base, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemAddressFree(base, 8 * kG), CUDA_ERROR_INVALID_VALUE) << "still mapped";
  EXPECT_EQ(Vmm().other_failures - v0.other_failures, 7u);
  EXPECT_EQ(Perms(base), "rw-s") << "a refused unmap changed the mapping";
  // Adjacent whole mappings go in one call.
  ASSERT_EQ(d.MemUnmap(base, 3 * kG), CUDA_SUCCESS);
  EXPECT_EQ(Perms(base), "---p");
  EXPECT_EQ(Perms(base + 2 * kG), "---p");
  EXPECT_EQ(Perms(base + 4 * kG), "rw-s");
  EXPECT_EQ(d.MemAddressFree(base, 8 * kG), CUDA_ERROR_INVALID_VALUE) << "c is still mapped";
  ASSERT_EQ(d.MemUnmap(base + 4 * kG, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 8 * kG), CUDA_SUCCESS);
  EXPECT_EQ(Vmm().unmaps - v0.unmaps, 2u);
  for (auto h : {a, b, c})
    EXPECT_EQ(d.MemRelease(h), CUDA_SUCCESS);
}

TEST(Vmm, SetAccessRulesAndReadOnlyAccess) {
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 4 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h1 = 0, h2 = 0;
  ASSERT_EQ(d.MemCreate(&h1, kG, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemCreate(&h2, kG, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemMap(base, kG, 0, h1, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemMap(base + kG, kG, 0, h2, 0), CUDA_SUCCESS);
  CUmemAccessDesc rw = Access(0);
  EXPECT_EQ(d.MemSetAccess(base, 3 * kG, &rw, 1), CUDA_ERROR_INVALID_VALUE) << "not all mapped";
  EXPECT_EQ(d.MemSetAccess(base + 4096, kG, &rw, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemSetAccess(base, kG, nullptr, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemSetAccess(base, kG, &rw, 0), CUDA_ERROR_INVALID_VALUE);
  CUmemAccessDesc bad = Access(1);
  EXPECT_EQ(d.MemSetAccess(base, kG, &bad, 1), CUDA_ERROR_INVALID_DEVICE);
  bad = Access(0);
  bad.location.type = CU_MEM_LOCATION_TYPE_HOST;
  EXPECT_EQ(d.MemSetAccess(base, kG, &bad, 1), CUDA_ERROR_INVALID_VALUE);
  bad = Access(0, static_cast<CUmemAccess_flags>(2));
  EXPECT_EQ(d.MemSetAccess(base, kG, &bad, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Perms(base), "---s") << "a refused cuMemSetAccess changed the access";
  // One call covers both mappings.
  ASSERT_EQ(d.MemSetAccess(base, 2 * kG, &rw, 1), CUDA_SUCCESS);
  ASSERT_EQ(cudaMemset(Ptr(base + kG - 8), 0x77, 16), cudaSuccess);  // across the boundary
  EXPECT_EQ(Ptr(base + kG)[7], 0x77);

  // Read-only: readable, a copy source, not a memset target.
  const CUmemAccessDesc ro = Access(0, CU_MEM_ACCESS_FLAGS_PROT_READ);
  ASSERT_EQ(d.MemSetAccess(base + kG, kG, &ro, 1), CUDA_SUCCESS);
  const CUmemLocation dev0 = Location(0);
  unsigned long long flags = 0;
  ASSERT_EQ(d.MemGetAccess(&flags, &dev0, base + kG), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_READ);
  ASSERT_EQ(d.MemGetAccess(&flags, &dev0, base), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  EXPECT_EQ(Perms(base + kG), "r--s");
  EXPECT_EQ(cudaMemset(Ptr(base + kG), 1, 16), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemset(Ptr(base + kG - 8), 1, 16), cudaErrorInvalidValue) << "half read-only";
  cudaGetLastError();
  char out[16] = {};
  ASSERT_EQ(cudaMemcpy(out, Ptr(base + kG), 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(out[7], 0x77);
  EXPECT_EQ(cudaMemcpy(Ptr(base + kG), out, 8, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  cudaGetLastError();
  // Revoked: not accessible at all.
  const CUmemAccessDesc none = Access(0, CU_MEM_ACCESS_FLAGS_PROT_NONE);
  ASSERT_EQ(d.MemSetAccess(base + kG, kG, &none, 1), CUDA_SUCCESS);
  EXPECT_EQ(Perms(base + kG), "---s");
  ASSERT_EQ(d.MemGetAccess(&flags, &dev0, base + kG), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_NONE);
  EXPECT_EQ(cudaMemcpy(out, Ptr(base + kG), 8, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  cudaGetLastError();
  // cuMemGetAccess's own checks.
  EXPECT_EQ(d.MemGetAccess(&flags, &dev0, base + 2 * kG), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemGetAccess(nullptr, &dev0, base), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(d.MemGetAccess(&flags, nullptr, base), CUDA_ERROR_INVALID_VALUE);
  const CUmemLocation dev1 = Location(1);
  EXPECT_EQ(d.MemGetAccess(&flags, &dev1, base), CUDA_ERROR_INVALID_DEVICE);
  ASSERT_EQ(d.MemUnmap(base, 2 * kG), CUDA_SUCCESS);
  EXPECT_EQ(d.MemRelease(h1), CUDA_SUCCESS);
  EXPECT_EQ(d.MemRelease(h2), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_SUCCESS);
}

TEST(Vmm, ReleaseWhileMappedLivesUntilTheLastUnmap) {
  const Driver& d = Cu();
  const size_t free0 = FreeBytes();
  const StandinVmmCounters v0 = Vmm();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 4 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemGenericAllocationHandle h = MapPage(base);
  ASSERT_EQ(d.MemMap(base + 2 * kG, kG, 0, h, 0), CUDA_SUCCESS);
  const CUmemAccessDesc rw = Access(0);
  ASSERT_EQ(d.MemSetAccess(base + 2 * kG, kG, &rw, 1), CUDA_SUCCESS);
  Ptr(base)[100] = 0x3C;
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);  // allowed while mapped
  EXPECT_EQ(d.MemRelease(h), CUDA_ERROR_INVALID_VALUE) << "the handle is gone";
  EXPECT_EQ(d.MemMap(base + kG, kG, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Vmm().bytes_physical - v0.bytes_physical, kG) << "freed while still mapped";
  EXPECT_EQ(free0 - FreeBytes(), kG);
  EXPECT_EQ(Ptr(base + 2 * kG)[100], 0x3C);
  ASSERT_EQ(cudaMemset(Ptr(base), 0x3D, 64), cudaSuccess) << "still device memory";
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
  EXPECT_EQ(Vmm().bytes_physical - v0.bytes_physical, kG) << "one mapping remains";
  EXPECT_EQ(Ptr(base + 2 * kG)[1], 0x3D);
  ASSERT_EQ(d.MemUnmap(base + 2 * kG, kG), CUDA_SUCCESS);
  EXPECT_EQ(Vmm().bytes_physical, v0.bytes_physical) << "not freed at the last unmap";
  EXPECT_EQ(FreeBytes(), free0);
  ASSERT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_SUCCESS);
}

TEST(Vmm, DeviceResetKeepsHandlesMappingsAndReservations) {
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 2 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemGenericAllocationHandle h = MapPage(base);
  ASSERT_EQ(cudaMemset(Ptr(base), 0x61, kG), cudaSuccess);
  const StandinVmmCounters v0 = Vmm();
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  const StandinVmmCounters v1 = Vmm();
  EXPECT_EQ(v1.bytes_physical, v0.bytes_physical);
  EXPECT_EQ(v1.pages_mapped, v0.pages_mapped);
  EXPECT_EQ(Ptr(base)[kG - 1], 0x61);
  ASSERT_EQ(cudaMemset(Ptr(base), 0x62, kG), cudaSuccess) << "no longer device memory";
  ASSERT_EQ(d.MemMap(base + kG, kG, 0, h, 0), CUDA_SUCCESS) << "the handle did not survive";
  ASSERT_EQ(d.MemUnmap(base + kG, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 2 * kG), CUDA_SUCCESS) << "the reservation did not survive";
}

TEST(Vmm, StreamWorkAcrossPagesOfOneReservation) {
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 4 * kG, 0, 0, 0), CUDA_SUCCESS);
  std::vector<CUmemGenericAllocationHandle> pages;
  for (int i = 0; i < 4; ++i)
    pages.push_back(MapPage(base + i * kG));
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  const StandinVmmCounters v0 = Vmm();
  ASSERT_EQ(cudaMemsetAsync(Ptr(base + kG / 2), 0x24, 3 * kG, s), cudaSuccess);
  std::vector<unsigned char> host(3 * kG);
  ASSERT_EQ(
      cudaMemcpyAsync(host.data(), Ptr(base + kG / 2), host.size(), cudaMemcpyDeviceToHost, s),
      cudaSuccess);
  ASSERT_EQ(cudaMemset2DAsync(Ptr(base), kG, 0x25, 64, 4, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(host.front(), 0x24);
  EXPECT_EQ(host.back(), 0x24);
  EXPECT_EQ(Ptr(base + 3 * kG)[63], 0x25);
  EXPECT_EQ(Vmm().unmapped_accesses, v0.unmapped_accesses);
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(d.MemUnmap(base + i * kG, kG), CUDA_SUCCESS);
    ASSERT_EQ(d.MemRelease(pages[i]), CUDA_SUCCESS);
  }
  ASSERT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_SUCCESS);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

struct HostFnCall {
  std::atomic<int> result{-1};
};
void CUDART_CB CreateFromHostFn(void* p) {
  CUmemGenericAllocationHandle h = 0;
  const CUmemAllocationProp prop = Prop();
  static_cast<HostFnCall*>(p)->result.store(Cu().MemCreate(&h, kG, &prop, 0));
}

TEST(Vmm, StreamCallbacksMayNotCall) {
  ASSERT_NE(Cu().handle, nullptr);
  HostFnCall call;
  ASSERT_EQ(cudaLaunchHostFunc(nullptr, CreateFromHostFn, &call), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(call.result.load(), CUDA_ERROR_NOT_PERMITTED);
}

TEST(Vmm, InjectedFailuresDoNothing) {
  const Driver& d = Cu();
  const unsigned long long faults0 = standinInjectedFaults();
  const StandinVmmCounters v0 = Vmm();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 2 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_SUCCESS);
  standinInjectVmmFailures("map", 2);
  EXPECT_EQ(d.MemMap(base, kG, 0, h, 0), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(d.MemMap(base, kG, 0, h, 0), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(Perms(base), "---p") << "an injected map failure mapped";
  ASSERT_EQ(d.MemMap(base, kG, 0, h, 0), CUDA_SUCCESS);
  standinInjectVmmFailures("create", 1);
  CUmemGenericAllocationHandle h2 = 0;
  EXPECT_EQ(d.MemCreate(&h2, kG, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(Vmm().bytes_physical - v0.bytes_physical, kG);
  standinInjectVmmFailures("unmap", 3);
  standinInjectVmmFailures("unmap", 0);  // cancelled
  standinInjectVmmFailures("no_such_kind", 1);
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 2 * kG), CUDA_SUCCESS);
  EXPECT_EQ(standinInjectedFaults() - faults0, 3u);
  const StandinVmmCounters v1 = Vmm();
  EXPECT_EQ(v1.create_failures - v0.create_failures, 1u);
  EXPECT_EQ(v1.other_failures - v0.other_failures, 2u);
  EXPECT_EQ(v1.maps - v0.maps, 1u);
}

TEST(Vmm, ResetCountersKeepsLiveFigures) {
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemGenericAllocationHandle h = MapPage(base);
  standinResetCounters();
  StandinVmmCounters c = Vmm(0);
  EXPECT_EQ(c.creates + c.maps + c.set_access_calls + c.reserves + c.other_failures, 0u);
  EXPECT_EQ(c.pages_mapped, 1u);
  EXPECT_EQ(c.bytes_physical, kG);
  EXPECT_EQ(standinGetVmmCounters(1, &c), -1);
  EXPECT_EQ(standinGetVmmCounters(0, nullptr), -1);
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, kG), CUDA_SUCCESS);
  c = Vmm(0);
  EXPECT_EQ(c.unmaps, 1u);
  EXPECT_EQ(c.releases, 1u);
  EXPECT_EQ(c.address_frees, 1u);
  EXPECT_EQ(c.pages_mapped, 0u);
  EXPECT_EQ(c.bytes_physical, 0u);
}

// Threads build and tear down pages of their own reservations, and copy through them, at once.
TEST(Vmm, ConcurrentCallsKeepTheBooksStraight) {
  const Driver& d = Cu();
  const StandinVmmCounters v0 = Vmm();
  const size_t free0 = FreeBytes();
  constexpr int kThreads = 6, kRounds = 60;
  std::atomic<int> errors{0};
  auto worker = [&](int id) {
    CUdeviceptr base = 0;
    if (d.MemAddressReserve(&base, 4 * kG, 0, 0, 0) != CUDA_SUCCESS) {
      errors.fetch_add(1);
      return;
    }
    const CUmemAllocationProp prop = Prop();
    const CUmemAccessDesc rw = Access(0);
    for (int i = 0; i < kRounds; ++i) {
      const CUdeviceptr at = base + (i % 4) * kG;
      CUmemGenericAllocationHandle h = 0;
      bool ok = d.MemCreate(&h, kG, &prop, 0) == CUDA_SUCCESS &&
                d.MemMap(at, kG, 0, h, 0) == CUDA_SUCCESS &&
                d.MemSetAccess(at, kG, &rw, 1) == CUDA_SUCCESS &&
                cudaMemset(Ptr(at), id + i, 4096) == cudaSuccess &&
                Ptr(at)[4095] == static_cast<char>(id + i) && d.MemRelease(h) == CUDA_SUCCESS &&
                d.MemUnmap(at, kG) == CUDA_SUCCESS;
      if (!ok) errors.fetch_add(1);
    }
    if (d.MemAddressFree(base, 4 * kG) != CUDA_SUCCESS) errors.fetch_add(1);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back(worker, t);
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(errors.load(), 0);
  const StandinVmmCounters v1 = Vmm();
  EXPECT_EQ(v1.creates - v0.creates, static_cast<unsigned>(kThreads * kRounds));
  EXPECT_EQ(v1.unmaps - v0.unmaps, static_cast<unsigned>(kThreads * kRounds));
  EXPECT_EQ(v1.bytes_physical, v0.bytes_physical);
  EXPECT_EQ(v1.pages_mapped, v0.pages_mapped);
  EXPECT_EQ(FreeBytes(), free0);
}

TEST(Fork, ChildOfAProcessUsingVmmGetsErrorsNotCrashes) {
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemGenericAllocationHandle h = MapPage(base);
  Ptr(base)[0] = 0x2A;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    CUmemGenericAllocationHandle x = 0;
    const CUmemAllocationProp prop = Prop();
    const bool refused = d.MemCreate(&x, kG, &prop, 0) == CUDA_ERROR_DEINITIALIZED &&
                         d.MemUnmap(base, kG) == CUDA_ERROR_DEINITIALIZED &&
                         d.MemRelease(h) == CUDA_ERROR_DEINITIALIZED;
    cudaPointerAttributes attr{};
    const bool attributes = cudaPointerGetAttributes(&attr, Ptr(base)) != cudaSuccess;
    StandinAllocationInfo info{};
    standinGetAllocationInfo(Ptr(base), &info);  // must not hang or crash
    _exit(refused && attributes && Ptr(base)[0] == 0x2A ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_EQ(Ptr(base)[0], 0x2A);
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);  // the parent is unaffected
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, kG), CUDA_SUCCESS);
}

// ================================================================================================
// Environment-dependent tests (run in children).

TEST(Env, QueuedWorkOnUnmappedMemoryIsSkippedAndCounted) {
  ExpectChildPasses("DISABLED_Child.UnmappedAccess", {});
}

TEST(Env, VmmOff) {
  ExpectChildPasses("DISABLED_Child.VmmOff", {"STANDIN_VMM=0"});
}

TEST(Env, FailVmm) {
  ExpectChildPasses("DISABLED_Child.FailVmm",
                    {"STANDIN_FAIL_VMM=create:2,map:2,unmap:1,set_access:1,release:1,reserve:2,"
                     "address_free:1"});
  ChildResult r = RunChild("DISABLED_Child.FailVmmIgnored", {"STANDIN_FAIL_VMM=mmap:1"});
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r.output;
  EXPECT_NE(r.output.find("ignoring STANDIN_FAIL_VMM=mmap:1"), std::string::npos) << r.output;
}

TEST(Env, Granularity) {
  ExpectChildPasses("DISABLED_Child.Granularity64K", {"STANDIN_VMM_GRANULARITY=64KiB"});
  ChildResult r = RunChild("DISABLED_Child.GranularityIgnored", {"STANDIN_VMM_GRANULARITY=3000"});
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r.output;
  EXPECT_NE(r.output.find("ignoring STANDIN_VMM_GRANULARITY=3000"), std::string::npos) << r.output;
}

TEST(Env, TwoDevices) {
  ExpectChildPasses("DISABLED_Child.TwoDevices", {"STANDIN_DEVICE_COUNT=2"});
}

// A driver the runtime did not attach is not initialised until cuInit, which attaches the
// runtime already loaded (the one beside the driver's folder).
TEST(Env, DriverWithoutTheRuntimeNeedsCuInit) {
  ExpectChildPasses("DISABLED_Child.NotAttached", {"STANDIN_DRIVER_LIBRARY=0"});
}

TEST(Env, ZeroDevices) {
  ExpectChildPasses("DISABLED_Child.ZeroDevices", {"STANDIN_DEVICE_COUNT=0"});
}

TEST(Env, CallsAfterTheExitTeardownAreDeinitialized) {
  ChildResult r = ExpectChildPasses("DISABLED_Child.AfterExit", {});
  EXPECT_NE(r.output.find("after exit: create 4 unmap 4"), std::string::npos) << r.output;
}

TEST(Env, CountersFileHasVmmCounters) {
  char dir[] = "/tmp/standin-vmm-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/counters.txt";
  ExpectChildPasses("DISABLED_Child.LeaveOnePageMapped", {"STANDIN_COUNTERS_FILE=" + path});
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line)) << "no counters file at " << path;
  EXPECT_NE(line.find(" vmm_creates=1 "), std::string::npos) << line;
  EXPECT_NE(line.find(" vmm_maps=1 "), std::string::npos) << line;
  EXPECT_NE(line.find(" vmm_bytes_physical=2097152 "), std::string::npos) << line;
  EXPECT_NE(line.find(" vmm_pages_mapped=1 "), std::string::npos) << line;
  EXPECT_NE(line.find(" vmm_unmapped_accesses=0"), std::string::npos) << line;
  EXPECT_NE(line.find("bytes_held=2097152 "), std::string::npos) << line;
  unlink(path.c_str());
  rmdir(dir);
}

TEST(DISABLED_Child, UnmappedAccess) {
  REQUIRE_CHILD();
  const Driver& d = Cu();
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 4 * kG, 0, 0, 0), CUDA_SUCCESS);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  const CUmemAccessDesc rw = Access(0);

  // Work that ran before the unmap is fine.
  CUmemGenericAllocationHandle h1 = MapPage(base);
  ASSERT_EQ(cudaMemsetAsync(Ptr(base), 0x11, kG, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Ptr(base)[kG - 1], 0x11);
  EXPECT_EQ(Vmm().unmapped_accesses, 0u);

  // Queued, then unmapped before it runs: skipped when it runs, not a crash. The unmap does not
  // wait for the device (if it did, it would wait for the gate forever).
  {
    Gate gate(s);
    ASSERT_EQ(cudaMemsetAsync(Ptr(base), 0xAB, kG, s), cudaSuccess);
    ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
    EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
  }
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Vmm().unmapped_accesses, 1u);
  EXPECT_EQ(Vmm(0).unmapped_accesses, 1u);

  // Unmapped and another page mapped at the same address before it runs: skipped too (on a GPU it
  // would write into the new page).
  EXPECT_EQ(cudaMemsetAsync(Ptr(base + kG), 0xCD, 64, s), cudaErrorInvalidValue) << "not mapped";
  cudaGetLastError();
  ASSERT_EQ(d.MemMap(base, kG, 0, h1, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemSetAccess(base, kG, &rw, 1), CUDA_SUCCESS);
  EXPECT_EQ(Ptr(base)[5], 0x11) << "the skipped memset wrote";
  CUmemGenericAllocationHandle h2 = 0;
  {
    Gate gate(s);
    ASSERT_EQ(cudaMemsetAsync(Ptr(base), 0xCD, kG, s), cudaSuccess);
    ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
    h2 = MapPage(base);
  }
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Vmm().unmapped_accesses, 2u);
  EXPECT_EQ(Ptr(base)[5], 0) << "queued work wrote into the page mapped after the unmap";

  // Released while queued: the mapping keeps the memory, the work runs.
  {
    Gate gate(s);
    ASSERT_EQ(cudaMemsetAsync(Ptr(base), 0x22, kG, s), cudaSuccess);
    ASSERT_EQ(d.MemRelease(h2), CUDA_SUCCESS);  // does not wait for the device either
    EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
  }
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Ptr(base)[kG - 1], 0x22);
  EXPECT_EQ(Vmm().unmapped_accesses, 2u);

  // A copy out of memory made inaccessible before it runs: skipped, the host buffer untouched.
  std::vector<char> host(64, 0);
  const CUmemAccessDesc none = Access(0, CU_MEM_ACCESS_FLAGS_PROT_NONE);
  {
    Gate gate(s);
    ASSERT_EQ(cudaMemcpyAsync(host.data(), Ptr(base), host.size(), cudaMemcpyDeviceToHost, s),
              cudaSuccess);
    ASSERT_EQ(d.MemSetAccess(base, kG, &none, 1), CUDA_SUCCESS);
  }
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Vmm().unmapped_accesses, 3u);
  EXPECT_EQ(host[0], 0);

  // A captured graph that touches a page unmapped before the launch.
  ASSERT_EQ(d.MemSetAccess(base, kG, &rw, 1), CUDA_SUCCESS);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(Ptr(base), 0x33, 64, s), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Ptr(base)[0], 0x33);
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);  // the last mapping: the memory goes
  EXPECT_EQ(Vmm().bytes_physical, kG) << "h1 only";
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Vmm().unmapped_accesses, 4u);
  ASSERT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  ASSERT_EQ(d.MemRelease(h1), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_SUCCESS);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(DISABLED_Child, VmmOff) {
  REQUIRE_CHILD();
  const Driver& d = Cu();
  ASSERT_NE(d.handle, nullptr);
  EXPECT_EQ(d.Init(0), CUDA_SUCCESS);
  int v = -1;
  ASSERT_EQ(d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1000),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 0);
  size_t g = 0;
  const CUmemAllocationProp prop = Prop();
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_NOT_SUPPORTED);
  CUmemGenericAllocationHandle h = 0;
  EXPECT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(d.MemRelease(1), CUDA_ERROR_NOT_SUPPORTED);
  CUdeviceptr p = 0;
  EXPECT_EQ(d.MemAddressReserve(&p, kG, 0, 0, 0), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(d.MemAddressFree(kG, kG), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(d.MemMap(kG, kG, 0, 1, 0), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(d.MemUnmap(kG, kG), CUDA_ERROR_NOT_SUPPORTED);
  const CUmemAccessDesc rw = Access(0);
  EXPECT_EQ(d.MemSetAccess(kG, kG, &rw, 1), CUDA_ERROR_NOT_SUPPORTED);
  unsigned long long flags = 0;
  const CUmemLocation dev0 = Location(0);
  EXPECT_EQ(d.MemGetAccess(&flags, &dev0, kG), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(Vmm().creates + Vmm().reserves, 0u);
}

TEST(DISABLED_Child, FailVmm) {
  REQUIRE_CHILD();
  const Driver& d = Cu();
  const CUmemAllocationProp prop = Prop();
  const CUmemAccessDesc rw = Access(0);
  CUdeviceptr base = 0, dummy = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 4 * kG, 0, 0, 0), CUDA_SUCCESS);           // reserve 1
  EXPECT_EQ(d.MemAddressReserve(&dummy, kG, 0, 0, 0), CUDA_ERROR_OUT_OF_MEMORY);  // reserve 2
  EXPECT_EQ(dummy, 0u);
  CUmemGenericAllocationHandle h = 0, h2 = 0;
  ASSERT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_SUCCESS);               // create 1
  EXPECT_EQ(d.MemCreate(&h2, kG, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);  // create 2
  EXPECT_EQ(Vmm().bytes_physical, kG);
  ASSERT_EQ(d.MemCreate(&h2, kG, &prop, 0), CUDA_SUCCESS);                 // create 3
  ASSERT_EQ(d.MemMap(base, kG, 0, h, 0), CUDA_SUCCESS);                    // map 1
  EXPECT_EQ(d.MemMap(base + kG, kG, 0, h2, 0), CUDA_ERROR_OUT_OF_MEMORY);  // map 2
  EXPECT_EQ(Perms(base + kG), "---p");
  ASSERT_EQ(d.MemMap(base + kG, kG, 0, h2, 0), CUDA_SUCCESS);           // map 3
  EXPECT_EQ(d.MemSetAccess(base, 2 * kG, &rw, 1), CUDA_ERROR_UNKNOWN);  // set_access 1
  EXPECT_EQ(Perms(base), "---s");
  ASSERT_EQ(d.MemSetAccess(base, 2 * kG, &rw, 1), CUDA_SUCCESS);
  EXPECT_EQ(d.MemUnmap(base + kG, kG), CUDA_ERROR_UNKNOWN);  // unmap 1
  ASSERT_EQ(cudaMemset(Ptr(base + kG), 9, 64), cudaSuccess) << "a failed unmap unmapped";
  ASSERT_EQ(d.MemUnmap(base + kG, kG), CUDA_SUCCESS);
  EXPECT_EQ(d.MemRelease(h2), CUDA_ERROR_UNKNOWN);  // release 1
  ASSERT_EQ(d.MemMap(base + kG, kG, 0, h2, 0), CUDA_SUCCESS) << "a failed release released";
  ASSERT_EQ(d.MemUnmap(base, 2 * kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h2), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  EXPECT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_ERROR_UNKNOWN);  // address_free 1
  EXPECT_EQ(Perms(base), "---p");
  ASSERT_EQ(d.MemAddressFree(base, 4 * kG), CUDA_SUCCESS);
  EXPECT_EQ(standinInjectedFaults(), 7u);
  const StandinVmmCounters c = Vmm();
  EXPECT_EQ(c.create_failures, 1u);
  EXPECT_EQ(c.other_failures, 6u);
  EXPECT_EQ(c.bytes_physical, 0u);
  EXPECT_EQ(c.pages_mapped, 0u);
}

TEST(DISABLED_Child, FailVmmIgnored) {
  REQUIRE_CHILD();
  const Driver& d = Cu();
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  EXPECT_EQ(standinInjectedFaults(), 0u);
}

TEST(DISABLED_Child, Granularity64K) {
  REQUIRE_CHILD();
  const Driver& d = Cu();
  constexpr size_t k64 = 64 * 1024;
  size_t g = 0;
  const CUmemAllocationProp prop = Prop();
  ASSERT_EQ(d.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_SUCCESS);
  EXPECT_EQ(g, k64);
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 3 * k64, 0, 0, 0), CUDA_SUCCESS);
  EXPECT_EQ(base % k64, 0u);
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, k64, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(d.MemCreate(&h, k64 + 4096, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(d.MemMap(base + k64, k64, 0, h, 0), CUDA_SUCCESS);
  const CUmemAccessDesc rw = Access(0);
  ASSERT_EQ(d.MemSetAccess(base + k64, k64, &rw, 1), CUDA_SUCCESS);
  ASSERT_EQ(cudaMemset(Ptr(base + k64), 0x64, k64), cudaSuccess);
  EXPECT_EQ(Perms(base), "---p");
  EXPECT_EQ(Perms(base + 2 * k64), "---p");
  EXPECT_EQ(Vmm().pages_mapped, 1u);
  ASSERT_EQ(d.MemUnmap(base + k64, k64), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 3 * k64), CUDA_SUCCESS);
}

TEST(DISABLED_Child, GranularityIgnored) {
  REQUIRE_CHILD();
  size_t g = 0;
  const CUmemAllocationProp prop = Prop();
  ASSERT_EQ(Cu().MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_SUCCESS);
  EXPECT_EQ(g, kG);
}

TEST(DISABLED_Child, TwoDevices) {
  REQUIRE_CHILD();
  const Driver& d = Cu();
  int n = 0;
  ASSERT_EQ(d.DeviceGetCount(&n), CUDA_SUCCESS);
  EXPECT_EQ(n, 2);
  CUdevice dev = 0;
  ASSERT_EQ(d.DeviceGet(&dev, 1), CUDA_SUCCESS);
  EXPECT_EQ(dev, 1001);
  int v = 0;
  ASSERT_EQ(d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1001),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 1);
  // Memory on device 1 (location.id is the ordinal), made accessible to both devices.
  CUdeviceptr base = 0;
  ASSERT_EQ(d.MemAddressReserve(&base, 2 * kG, 0, 0, 0), CUDA_SUCCESS);
  const CUmemAllocationProp prop = Prop(1);
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.MemMap(base, kG, 0, h, 0), CUDA_SUCCESS);
  const CUmemAccessDesc both[] = {Access(1), Access(0, CU_MEM_ACCESS_FLAGS_PROT_READ)};
  ASSERT_EQ(d.MemSetAccess(base, kG, both, 2), CUDA_SUCCESS);
  unsigned long long flags = 0;
  const CUmemLocation dev0 = Location(0), dev1 = Location(1);
  ASSERT_EQ(d.MemGetAccess(&flags, &dev1, base), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  ASSERT_EQ(d.MemGetAccess(&flags, &dev0, base), CUDA_SUCCESS);
  EXPECT_EQ(flags, CU_MEM_ACCESS_FLAGS_PROT_READ);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, Ptr(base)), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attr.device, 1);
  // Device 1's capacity and counters, not device 0's.
  EXPECT_EQ(Vmm(1).creates, 1u);
  EXPECT_EQ(Vmm(1).maps, 1u);
  EXPECT_EQ(Vmm(1).set_access_calls, 1u);
  EXPECT_EQ(Vmm(1).bytes_physical, kG);
  EXPECT_EQ(Vmm(1).pages_mapped, 1u);
  EXPECT_EQ(Vmm(0).creates + Vmm(0).maps + Vmm(0).bytes_physical, 0u);
  EXPECT_EQ(Vmm(0).reserves, 1u) << "reserves count on the current device";
  EXPECT_EQ(Vmm(-1).bytes_physical, kG);
  EXPECT_EQ(Counters(1).bytes_held, kG);
  EXPECT_EQ(Counters(0).bytes_held, 0u);
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  size_t free = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
  EXPECT_EQ(total - free, kG);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(d.MemUnmap(base, kG), CUDA_SUCCESS);
  ASSERT_EQ(d.MemRelease(h), CUDA_SUCCESS);
  ASSERT_EQ(d.MemAddressFree(base, 2 * kG), CUDA_SUCCESS);
  EXPECT_EQ(Vmm(1).unmaps, 1u);
  EXPECT_EQ(Vmm(1).releases, 1u);
  EXPECT_EQ(Counters(1).bytes_held, 0u);
}

TEST(DISABLED_Child, NotAttached) {
  REQUIRE_CHILD();
  ASSERT_EQ(cudaFree(nullptr), cudaSuccess);
  EXPECT_EQ(dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD), nullptr) << "the runtime loaded it";
  // The stand-in driver beside the runtime, loaded by hand: nobody attached it.
  void* rt = dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(rt, nullptr);
  Dl_info info{};
  ASSERT_NE(dladdr(dlsym(rt, "cudaMalloc"), &info), 0);
  std::string path = info.dli_fname;
  path = path.substr(0, path.rfind('/') + 1) + "driver/libcuda.so.1";
  const Driver d = Open(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
  ASSERT_NE(d.handle, nullptr) << path << ": " << dlerror();
  int v = 0;
  EXPECT_EQ(d.DriverGetVersion(&v), CUDA_SUCCESS);
  EXPECT_EQ(v, 13000);
  EXPECT_EQ(d.DeviceGetCount(&v), CUDA_ERROR_NOT_INITIALIZED);
  CUdevice dev = 0;
  EXPECT_EQ(d.CtxGetDevice(&dev), CUDA_ERROR_NOT_INITIALIZED);
  size_t g = 0;
  const CUmemAllocationProp prop = Prop();
  EXPECT_EQ(d.MemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            CUDA_ERROR_NOT_INITIALIZED);
  CUmemGenericAllocationHandle h = 0;
  EXPECT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_ERROR_NOT_INITIALIZED);
  CUdeviceptr p = 0;
  EXPECT_EQ(d.MemAddressReserve(&p, kG, 0, 0, 0), CUDA_ERROR_NOT_INITIALIZED);
  EXPECT_EQ(d.MemMap(kG, kG, 0, 1, 0), CUDA_ERROR_NOT_INITIALIZED);
  EXPECT_EQ(d.MemUnmap(kG, kG), CUDA_ERROR_NOT_INITIALIZED);
  EXPECT_EQ(d.MemRelease(1), CUDA_ERROR_NOT_INITIALIZED);
  // cuInit attaches it to the runtime this process already runs: the state is shared.
  ASSERT_EQ(d.Init(0), CUDA_SUCCESS);
  ASSERT_EQ(d.DeviceGetCount(&v), CUDA_SUCCESS);
  EXPECT_EQ(v, 1);
  ASSERT_EQ(d.CtxGetDevice(&dev), CUDA_SUCCESS) << "cudaFree made the primary context current";
  EXPECT_EQ(dev, 1000);
  const unsigned long long before = Counters().bytes_held;
  ASSERT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(Counters().bytes_held, before + kG) << "the driver's runtime is not this one";
  EXPECT_EQ(d.MemRelease(h), CUDA_SUCCESS);
}

TEST(DISABLED_Child, ZeroDevices) {
  REQUIRE_CHILD();
  int n = -1;
  EXPECT_EQ(cudaGetDeviceCount(&n), cudaErrorNoDevice);
  EXPECT_EQ(n, 0);
  const Driver d = Open(dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD));
  ASSERT_NE(d.handle, nullptr) << "the runtime did not load its driver";
  EXPECT_EQ(d.Init(0), CUDA_ERROR_NO_DEVICE);
  EXPECT_EQ(d.DeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
  const CUmemAllocationProp prop = Prop();
  CUmemGenericAllocationHandle h = 0;
  EXPECT_EQ(d.MemCreate(&h, kG, &prop, 0), CUDA_ERROR_NOT_INITIALIZED);
  CUdeviceptr p = 0;
  EXPECT_EQ(d.MemAddressReserve(&p, kG, 0, 0, 0), CUDA_ERROR_NOT_INITIALIZED);
}

// Registered before the runtime's teardown, so it runs after it.
decltype(&::cuMemCreate) g_create_at_exit = nullptr;
decltype(&::cuMemUnmap) g_unmap_at_exit = nullptr;
CUdeviceptr g_page_at_exit = 0;
void CallAfterTeardown() {
  CUmemGenericAllocationHandle h = 0;
  const CUmemAllocationProp prop = Prop();
  fprintf(stderr, "after exit: create %d unmap %d\n",
          static_cast<int>(g_create_at_exit(&h, kG, &prop, 0)),
          static_cast<int>(g_unmap_at_exit(g_page_at_exit, kG)));
}

TEST(DISABLED_Child, AfterExit) {
  REQUIRE_CHILD();
  atexit(CallAfterTeardown);
  const Driver& d = Cu();
  ASSERT_EQ(d.MemAddressReserve(&g_page_at_exit, kG, 0, 0, 0), CUDA_SUCCESS);
  MapPage(g_page_at_exit);
  g_create_at_exit = d.MemCreate;
  g_unmap_at_exit = d.MemUnmap;
}

TEST(DISABLED_Child, LeaveOnePageMapped) {
  REQUIRE_CHILD();
  CUdeviceptr base = 0;
  ASSERT_EQ(Cu().MemAddressReserve(&base, kG, 0, 0, 0), CUDA_SUCCESS);
  MapPage(base);
  Ptr(base)[0] = 1;
}

}  // namespace
