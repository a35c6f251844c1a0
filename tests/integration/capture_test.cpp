// CUDA graph capture (DESIGN §4.6): while a capture is active the pool never synchronises and
// never releases, a cudaMalloc gets the runtime's own answer and its memory is never pooled, and a
// cudaFree of a pooled block only queues it. The stand-in counts every unsafe call that would have
// invalidated a capture (capture_violations).
#include <vector>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

std::uintptr_t addr(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

class Capture : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream_, &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t graph = nullptr;
      cudaStreamEndCapture(stream_, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
    }
    cudaStreamDestroy(stream_);
    cudaGetLastError();
  }
  // Ends the capture, expecting a valid graph.
  void end_capture_ok() {
    cudaGraph_t graph = nullptr;
    EXPECT_CUDA_OK(cudaStreamEndCapture(stream_, &graph)) << "the capture was invalidated";
    EXPECT_NE(nullptr, graph);
    if (graph != nullptr) {
      EXPECT_CUDA_OK(cudaGraphDestroy(graph));
    }
  }

  cudaStream_t stream_ = nullptr;
};

TEST_F(Capture, FreeOfAPooledBlockOnlyQueuesIt) {
  void *small = nullptr, *large = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&small, kMiB));
  ASSERT_CUDA_OK(cudaMalloc(&large, 16 * kMiB));
  const StandinCounters before = counters();
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
  ASSERT_CUDA_OK(cudaMemsetAsync(small, 0, 4096, stream_));  // recorded into the graph
  EXPECT_CUDA_OK(cudaFree(small));
  EXPECT_CUDA_OK(cudaFree(large));
  const StandinCounters during = counters();
  EXPECT_EQ(before.capture_violations, during.capture_violations)
      << "the free synchronised or reached the runtime during the capture";
  EXPECT_EQ(before.frees, during.frees);
  EXPECT_EQ(before.device_syncs, during.device_syncs);
  EXPECT_EQ(before.implicit_syncs, during.implicit_syncs);
  end_capture_ok();
  EXPECT_EQ(before.capture_violations, counters().capture_violations);
}

TEST_F(Capture, MallocInGlobalModeGetsTheRuntimesAnswer) {
  // The pool has room for the request: a pool that served it would answer cudaSuccess.
  void* held = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&held, 64 * kKiB));
  const StandinCounters before = counters();
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
  void* const sentinel = reinterpret_cast<void*>(0x7000);
  void* p = sentinel;
  EXPECT_EQ(cudaErrorStreamCaptureUnsupported, cudaMalloc(&p, 64 * kKiB));
  EXPECT_EQ(before.mallocs, counters().mallocs);
  EXPECT_EQ(before.capture_violations + 1, counters().capture_violations)
      << "the runtime itself must have seen (and refused) the call";
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaErrorStreamCaptureInvalidated, cudaStreamEndCapture(stream_, &graph));
  cudaGetLastError();
  EXPECT_CUDA_OK(cudaFree(held));
}

TEST_F(Capture, MallocInRelaxedModeIsNativeAndNeverPooled) {
  void* held = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&held, 64 * kKiB));  // the pool has room for 64 KiB more
  const StandinCounters before = counters();
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  ASSERT_CUDA_OK(cudaThreadExchangeStreamCaptureMode(&mode));
  void* p = nullptr;
  EXPECT_CUDA_OK(cudaMalloc(&p, 64 * kKiB));
  EXPECT_EQ(before.mallocs + 1, counters().mallocs) << "a capture-time malloc must be native";
  StandinAllocationInfo info{};
  if (allocation_info(p, &info)) {  // exact when the stand-in can say
    EXPECT_EQ(addr(p), info.base) << "the block came from a pool segment";
    EXPECT_EQ(64 * kKiB, info.size);
  }
  ASSERT_CUDA_OK(cudaThreadExchangeStreamCaptureMode(&mode));
  end_capture_ok();
  EXPECT_EQ(before.capture_violations, counters().capture_violations);
  // Freed later, it goes back to the runtime, not into the pool.
  const unsigned long long frees = counters().frees;
  EXPECT_CUDA_OK(cudaFree(p));
  EXPECT_EQ(frees + 1, counters().frees) << "the captured allocation was recycled by the pool";
  EXPECT_CUDA_OK(cudaFree(held));
}

TEST_F(Capture, PoolingResumesAfterTheCapture) {
  std::vector<void*> blocks(8);
  for (void*& p : blocks)
    ASSERT_CUDA_OK(cudaMalloc(&p, 256 * kKiB));
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
  for (void* p : blocks)
    EXPECT_CUDA_OK(cudaFree(p));
  end_capture_ok();
  const StandinCounters before = counters();
  // 400 round trips free 100 MiB: the pool fences every 32 MiB pending (kFenceBatch) and grows
  // by at most that much in between; without pooling every round trip would reach the runtime.
  for (int i = 0; i < 400; ++i) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, 256 * kKiB));
    ASSERT_CUDA_OK(cudaFree(p));
  }
  EXPECT_LE(counters().mallocs - before.mallocs, 16u) << "pooling did not resume";
  EXPECT_GE(counters().device_syncs - before.device_syncs, 1u) << "no fence after the capture";
  EXPECT_EQ(before.frees, counters().frees);
  EXPECT_EQ(before.capture_violations, counters().capture_violations);
}

// Registered with CUDAPOOL_HIGH_WATERMARK=64MiB, CUDAPOOL_LOW_WATERMARK=0,
// CUDAPOOL_IDLE_RELEASE_MS=0 (the watermark alone decides).
class CaptureWatermark : public Capture {
 protected:
  // 200 MiB of pooled blocks, freed inside a capture: idle crosses the high watermark.
  void free_burst_during_capture() {
    std::vector<void*> blocks(8);
    for (void*& p : blocks)
      ASSERT_CUDA_OK(cudaMalloc(&p, 25 * kMiB));
    before_ = counters();
    ASSERT_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
    for (void* p : blocks)
      ASSERT_CUDA_OK(cudaFree(p));
    sleep_ms(600);  // the release thread is woken by the crossing and ticks every 100 ms
  }
  StandinCounters before_{};
};

TEST_F(CaptureWatermark, ControlWithoutCaptureTheSameFreesRelease) {
  // The same burst freed outside a capture is released within the same wait: the checks below
  // are able to see a release.
  std::vector<void*> blocks(8);
  for (void*& p : blocks)
    ASSERT_CUDA_OK(cudaMalloc(&p, 25 * kMiB));
  const StandinCounters before = counters();
  for (void* p : blocks)
    ASSERT_CUDA_OK(cudaFree(p));
  sleep_ms(600);
  EXPECT_LT(before.frees, counters().frees) << "the watermark released nothing";
}

TEST_F(CaptureWatermark, NoSyncOrReleaseWhileCapturing) {
  free_burst_during_capture();
  const StandinCounters during = counters();
  EXPECT_EQ(before_.device_syncs, during.device_syncs) << "the pool fenced during a capture";
  EXPECT_EQ(before_.frees, during.frees) << "the pool released during a capture";
  EXPECT_EQ(before_.capture_violations, during.capture_violations);
  EXPECT_EQ(before_.bytes_held, during.bytes_held);
  end_capture_ok();
}

TEST_F(CaptureWatermark, ReleaseHeldBackByTheCaptureHappensAfterIt) {
  free_burst_during_capture();
  end_capture_ok();
  EXPECT_TRUE(wait_until(milliseconds(2000), [] { return counters().bytes_held == 0; }))
      << "idle is above the high watermark after the capture, yet the pool still holds "
      << counters().bytes_held << " bytes";
  EXPECT_EQ(before_.capture_violations, counters().capture_violations);
}

}  // namespace
}  // namespace integ
