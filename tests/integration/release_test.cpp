// The release policy end to end (DESIGN §5), seen from the runtime: what the process holds after a
// burst. Registered with STANDIN_DEVICE_MEMORY=16GiB and per-test watermarks (CMakeLists.txt).
#include <dlfcn.h>

#include <cstdio>
#include <random>
#include <vector>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

constexpr std::uint64_t kSmallSegment = 2 * kMiB;    // holds the one live block
constexpr std::uint64_t kMediumSegment = 20 * kMiB;  // slack: one segment

struct Sized {
  void* ptr;
  std::uint64_t size;
};

// Allocates blocks of 32-300 MiB until `total` bytes or more, never beyond `max_total`. Large
// blocks: each is a segment of its own; sizes are multiples of 2 MiB, so segment == block.
std::vector<Sized> burst(std::uint64_t total, std::uint64_t max_total, std::uint64_t* allocated) {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::uint64_t> size_2mib(16, 150);
  std::vector<Sized> blocks;
  *allocated = 0;
  while (*allocated < total) {
    const std::uint64_t size = size_2mib(rng) * 2 * kMiB;
    if (*allocated + size > max_total) continue;
    void* p = nullptr;
    EXPECT_CUDA_OK(cudaMalloc(&p, size));
    if (p == nullptr) break;
    blocks.push_back({p, size});
    *allocated += size;
  }
  return blocks;
}

// CUDAPOOL_HIGH_WATERMARK=1GiB CUDAPOOL_LOW_WATERMARK=256MiB CUDAPOOL_IDLE_RELEASE_MS=0
TEST(Release, WatermarkBringsIdleDownToTheLowMark) {
  void* live = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&live, kMiB));
  std::uint64_t allocated = 0;
  std::vector<Sized> blocks = burst(3 * kGiB, 4 * kGiB, &allocated);
  ASSERT_GE(counters().bytes_held, 3 * kGiB);

  // Free while idle stays at or below the high watermark: nothing goes back (hysteresis).
  std::size_t next = 0;
  std::uint64_t idle = 0, in_use = allocated;
  while (next < blocks.size() && idle + blocks[next].size <= kGiB) {
    ASSERT_CUDA_OK(cudaFree(blocks[next].ptr));
    idle += blocks[next].size;
    in_use -= blocks[next].size;
    ++next;
  }
  const std::uint64_t held_below_high = counters().bytes_held;
  EXPECT_EQ(kSmallSegment + allocated, held_below_high) << "the pool must keep its idle blocks";
  sleep_ms(300);
  EXPECT_EQ(held_below_high, counters().bytes_held) << "released while idle <= high watermark";

  // This free takes idle above the high watermark: the release thread brings it to the low one.
  ASSERT_LT(next, blocks.size());
  ASSERT_CUDA_OK(cudaFree(blocks[next].ptr));
  in_use -= blocks[next].size;
  ++next;
  const std::uint64_t bound = in_use + kSmallSegment + 256 * kMiB + kMediumSegment;
  EXPECT_TRUE(wait_until(milliseconds(1000), [&] { return counters().bytes_held <= bound; }))
      << "with " << in_use / kMiB << " MiB in use the process still holds "
      << counters().bytes_held / kMiB << " MiB (bound " << bound / kMiB << " MiB)";

  // The rest of the burst freed: every crossing is answered, so idle ends at most at the high
  // watermark. (Where between the marks depends on how the frees interleave with the release
  // thread: frees after its last pass add idle below the high mark, which the hysteresis keeps.)
  for (; next < blocks.size(); ++next)
    ASSERT_CUDA_OK(cudaFree(blocks[next].ptr));
  const std::uint64_t final_bound = kSmallSegment + kGiB;
  EXPECT_TRUE(wait_until(milliseconds(1000), [&] { return counters().bytes_held <= final_bound; }))
      << "after the whole burst was freed the process still holds " << counters().bytes_held / kMiB
      << " MiB (bound " << final_bound / kMiB << " MiB)";
  EXPECT_EQ(0u, counters().free_failures);
  EXPECT_CUDA_OK(cudaFree(live));
}

// CUDAPOOL_HIGH_WATERMARK=1GiB CUDAPOOL_LOW_WATERMARK=64MiB CUDAPOOL_IDLE_RELEASE_MS=300
TEST(Release, IdleTimerReleasesAfterAQuietPeriod) {
  void* live = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&live, kMiB));
  std::uint64_t allocated = 0;
  std::vector<Sized> blocks = burst(600 * kMiB, 900 * kMiB, &allocated);
  const auto last_allocation = Clock::now();
  for (const Sized& b : blocks)
    ASSERT_CUDA_OK(cudaFree(b.ptr));
  // Below the high watermark: nothing goes back yet.
  EXPECT_GE(counters().bytes_held, allocated) << "released before the quiet period";
  const std::uint64_t bound = kSmallSegment + 64 * kMiB + kMediumSegment;
  EXPECT_TRUE(wait_until(milliseconds(1500), [&] { return counters().bytes_held <= bound; }))
      << "after " << allocated / kMiB << " MiB went idle the process still holds "
      << counters().bytes_held / kMiB << " MiB (bound " << bound / kMiB << " MiB)";
  const auto quiet = std::chrono::duration_cast<milliseconds>(Clock::now() - last_allocation);
  EXPECT_GE(quiet.count(), 300) << "released before CUDAPOOL_IDLE_RELEASE_MS had passed";
  EXPECT_CUDA_OK(cudaFree(live));
}

// STANDIN_DEVICE_MEMORY=2GiB CUDAPOOL_MIN_DEVICE_FREE=512MiB CUDAPOOL_IDLE_RELEASE_MS=0
TEST(Release, DevicePressureReleasesWhenOthersNeedMemory) {
  auto set_other = reinterpret_cast<void (*)(int, unsigned long long)>(
      dlsym(dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD), "standinSetOtherMemory"));
  ASSERT_NE(nullptr, set_other);
  std::vector<void*> blocks(8);
  for (void*& p : blocks)
    ASSERT_CUDA_OK(cudaMalloc(&p, 128 * kMiB));
  for (void* p : blocks)
    ASSERT_CUDA_OK(cudaFree(p));
  sleep_ms(300);
  EXPECT_EQ(kGiB, counters().bytes_held) << "no pressure yet: the idle GiB stays";
  set_other(0, 900 * kMiB);  // device free: 2048 - 1024 - 900 = 124 MiB < 512 MiB
  EXPECT_TRUE(wait_until(milliseconds(1500), [] { return native_mem_info().first >= 512 * kMiB; }))
      << "device free stays at " << native_mem_info().first / kMiB << " MiB";
  EXPECT_GT(counters().bytes_held, 0u) << "released more than the pressure asked for";
  set_other(0, 0);
}

// Inference-like churn with the default policy: requests of mixed sizes (norms and biases,
// activations, attention buffers; eight sequence lengths), at most a few hundred MiB live. Once the
// pool holds what a request needs, requests are served without the driver: over the run the
// driver sees at most 1% of the application's cudaMalloc calls (DESIGN §1, README).
TEST(Churn, DriverSeesAtMostOnePercentOfTheCalls) {
  std::mt19937_64 rng(5);
  const std::uint64_t seq_lengths[] = {64, 128, 192, 256, 384, 512, 768, 1024};
  const StandinCounters before = counters();
  std::uint64_t app_mallocs = 0;
  for (int request = 0; request < 400; ++request) {
    const std::uint64_t seq = seq_lengths[rng() % 8];
    std::vector<void*> live;
    for (int layer = 0; layer < 24; ++layer) {
      const std::uint64_t sizes[] = {
          4 * 1024,                  // a norm's statistics
          (512 + rng() % 8192) * 4,  // a bias, small odds and ends
          seq * 1024 * 4,            // activations: seq x hidden (1024) floats, 256 KiB - 4 MiB
          seq * 4096 * 4,            // the MLP's inner activations, 1 - 16 MiB
          seq * seq * 16 * 2,        // attention scores, 16 heads in half precision
      };
      for (std::uint64_t size : sizes) {
        void* p = nullptr;
        ASSERT_CUDA_OK(cudaMalloc(&p, size));
        ++app_mallocs;
        live.push_back(p);
      }
      // Temporaries die within the layer; the layer's output lives on to the next layer.
      while (live.size() > 3) {
        ASSERT_CUDA_OK(cudaFree(live.front()));
        live.erase(live.begin());
      }
    }
    for (void* p : live)
      ASSERT_CUDA_OK(cudaFree(p));
  }
  const StandinCounters after = counters();
  const std::uint64_t driver_calls =
      (after.mallocs - before.mallocs) + (after.frees - before.frees);
  std::printf("churn: %llu application cudaMalloc calls, %llu driver calls (%.3f%%)\n",
              static_cast<unsigned long long>(app_mallocs),
              static_cast<unsigned long long>(driver_calls), 100.0 * driver_calls / app_mallocs);
  EXPECT_LE(driver_calls * 100, app_mallocs);
}

}  // namespace
}  // namespace integ
