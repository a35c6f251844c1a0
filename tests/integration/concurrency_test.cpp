// Reuse safety with queued stream work (DESIGN §4.5) and a multi-thread stress.
//
// The stand-in runs stream work later on worker threads, like a GPU: a block freed right after
// queuing work into it must not be handed out again before that work ran.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

// ---- ReuseSafety (§4.5) ------------------------------------------------------------------------
// Registered twice: with the default CUDAPOOL_REUSE=fence the new owner's bytes must survive;
// with CUDAPOOL_REUSE=immediate and --expect-corruption the same check must catch the corruption
// (so the check is known to work).

// Holds a stream's worker until the host has written its pattern (or a second passed): the queued
// memset then certainly runs after the free and after the new owner's write.
struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool open = false;

  static void CUDART_CB wait(void* self) {
    auto* g = static_cast<Gate*>(self);
    std::unique_lock lock(g->mutex);
    g->cv.wait_for(lock, std::chrono::seconds(1), [g] { return g->open; });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  void release() {
    std::lock_guard lock(mutex);
    open = true;
    cv.notify_all();
  }
};

enum class StreamKind { kLegacy, kBlocking, kNonBlocking };
const char* name_of(StreamKind kind) {
  switch (kind) {
    case StreamKind::kLegacy:
      return "legacy default stream";
    case StreamKind::kBlocking:
      return "blocking stream";
    case StreamKind::kNonBlocking:
      return "non-blocking stream";
  }
  return "";
}

class ReuseSafety : public testing::TestWithParam<StreamKind> {};

TEST_P(ReuseSafety, FreedBlockIsNotReusedWhileQueuedWorkWritesIt) {
  const bool expect_corruption = has_flag("--expect-corruption");
  cudaStream_t stream = nullptr;
  if (GetParam() == StreamKind::kBlocking) {
    ASSERT_CUDA_OK(cudaStreamCreate(&stream));
  } else if (GetParam() == StreamKind::kNonBlocking) {
    ASSERT_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  constexpr std::size_t kSize = 256 * kKiB;
  Gate gate;
  void* old_block = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&old_block, kSize));
  ASSERT_CUDA_OK(cudaLaunchHostFunc(stream, &Gate::wait, &gate));
  ASSERT_CUDA_OK(cudaMemsetAsync(old_block, 0xAB, kSize, stream));
  const unsigned long long frees = counters().frees;
  ASSERT_CUDA_OK(cudaFree(old_block));  // returns at once: the memset is still queued
  ASSERT_EQ(frees, counters().frees) << "the free reached the runtime: the pool is not in use";
  void* new_block = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&new_block, kSize));
  fill_pattern(new_block, kSize, 77);
  gate.release();
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  const std::ptrdiff_t bad = pattern_mismatch(new_block, kSize, 77);
  if (expect_corruption) {
    EXPECT_NE(-1, bad) << name_of(GetParam())
                       << ": with CUDAPOOL_REUSE=immediate the queued memset should have hit "
                          "the new owner's block; the check cannot detect corruption";
  } else {
    EXPECT_EQ(-1, bad) << name_of(GetParam()) << ": the block was reused while a memset queued "
                       << "before its free was still pending (first bad byte at " << bad << ")";
    if (new_block != old_block) {  // (the same block is fine once the pool fenced)
      // The queued work did run, into the old block: the test exercised something.
      const auto* bytes = static_cast<const unsigned char*>(old_block);
      EXPECT_EQ(0xAB, bytes[0]);
      EXPECT_EQ(0xAB, bytes[kSize - 1]);
    }
  }
  EXPECT_CUDA_OK(cudaFree(new_block));
  if (stream != nullptr) {
    EXPECT_CUDA_OK(cudaStreamDestroy(stream));
  }
}

INSTANTIATE_TEST_SUITE_P(Streams, ReuseSafety,
                         testing::Values(StreamKind::kLegacy, StreamKind::kBlocking,
                                         StreamKind::kNonBlocking),
                         [](const testing::TestParamInfo<StreamKind>& info) {
                           switch (info.param) {
                             case StreamKind::kLegacy:
                               return "Legacy";
                             case StreamKind::kBlocking:
                               return "Blocking";
                             case StreamKind::kNonBlocking:
                               return "NonBlocking";
                           }
                           return "";
                         });

// ---- Stress: CUDAPOOL_IDLE_RELEASE_MS=200, CUDAPOOL_LOW_WATERMARK=0 -----------------------------

// Live blocks of all threads, to catch overlaps as soon as they are handed out.
class LiveSet {
 public:
  // False if [p, p+n) overlaps a live block.
  bool insert(const void* p, std::size_t n) {
    auto a = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard lock(mutex_);
    auto next = live_.lower_bound(a);
    if (next != live_.end() && next->first < a + n) return false;
    if (next != live_.begin() && std::prev(next)->first + std::prev(next)->second > a) return false;
    live_[a] = n;
    return true;
  }
  void erase(const void* p) {
    std::lock_guard lock(mutex_);
    live_.erase(reinterpret_cast<std::uintptr_t>(p));
  }

 private:
  std::mutex mutex_;
  std::map<std::uintptr_t, std::size_t> live_;
};

struct ThreadReport {
  int alloc_failures = 0;
  int free_failures = 0;
  int misaligned = 0;
  int overlaps = 0;
  int corrupted = 0;
};

void stress_thread(int index, int ops, LiveSet* live, ThreadReport* report) {
  struct Live {
    void* ptr;
    std::size_t size;
    std::uint64_t seed;
  };
  std::mt19937_64 rng(1234 + index);
  std::uniform_int_distribution<int> log_size(9, 22);  // 512 B .. 4 MiB
  cudaStream_t stream = nullptr;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  std::vector<Live> blocks;
  std::uint64_t next_seed = static_cast<std::uint64_t>(index) << 32;
  auto release_one = [&](std::size_t i) {
    Live b = blocks[i];
    blocks[i] = blocks.back();
    blocks.pop_back();
    if (!stamps_intact(b.ptr, b.size, b.seed)) ++report->corrupted;
    live->erase(b.ptr);
    // Sometimes queue device work into the block just before freeing it: a block reused before
    // that work ran would corrupt its next owner's stamps.
    if (rng() % 4 == 0) cudaMemsetAsync(b.ptr, 0, std::min<std::size_t>(b.size, 4096), stream);
    if (cudaFree(b.ptr) != cudaSuccess) ++report->free_failures;
  };
  for (int op = 0; op < ops; ++op) {
    const bool allocate = blocks.empty() || (blocks.size() < 16 && rng() % 2 == 0);
    if (!allocate) {
      release_one(rng() % blocks.size());
      continue;
    }
    const int bits = log_size(rng);
    const std::size_t size = (std::size_t{1} << bits) + rng() % (std::size_t{1} << bits);
    Live b{nullptr, std::min<std::size_t>(size, 4 * kMiB), ++next_seed};
    if (cudaMalloc(&b.ptr, b.size) != cudaSuccess) {
      ++report->alloc_failures;
      continue;
    }
    if (reinterpret_cast<std::uintptr_t>(b.ptr) % 512 != 0) ++report->misaligned;
    if (!live->insert(b.ptr, b.size)) ++report->overlaps;
    stamp_pattern(b.ptr, b.size, b.seed);
    blocks.push_back(b);
  }
  while (!blocks.empty())
    release_one(blocks.size() - 1);
  cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
}

TEST(Stress, EightThreadsRandomSizesAllIntact) {
  constexpr int kThreads = 8, kOps = 3000;
  LiveSet live;
  std::vector<ThreadReport> reports(kThreads);
  std::vector<std::thread> threads;
  const StandinCounters before = counters();
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back(stress_thread, t, kOps, &live, &reports[t]);
  for (std::thread& t : threads)
    t.join();
  for (int t = 0; t < kThreads; ++t) {
    const ThreadReport& r = reports[t];
    EXPECT_EQ(0, r.alloc_failures) << "thread " << t;
    EXPECT_EQ(0, r.free_failures) << "thread " << t;
    EXPECT_EQ(0, r.misaligned) << "thread " << t;
    EXPECT_EQ(0, r.overlaps) << "thread " << t << ": a block overlapping a live one was handed out";
    EXPECT_EQ(0, r.corrupted) << "thread " << t << ": a live block's bytes changed";
  }
  const StandinCounters after = counters();
  EXPECT_LT(after.mallocs - before.mallocs, 200u) << "24000 allocations were barely pooled";

  // Everything is freed: what the runtime holds is exactly the pool's idle memory, which the shim
  // reports as free on top of the runtime's free memory. (Read twice around the query in case the
  // release thread returns memory meanwhile.)
  bool consistent = false;
  std::uint64_t held = 0, reported_idle = 0;
  for (int attempt = 0; attempt < 20 && !consistent; ++attempt) {
    held = counters().bytes_held;
    const std::size_t shim_free = shim_mem_info().first;
    const std::size_t runtime_free = native_mem_info().first;
    consistent = counters().bytes_held == held;
    reported_idle = shim_free - runtime_free;
  }
  ASSERT_TRUE(consistent);
  EXPECT_GT(held, 0u) << "the pool should still hold its idle segments";
  EXPECT_EQ(held, reported_idle) << "the runtime's live bytes differ from the pool's idle bytes";
  // The idle timer (200 ms, low watermark 0) then returns them all.
  EXPECT_TRUE(wait_until(milliseconds(3000), [] { return counters().bytes_held == 0; }))
      << "still held after the idle release: " << counters().bytes_held;
  EXPECT_EQ(0u, counters().free_failures);
}

}  // namespace
}  // namespace integ
