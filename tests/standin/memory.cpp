// Device and host memory: allocation, free, pointer queries, IPC handles, memory pools.
//
// Each device allocation is its own anonymous mapping (MAP_NORESERVE, page aligned, so at least
// 512-byte aligned); cudaFree unmaps it, so a later access faults. Capacity: an allocation of n
// bytes accounts round_up(n, 512) and fails when held + other + that > capacity.
//
// Failure injection (cudaMalloc*): STANDIN_FAIL_MALLOC_AT=3,7 (the 3rd and 7th call that would
// allocate), STANDIN_FAIL_MALLOC_RATE with STANDIN_SEED (a deterministic hash of seed and call
// number), standinInjectMallocFailures(n). Calls that would allocate: valid arguments, size > 0.
// STANDIN_FAIL_FREE_AT=N: the Nth cudaFree of a live device allocation returns
// cudaErrorLaunchFailure (719) and frees nothing - the code a real cudaFree returns when an earlier
// asynchronous kernel failed. Unlike the real (sticky) error, later calls succeed.
//
// IPC: cudaIpcGetMemHandle encodes the allocation's base (and size, device, pid), like the real
// driver for interior pointers. cudaIpcOpenMemHandle in the process that made the handle returns
// that base (the real runtime refuses same-process opens); in another process it returns
// cudaErrorNotSupported, as the memory is private to its process.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "standin_internal.h"

namespace standin {
namespace {

constexpr uint64_t kAlign = 512;

uint64_t page_size() {
  static const uint64_t p = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// round_up(n, a) without overflow; false when it would overflow.
bool round_up(uint64_t n, uint64_t a, uint64_t* out) {
  if (n > UINT64_MAX - (a - 1)) return false;
  *out = (n + a - 1) / a * a;
  return true;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

bool inject_malloc_failure(Runtime& r) {
  const uint64_t n = r.malloc_calls.fetch_add(1) + 1;
  for (uint64_t at : r.config.fail_malloc_at)
    if (at == n) return true;
  int64_t pending = r.injected_malloc_failures.load();
  while (pending > 0)
    if (r.injected_malloc_failures.compare_exchange_weak(pending, pending - 1)) return true;
  if (r.config.fail_malloc_rate > 0) {
    const double u =
        static_cast<double>(splitmix64(r.config.seed ^ splitmix64(n)) >> 11) * 0x1.0p-53;
    if (u < r.config.fail_malloc_rate) return true;
  }
  return false;
}

// The common path of every device allocation. `size` > 0. driver_api: a program's driver call
// (counts driver_mallocs, else mallocs).
cudaError_t allocate(void** out, size_t size, int device, AllocApi api, bool driver_api = false) {
  Runtime& r = rt();
  Device& d = *r.device(device);
  auto fail = [&] {
    d.counters.malloc_failures.fetch_add(1);
    return cudaErrorMemoryAllocation;
  };
  if (inject_malloc_failure(r)) {
    r.injected_faults.fetch_add(1);
    return fail();
  }
  delay_with_jitter_us(r.config.malloc_latency_us);
  uint64_t accounted = 0, mapped = 0;
  if (size > d.capacity || !round_up(size, kAlign, &accounted) ||
      !round_up(size, page_size(), &mapped))
    return fail();
  uint64_t held = d.held_bytes.load();
  for (;;) {
    const uint64_t other = d.other_bytes.load();
    if (other > d.capacity || held > d.capacity - other || accounted > d.capacity - other - held)
      return fail();
    if (d.held_bytes.compare_exchange_weak(held, held + accounted)) break;
  }
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    d.held_bytes.fetch_sub(accounted);
    return fail();
  }
  Allocation a;
  a.size = size;
  a.mapped = mapped;
  a.accounted = accounted;
  a.device = device;
  a.api = api;
  a.serial = r.alloc_serial.fetch_add(1);
  {
    std::lock_guard g(r.alloc_mu);
    r.allocations[reinterpret_cast<uintptr_t>(p)] = a;
  }
  (driver_api ? d.counters.driver_mallocs : d.counters.mallocs).fetch_add(1);
  note_held_peak(d, held + accounted);
  *out = p;
  return cudaSuccess;
}

// Unmaps an allocation already removed from the registry and returns its bytes.
void release(uintptr_t base, const Allocation& a) {
  munmap(to_handle<void*>(base), a.mapped);
  rt().device(a.device)->held_bytes.fetch_sub(a.accounted);
}

cudaError_t malloc_api(void** out, size_t size, AllocApi api) {
  STANDIN_ENTER();
  if (!out) return ret(cudaErrorInvalidValue);
  const int device = tls().device;
  if (unsafe_call_prohibited(device)) return ret(cudaErrorStreamCaptureUnsupported);
  if (size == 0) {
    *out = nullptr;
    return cudaSuccess;
  }
  if (api == AllocApi::kMalloc) {
    // Like NVIDIA's runtime: through the driver's cuMemAlloc_v2, as cuGetProcAddress answered.
    if (auto alloc = driver_functions().mem_alloc) {
      CUdeviceptr p = 0;
      CUresult e = CUDA_SUCCESS;
      {
        RuntimeDriverCall mark;
        e = alloc(&p, size);
      }
      if (e != CUDA_SUCCESS) return ret(static_cast<cudaError_t>(e));  // equal codes: 1, 2, ...
      *out = to_handle<void*>(p);
      return cudaSuccess;
    }
  }
  return ret(allocate(out, size, device, api));
}

// cudaMallocAsync (and cuMemAllocAsync, driver_api) after the entry checks. size 0: nullptr.
cudaError_t alloc_async(void** out, size_t size, cudaStream_t h, int pool_device, bool ptd,
                        bool driver_api) {
  if (!out) return cudaErrorInvalidValue;
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return e;
  {
    // Graph allocation nodes are not modelled: refused, the capture stays valid.
    std::lock_guard g(s->mu);
    if (s->capture) return cudaErrorStreamCaptureUnsupported;
  }
  if (size == 0) {
    *out = nullptr;
    return cudaSuccess;
  }
  return allocate(out, size, pool_device >= 0 ? pool_device : s->device, AllocApi::kAsync,
                  driver_api);
}

cudaError_t malloc_async(void** out, size_t size, cudaStream_t h, int pool_device, bool ptd) {
  STANDIN_ENTER();
  return ret(alloc_async(out, size, h, pool_device, ptd, false));
}

// cudaFreeAsync (and cuMemFreeAsync, driver_api) after the entry checks.
cudaError_t release_async(void* p, cudaStream_t h, bool ptd, bool driver_api) {
  std::shared_ptr<Stream> s;
  if (cudaError_t e = resolve_stream(h, ptd, &s)) return e;
  if (!p) return cudaSuccess;
  {
    std::lock_guard g(s->mu);  // graph free nodes are not modelled: refused, capture stays valid
    if (s->capture) return cudaErrorStreamCaptureUnsupported;
  }
  Runtime& r = rt();
  const uintptr_t base = reinterpret_cast<uintptr_t>(p);
  Allocation a;
  {
    std::lock_guard g(r.alloc_mu);
    auto it = r.allocations.find(base);
    if (it == r.allocations.end() || it->second.free_pending) {
      r.device(s->device)->counters.free_failures.fetch_add(1);
      return cudaErrorInvalidValue;
    }
    it->second.free_pending = true;
    a = it->second;
  }
  SubmitResult res = submit(s, [base, a] {
    Runtime& rr = rt();
    {
      std::lock_guard g(rr.alloc_mu);
      rr.allocations.erase(base);
      rr.ipc_opened.erase(base);
    }
    release(base, a);
  });
  if (res.error) {
    std::lock_guard g(r.alloc_mu);
    auto it = r.allocations.find(base);
    if (it != r.allocations.end()) it->second.free_pending = false;
    return res.error;
  }
  Counters& k = r.device(a.device)->counters;
  (driver_api ? k.driver_frees : k.frees).fetch_add(1);
  return cudaSuccess;
}

cudaError_t free_async(void* p, cudaStream_t h, bool ptd) {
  STANDIN_ENTER();
  return ret(release_async(p, h, ptd, false));
}

cudaError_t mem_pool_of(cudaMemPool_t pool, std::shared_ptr<MemPool>* out) {
  *out = rt().mem_pools.get(reinterpret_cast<uintptr_t>(pool));
  return *out ? cudaSuccess : cudaErrorInvalidValue;
}

// Device allocation or pinned/registered host memory containing p (host: *host = true).
bool lookup_any(const void* p, Allocation* dev, uintptr_t* base, HostAllocation* host,
                bool* is_host) {
  Runtime& r = rt();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard g(r.alloc_mu);
  auto it = r.allocations.upper_bound(a);
  if (it != r.allocations.begin()) {
    --it;
    if (a < it->first + it->second.size) {
      *dev = it->second;
      *base = it->first;
      *is_host = false;
      return true;
    }
  }
  auto ht = r.host_allocations.upper_bound(a);
  if (ht != r.host_allocations.begin()) {
    --ht;
    if (a < ht->first + ht->second.size) {
      *host = ht->second;
      *base = ht->first;
      *is_host = true;
      return true;
    }
  }
  return false;
}

cudaError_t host_alloc(void** pHost, size_t size, unsigned flags) {
  STANDIN_ENTER();
  constexpr unsigned kKnown =
      cudaHostAllocPortable | cudaHostAllocMapped | cudaHostAllocWriteCombined;
  if (!pHost || (flags & ~kKnown)) return ret(cudaErrorInvalidValue);
  if (size == 0) {
    *pHost = nullptr;
    return cudaSuccess;
  }
  void* p = nullptr;
  if (posix_memalign(&p, 4096, size) != 0) return ret(cudaErrorMemoryAllocation);
  Runtime& r = rt();
  {
    std::lock_guard g(r.alloc_mu);
    r.host_allocations[reinterpret_cast<uintptr_t>(p)] =
        HostAllocation{size, false, flags, tls().device};
  }
  *pHost = p;
  return cudaSuccess;
}

cudaError_t default_mem_pool(cudaMemPool_t* memPool, int device) {
  STANDIN_ENTER();
  if (!memPool) return ret(cudaErrorInvalidValue);
  Device* d = rt().device(device);
  if (!d) return ret(cudaErrorInvalidDevice);
  *memPool = to_handle<cudaMemPool_t>(d->default_pool_handle);
  return cudaSuccess;
}

struct IpcPayload {
  char magic[8];
  uint64_t pid;
  uint64_t base;
  uint64_t size;
  uint64_t serial;
  int32_t device;
};
static_assert(sizeof(IpcPayload) <= sizeof(cudaIpcMemHandle_t));
constexpr char kIpcMagic[8] = "STANDIN";

}  // namespace

bool find_device_range(const void* p, size_t n, Allocation* out, uintptr_t* base) {
  Runtime& r = rt();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard g(r.alloc_mu);
  auto it = r.allocations.upper_bound(a);
  if (it == r.allocations.begin()) return false;
  --it;
  const uintptr_t end = it->first + it->second.size;
  if (a >= end || n > end - a) return false;
  if (out) *out = it->second;
  if (base) *base = it->first;
  return true;
}

cudaError_t free_device(void* devPtr, bool driver_api) {
  Runtime& r = rt();
  const int current = tls().device;
  const uintptr_t base = reinterpret_cast<uintptr_t>(devPtr);
  Allocation a;
  {
    std::lock_guard g(r.alloc_mu);
    auto it = r.allocations.find(base);
    if (it == r.allocations.end() || it->second.free_pending) {
      r.device(current)->counters.free_failures.fetch_add(1);
      return cudaErrorInvalidValue;
    }
    const uint64_t n = r.free_calls.fetch_add(1) + 1;
    for (uint64_t at : r.config.fail_free_at) {
      if (at != n) continue;
      r.device(it->second.device)->counters.free_failures.fetch_add(1);
      r.injected_faults.fetch_add(1);
      return cudaErrorLaunchFailure;
    }
    it->second.free_pending = true;
    a = it->second;
  }
  Device& d = *r.device(a.device);
  if (a.api != AllocApi::kAsync) {
    // Like the native runtime: wait for all queued work before the memory goes away.
    for (auto& dev : r.devices)
      drain_device(dev->index);
    d.counters.implicit_syncs.fetch_add(1);
  }
  delay_with_jitter_us(r.config.free_latency_us);
  {
    std::lock_guard g(r.alloc_mu);
    r.allocations.erase(base);
    r.ipc_opened.erase(base);
  }
  release(base, a);
  (driver_api ? d.counters.driver_frees : d.counters.frees).fetch_add(1);
  return cudaSuccess;
}

bool known_range(const void* p, size_t n) {
  Allocation dev;
  HostAllocation host;
  uintptr_t base = 0;
  bool is_host = false;
  if (!lookup_any(p, &dev, &base, &host, &is_host)) return false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t end = base + (is_host ? host.size : dev.size);
  return n <= end - a;
}

void release_device_allocations(int device) {
  Runtime& r = rt();
  std::vector<std::pair<uintptr_t, Allocation>> victims;
  {
    std::lock_guard g(r.alloc_mu);
    for (auto it = r.allocations.begin(); it != r.allocations.end();) {
      const Allocation& a = it->second;
      if (a.device == device && a.api != AllocApi::kAsync && !a.free_pending) {
        victims.emplace_back(it->first, a);
        r.ipc_opened.erase(it->first);
        it = r.allocations.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& [base, a] : victims)
    release(base, a);
}

cudaError_t ipc_get_handle(cudaIpcMemHandle_t* handle, void* devPtr) {
  if (!handle || !devPtr) return cudaErrorInvalidValue;
  Allocation a;
  uintptr_t base = 0;
  if (!find_device_range(devPtr, 0, &a, &base) || a.api == AllocApi::kManaged)
    return cudaErrorInvalidValue;
  IpcPayload p{};
  memcpy(p.magic, kIpcMagic, sizeof p.magic);
  p.pid = static_cast<uint64_t>(getpid());
  p.base = base;  // an interior pointer maps the whole allocation, as with the real driver
  p.size = a.size;
  p.serial = a.serial;
  p.device = a.device;
  memset(handle, 0, sizeof *handle);
  memcpy(handle->reserved, &p, sizeof p);
  return cudaSuccess;
}

void mem_get_info(int device, size_t* free, size_t* total) {
  Device* d = rt().device(device);
  if (!d) {  // callers pass valid devices
    *free = *total = 0;
    return;
  }
  const uint64_t used = d->held_bytes.load() + d->other_bytes.load();
  *free = used >= d->capacity ? 0 : d->capacity - used;
  *total = d->capacity;
}

// ---- the driver's memory entry points (driver_table.h) ----------------------------------------
// Errors are the runtime's codes, which equal the driver's for every code returned here
// (cudaErrorInvalidValue = CUDA_ERROR_INVALID_VALUE = 1, cudaErrorMemoryAllocation =
// CUDA_ERROR_OUT_OF_MEMORY = 2, cudaErrorLaunchFailure = CUDA_ERROR_LAUNCH_FAILED = 719, 900).

namespace {

CUresult cu(cudaError_t e) {
  if (e == cudaErrorInvalidResourceHandle) return CUDA_ERROR_INVALID_HANDLE;
  return static_cast<CUresult>(e);
}

// A program's call, not the runtime's own (its cudaMalloc and cudaFree call the driver).
bool program_call() {
  return !tls().runtime_driver_call;
}

}  // namespace

CUresult driver_mem_alloc(CUdeviceptr* dptr, size_t bytesize, int ordinal) {
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;
  if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  const bool program = program_call();
  void* p = nullptr;
  const cudaError_t e =
      allocate(&p, bytesize, ordinal, program ? AllocApi::kDriver : AllocApi::kMalloc, program);
  if (e == cudaSuccess) *dptr = reinterpret_cast<CUdeviceptr>(p);
  return cu(e);
}

CUresult driver_mem_alloc_pitch(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height,
                                unsigned element_size, int ordinal) {
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;
  if (!dptr || !pitch || width == 0 || height == 0 ||
      (element_size != 4 && element_size != 8 && element_size != 16))
    return CUDA_ERROR_INVALID_VALUE;
  uint64_t row = 0;
  if (!round_up(width, kAlign, &row) || row > SIZE_MAX / height) {
    rt().device(ordinal)->counters.malloc_failures.fetch_add(1);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  void* p = nullptr;
  const cudaError_t e = allocate(&p, row * height, ordinal, AllocApi::kDriver, program_call());
  if (e == cudaSuccess) {
    *dptr = reinterpret_cast<CUdeviceptr>(p);
    *pitch = row;
  }
  return cu(e);
}

CUresult driver_mem_alloc_managed(CUdeviceptr* dptr, size_t bytesize, unsigned flags, int ordinal) {
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;
  if (!dptr || bytesize == 0 || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
    return CUDA_ERROR_INVALID_VALUE;
  void* p = nullptr;
  const cudaError_t e = allocate(&p, bytesize, ordinal, AllocApi::kManaged, program_call());
  if (e == cudaSuccess) *dptr = reinterpret_cast<CUdeviceptr>(p);
  return cu(e);
}

CUresult driver_mem_alloc_async(CUdeviceptr* dptr, size_t bytesize, CUstream stream,
                                bool per_thread) {
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;
  if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  void* p = nullptr;
  const cudaError_t e = alloc_async(&p, bytesize, reinterpret_cast<cudaStream_t>(stream), -1,
                                    per_thread, program_call());
  if (e == cudaSuccess) *dptr = reinterpret_cast<CUdeviceptr>(p);
  return cu(e);
}

CUresult driver_mem_free(CUdeviceptr dptr) {
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;
  if (dptr == 0) return CUDA_ERROR_INVALID_VALUE;  // not the start of an allocation
  return cu(free_device(to_handle<void*>(dptr), program_call()));
}

CUresult driver_mem_free_async(CUdeviceptr dptr, CUstream stream, bool per_thread) {
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;
  if (dptr == 0) return CUDA_ERROR_INVALID_VALUE;
  return cu(release_async(to_handle<void*>(dptr), reinterpret_cast<cudaStream_t>(stream),
                          per_thread, program_call()));
}

CUresult driver_mem_get_info(size_t* free, size_t* total, int ordinal) {
  if (!free || !total) return CUDA_ERROR_INVALID_VALUE;
  mem_get_info(ordinal, free, total);
  return CUDA_SUCCESS;
}

CUresult driver_mem_get_address_range(CUdeviceptr* base, size_t* size, CUdeviceptr dptr) {
  Allocation a;
  uintptr_t start = 0;
  const void* p = to_handle<const void*>(dptr);
  if (find_device_range(p, 0, &a, &start)) {
    if (base) *base = start;
    if (size) *size = a.size;
    return CUDA_SUCCESS;
  }
  VmmMappingInfo m;
  if (vmm_find_mapping(p, &m)) {
    if (base) *base = m.base;
    if (size) *size = m.size;
    return CUDA_SUCCESS;
  }
  return CUDA_ERROR_NOT_FOUND;
}

CUresult driver_ipc_get_mem_handle(CUipcMemHandle* handle, CUdeviceptr dptr) {
  static_assert(sizeof(CUipcMemHandle) == sizeof(cudaIpcMemHandle_t));
  if (!handle) return CUDA_ERROR_INVALID_VALUE;
  cudaIpcMemHandle_t h;
  const cudaError_t e = ipc_get_handle(&h, to_handle<void*>(dptr));
  if (e == cudaSuccess) memcpy(handle, &h, sizeof h);
  return cu(e);
}

}  // namespace standin

using namespace standin;

extern "C" {

cudaError_t cudaMalloc(void** devPtr, size_t size) {
  return malloc_api(devPtr, size, AllocApi::kMalloc);
}

cudaError_t cudaMallocPitch(void** devPtr, size_t* pitch, size_t width, size_t height) {
  STANDIN_ENTER();
  if (!devPtr || !pitch) return ret(cudaErrorInvalidValue);
  uint64_t p = 0;
  if (!round_up(width, kAlign, &p)) {
    Device* d = rt().device(tls().device);
    d->counters.malloc_failures.fetch_add(1);
    return ret(cudaErrorMemoryAllocation);
  }
  if (height != 0 && p > SIZE_MAX / height) {
    Device* d = rt().device(tls().device);
    d->counters.malloc_failures.fetch_add(1);
    return ret(cudaErrorMemoryAllocation);
  }
  const cudaError_t e = malloc_api(devPtr, p * height, AllocApi::kPitch);
  if (e == cudaSuccess) *pitch = p;
  return e;
}

cudaError_t cudaMallocManaged(void** devPtr, size_t size, unsigned int flags) {
  STANDIN_ENTER();
  if (flags != cudaMemAttachGlobal && flags != cudaMemAttachHost) return ret(cudaErrorInvalidValue);
  if (size == 0) return ret(cudaErrorInvalidValue);  // documented for cudaMallocManaged
  return malloc_api(devPtr, size, AllocApi::kManaged);
}

cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t hStream) {
  return malloc_async(devPtr, size, hStream, -1, false);
}
cudaError_t cudaMallocAsync_ptsz(void** devPtr, size_t size, cudaStream_t hStream) {
  return malloc_async(devPtr, size, hStream, -1, true);
}

cudaError_t cudaMallocFromPoolAsync(void** ptr, size_t size, cudaMemPool_t memPool,
                                    cudaStream_t stream) {
  STANDIN_ENTER();
  std::shared_ptr<MemPool> pool;
  if (cudaError_t e = mem_pool_of(memPool, &pool)) return ret(e);
  return malloc_async(ptr, size, stream, pool->device, false);
}
cudaError_t cudaMallocFromPoolAsync_ptsz(void** ptr, size_t size, cudaMemPool_t memPool,
                                         cudaStream_t stream) {
  STANDIN_ENTER();
  std::shared_ptr<MemPool> pool;
  if (cudaError_t e = mem_pool_of(memPool, &pool)) return ret(e);
  return malloc_async(ptr, size, stream, pool->device, true);
}

cudaError_t cudaFree(void* devPtr) {
  STANDIN_ENTER();
  if (!devPtr) return cudaSuccess;  // the usual way to initialise the runtime
  if (unsafe_call_prohibited(tls().device)) return ret(cudaErrorStreamCaptureUnsupported);
  // Like NVIDIA's runtime: through the driver's cuMemFree_v2, as cuGetProcAddress answered.
  if (auto release_fn = driver_functions().mem_free) {
    RuntimeDriverCall mark;
    return ret(static_cast<cudaError_t>(release_fn(reinterpret_cast<CUdeviceptr>(devPtr))));
  }
  return ret(free_device(devPtr, false));
}

cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t hStream) {
  return free_async(devPtr, hStream, false);
}
cudaError_t cudaFreeAsync_ptsz(void* devPtr, cudaStream_t hStream) {
  return free_async(devPtr, hStream, true);
}

cudaError_t cudaHostAlloc(void** pHost, size_t size, unsigned int flags) {
  return host_alloc(pHost, size, flags);
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  return host_alloc(ptr, size, 0);
}

cudaError_t cudaFreeHost(void* ptr) {
  STANDIN_ENTER();
  if (!ptr) return cudaSuccess;
  Runtime& r = rt();
  {
    std::lock_guard g(r.alloc_mu);
    auto it = r.host_allocations.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == r.host_allocations.end() || it->second.registered) return ret(cudaErrorInvalidValue);
    r.host_allocations.erase(it);
  }
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaHostRegister(void* ptr, size_t size, unsigned int flags) {
  STANDIN_ENTER();
  if (!ptr || size == 0) return ret(cudaErrorInvalidValue);
  Runtime& r = rt();
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard g(r.alloc_mu);
  auto it = r.host_allocations.upper_bound(a + size - 1);
  if (it != r.host_allocations.begin()) {
    --it;
    if (it->first + it->second.size > a) return ret(cudaErrorHostMemoryAlreadyRegistered);
  }
  r.host_allocations[a] = HostAllocation{size, true, flags, tls().device};
  return cudaSuccess;
}

cudaError_t cudaHostUnregister(void* ptr) {
  STANDIN_ENTER();
  Runtime& r = rt();
  std::lock_guard g(r.alloc_mu);
  auto it = r.host_allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == r.host_allocations.end() || !it->second.registered)
    return ret(cudaErrorHostMemoryNotRegistered);
  r.host_allocations.erase(it);
  return cudaSuccess;
}

cudaError_t cudaHostGetDevicePointer(void** pDevice, void* pHost, unsigned int flags) {
  STANDIN_ENTER();
  if (!pDevice || flags != 0 || !pHost) return ret(cudaErrorInvalidValue);
  Allocation dev;
  HostAllocation host;
  uintptr_t base = 0;
  bool is_host = false;
  if (!lookup_any(pHost, &dev, &base, &host, &is_host) || !is_host)
    return ret(cudaErrorInvalidValue);
  *pDevice = pHost;
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes* attributes, const void* ptr) {
  STANDIN_ENTER();
  if (!attributes) return ret(cudaErrorInvalidValue);
  Allocation dev;
  HostAllocation host;
  uintptr_t base = 0;
  bool is_host = false;
  cudaPointerAttributes out{};
  void* p = const_cast<void*>(ptr);
  if (ptr && lookup_any(ptr, &dev, &base, &host, &is_host)) {
    if (is_host) {
      out.type = cudaMemoryTypeHost;
      out.device = host.device;
      out.devicePointer = p;
      out.hostPointer = p;
    } else {
      const bool managed = dev.api == AllocApi::kManaged;
      out.type = managed ? cudaMemoryTypeManaged : cudaMemoryTypeDevice;
      out.device = dev.device;
      out.devicePointer = p;
      out.hostPointer = managed ? p : nullptr;
    }
  } else if (VmmMappingInfo m; ptr && vmm_find_mapping(ptr, &m) && m.accessible) {
    out.type = cudaMemoryTypeDevice;  // a cuMemMap mapping the device can access
    out.device = m.device;
    out.devicePointer = p;
    out.hostPointer = nullptr;
  } else {
    out.type = cudaMemoryTypeUnregistered;
    out.device = -2;
    out.devicePointer = nullptr;
    out.hostPointer = p;
  }
  *attributes = out;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  STANDIN_ENTER();
  if (!free || !total) return ret(cudaErrorInvalidValue);
  // Like NVIDIA's runtime: through the driver's cuMemGetInfo_v2, as cuGetProcAddress answered.
  if (auto get_info = driver_functions().mem_get_info)
    return ret(static_cast<cudaError_t>(get_info(free, total)));
  mem_get_info(tls().device, free, total);
  return cudaSuccess;
}

cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* devPtr) {
  STANDIN_ENTER();
  return ret(ipc_get_handle(handle, devPtr));
}

cudaError_t cudaIpcOpenMemHandle(void** devPtr, cudaIpcMemHandle_t handle, unsigned int flags) {
  STANDIN_ENTER();
  if (!devPtr || (flags & ~static_cast<unsigned>(cudaIpcMemLazyEnablePeerAccess)))
    return ret(cudaErrorInvalidValue);
  IpcPayload p;
  memcpy(&p, handle.reserved, sizeof p);
  if (memcmp(p.magic, kIpcMagic, sizeof p.magic) != 0) return ret(cudaErrorInvalidValue);
  if (p.pid != static_cast<uint64_t>(getpid())) return ret(cudaErrorNotSupported);
  Runtime& r = rt();
  std::lock_guard g(r.alloc_mu);
  auto it = r.allocations.find(p.base);
  if (it == r.allocations.end() || it->second.serial != p.serial || it->second.free_pending)
    return ret(cudaErrorInvalidValue);
  r.ipc_opened[p.base] += 1;
  *devPtr = to_handle<void*>(p.base);
  return cudaSuccess;
}

cudaError_t cudaIpcCloseMemHandle(void* devPtr) {
  STANDIN_ENTER();
  Runtime& r = rt();
  std::lock_guard g(r.alloc_mu);
  auto it = r.ipc_opened.find(reinterpret_cast<uintptr_t>(devPtr));
  if (it == r.ipc_opened.end()) return ret(cudaErrorInvalidValue);
  if (--it->second == 0) r.ipc_opened.erase(it);
  return cudaSuccess;
}

int standinGetAllocationInfo(const void* ptr, StandinAllocationInfo* out) {
  Allocation a;
  uintptr_t base = 0;
  if (!out || !ptr) return -1;
  if (!find_device_range(ptr, 0, &a, &base)) {
    VmmMappingInfo m;
    if (!vmm_find_mapping(ptr, &m)) return -1;
    out->base = m.base;
    out->size = m.size;
    out->device = m.device;
    out->api = STANDIN_API_VMM;
    return 0;
  }
  out->base = base;
  out->size = a.size;
  out->device = a.device;
  out->api = static_cast<int>(a.api);
  return 0;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* memPool, int device) {
  return default_mem_pool(memPool, device);
}

cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* memPool, int device) {
  return default_mem_pool(memPool, device);
}

cudaError_t cudaMemPoolTrimTo(cudaMemPool_t memPool, size_t) {
  STANDIN_ENTER();
  std::shared_ptr<MemPool> pool;
  return ret(mem_pool_of(memPool, &pool));  // freed memory is unmapped at once: nothing to trim
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr, void* value) {
  STANDIN_ENTER();
  if (!value) return ret(cudaErrorInvalidValue);
  std::shared_ptr<MemPool> pool;
  return ret(mem_pool_of(memPool, &pool));
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr, void* value) {
  STANDIN_ENTER();
  if (!value) return ret(cudaErrorInvalidValue);
  std::shared_ptr<MemPool> pool;
  if (cudaError_t e = mem_pool_of(memPool, &pool)) return ret(e);
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
    case cudaMemPoolReuseAllowOpportunistic:
    case cudaMemPoolReuseAllowInternalDependencies:
      *static_cast<int*>(value) = 0;
      break;
    default:  // thresholds and byte counters are 64-bit
      *static_cast<uint64_t*>(value) = 0;
      break;
  }
  return cudaSuccess;
}

}  // extern "C"
