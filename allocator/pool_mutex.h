// PoolMutex: the lock of a pool's hot path.
//
// Its critical sections are tens of nanoseconds of bookkeeping, taken twice per cudaMalloc/cudaFree
// pair, so the uncontended path is what counts: one compare-and-swap to lock and a plain store to
// unlock, inline. (A pthread mutex spends about 60 instructions per operation on its type checks
// and owner bookkeeping, and any lock that puts waiters to sleep in the kernel needs a second
// atomic read-modify-write at unlock to learn whether someone must be woken.)
//
// A thread that finds the lock taken spins briefly (a holder leaves within nanoseconds unless it
// was descheduled), then yields the processor, then sleeps in naps that double from 1 to 50 us
// between tries, so that a descheduled holder gets the processor back and a long critical section
// (a fence making a batch of blocks free, a few tens of microseconds) costs the waiters no busy
// spinning. There is no queue: under heavy contention a napping thread may lose a few rounds.
// Measured: two threads on one device 1.3-1.7 -> 4.0-6.0 million pairs/s against the pthread
// adaptive mutex, which puts waiters to sleep in the kernel (docs/benchmarks.md, hotpath).
//
// held_ is true while a thread holds the lock; acquire on lock, release on unlock. Meets the
// Lockable requirements (std::lock_guard works).
#pragma once

#include <sched.h>
#include <time.h>

#include <atomic>

namespace cudapool {

class PoolMutex {
 public:
  PoolMutex() = default;
  PoolMutex(const PoolMutex&) = delete;
  PoolMutex& operator=(const PoolMutex&) = delete;

  void lock() {
    if (try_lock()) [[likely]]
      return;
    lock_contended();
  }
  void unlock() { held_.store(false, std::memory_order_release); }
  bool try_lock() {
    return !held_.load(std::memory_order_relaxed) &&
           !held_.exchange(true, std::memory_order_acquire);
  }

 private:
  static constexpr int kSpins = 128;
  static constexpr int kYields = 16;
  static constexpr long kFirstNapNs = 1000;
  static constexpr long kMaxNapNs = 50000;

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  __attribute__((noinline)) void lock_contended() {
    for (int i = 0; i < kSpins; ++i) {
      cpu_relax();
      if (try_lock()) return;
    }
    for (int i = 0; i < kYields; ++i) {
      sched_yield();
      if (try_lock()) return;
    }
    long nap = kFirstNapNs;
    while (!try_lock()) {
      timespec ts{0, nap};
      nanosleep(&ts, nullptr);
      nap = nap * 2 < kMaxNapNs ? nap * 2 : kMaxNapNs;
    }
  }

  std::atomic<bool> held_{false};
};

}  // namespace cudapool
