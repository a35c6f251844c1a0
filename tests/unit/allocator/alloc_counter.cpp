// Replaces the global operator new/delete of the test binary with malloc/free plus a per-thread
// counter that HostAllocationCounter reads. Only this thread's allocations are counted, so
// GoogleTest's or other threads' allocations do not disturb a measurement.
#include "alloc_counter.h"

#include <cstdlib>
#include <new>

namespace {
thread_local bool t_counting = false;
thread_local std::size_t t_allocations = 0;
}  // namespace

namespace cudapool::test {

HostAllocationCounter::HostAllocationCounter() {
  t_allocations = 0;
  t_counting = true;
}
HostAllocationCounter::~HostAllocationCounter() {
  t_counting = false;
}
std::size_t HostAllocationCounter::count() const {
  return t_allocations;
}

}  // namespace cudapool::test

void* operator new(std::size_t size) {
  if (t_counting) ++t_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
