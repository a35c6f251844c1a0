// PoolMutex: the lock of a pool's hot path.
//
// Its critical sections are tens of nanoseconds of bookkeeping, taken twice per cudaMalloc/cudaFree
// pair, so the uncontended path is what counts: one compare-and-swap to lock, one exchange to
// unlock, inline (a pthread mutex spends about 60 instructions per operation on its type checks and
// owner bookkeeping). A thread that finds the lock taken spins briefly (a holder leaves within
// nanoseconds unless it was descheduled), then sleeps in the kernel until the holder wakes it.
//
// States: 0 free; 1 held, nobody sleeping; 2 held, perhaps someone sleeping (the unlock that
// sees 2 wakes one sleeper). Acquire on lock, release on unlock. Meets the Lockable requirements
// (std::lock_guard works).
#pragma once

#include <atomic>

namespace cudapool {

class PoolMutex {
 public:
  PoolMutex() = default;
  PoolMutex(const PoolMutex&) = delete;
  PoolMutex& operator=(const PoolMutex&) = delete;

  void lock() {
    int expected = 0;
    if (state_.compare_exchange_strong(expected, 1, std::memory_order_acquire,
                                       std::memory_order_relaxed)) [[likely]]
      return;
    lock_contended();
  }
  void unlock() {
    if (state_.exchange(0, std::memory_order_release) == 2) [[unlikely]]
      state_.notify_one();
  }
  bool try_lock() {
    int expected = 0;
    return state_.compare_exchange_strong(expected, 1, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

 private:
  static constexpr int kSpins = 100;

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  __attribute__((noinline)) void lock_contended() {
    for (int i = 0; i < kSpins; ++i) {
      if (state_.load(std::memory_order_relaxed) == 0 && try_lock()) return;
      cpu_relax();
    }
    // Mark the lock as wanted (2) while taking it; sleep while someone else holds it.
    while (state_.exchange(2, std::memory_order_acquire) != 0)
      state_.wait(2, std::memory_order_relaxed);
  }

  std::atomic<int> state_{0};
};

}  // namespace cudapool
