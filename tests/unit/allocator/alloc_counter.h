// Counts the host allocations (operator new) made by the calling thread, so that a test can check
// the hot path's rule: a pool hit allocates no host memory in steady state (DESIGN §6).
#pragma once

#include <cstddef>

namespace cudapool::test {

class HostAllocationCounter {
 public:
  HostAllocationCounter();
  ~HostAllocationCounter();
  HostAllocationCounter(const HostAllocationCounter&) = delete;
  HostAllocationCounter& operator=(const HostAllocationCounter&) = delete;

  // operator new calls made by this thread since construction.
  std::size_t count() const;
};

}  // namespace cudapool::test
