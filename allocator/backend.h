// The pool's only way to reach device memory. The shim implements it with the CUDA runtime and
// driver (shim/cuda_backend.cpp); tests and benchmarks use SimulatedBackend.
//
// Two ways to obtain memory:
//   segments  allocate/release: one driver allocation per call (cudaMalloc/cudaFree);
//   pages     CUDA's virtual memory management, where page_size() is not 0: physical pages
//             (create_page/release_page, page_size() bytes each) mapped into address ranges the
//             pool reserves (reserve/unreserve, map/unmap, set_access). A page is mapped at one
//             address at a time; unmapping or releasing does not wait for the device, so the
//             pool fences first (docs/pages.md).
//
// Every call may block (a driver call); the pool never holds its lock across one. Calls must
// leave the calling thread's current device as it was.
#pragma once

#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace cudapool {

// A physical page (CUmemGenericAllocationHandle in the shim). 0 is never a valid handle.
using PageHandle = std::uint64_t;

class Backend {
 public:
  virtual ~Backend() = default;

  // Obtains `size` bytes of device memory on `device`.
  virtual Status allocate(int device, std::size_t size, void** ptr) = 0;
  // Returns a pointer obtained from allocate. kUnloading counts as success for the pool.
  virtual Status release(int device, void* ptr) = 0;
  // Waits until all work issued to `device` before the call has finished.
  virtual Status synchronize(int device) = 0;
  // Free and total bytes of the device, all processes included.
  virtual Status device_memory(int device, std::uint64_t* free, std::uint64_t* total) = 0;

  // ---- pages (optional) ----
  // The device's page size (its VMM allocation granularity), or 0 when it has no virtual
  // memory management (or the backend does not offer it): then only segments are used.
  virtual std::size_t page_size(int /*device*/) { return 0; }
  // Reserves `size` bytes of address space (a multiple of the page size), aligned to a page.
  virtual Status reserve(int /*device*/, std::size_t /*size*/, std::uintptr_t* /*base*/) {
    return Status::kError;
  }
  // Frees a whole reservation; nothing in it may be mapped.
  virtual Status unreserve(int /*device*/, std::uintptr_t /*base*/, std::size_t /*size*/) {
    return Status::kError;
  }
  // Creates one physical page on `device`; kOutOfMemory when the device has no room.
  virtual Status create_page(int /*device*/, PageHandle* /*handle*/) { return Status::kError; }
  // Releases a page that is not mapped.
  virtual Status release_page(int /*device*/, PageHandle /*handle*/) { return Status::kError; }
  // Maps a page at `addr` (page-aligned, reserved, not mapped). Not accessible until set_access.
  virtual Status map(int /*device*/, std::uintptr_t /*addr*/, PageHandle /*handle*/) {
    return Status::kError;
  }
  // Makes the mapped pages of [addr, addr + size) readable and writable by `device` and by every
  // peer the backend has been told to grant (one call for the whole run).
  virtual Status set_access(int /*device*/, std::uintptr_t /*addr*/, std::size_t /*size*/) {
    return Status::kError;
  }
  // Unmaps the page at `addr`. The caller has fenced: no work still uses it.
  virtual Status unmap(int /*device*/, std::uintptr_t /*addr*/) { return Status::kError; }
};

}  // namespace cudapool
