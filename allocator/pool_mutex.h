// PoolMutex: the lock of a pool's hot path.
//
// Its critical sections are tens of nanoseconds of bookkeeping. A plain mutex makes a thread that
// finds it taken sleep in the kernel and be woken again (microseconds, per collision); an adaptive
// mutex first spins for a short while, which is what sections this short need, and still sleeps
// when the holder is descheduled. Meets the Lockable requirements (std::lock_guard works).
#pragma once

#include <pthread.h>

namespace cudapool {

class PoolMutex {
 public:
  PoolMutex() {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(&mutex_, &attr);
    pthread_mutexattr_destroy(&attr);
  }
  ~PoolMutex() {
    pthread_mutex_destroy(&mutex_);
  }
  PoolMutex(const PoolMutex&) = delete;
  PoolMutex& operator=(const PoolMutex&) = delete;

  void lock() {
    pthread_mutex_lock(&mutex_);
  }
  void unlock() {
    pthread_mutex_unlock(&mutex_);
  }
  bool try_lock() {
    return pthread_mutex_trylock(&mutex_) == 0;
  }

 private:
  pthread_mutex_t mutex_;
};

}  // namespace cudapool
