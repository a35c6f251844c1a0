// Several threads allocating on one device (DESIGN §4.4, §4.5, §4.7, §4.2, §5): what threads add
// to the contract, checked on whatever the pool does per thread (docs/thread-caches.md: caches of
// free blocks, per-thread pending lists, drained by every release rule, trim, reset and at thread
// exit). Blocks are at most 64 KiB where a cache would keep them.
//
// Registrations (tests/integration/CMakeLists.txt) set CUDAPOOL_HIGH_WATERMARK=64GiB and, unless
// the case is about the idle timer, CUDAPOOL_IDLE_RELEASE_MS=0: nothing is released or fenced
// behind a test's back unless it asks (trim through the pipe).
#include <dlfcn.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "control/client.h"
#include "tests/integration/integration_util.h"
#include "tests/integration/own_pipe.h"

namespace integ {
namespace {

using cudapool::ClientReply;

// ---- helpers ----------------------------------------------------------------------------------

// The pipe's `stats` figures of device 0 (held, in_use, idle, live_blocks, ...): its
// "device=0 ..." line; empty when there is none.
std::map<std::string, unsigned long long> pool_stats() {
  const ClientReply r = command("stats");
  EXPECT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  std::istringstream lines(r.body);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("device=0 ", 0) == 0) return parse_key_values(line);
  ADD_FAILURE() << "no device=0 line in the stats:\n" << r.body;
  return {};
}

StandinVmmCounters vmm() {
  StandinVmmCounters v{};
  auto* fn = reinterpret_cast<int (*)(int, StandinVmmCounters*)>(
      dlsym(RTLD_DEFAULT, "standinGetVmmCounters"));
  EXPECT_NE(nullptr, fn);
  if (fn != nullptr) fn(-1, &v);
  return v;
}

std::uintptr_t addr(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

// Live blocks of all threads, to catch overlaps as soon as they are handed out.
class LiveSet {
 public:
  bool insert(const void* p, std::size_t n) {
    const std::uintptr_t a = addr(p);
    std::lock_guard lock(mutex_);
    auto next = live_.lower_bound(a);
    if (next != live_.end() && next->first < a + n) return false;
    if (next != live_.begin() && std::prev(next)->first + std::prev(next)->second > a) return false;
    live_[a] = n;
    return true;
  }
  void erase(const void* p) {
    std::lock_guard lock(mutex_);
    live_.erase(addr(p));
  }
  void clear() {
    std::lock_guard lock(mutex_);
    live_.clear();
  }
  bool overlaps(const void* p, std::size_t n) {
    const std::uintptr_t a = addr(p);
    std::lock_guard lock(mutex_);
    auto next = live_.lower_bound(a);
    if (next != live_.end() && next->first < a + n) return true;
    return next != live_.begin() && std::prev(next)->first + std::prev(next)->second > a;
  }

 private:
  std::mutex mutex_;
  std::map<std::uintptr_t, std::size_t> live_;
};

// Pattern written and checked through the runtime (cudaMemcpy), as an application would.
struct Patterns {
  std::vector<unsigned char> out, in;
  void make(std::size_t n, std::uint64_t seed) {
    out.resize(n);
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (std::size_t i = 0; i < n; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      out[i] = static_cast<unsigned char>(x);
    }
  }
  cudaError_t write(void* p, std::size_t n, std::uint64_t seed) {
    make(n, seed);
    return cudaMemcpy(p, out.data(), n, cudaMemcpyHostToDevice);
  }
  // 0: intact, 1: differs, 2: the copy failed.
  int check(const void* p, std::size_t n, std::uint64_t seed) {
    make(n, seed);
    in.assign(n, 0);
    if (cudaMemcpy(in.data(), p, n, cudaMemcpyDeviceToHost) != cudaSuccess) return 2;
    return std::memcmp(in.data(), out.data(), n) == 0 ? 0 : 1;
  }
};

// ---- ReuseAcrossThreads (§4.5)
// ------------------------------------------------------------------- Four threads, each on its own
// stream. Per round: every thread allocates blocks (phase A), holds its stream's worker with a
// Gate, queues a memset into each block and frees them all (phase B); then every thread allocates
// blocks again, of its own sizes and of its neighbour's (so a freed block may come back to the
// thread that freed it or to another one), and writes a pattern (phase C); then the gates open.
// With CUDAPOOL_REUSE=fence no new block may be hit by a memset queued before a free; with
// CUDAPOOL_REUSE=immediate and --expect-corruption some must be (the check is known to work).
// Between rounds a trim to half the idle bytes fences what is pending, so that later rounds reuse
// fenced blocks (on any thread).

struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool open = false;

  static void CUDART_CB wait(void* self) {
    auto* g = static_cast<Gate*>(self);
    std::unique_lock lock(g->mutex);
    // A fence waiting for this worker (the pool synchronises the device) makes the other threads
    // wait for it: the timeout ends that wait; the memset then runs early, which is still safe.
    g->cv.wait_for(lock, std::chrono::seconds(3), [g] { return g->open; });
  }
  void reset() {
    std::lock_guard lock(mutex);
    open = false;
  }
  void release() {
    std::lock_guard lock(mutex);
    open = true;
    cv.notify_all();
  }
};

constexpr int kReuseThreads = 4;
constexpr int kReuseRounds = 6;
constexpr int kReuseBlocks = 20;  // of one size per thread and round: more than a cache bin keeps

std::size_t reuse_size(int thread, int round) {
  return (16 + 16 * ((thread + round) % 4)) * kKiB - 512 * (thread % 2);  // 15.5 .. 64 KiB
}

TEST(ReuseAcrossThreads, FreedBlocksAreNotHandedOutWhileQueuedWorkWritesThem) {
  const bool expect_corruption = has_flag("--expect-corruption");
  std::barrier sync(kReuseThreads);
  std::vector<Gate> gates(kReuseThreads);
  LiveSet fresh;  // blocks of phase C, of every thread
  std::atomic<int> corrupted{0}, errors{0}, old_untouched{0}, overlaps{0};
  std::atomic<std::uint64_t> reused_addresses{0}, reused_earlier{0};
  auto worker = [&](int t) {
    cudaStream_t stream = nullptr;
    if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) ++errors;
    std::set<void*> earlier;  // this thread's blocks of earlier rounds
    for (int round = 0; round < kReuseRounds; ++round) {
      // Phase A: allocate (a miss may fence here, while no gate holds any stream).
      const std::size_t own = reuse_size(t, round);
      const std::size_t next = reuse_size((t + 1) % kReuseThreads, round);
      std::vector<void*> old(kReuseBlocks, nullptr);
      for (void*& p : old)
        if (cudaMalloc(&p, own) != cudaSuccess) ++errors;
      gates[t].reset();
      sync.arrive_and_wait();
      // Phase B: queued work into the blocks, then their frees (which return at once).
      if (cudaLaunchHostFunc(stream, &Gate::wait, &gates[t]) != cudaSuccess) ++errors;
      for (void* p : old)
        if (cudaMemsetAsync(p, 0xAB, own, stream) != cudaSuccess) ++errors;
      for (void* p : old)
        if (cudaFree(p) != cudaSuccess) ++errors;
      sync.arrive_and_wait();
      // Phase C: new blocks of this thread's size and of the neighbour's, with a pattern.
      struct Fresh {
        void* ptr;
        std::size_t size;
        std::uint64_t seed;
      };
      std::vector<Fresh> blocks;
      for (int i = 0; i < 2 * kReuseBlocks; ++i) {
        Fresh b{nullptr, i % 2 == 0 ? own : next, (std::uint64_t{1} << 40) * t + round * 1000 + i};
        if (cudaMalloc(&b.ptr, b.size) != cudaSuccess) {
          ++errors;
          continue;
        }
        if (!fresh.insert(b.ptr, b.size)) ++overlaps;
        for (void* p : old)
          if (p == b.ptr) ++reused_addresses;
        if (earlier.count(b.ptr) != 0) ++reused_earlier;
        fill_pattern(b.ptr, b.size, b.seed);
        blocks.push_back(b);
      }
      sync.arrive_and_wait();
      gates[t].release();
      if (cudaStreamSynchronize(stream) != cudaSuccess) ++errors;
      sync.arrive_and_wait();  // every stream's memsets ran
      for (const Fresh& b : blocks)
        if (pattern_mismatch(b.ptr, b.size, b.seed) != -1) ++corrupted;
      if (!expect_corruption) {
        // The queued work did run, into the old blocks that nobody holds now.
        for (void* p : old) {
          if (fresh.overlaps(p, own)) continue;
          const auto* bytes = static_cast<const unsigned char*>(p);
          if (bytes[0] != 0xAB || bytes[own - 1] != 0xAB) ++old_untouched;
        }
      }
      sync.arrive_and_wait();
      earlier.insert(old.begin(), old.end());
      for (const Fresh& b : blocks) {
        earlier.insert(b.ptr);
        fresh.erase(b.ptr);
        if (cudaFree(b.ptr) != cudaSuccess) ++errors;
      }
      sync.arrive_and_wait();
      if (t == 0) {
        // Streams idle: a trim to half the idle bytes fences every pending block (and drains
        // what threads keep) and returns some segments; the rest is reused in the next round.
        const unsigned long long idle = pool_stats()["idle"];
        const ClientReply r = command("trim " + std::to_string(idle / 2));
        if (r.status != ClientReply::Status::kOk) ++errors;
      }
      sync.arrive_and_wait();
    }
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kReuseThreads; ++t)
    threads.emplace_back(worker, t);
  for (std::thread& th : threads)
    th.join();
  EXPECT_EQ(0, errors.load()) << "a CUDA call failed";
  EXPECT_EQ(0, overlaps.load()) << "a block overlapping a live one was handed out";
  std::printf(
      "[ measure ] new blocks at an address freed in the same round: %llu, in an earlier "
      "round: %llu; corrupted: %d\n",
      static_cast<unsigned long long>(reused_addresses.load()),
      static_cast<unsigned long long>(reused_earlier.load()), corrupted.load());
  if (expect_corruption) {
    EXPECT_GT(corrupted.load(), 0)
        << "with CUDAPOOL_REUSE=immediate the queued memsets should have hit new owners' blocks; "
           "the check cannot detect corruption";
  } else {
    EXPECT_EQ(0, corrupted.load())
        << "a block was handed out (to its freeing thread or another) while a memset queued "
           "before its free was still pending";
    EXPECT_EQ(0, old_untouched.load()) << "the queued memsets did not run: the test tested nothing";
  }
}

// ---- ThreadExit (§5, trim and idle timer) -------------------------------------------------------
// Threads that allocate and free many small blocks (enough to fill any cache: 16 per size and
// more than 1 MiB), some with queued work pending their fence, then exit. What they freed must
// come back: through a trim (ThreadExit.TrimReturnsWhatExitedThreadsFreed, no idle timer) or
// through the idle timer alone while the main thread makes no CUDA call
// (ThreadExit.IdleTimerReturnsWhatExitedThreadsFreed, CUDAPOOL_IDLE_RELEASE_MS=300).

void churn_and_exit(int t, std::atomic<int>* errors) {
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) ++*errors;
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 24 * 8; ++i) {  // 8 sizes, 24 blocks each
      const std::size_t size = (1 + i % 8) * 8 * kKiB - 512 * (t % 3);
      void* p = nullptr;
      if (cudaMalloc(&p, size) != cudaSuccess) {
        ++*errors;
        continue;
      }
      blocks.emplace_back(p, size);
    }
    std::uint64_t seed = 100 * t + round;
    for (auto [p, size] : blocks)
      fill_pattern(p, size, seed++);
    seed = 100 * t + round;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      auto [p, size] = blocks[i];
      if (pattern_mismatch(p, size, seed++) != -1) ++*errors;
      if (i % 5 == 0 && cudaMemsetAsync(p, 0, size, stream) != cudaSuccess) ++*errors;
      if (cudaFree(p) != cudaSuccess) ++*errors;
    }
    blocks.clear();
  }
  // The idle timer counts from the last allocation and makes one attempt per quiet period, so
  // memory freed long after the last allocation waits for the next one (see
  // IdleTimerReturnsWhatExitedThreadsFreed): the thread's last calls are an allocation and its
  // free, back to back. The last frees' queued work is still there when the thread exits (the
  // stream is not destroyed: its worker outlives the thread).
  void* last = nullptr;
  if (cudaMalloc(&last, 4 * kKiB) != cudaSuccess || cudaFree(last) != cudaSuccess) ++*errors;
}

void run_exiting_threads(std::atomic<int>* errors) {
  // One alone, then three at once (exits racing with each other's allocations).
  std::thread(churn_and_exit, 0, errors).join();
  std::vector<std::thread> threads;
  for (int t = 1; t <= 3; ++t)
    threads.emplace_back(churn_and_exit, t, errors);
  for (std::thread& th : threads)
    th.join();
}

void expect_everything_returned(const char* what) {
  StandinCounters c = counters();
  EXPECT_EQ(0u, c.bytes_held) << what;
  EXPECT_EQ(c.mallocs, c.frees) << what << ": a segment was not returned";
  EXPECT_EQ(0u, c.free_failures) << what;
  const StandinVmmCounters v = vmm();
  EXPECT_EQ(0u, v.bytes_physical) << what << ": pages still held";
  EXPECT_EQ(v.creates, v.releases) << what << ": a page was not released";
  EXPECT_EQ(0u, v.unmapped_accesses) << what << ": queued work found its page unmapped";
  EXPECT_EQ(0u, v.other_failures) << what;
}

TEST(ThreadExit, TrimReturnsWhatExitedThreadsFreed) {
  std::atomic<int> errors{0};
  run_exiting_threads(&errors);  // the main thread makes no CUDA call of its own
  EXPECT_EQ(0, errors.load());
  auto stats = pool_stats();
  EXPECT_EQ(0u, stats["in_use"]) << "every block was freed";
  EXPECT_EQ(0u, stats["live_blocks"]);
  EXPECT_GT(counters().bytes_held, 0u) << "released before the trim: the test tests nothing";
  EXPECT_EQ(counters().bytes_held, stats["held"]);
  const ClientReply r = command("trim");
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  // The trim waits for the queued work (the pool's fence) and returns everything.
  EXPECT_TRUE(wait_until(milliseconds(10000), [] { return counters().bytes_held == 0; }))
      << "after the trim the process holds " << counters().bytes_held << " bytes; trim said "
      << r.body;
  expect_everything_returned("after the trim");
  stats = pool_stats();
  EXPECT_EQ(0u, stats["held"]);
  EXPECT_EQ(0u, stats["idle"]);

  // The same again after more threads came and went (the pool starts from nothing).
  run_exiting_threads(&errors);
  EXPECT_EQ(0, errors.load());
  ASSERT_EQ(ClientReply::Status::kOk, command("trim 0").status);
  EXPECT_TRUE(wait_until(milliseconds(10000), [] { return counters().bytes_held == 0; }))
      << "after the second trim the process holds " << counters().bytes_held << " bytes";
  expect_everything_returned("after the second trim");
}

// The timer is CUDAPOOL_IDLE_RELEASE_MS after the last allocation; frees made after its one
// attempt of a quiet period stay held until the next allocation, which is why each thread ends
// with an allocation and its free (a free-only tail of more than the period under load left a
// few segments held for good).
TEST(ThreadExit, IdleTimerReturnsWhatExitedThreadsFreed) {
  std::atomic<int> errors{0};
  run_exiting_threads(&errors);
  EXPECT_EQ(0, errors.load());
  // From here on only the stand-in's counters are read: no CUDA call, no pipe command.
  EXPECT_TRUE(wait_until(milliseconds(15000), [] { return counters().bytes_held == 0; }))
      << "the idle timer left " << counters().bytes_held << " bytes held";
  expect_everything_returned("after the idle timer");
}

// ---- ResetAndTrimRace (§4.4, §4.7) ------------------------------------------------------------
// Eight threads allocate, write a pattern (cudaMemcpy), check it and free, some with queued work
// on the legacy stream just before the free; a thread trims through the pipe without pause and
// another resets the device now and then. A reset and an application touching its memory cannot
// overlap (the reset frees that memory; natively the same program would fault), so each thread's
// step (allocate + write, or check + free) holds a ResetLock shared and the resetter takes it
// alone; everything else races. After a reset every block that was live before it is gone: its
// cudaFree is passed to the runtime, which answers cudaErrorInvalidValue (the resetter checks that
// for every such block before any thread allocates again, so that no new block can sit at the
// same address).

class ResetLock {
 public:
  void enter() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return !resetting_; });
    ++active_;
  }
  void leave() {
    std::lock_guard lock(mutex_);
    if (--active_ == 0) cv_.notify_all();
  }
  template <typename F>
  void exclusive(F&& f) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return !resetting_; });
    resetting_ = true;
    cv_.wait(lock, [this] { return active_ == 0; });
    lock.unlock();
    f();
    lock.lock();
    resetting_ = false;
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int active_ = 0;
  bool resetting_ = false;
};

struct RaceBlock {
  void* ptr;
  std::size_t size;
  std::uint64_t seed;
};

struct RaceReport {
  int alloc_failures = 0;
  int free_failures = 0;
  int copy_failures = 0;
  int corrupted = 0;
  int overlaps = 0;
  int misaligned = 0;
};

TEST(ResetAndTrimRace, EightThreadsKeepTheirDataAndEveryFreeSucceeds) {
  constexpr int kThreads = 8;
  constexpr int kResets = 6;
  ResetLock reset_lock;
  LiveSet live;
  std::vector<std::vector<RaceBlock>> owned(kThreads);  // guarded by reset_lock
  std::vector<RaceReport> reports(kThreads);
  std::atomic<bool> stop{false};
  std::atomic<long> ops{0};
  auto worker = [&](int t) {
    std::mt19937_64 rng(77 + t);
    Patterns pattern;
    std::uint64_t seed = static_cast<std::uint64_t>(t) << 40;
    RaceReport& report = reports[t];
    std::vector<RaceBlock>& blocks = owned[t];
    while (!stop.load()) {
      reset_lock.enter();
      const bool allocate = blocks.empty() || (blocks.size() < 24 && rng() % 2 == 0);
      if (allocate) {
        // Mostly cacheable sizes (512 B .. 64 KiB), some larger ones.
        const std::size_t size =
            rng() % 8 == 0 ? 256 * kKiB + rng() % kMiB : 512 + rng() % (64 * kKiB - 512);
        RaceBlock b{nullptr, size, ++seed};
        if (cudaMalloc(&b.ptr, b.size) != cudaSuccess) {
          ++report.alloc_failures;
        } else {
          if (addr(b.ptr) % 512 != 0) ++report.misaligned;
          if (!live.insert(b.ptr, b.size)) ++report.overlaps;
          if (pattern.write(b.ptr, b.size, b.seed) != cudaSuccess) ++report.copy_failures;
          blocks.push_back(b);
        }
      } else {
        const std::size_t i = rng() % blocks.size();
        const RaceBlock b = blocks[i];
        blocks[i] = blocks.back();
        blocks.pop_back();
        const int check = pattern.check(b.ptr, b.size, b.seed);
        if (check == 1) ++report.corrupted;
        if (check == 2) ++report.copy_failures;
        live.erase(b.ptr);
        if (rng() % 4 == 0)  // legacy stream: survives the resets
          cudaMemsetAsync(b.ptr, 0, std::min<std::size_t>(b.size, 4096), nullptr);
        if (cudaFree(b.ptr) != cudaSuccess) ++report.free_failures;
      }
      reset_lock.leave();
      ++ops;
    }
    reset_lock.enter();
    for (const RaceBlock& b : blocks) {
      const int check = pattern.check(b.ptr, b.size, b.seed);
      if (check == 1) ++report.corrupted;
      if (check == 2) ++report.copy_failures;
      live.erase(b.ptr);
      if (cudaFree(b.ptr) != cudaSuccess) ++report.free_failures;
    }
    blocks.clear();
    reset_lock.leave();
  };

  void* first = nullptr;  // starts the shim and its pipe
  ASSERT_CUDA_OK(cudaMalloc(&first, kKiB));
  ASSERT_CUDA_OK(cudaFree(first));
  std::atomic<int> trims{0}, trim_errors{0};
  std::thread trimmer([&] {
    while (!stop.load()) {
      const int n = trims.load();
      const ClientReply r = command(n % 3 == 0 ? "trim" : n % 3 == 1 ? "trim 1MiB" : "trim 8MiB");
      if (r.status != ClientReply::Status::kOk) ++trim_errors;
      ++trims;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back(worker, t);

  int invalidated = 0, invalidated_wrong_answer = 0, reset_failures = 0;
  for (int reset = 0; reset < kResets; ++reset) {
    // Each reset after the threads did some work and the trimmer some trims.
    const long start_ops = ops.load();
    const int start_trims = trims.load();
    wait_until(milliseconds(30000),
               [&] { return ops.load() >= start_ops + 1500 && trims.load() >= start_trims + 2; });
    reset_lock.exclusive([&] {
      if (cudaDeviceReset() != cudaSuccess) ++reset_failures;
      for (std::vector<RaceBlock>& blocks : owned) {
        for (const RaceBlock& b : blocks) {
          ++invalidated;
          const cudaError_t answer = cudaFree(b.ptr);
          if (answer != cudaErrorInvalidValue) {
            ++invalidated_wrong_answer;
            std::fprintf(stderr, "cudaFree of a block the reset freed returned %d\n",
                         static_cast<int>(answer));
          }
        }
        blocks.clear();
      }
      cudaGetLastError();
      live.clear();
    });
  }
  const long start_ops = ops.load();
  wait_until(milliseconds(30000), [&] { return ops.load() >= start_ops + 1500; });
  stop = true;
  for (std::thread& th : threads)
    th.join();
  trimmer.join();

  for (int t = 0; t < kThreads; ++t) {
    const RaceReport& r = reports[t];
    EXPECT_EQ(0, r.alloc_failures) << "thread " << t;
    EXPECT_EQ(0, r.free_failures) << "thread " << t << ": a cudaFree of a live block failed";
    EXPECT_EQ(0, r.copy_failures) << "thread " << t << ": a block was not device memory";
    EXPECT_EQ(0, r.corrupted) << "thread " << t << ": a live block's bytes changed";
    EXPECT_EQ(0, r.overlaps) << "thread " << t << ": a block overlapping a live one";
    EXPECT_EQ(0, r.misaligned) << "thread " << t;
  }
  EXPECT_EQ(0, reset_failures);
  EXPECT_EQ(0, invalidated_wrong_answer)
      << "of " << invalidated << " blocks freed by a reset (DESIGN §4.7: the pool forgets them, "
      << "the runtime answers cudaErrorInvalidValue)";
  EXPECT_GT(invalidated, 0) << "no block was live at a reset: the test tested less than it says";
  EXPECT_GE(trims.load(), 2 * kResets);
  EXPECT_EQ(0, trim_errors.load());
  // The runtime saw no failed free but ours: the pool never freed a segment twice or one the
  // reset had freed; no queued work found its memory unmapped.
  EXPECT_EQ(static_cast<unsigned long long>(invalidated), counters().free_failures);
  EXPECT_EQ(0u, vmm().unmapped_accesses);
  EXPECT_EQ(0u, vmm().other_failures);

  // Everything is freed: a trim to 0 returns it all.
  auto stats = pool_stats();
  EXPECT_EQ(0u, stats["in_use"]);
  EXPECT_EQ(0u, stats["live_blocks"]);
  ASSERT_EQ(ClientReply::Status::kOk, command("trim 0").status);
  EXPECT_TRUE(wait_until(milliseconds(10000), [] { return counters().bytes_held == 0; }))
      << "after the final trim the process holds " << counters().bytes_held << " bytes";
  EXPECT_EQ(0u, vmm().bytes_physical);
  stats = pool_stats();
  EXPECT_EQ(0u, stats["held"]);
}

// ---- CrossThreadFrees (§4.4) --------------------------------------------------------------------
// Blocks allocated on one thread and freed on another, through a queue: every free succeeds, no
// block changes or overlaps a live one; a second free of a block, from a thread other than the
// one that freed it, is refused with cudaErrorInvalidValue without reaching the runtime, and the
// block is not handed out twice afterwards.

class BlockQueue {
 public:
  void push(const RaceBlock& b) {
    std::lock_guard lock(mutex_);
    queue_.push_back(b);
    cv_.notify_one();
  }
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    cv_.notify_all();
  }
  bool pop(RaceBlock* out) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return closed_ || !queue_.empty(); });
    if (queue_.empty()) return false;
    *out = queue_.front();
    queue_.pop_front();
    return true;
  }
  std::size_t size() {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<RaceBlock> queue_;
  bool closed_ = false;
};

TEST(CrossThreadFrees, ProducersAllocateConsumersFreeAllSucceed) {
  constexpr int kProducers = 2, kConsumers = 2, kPerProducer = 6000;
  BlockQueue queue;
  LiveSet live;
  std::atomic<int> alloc_failures{0}, free_failures{0}, corrupted{0}, overlaps{0};
  std::atomic<int> consumed{0};
  const StandinCounters before = counters();
  std::vector<std::thread> producers, consumers;
  for (int t = 0; t < kProducers; ++t) {
    producers.emplace_back([&, t] {
      std::mt19937_64 rng(9 + t);
      std::uint64_t seed = static_cast<std::uint64_t>(t + 1) << 40;
      for (int i = 0; i < kPerProducer; ++i) {
        while (queue.size() > 512)  // bounded: the pool reuses what consumers freed
          std::this_thread::yield();
        RaceBlock b{nullptr, 512 * (1 + rng() % 128), ++seed};
        if (cudaMalloc(&b.ptr, b.size) != cudaSuccess) {
          ++alloc_failures;
          continue;
        }
        if (!live.insert(b.ptr, b.size)) ++overlaps;
        stamp_pattern(b.ptr, b.size, b.seed);
        queue.push(b);
      }
    });
  }
  for (int t = 0; t < kConsumers; ++t) {
    consumers.emplace_back([&] {
      RaceBlock b{};
      while (queue.pop(&b)) {
        if (!stamps_intact(b.ptr, b.size, b.seed)) ++corrupted;
        live.erase(b.ptr);
        if (cudaFree(b.ptr) != cudaSuccess) ++free_failures;
        ++consumed;
      }
    });
  }
  for (std::thread& th : producers)
    th.join();
  queue.close();
  for (std::thread& th : consumers)
    th.join();
  EXPECT_EQ(0, alloc_failures.load());
  EXPECT_EQ(0, free_failures.load()) << "a block freed on another thread than its allocation";
  EXPECT_EQ(0, corrupted.load());
  EXPECT_EQ(0, overlaps.load()) << "a block overlapping a live one was handed out";
  EXPECT_EQ(kProducers * kPerProducer, consumed.load());
  const StandinCounters after = counters();
  EXPECT_EQ(before.frees, after.frees) << "pooled frees reached the runtime";
  EXPECT_LT(after.mallocs - before.mallocs, 100u) << "12000 allocations were barely pooled";
  auto stats = pool_stats();
  EXPECT_EQ(0u, stats["in_use"]) << "the pool's count of bytes in use is off after cross frees";
  EXPECT_EQ(0u, stats["live_blocks"]);
}

TEST(CrossThreadFrees, DoubleFreeFromAnotherThreadIsRefused) {
  for (std::size_t size : {4 * kKiB, 48 * kKiB, 64 * kKiB, 3 * kMiB}) {
    SCOPED_TRACE(size);
    // Allocated on A, freed on B, freed again on C and on A.
    void* p = nullptr;
    std::thread([&] { ASSERT_CUDA_OK(cudaMalloc(&p, size)); }).join();
    ASSERT_NE(nullptr, p);
    std::thread([&] { EXPECT_CUDA_OK(cudaFree(p)); }).join();
    const StandinCounters before = counters();
    cudaError_t again_c = cudaSuccess, again_a = cudaSuccess;
    std::thread([&] { again_c = cudaFree(p); }).join();
    again_a = cudaFree(p);
    EXPECT_EQ(cudaErrorInvalidValue, again_c) << "double free from a third thread";
    EXPECT_EQ(cudaErrorInvalidValue, again_a) << "double free from the allocating thread";
    const StandinCounters after = counters();
    EXPECT_EQ(before.frees, after.frees) << "a double free reached the runtime";
    EXPECT_EQ(before.free_failures, after.free_failures) << "a double free reached the runtime";
    cudaGetLastError();

    // Freed and allocated on one thread, freed again on another.
    void* q = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&q, size));
    ASSERT_CUDA_OK(cudaFree(q));
    cudaError_t again_b = cudaSuccess;
    std::thread([&] { again_b = cudaFree(q); }).join();
    EXPECT_EQ(cudaErrorInvalidValue, again_b) << "double free from another thread";
    cudaGetLastError();

    // The refused frees freed nothing: no block is handed out twice, on any thread.
    std::vector<void*> blocks;
    std::mutex m;
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 40; ++i) {
          void* r = nullptr;
          if (cudaMalloc(&r, size) != cudaSuccess) continue;
          std::lock_guard lock(m);
          blocks.push_back(r);
        }
      });
    }
    for (std::thread& th : threads)
      th.join();
    EXPECT_EQ(120u, blocks.size());
    std::set<void*> distinct(blocks.begin(), blocks.end());
    EXPECT_EQ(blocks.size(), distinct.size()) << "a block was handed out twice after a double free";
    for (void* r : blocks)
      EXPECT_CUDA_OK(cudaFree(r));
  }
  auto stats = pool_stats();
  EXPECT_EQ(0u, stats["in_use"]);
  EXPECT_EQ(0u, stats["live_blocks"]);
}

// ---- ForkWithThreads (§4.2): FORKS_THREADED ---------------------------------------------------
// Worker threads allocate and free (their would-be caches full, blocks pending their fence) while
// the main thread, which did the same, forks. Each child calls cudaMalloc and cudaFree on several
// threads, its main thread included: every answer must be the runtime's own (a fork child of an
// initialised process gets cudaErrorInitializationError from it), never a block from a cache the
// child inherited; the child exits 0. The parent's threads keep working, their data intact.

int g_child_failures = 0;
std::mutex g_child_mutex;
void child_check(bool ok, const char* what) {
  if (ok) return;
  std::lock_guard lock(g_child_mutex);
  std::fprintf(stderr, "fork child %d: %s\n", static_cast<int>(getpid()), what);
  ++g_child_failures;
}

void child_allocations(const std::vector<void*>& parent_live) {
  const NativeRuntime& rt = native();
  for (int i = 0; i < 50; ++i) {
    const std::size_t size = 512 * (1 + i % 128);
    void *p = nullptr, *q = nullptr;
    const cudaError_t shim = cudaMalloc(&p, size);
    const cudaError_t native_answer = rt.cudaMalloc(&q, size);
    child_check(shim == native_answer, "cudaMalloc: not the runtime's answer");
    if (shim == cudaSuccess) child_check(cudaFree(p) == cudaSuccess, "cudaFree failed");
    if (native_answer == cudaSuccess) rt.cudaFree(q);
  }
  for (void* p : parent_live)
    child_check(cudaFree(p) == rt.cudaFree(p), "cudaFree(parent's block): not native");
}

TEST(ForkWithThreads, ChildrenGetTheRuntimesAnswersAndParentThreadsKeepTheirData) {
  // The main thread's own allocations and frees, of cacheable sizes.
  for (int i = 0; i < 200; ++i) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, 512 * (1 + i % 128)));
    ASSERT_CUDA_OK(cudaFree(p));
  }
  void* main_live = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&main_live, 32 * kKiB));
  fill_pattern(main_live, 32 * kKiB, 5);

  std::atomic<bool> stop{false};
  std::atomic<int> errors{0}, corrupted{0};
  std::atomic<long> ops{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 3; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(31 + t);
      Patterns pattern;
      std::vector<RaceBlock> blocks;
      std::uint64_t seed = static_cast<std::uint64_t>(t) << 40;
      while (!stop.load()) {
        if (blocks.size() < 20 && (blocks.empty() || rng() % 2 == 0)) {
          RaceBlock b{nullptr, 512 * (1 + rng() % 128), ++seed};
          if (cudaMalloc(&b.ptr, b.size) != cudaSuccess) {
            ++errors;
            continue;
          }
          if (pattern.write(b.ptr, b.size, b.seed) != cudaSuccess) ++errors;
          blocks.push_back(b);
        } else {
          const std::size_t i = rng() % blocks.size();
          const RaceBlock b = blocks[i];
          blocks[i] = blocks.back();
          blocks.pop_back();
          if (pattern.check(b.ptr, b.size, b.seed) != 0) ++corrupted;
          if (rng() % 4 == 0) cudaMemsetAsync(b.ptr, 0, b.size, nullptr);
          if (cudaFree(b.ptr) != cudaSuccess) ++errors;
        }
        ++ops;
      }
      for (const RaceBlock& b : blocks) {
        if (pattern.check(b.ptr, b.size, b.seed) != 0) ++corrupted;
        if (cudaFree(b.ptr) != cudaSuccess) ++errors;
      }
    });
  }
  for (int fork_no = 0; fork_no < 8; ++fork_no) {
    const long start = ops.load();
    wait_until(milliseconds(20000), [&] { return ops.load() >= start + 300; });
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::vector<void*> parent_live = {main_live};
      std::vector<std::thread> child_threads;
      for (int t = 0; t < 3; ++t)
        child_threads.emplace_back(child_allocations, parent_live);
      child_allocations(parent_live);
      for (std::thread& th : child_threads)
        th.join();
      std::exit(g_child_failures == 0 ? 0 : 1);  // a normal exit: atexit handlers run
    }
    EXPECT_EQ(0, wait_child(pid, milliseconds(20000))) << "fork " << fork_no;
  }
  const long start = ops.load();
  wait_until(milliseconds(20000), [&] { return ops.load() >= start + 300; });
  stop = true;
  for (std::thread& w : workers)
    w.join();
  EXPECT_EQ(0, errors.load()) << "a parent thread's CUDA call failed";
  EXPECT_EQ(0, corrupted.load()) << "a parent thread's block changed";
  EXPECT_EQ(-1, pattern_mismatch(main_live, 32 * kKiB, 5));
  EXPECT_CUDA_OK(cudaFree(main_live));
  // The parent still pools, on every thread.
  const unsigned long long mallocs = counters().mallocs;
  std::vector<std::thread> after;
  for (int t = 0; t < 3; ++t) {
    after.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        void* p = nullptr;
        if (cudaMalloc(&p, 4096) != cudaSuccess || cudaFree(p) != cudaSuccess) ++errors;
      }
    });
  }
  for (std::thread& th : after)
    th.join();
  EXPECT_EQ(0, errors.load());
  EXPECT_LE(counters().mallocs - mallocs, 3u);
}

}  // namespace
}  // namespace integ
