// Virtual memory management: the driver's cuMemCreate / cuMemMap family, kept here in the runtime
// (which owns capacity and the stream engine) and reached through the stand-in driver
// (driver.cpp), which forwards its cu* entry points to the table at the end of this file.
//
// Model.
// - Physical memory (cuMemCreate): an extent of one memfd shared by the process (file offsets are
//   never reused; a freed extent's pages are punched out), so one allocation can be mapped at
//   several addresses showing the same bytes, and a handle costs no file descriptor. Its bytes
//   count on the device's held_bytes, the counter cudaMalloc uses, so capacity and cudaMemGetInfo
//   see both. Handles are runtime handles (never reused). cuMemRelease invalidates the handle;
//   the memory (and its capacity) is freed when its last mapping goes, as NVIDIA documents.
// - Reservations (cuMemAddressReserve): PROT_NONE, MAP_NORESERVE anonymous address space,
//   aligned to max(granularity, alignment); a 1 TiB reservation costs nothing.
// - Mappings (cuMemMap): the memfd extent mapped MAP_SHARED | MAP_FIXED over the reservation,
//   PROT_NONE until cuMemSetAccess. Access is recorded per granule and device (bit masks); the
//   host pages are readable when some device may read, writable when some device may write.
//   cuMemUnmap takes whole mappings only (as NVIDIA's driver) and puts PROT_NONE reserved address
//   space back. Nothing here waits for the device (NVIDIA's driver does not either).
// - Stream work (copies.cpp) on VMM memory is checked when queued (vmm_check: mapped, accessible)
//   and again when it runs (vmm_run_guarded): if a mapping it touches was unmapped, replaced or
//   made inaccessible in between, the work is skipped and counted (unmapped_accesses) instead of
//   faulting - a pool that unmapped memory before queued work finished.
//
// Locking: one shared_mutex for the registry. Calls that change it hold it exclusively; queries
// and running stream work hold it shared (so a range cannot be unmapped under a running memset).
// No lock is taken in a fork child (every call fails there), nor any other lock while it is held.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "driver_table.h"
#include "standin_internal.h"

namespace standin {
namespace {

constexpr uint64_t kMaxFileSize = 1ull << 62;
constexpr uint64_t kMinFileSize = 1ull << 40;  // sparse: costs nothing until pages are touched

struct Physical {
  int device = 0;
  uint64_t size = 0;
  uint64_t file_offset = 0;
  bool released = false;  // guarded by VmmState::mu
  uint64_t mappings = 0;  // guarded by VmmState::mu
};

struct Mapping {
  uint64_t serial = 0;  // distinguishes it from a later mapping at the same address
  uint64_t size = 0;
  std::shared_ptr<Physical> phys;
  std::vector<uint64_t> readers;  // per granule: bit d set = device d may read
  std::vector<uint64_t> writers;  // per granule: bit d set = device d may write
};

struct Reservation {
  uint64_t size = 0;
  uint64_t mapped = 0;  // bytes mapped in it
};

struct VmmState {
  std::shared_mutex mu;
  int fd = -1;               // guarded by mu: the memfd behind all physical memory
  uint64_t file_size = 0;    // guarded by mu
  uint64_t next_offset = 0;  // guarded by mu
  uint64_t next_serial = 1;  // guarded by mu
  std::unordered_map<uint64_t, std::shared_ptr<Physical>> handles;  // guarded by mu: unreleased
  std::map<uintptr_t, Reservation> reservations;                    // guarded by mu
  std::map<uintptr_t, Mapping> mappings;                            // guarded by mu
  std::atomic<bool> ever_reserved{false};  // no VMM address space yet: checks are free
  std::atomic<uint64_t> calls[kVmmKindCount]{};
  std::atomic<int64_t> pending_failures[kVmmKindCount]{};
};

VmmState& vmm() {
  static auto* state = new VmmState();  // never destroyed, like the runtime
  return *state;
}

uint64_t granularity() {
  return rt().config.vmm_granularity;
}
bool aligned(uint64_t v) {
  return (v & (granularity() - 1)) == 0;
}

// The checks every VMM call starts with.
CUresult vmm_enter() {
  Runtime& r = rt();
  if (r.forked_child.load(std::memory_order_relaxed) ||
      r.shutting_down.load(std::memory_order_acquire))
    return CUDA_ERROR_DEINITIALIZED;
  if (r.devices.empty()) return CUDA_ERROR_NOT_INITIALIZED;
  if (tls().in_worker) return CUDA_ERROR_NOT_PERMITTED;  // stream callbacks may not call CUDA
  if (!r.config.vmm) return CUDA_ERROR_NOT_SUPPORTED;
  return CUDA_SUCCESS;
}

Device& current() {
  return *rt().device(tls().device);
}

// A failed call other than cuMemCreate.
CUresult failed(CUresult e) {
  current().vmm.other_failures.fetch_add(1, std::memory_order_relaxed);
  return e;
}

// Failure injection: the Nth call of a kind (STANDIN_FAIL_VMM) or the next pending ones.
bool inject(VmmKind kind) {
  Runtime& r = rt();
  VmmState& v = vmm();
  const uint64_t n = v.calls[kind].fetch_add(1) + 1;
  bool hit = false;
  for (uint64_t at : r.config.fail_vmm_at[kind])
    hit = hit || at == n;
  int64_t pending = v.pending_failures[kind].load();
  while (!hit && pending > 0)
    hit = v.pending_failures[kind].compare_exchange_weak(pending, pending - 1);
  if (hit) r.injected_faults.fetch_add(1);
  return hit;
}

CUresult check_prop(const CUmemAllocationProp* prop, int* device) {
  if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  if (!rt().device(prop->location.id)) return CUDA_ERROR_INVALID_DEVICE;  // an ordinal
  *device = prop->location.id;
  return CUDA_SUCCESS;
}

// A fresh extent of the memfd (mu held exclusively).
bool new_extent(VmmState& v, uint64_t size, uint64_t* offset) {
  if (v.fd < 0) {
    v.fd = memfd_create("cudart-standin-vmm", MFD_CLOEXEC);
    if (v.fd < 0) return false;
  }
  if (size > kMaxFileSize - v.next_offset) return false;
  const uint64_t end = v.next_offset + size;
  if (end > v.file_size) {
    const uint64_t grown =
        std::max(end, std::min(kMaxFileSize, std::max(kMinFileSize, v.file_size * 2)));
    if (ftruncate(v.fd, static_cast<off_t>(grown)) != 0) return false;
    v.file_size = grown;
  }
  *offset = v.next_offset;
  v.next_offset = end;
  return true;
}

// Gives physical memory back: its pages and its capacity (mu held exclusively).
void free_physical(VmmState& v, const Physical& p) {
  fallocate(v.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(p.file_offset),
            static_cast<off_t>(p.size));
  Device& d = *rt().device(p.device);
  d.held_bytes.fetch_sub(p.size);
  d.vmm.bytes_physical.fetch_sub(p.size);
}

// PROT_NONE address space that only reserves (over [addr, addr+size) when fixed).
void* reserve_space(void* addr, uint64_t size, int extra_flags) {
  return mmap(addr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | extra_flags, -1,
              0);
}

// The reservation holding all of [a, a+n), or end().
std::map<uintptr_t, Reservation>::iterator reservation_of(VmmState& v, uintptr_t a, uint64_t n) {
  auto it = v.reservations.upper_bound(a);
  if (it == v.reservations.begin()) return v.reservations.end();
  --it;
  if (a - it->first >= it->second.size || n > it->second.size - (a - it->first))
    return v.reservations.end();
  return it;
}

// Calls fn(base, mapping, lo, hi) for the mappings covering [a, a+n) in address order, [lo, hi)
// the part of the range in each. False when some byte is not mapped.
template <typename F>
bool walk(VmmState& v, uintptr_t a, uint64_t n, F&& fn) {
  if (n == 0 || n > UINTPTR_MAX - a) return false;
  const uintptr_t end = a + n;
  auto it = v.mappings.upper_bound(a);
  if (it == v.mappings.begin()) return false;
  --it;
  uintptr_t cur = a;
  while (cur < end) {
    if (it == v.mappings.end() || it->first > cur || cur - it->first >= it->second.size)
      return false;
    const uintptr_t stop = std::min<uintptr_t>(end, it->first + it->second.size);
    fn(it->first, it->second, cur, stop);
    cur = stop;
    ++it;
  }
  return true;
}

// Whether every granule of [lo, hi) in mapping m at base may be read (or written) by a device.
bool granules_allow(const Mapping& m, uintptr_t base, uintptr_t lo, uintptr_t hi, bool write) {
  const uint64_t g = granularity();
  for (uint64_t i = (lo - base) / g, last = (hi - 1 - base) / g; i <= last; ++i)
    if (write ? m.writers[i] == 0 : (m.readers[i] | m.writers[i]) == 0) return false;
  return true;
}

// Whether some reservation overlaps [a, a+n).
bool in_reserved_space(VmmState& v, uintptr_t a, uint64_t n) {
  const uintptr_t last = n == 0 ? a : (n - 1 > UINTPTR_MAX - a ? UINTPTR_MAX : a + (n - 1));
  auto it = v.reservations.upper_bound(last);
  if (it == v.reservations.begin()) return false;
  --it;
  return it->first + it->second.size > a;
}

int prot_of(const Mapping& m, uint64_t granule) {
  if (m.writers[granule] != 0) return PROT_READ | PROT_WRITE;
  return m.readers[granule] != 0 ? PROT_READ : PROT_NONE;
}

// ---- the driver entry points ----------------------------------------------------------------

CUresult driver_state() {
  Runtime& r = rt();
  if (r.forked_child.load(std::memory_order_relaxed) ||
      r.shutting_down.load(std::memory_order_acquire))
    return CUDA_ERROR_DEINITIALIZED;
  return r.devices.empty() ? CUDA_ERROR_NOT_INITIALIZED : CUDA_SUCCESS;
}

int device_count() {
  return static_cast<int>(rt().devices.size());
}

CUresult driver_device_attribute(int* value, int attr, int ordinal) {
  if (!rt().device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
  switch (attr) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
      *value = rt().config.vmm ? 1 : 0;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_WIN32_HANDLE_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED:
      *value = 0;  // no shareable handles
      return CUDA_SUCCESS;
    default:
      return device_attribute(attr, ordinal, value) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  }
}

CUresult mem_get_allocation_granularity(size_t* granularity_out, const CUmemAllocationProp* prop,
                                        CUmemAllocationGranularity_flags option) {
  if (CUresult e = vmm_enter()) return e;
  if (!granularity_out || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                           option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
    return failed(CUDA_ERROR_INVALID_VALUE);
  int device = 0;
  if (CUresult e = check_prop(prop, &device)) return failed(e);
  *granularity_out = granularity();
  return CUDA_SUCCESS;
}

CUresult mem_create(CUmemGenericAllocationHandle* handle, size_t size,
                    const CUmemAllocationProp* prop, unsigned long long flags) {
  if (CUresult e = vmm_enter()) return e;
  Runtime& r = rt();
  int device = -1;
  CUresult e = handle ? check_prop(prop, &device) : CUDA_ERROR_INVALID_VALUE;
  if (!e && (flags != 0 || size == 0 || !aligned(size))) e = CUDA_ERROR_INVALID_VALUE;
  if (!e && prop && prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE)
    e = CUDA_ERROR_NOT_SUPPORTED;
  Device& d = device >= 0 ? *r.device(device) : current();
  auto fail = [&](CUresult err) {
    d.vmm.create_failures.fetch_add(1);
    return err;
  };
  if (e) return fail(e);
  if (inject(kVmmCreate)) return fail(CUDA_ERROR_OUT_OF_MEMORY);
  uint64_t held = d.held_bytes.load();
  for (;;) {
    const uint64_t other = d.other_bytes.load();
    if (other > d.capacity || held > d.capacity - other || size > d.capacity - other - held)
      return fail(CUDA_ERROR_OUT_OF_MEMORY);
    if (d.held_bytes.compare_exchange_weak(held, held + size)) break;
  }
  auto phys = std::make_shared<Physical>();
  phys->device = device;
  phys->size = size;
  const uint64_t id = r.new_handle();
  VmmState& v = vmm();
  {
    std::unique_lock lk(v.mu);
    if (!new_extent(v, size, &phys->file_offset)) {
      lk.unlock();
      d.held_bytes.fetch_sub(size);
      return fail(CUDA_ERROR_OUT_OF_MEMORY);
    }
    v.handles.emplace(id, phys);
  }
  note_held_peak(d, held + size);
  d.vmm.bytes_physical.fetch_add(size);
  d.vmm.creates.fetch_add(1);
  *handle = id;
  return CUDA_SUCCESS;
}

CUresult mem_release(CUmemGenericAllocationHandle handle) {
  if (CUresult e = vmm_enter()) return e;
  VmmState& v = vmm();
  std::unique_lock lk(v.mu);
  auto it = v.handles.find(handle);
  if (it == v.handles.end()) return failed(CUDA_ERROR_INVALID_VALUE);
  if (inject(kVmmRelease)) return failed(CUDA_ERROR_UNKNOWN);
  std::shared_ptr<Physical> phys = std::move(it->second);
  v.handles.erase(it);
  phys->released = true;
  if (phys->mappings == 0) free_physical(v, *phys);
  rt().device(phys->device)->vmm.releases.fetch_add(1);
  return CUDA_SUCCESS;
}

CUresult mem_address_reserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags) {
  if (CUresult e = vmm_enter()) return e;
  if (!ptr || size == 0 || !aligned(size) || flags != 0 || (alignment & (alignment - 1)) != 0 ||
      addr % static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) != 0)
    return failed(CUDA_ERROR_INVALID_VALUE);
  const uint64_t align = std::max<uint64_t>(granularity(), alignment);
  if (inject(kVmmReserve)) return failed(CUDA_ERROR_OUT_OF_MEMORY);
  void* base = MAP_FAILED;
  if (addr != 0 && addr % align == 0) {  // the hint, where it is free
    base = reserve_space(to_handle<void*>(addr), size, MAP_FIXED_NOREPLACE);
    if (base != MAP_FAILED && reinterpret_cast<uintptr_t>(base) != addr) {  // kernel < 4.17
      munmap(base, size);
      base = MAP_FAILED;
    }
  }
  if (base == MAP_FAILED) {
    if (size > UINT64_MAX - align) return failed(CUDA_ERROR_OUT_OF_MEMORY);
    void* raw = reserve_space(nullptr, size + align, 0);
    if (raw == MAP_FAILED) return failed(CUDA_ERROR_OUT_OF_MEMORY);
    const uintptr_t lo = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = (lo + align - 1) & ~(align - 1);
    if (start > lo) munmap(raw, start - lo);
    if (const uintptr_t tail = lo + size + align - (start + size); tail > 0)
      munmap(to_handle<void*>(start + size), tail);
    base = to_handle<void*>(start);
  }
  VmmState& v = vmm();
  {
    std::unique_lock lk(v.mu);
    v.reservations[reinterpret_cast<uintptr_t>(base)] = Reservation{size, 0};
    v.ever_reserved.store(true);
  }
  current().vmm.reserves.fetch_add(1);
  *ptr = reinterpret_cast<uintptr_t>(base);
  return CUDA_SUCCESS;
}

CUresult mem_address_free(CUdeviceptr ptr, size_t size) {
  if (CUresult e = vmm_enter()) return e;
  VmmState& v = vmm();
  std::unique_lock lk(v.mu);
  auto it = v.reservations.find(ptr);
  // The whole reservation, exactly; nothing in it may be mapped.
  if (it == v.reservations.end() || it->second.size != size || it->second.mapped != 0)
    return failed(CUDA_ERROR_INVALID_VALUE);
  if (inject(kVmmAddressFree)) return failed(CUDA_ERROR_UNKNOWN);
  munmap(to_handle<void*>(ptr), size);
  v.reservations.erase(it);
  current().vmm.address_frees.fetch_add(1);
  return CUDA_SUCCESS;
}

CUresult mem_map(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                 unsigned long long flags) {
  if (CUresult e = vmm_enter()) return e;
  if (flags != 0 || size == 0 || !aligned(ptr) || !aligned(size) || !aligned(offset))
    return failed(CUDA_ERROR_INVALID_VALUE);
  VmmState& v = vmm();
  std::unique_lock lk(v.mu);
  auto h = v.handles.find(handle);
  if (h == v.handles.end()) return failed(CUDA_ERROR_INVALID_VALUE);
  const std::shared_ptr<Physical> phys = h->second;
  if (offset > phys->size || size > phys->size - offset) return failed(CUDA_ERROR_INVALID_VALUE);
  auto res = reservation_of(v, ptr, size);
  if (res == v.reservations.end()) return failed(CUDA_ERROR_INVALID_VALUE);
  // Nothing in [ptr, ptr+size) may be mapped already.
  auto next = v.mappings.lower_bound(ptr);
  if (next != v.mappings.end() && next->first - ptr < size) return failed(CUDA_ERROR_INVALID_VALUE);
  if (next != v.mappings.begin()) {
    auto prev = std::prev(next);
    if (ptr - prev->first < prev->second.size) return failed(CUDA_ERROR_INVALID_VALUE);
  }
  if (inject(kVmmMap)) return failed(CUDA_ERROR_OUT_OF_MEMORY);
  void* p = mmap(to_handle<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED, v.fd,
                 static_cast<off_t>(phys->file_offset + offset));
  if (p == MAP_FAILED) {
    reserve_space(to_handle<void*>(ptr), size, MAP_FIXED);
    return failed(CUDA_ERROR_OUT_OF_MEMORY);
  }
  const uint64_t granules = size / granularity();
  Mapping m;
  m.serial = v.next_serial++;
  m.size = size;
  m.phys = phys;
  m.readers.assign(granules, 0);
  m.writers.assign(granules, 0);
  v.mappings.emplace(ptr, std::move(m));
  phys->mappings += 1;
  res->second.mapped += size;
  Device& d = *rt().device(phys->device);
  d.vmm.pages_mapped.fetch_add(granules);
  d.vmm.maps.fetch_add(1);
  return CUDA_SUCCESS;
}

CUresult mem_unmap(CUdeviceptr ptr, size_t size) {
  if (CUresult e = vmm_enter()) return e;
  if (size == 0 || !aligned(ptr) || !aligned(size)) return failed(CUDA_ERROR_INVALID_VALUE);
  VmmState& v = vmm();
  std::unique_lock lk(v.mu);
  auto res = reservation_of(v, ptr, size);
  if (res == v.reservations.end()) return failed(CUDA_ERROR_INVALID_VALUE);
  // Whole mappings, back to back: unmapping part of one is an error, as on NVIDIA's driver.
  auto first = v.mappings.find(ptr);
  auto it = first;
  for (uintptr_t cur = ptr; cur != ptr + size; ++it) {
    if (it == v.mappings.end() || it->first != cur || it->second.size > ptr + size - cur)
      return failed(CUDA_ERROR_INVALID_VALUE);
    cur += it->second.size;
  }
  if (inject(kVmmUnmap)) return failed(CUDA_ERROR_UNKNOWN);
  if (reserve_space(to_handle<void*>(ptr), size, MAP_FIXED) == MAP_FAILED)
    return failed(CUDA_ERROR_UNKNOWN);
  rt().device(first->second.phys->device)->vmm.unmaps.fetch_add(1);
  for (auto m = first; m != it; ++m) {
    Physical& phys = *m->second.phys;
    phys.mappings -= 1;
    rt().device(phys.device)->vmm.pages_mapped.fetch_sub(m->second.size / granularity());
    if (phys.released && phys.mappings == 0) free_physical(v, phys);
  }
  v.mappings.erase(first, it);
  res->second.mapped -= size;
  return CUDA_SUCCESS;
}

CUresult mem_set_access(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  if (CUresult e = vmm_enter()) return e;
  if (!desc || count == 0 || size == 0 || !aligned(ptr) || !aligned(size))
    return failed(CUDA_ERROR_INVALID_VALUE);
  for (size_t i = 0; i < count; ++i) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE)
      return failed(CUDA_ERROR_INVALID_VALUE);
    if (!rt().device(desc[i].location.id)) return failed(CUDA_ERROR_INVALID_DEVICE);
    if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE &&
        desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
        desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
      return failed(CUDA_ERROR_INVALID_VALUE);
  }
  VmmState& v = vmm();
  std::unique_lock lk(v.mu);
  int device = -1;
  const bool mapped = walk(v, ptr, size, [&](uintptr_t, Mapping& m, uintptr_t, uintptr_t) {
    if (device < 0) device = m.phys->device;
  });
  if (!mapped) return failed(CUDA_ERROR_INVALID_VALUE);  // the whole range must be mapped
  if (inject(kVmmSetAccess)) return failed(CUDA_ERROR_UNKNOWN);
  const uint64_t g = granularity();
  uintptr_t run_start = ptr;
  int run_prot = -1;
  auto flush = [&](uintptr_t end) {
    if (run_prot >= 0 && end > run_start)
      mprotect(to_handle<void*>(run_start), end - run_start, run_prot);
  };
  walk(v, ptr, size, [&](uintptr_t base, Mapping& m, uintptr_t lo, uintptr_t hi) {
    for (uintptr_t a = lo; a < hi; a += g) {
      const uint64_t i = (a - base) / g;
      for (size_t k = 0; k < count; ++k) {
        const uint64_t bit = 1ull << desc[k].location.id;
        const unsigned f = desc[k].flags;
        m.readers[i] =
            (f & CU_MEM_ACCESS_FLAGS_PROT_READ) ? m.readers[i] | bit : m.readers[i] & ~bit;
        m.writers[i] =
            f == CU_MEM_ACCESS_FLAGS_PROT_READWRITE ? m.writers[i] | bit : m.writers[i] & ~bit;
      }
      const int prot = prot_of(m, i);
      if (prot != run_prot) {
        flush(a);
        run_start = a;
        run_prot = prot;
      }
    }
  });
  flush(ptr + size);
  rt().device(device)->vmm.set_access_calls.fetch_add(1);
  return CUDA_SUCCESS;
}

CUresult mem_get_access(unsigned long long* flags, const CUmemLocation* location, CUdeviceptr ptr) {
  if (CUresult e = vmm_enter()) return e;
  if (!flags || !location || location->type != CU_MEM_LOCATION_TYPE_DEVICE)
    return failed(CUDA_ERROR_INVALID_VALUE);
  if (!rt().device(location->id)) return failed(CUDA_ERROR_INVALID_DEVICE);
  VmmState& v = vmm();
  std::shared_lock lk(v.mu);
  unsigned long long out = CU_MEM_ACCESS_FLAGS_PROT_NONE;
  const bool mapped = walk(v, ptr, 1, [&](uintptr_t base, Mapping& m, uintptr_t, uintptr_t) {
    const uint64_t i = (ptr - base) / granularity();
    const uint64_t bit = 1ull << location->id;
    if (m.writers[i] & bit) {
      out = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    } else if (m.readers[i] & bit) {
      out = CU_MEM_ACCESS_FLAGS_PROT_READ;
    }
  });
  if (!mapped) return failed(CUDA_ERROR_INVALID_VALUE);
  *flags = out;
  return CUDA_SUCCESS;
}

const StandinDriverTable kDriverTable = {
    sizeof(StandinDriverTable),
    driver_current_device,
    driver_state,
    device_count,
    driver_device_attribute,
    mem_get_allocation_granularity,
    mem_create,
    mem_release,
    mem_address_reserve,
    mem_address_free,
    mem_map,
    mem_unmap,
    mem_set_access,
    mem_get_access,
    ctx_get_current,
    ctx_set_current,
    ctx_push,
    ctx_pop,
    primary_retain,
    primary_release,
    primary_reset,
    primary_state,
    ctx_destroy,
    ctx_synchronize,
    driver_mem_alloc,
    driver_mem_alloc_pitch,
    driver_mem_alloc_managed,
    driver_mem_alloc_async,
    driver_mem_free,
    driver_mem_free_async,
    driver_mem_get_info,
    driver_mem_get_address_range,
    driver_ipc_get_mem_handle,
    standinGetCounters,
    standinResetCounters,
    standinGetAllocationInfo,
};

}  // namespace

const StandinDriverTable* driver_table() {
  return &kDriverTable;
}

// ---- the runtime's view of VMM memory ---------------------------------------------------------

VmmAccess vmm_check(const void* p, size_t n, bool write, VmmRange* out) {
  VmmState& v = vmm();
  if (!v.ever_reserved.load(std::memory_order_acquire) || rt().forked_child.load()) {
    return VmmAccess::kNotVmm;
  }
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint64_t len = n == 0 ? 1 : n;
  std::shared_lock lk(v.mu);
  if (!in_reserved_space(v, a, len)) return VmmAccess::kNotVmm;
  VmmRange r;
  r.addr = a;
  r.size = len;
  r.write = write;
  bool ok = true;
  const bool mapped = walk(v, a, len, [&](uintptr_t base, Mapping& m, uintptr_t lo, uintptr_t hi) {
    ok = ok && granules_allow(m, base, lo, hi, write);
    r.mappings.push_back(m.serial);
  });
  if (!mapped || !ok) return VmmAccess::kInaccessible;
  if (out) *out = std::move(r);
  return VmmAccess::kAccessible;
}

void vmm_run_guarded(int device, const std::vector<VmmRange>& ranges,
                     const std::function<void()>& work) {
  VmmState& v = vmm();
  std::shared_lock lk(v.mu);
  for (const VmmRange& r : ranges) {
    size_t k = 0;
    bool ok = true;
    const bool mapped =
        walk(v, r.addr, r.size, [&](uintptr_t base, Mapping& m, uintptr_t lo, uintptr_t hi) {
          ok = ok && k < r.mappings.size() && r.mappings[k] == m.serial &&
               granules_allow(m, base, lo, hi, r.write);
          ++k;
        });
    if (!mapped || !ok || k != r.mappings.size()) {
      lk.unlock();
      if (Device* d = rt().device(device)) d->vmm.unmapped_accesses.fetch_add(1);
      return;
    }
  }
  work();
}

bool vmm_find_mapping(const void* p, VmmMappingInfo* out) {
  VmmState& v = vmm();
  if (!v.ever_reserved.load(std::memory_order_acquire) || rt().forked_child.load()) return false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::shared_lock lk(v.mu);
  return walk(v, a, 1, [&](uintptr_t base, Mapping& m, uintptr_t, uintptr_t) {
    const uint64_t i = (a - base) / granularity();
    out->base = base;
    out->size = m.size;
    out->device = m.phys->device;
    out->accessible = (m.readers[i] | m.writers[i]) != 0;
  });
}

}  // namespace standin

using namespace standin;

extern "C" {

int standinGetVmmCounters(int device, StandinVmmCounters* out) {
  if (!out) return -1;
  StandinVmmCounters sum{};
  bool found = false;
  for (auto& d : rt().devices) {
    if (device != -1 && d->index != device) continue;
    found = true;
    const VmmCounters& k = d->vmm;
    sum.creates += k.creates.load();
    sum.create_failures += k.create_failures.load();
    sum.releases += k.releases.load();
    sum.maps += k.maps.load();
    sum.unmaps += k.unmaps.load();
    sum.set_access_calls += k.set_access_calls.load();
    sum.reserves += k.reserves.load();
    sum.address_frees += k.address_frees.load();
    sum.other_failures += k.other_failures.load();
    sum.bytes_physical += k.bytes_physical.load();
    sum.pages_mapped += k.pages_mapped.load();
    sum.unmapped_accesses += k.unmapped_accesses.load();
  }
  if (!found && device != -1) return -1;
  *out = sum;
  return 0;
}

void standinInjectVmmFailures(const char* kind, int count) {
  for (int k = 0; kind && k < kVmmKindCount; ++k) {
    if (strcmp(kind, kVmmKindNames[k]) != 0) continue;
    vmm().pending_failures[k].store(count > 0 ? count : 0);
    return;
  }
  warn("standinInjectVmmFailures: unknown kind '%s'", kind ? kind : "(null)");
}

}  // extern "C"
