// PoolMutex (pool_mutex.h): mutual exclusion under contention, napping waiters get the lock,
// try_lock.
#include "allocator/pool_mutex.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace cudapool {
namespace {

TEST(PoolMutex, TryLockFailsWhileHeldAndSucceedsAfter) {
  PoolMutex m;
  ASSERT_TRUE(m.try_lock());
  std::thread other([&] { EXPECT_FALSE(m.try_lock()); });
  other.join();
  m.unlock();
  EXPECT_TRUE(m.try_lock());
  m.unlock();
}

// A read-modify-write of a plain counter under the lock: any two threads inside at once lose
// increments, which the total shows.
TEST(PoolMutex, ExcludesUnderContention) {
  PoolMutex m;
  std::uint64_t counter = 0;  // guarded by m
  constexpr int kThreads = 4;
  constexpr int kRounds = 200000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        std::lock_guard lock(m);
        std::uint64_t seen = counter;
        if (i % 1024 == 0) std::this_thread::yield();  // widen the window now and then
        counter = seen + 1;
      }
    });
  }
  for (std::thread& t : threads)
    t.join();
  EXPECT_EQ(counter, std::uint64_t{kThreads} * kRounds);
}

// Waiters that gave up spinning nap between tries; each must still get the lock once it is free.
TEST(PoolMutex, NappingWaitersGetTheLockOnceFree) {
  PoolMutex m;
  m.lock();
  std::atomic<int> entered{0};
  std::vector<std::thread> waiters;
  for (int t = 0; t < 3; ++t) {
    waiters.emplace_back([&] {
      std::lock_guard lock(m);
      entered.fetch_add(1);
    });
  }
  // Long enough for every waiter to exhaust its spins and yields and start napping.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(entered.load(), 0);
  m.unlock();
  for (std::thread& t : waiters)
    t.join();
  EXPECT_EQ(entered.load(), 3);
  EXPECT_TRUE(m.try_lock());  // left free
  m.unlock();
}

}  // namespace
}  // namespace cudapool
