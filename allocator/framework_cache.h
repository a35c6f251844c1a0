// FrameworkCache: a cache above the pool that keeps blocks it got from the pool (PyTorch's or
// CuPy's caching allocator). To the pool those blocks are in use; to the release rules they are
// idle. The Releaser reads the cache's usage on every pass and, when a rule fires, asks the cache
// to empty itself before it releases the pool's own idle memory (docs/frameworks.md).
//
// The shim's implementation (shim/frameworks.h) reads and empties the framework's cache on a
// thread of its own; the allocator only sees this interface, and tests drive a fake.
#pragma once

#include <cstdint>

namespace cudapool {

struct FrameworkUsage {
  bool known = false;           // a framework holds a cache on this device; the rest is valid
  std::uint64_t reserved = 0;   // bytes the framework holds from the pool
  std::uint64_t allocated = 0;  // of those, bytes the framework has handed out
  // Any number that changes when the framework allocates (its allocation count): the idle timer
  // counts a change as activity, since the framework's cache hits never reach the pool.
  std::uint64_t activity = 0;

  // Cached but unallocated: what emptying the cache would give back to the pool.
  std::uint64_t cached() const { return reserved > allocated ? reserved - allocated : 0; }
};

class FrameworkCache {
 public:
  virtual ~FrameworkCache() = default;
  // Called at the start of every release pass: schedules a fresh reading when one is due. Never
  // blocks.
  virtual void tick(std::uint64_t now_ms) = 0;
  // The latest reading for `device`. Never blocks on the framework.
  virtual FrameworkUsage usage(int device) = 0;
  // Empties the framework's cache of `device` (it may empty other devices' too): the blocks come
  // back to the pool as frees. Waits for the framework, within a deadline, and returns the
  // reading taken after it. The caller holds no pool lock.
  virtual FrameworkUsage release(int device) = 0;
};

}  // namespace cudapool
