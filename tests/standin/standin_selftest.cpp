// Self-tests of the stand-in CUDA runtime (libcudart.so.13 for tests).
//
// Most tests run in this process with the default configuration (one device of 16 GiB). Tests
// that need their own environment (STANDIN_* variables are read once per process) live in the
// DISABLED_Child suite: a parent test re-runs this binary with the variables set and only that
// test selected, and checks that it ran and passed (RunChild).
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cuda_standin.h"
#include "selftest_child.h"

extern char** environ;

// Entry points that programs built with CUDA_API_PER_THREAD_DEFAULT_STREAM call (the header
// declares them only in that mode).
extern "C" cudaError_t cudaLaunchHostFunc_ptsz(cudaStream_t stream, cudaHostFn_t fn, void* user);
extern "C" cudaError_t cudaStreamGetId_ptsz(cudaStream_t stream, unsigned long long* id);
extern "C" cudaError_t cudaMemset_ptds(void* p, int value, size_t count);

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMiB = 1ull << 20;
constexpr size_t kGiB = 1ull << 30;

void SleepMs(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

StandinCounters Counters(int device = -1) {
  StandinCounters c{};
  EXPECT_EQ(standinGetCounters(device, &c), 0);
  return c;
}

// ---- host functions queued on streams ----------------------------------------------------------

void CUDART_CB SetFlag(void* p) {
  static_cast<std::atomic<int>*>(p)->store(1);
}

struct SleepThenSet {
  int ms;
  std::atomic<int>* flag;
};
void CUDART_CB SleepThenSetFn(void* p) {
  auto* s = static_cast<SleepThenSet*>(p);
  SleepMs(s->ms);
  s->flag->store(1);
}

struct Observe {
  std::atomic<int>* source;
  std::atomic<int> seen{-1};
};
void CUDART_CB ObserveFn(void* p) {
  auto* o = static_cast<Observe*>(p);
  o->seen.store(o->source->load());
}

// Waits up to 5 s for a flag that a later op on another stream sets: got = 1 if it came, 0 if
// the stand-in wrongly made that other op wait for this one.
struct WaitForFlag {
  std::atomic<int>* flag;
  std::atomic<int> got{-1};
};
void CUDART_CB WaitForFlagFn(void* p) {
  auto* w = static_cast<WaitForFlag*>(p);
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!w->flag->load() && Clock::now() < deadline)
    SleepMs(1);
  w->got.store(w->flag->load());
}

struct ByteProbe {
  const unsigned char* p;
  std::atomic<int> value{-1};
};
void CUDART_CB ProbeFn(void* p) {
  auto* b = static_cast<ByteProbe*>(p);
  b->value.store(*b->p);
}

void CUDART_CB Increment(void* p) {
  static_cast<std::atomic<int>*>(p)->fetch_add(1);
}

// ---- child processes ---------------------------------------------------------------------------

using standin_test::ChildResult;
using standin_test::ExpectChildPasses;
using standin_test::RunChild;

using standin_test::InChild;

// ================================================================================================
// In-process tests (default configuration).

TEST(Standin, IdentifiesItselfAndVersions) {
  EXPECT_EQ(standinIsStandin(), 1);
  using Fn = int (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "standinIsStandin"));
  ASSERT_NE(fn, nullptr);
  EXPECT_EQ(fn(), 1);
  int v = 0;
  EXPECT_EQ(cudaRuntimeGetVersion(&v), cudaSuccess);
  EXPECT_EQ(v, 13000);
  EXPECT_EQ(cudaDriverGetVersion(&v), cudaSuccess);
  EXPECT_GE(v, 13000);
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
}

TEST(Malloc, ZeroSizeGivesNull) {
  const auto before = Counters();
  void* p = reinterpret_cast<void*>(0x1234);
  EXPECT_EQ(cudaMalloc(&p, 0), cudaSuccess);
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(Counters().mallocs, before.mallocs);
}

TEST(Malloc, NullOutPointerIsInvalidValue) {
  cudaGetLastError();
  EXPECT_EQ(cudaMalloc(nullptr, 1024), cudaErrorInvalidValue);
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(Malloc, HugeSizesFailWithoutOverflow) {
  const auto before = Counters();
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, SIZE_MAX), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaMalloc(&p, SIZE_MAX - 100), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaMalloc(&p, 16 * kGiB + 1), cudaErrorMemoryAllocation);
  size_t pitch = 0;
  EXPECT_EQ(cudaMallocPitch(&p, &pitch, SIZE_MAX / 2, 4), cudaErrorMemoryAllocation);
  const auto after = Counters();
  EXPECT_EQ(after.malloc_failures, before.malloc_failures + 4);
  EXPECT_EQ(after.bytes_held, before.bytes_held);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
}

TEST(Malloc, AlignedDistinctWritableAndAccounted) {
  const auto before = Counters();
  const size_t sizes[] = {1, 511, 512, 513, 4097, kMiB};
  std::vector<void*> ptrs;
  size_t expected = 0;
  for (size_t n : sizes) {
    void* p = nullptr;
    ASSERT_EQ(cudaMalloc(&p, n), cudaSuccess);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 512, 0u);
    static_cast<char*>(p)[0] = 1;
    static_cast<char*>(p)[n - 1] = 2;
    for (void* q : ptrs)
      EXPECT_NE(p, q);
    ptrs.push_back(p);
    expected += (n + 511) / 512 * 512;
  }
  auto mid = Counters();
  EXPECT_EQ(mid.bytes_held - before.bytes_held, expected);
  EXPECT_EQ(mid.mallocs - before.mallocs, std::size(sizes));
  EXPECT_GE(mid.peak_bytes_held, mid.bytes_held);
  for (void* p : ptrs)
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  auto after = Counters();
  EXPECT_EQ(after.bytes_held, before.bytes_held);
  EXPECT_EQ(after.frees - before.frees, std::size(sizes));
}

TEST(Malloc, CapacityOtherMemoryAndMemGetInfo) {
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  EXPECT_EQ(total, 16 * kGiB);
  void* big = nullptr;
  ASSERT_EQ(cudaMalloc(&big, 10 * kGiB), cudaSuccess);  // NORESERVE: costs no RAM
  size_t free1 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_EQ(free0 - free1, 10 * kGiB);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 10 * kGiB), cudaErrorMemoryAllocation);
  // Other processes take 5 GiB: 1 GiB left.
  standinSetOtherMemory(0, 5 * kGiB);
  size_t free2 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free2, &total), cudaSuccess);
  EXPECT_EQ(free2, free1 - 5 * kGiB);
  EXPECT_EQ(cudaMalloc(&p, 2 * kGiB), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaMalloc(&p, 512 * kMiB), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  standinSetOtherMemory(-1, 0);
  EXPECT_EQ(cudaFree(big), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free2, &total), cudaSuccess);
  EXPECT_EQ(free2, free0);
  EXPECT_EQ(cudaMemGetInfo(nullptr, &total), cudaErrorInvalidValue);
}

TEST(Malloc, ApiVariantsAndPointerAttributes) {
  void* a = nullptr;
  void* pitched = nullptr;
  void* managed = nullptr;
  void* async = nullptr;
  void* host = nullptr;
  size_t pitch = 0;
  ASSERT_EQ(cudaMalloc(&a, 1000), cudaSuccess);
  ASSERT_EQ(cudaMallocPitch(&pitched, &pitch, 700, 3), cudaSuccess);
  EXPECT_EQ(pitch, 1024u);
  EXPECT_EQ(cudaMallocManaged(&managed, 0, cudaMemAttachGlobal), cudaErrorInvalidValue);
  ASSERT_EQ(cudaMallocManaged(&managed, 4096, cudaMemAttachGlobal), cudaSuccess);
  ASSERT_EQ(cudaMallocAsync(&async, 2048, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMallocHost(&host, 100), cudaSuccess);

  StandinAllocationInfo info{};
  ASSERT_EQ(standinGetAllocationInfo(static_cast<char*>(a) + 10, &info), 0);
  EXPECT_EQ(info.base, reinterpret_cast<uintptr_t>(a));
  EXPECT_EQ(info.size, 1000u);
  EXPECT_EQ(info.device, 0);
  EXPECT_EQ(info.api, STANDIN_API_MALLOC);
  ASSERT_EQ(standinGetAllocationInfo(pitched, &info), 0);
  EXPECT_EQ(info.api, STANDIN_API_MALLOC_PITCH);
  EXPECT_EQ(info.size, 3 * 1024u);
  ASSERT_EQ(standinGetAllocationInfo(managed, &info), 0);
  EXPECT_EQ(info.api, STANDIN_API_MALLOC_MANAGED);
  ASSERT_EQ(standinGetAllocationInfo(async, &info), 0);
  EXPECT_EQ(info.api, STANDIN_API_MALLOC_ASYNC);
  EXPECT_EQ(standinGetAllocationInfo(host, &info), -1);
  EXPECT_EQ(standinGetAllocationInfo(static_cast<char*>(a) + 1000, &info), -1);

  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, static_cast<char*>(a) + 8), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attr.device, 0);
  EXPECT_EQ(attr.hostPointer, nullptr);
  ASSERT_EQ(cudaPointerGetAttributes(&attr, managed), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeManaged);
  ASSERT_EQ(cudaPointerGetAttributes(&attr, host), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
  int local = 0;
  ASSERT_EQ(cudaPointerGetAttributes(&attr, &local), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeUnregistered);

  EXPECT_EQ(cudaFree(host), cudaErrorInvalidValue);  // host memory is not cudaFree's
  EXPECT_EQ(cudaFreeHost(a), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFreeHost(host), cudaSuccess);
  for (void* p : {a, pitched, managed, async})
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  cudaGetLastError();
}

TEST(Free, NullSucceeds) {
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(nullptr, nullptr), cudaSuccess);
}

TEST(Free, ForeignInteriorAndDoubleFreesAreInvalidValue) {
  const auto before = Counters();
  int on_stack = 0;
  std::vector<char> heap_block(64);
  void* heap = heap_block.data();
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 4096), cudaSuccess);
  cudaGetLastError();
  EXPECT_EQ(cudaFree(&on_stack), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(heap), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(static_cast<char*>(p) + 512), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFreeAsync(p, nullptr), cudaErrorInvalidValue);
  const auto after = Counters();
  EXPECT_EQ(after.free_failures - before.free_failures, 5u);
  EXPECT_EQ(after.frees - before.frees, 1u);
  cudaGetLastError();
}

TEST(Free, WaitsForQueuedWorkOnEveryStream) {
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 4096), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  std::atomic<int> slept{0}, after{0};
  SleepThenSet sleeper{50, &slept};
  ByteProbe probe{static_cast<unsigned char*>(p)};
  const auto before = Counters();
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &sleeper), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(p, 0xAB, 4096, s), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s, ProbeFn, &probe), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s, SetFlag, &after), cudaSuccess);
  const auto t0 = Clock::now();
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_GE(MsSince(t0), 40.0);
  EXPECT_EQ(slept.load(), 1);
  EXPECT_EQ(probe.value.load(), 0xAB);  // the memset ran before the memory went away
  EXPECT_EQ(after.load(), 1);
  const auto c = Counters();
  EXPECT_EQ(c.implicit_syncs - before.implicit_syncs, 1u);
  EXPECT_EQ(c.async_ops - before.async_ops, 4u);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(Free, UseAfterFreeFaults) {
  ChildResult r = RunChild("DISABLED_Child.UseAfterFree", {"STANDIN_SELFTEST_CHILD=1"});
  EXPECT_FALSE(r.timed_out);
  EXPECT_NE(r.output.find("touching freed memory"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("SURVIVED"), std::string::npos) << r.output;
  EXPECT_TRUE(r.signal == SIGSEGV || (r.exited && r.exit_code != 0)) << r.output;
}

// ---- stream ordering ---------------------------------------------------------------------------

TEST(Streams, LegacyStreamWaitsForBlockingStreams) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  std::atomic<int> flag{0};
  SleepThenSet slow{60, &flag};
  Observe legacy{&flag};
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(nullptr, ObserveFn, &legacy), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(legacy.seen.load(), 1);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(Streams, BlockingStreamWaitsForLegacyStream) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithPriority(&s, cudaStreamDefault, -1), cudaSuccess);
  std::atomic<int> flag{0};
  SleepThenSet slow{60, &flag};
  Observe blocking{&flag};
  ASSERT_EQ(cudaLaunchHostFunc(cudaStreamLegacy, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s, ObserveFn, &blocking), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(blocking.seen.load(), 1);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(Streams, NonBlockingStreamDoesNotOrderWithLegacyStream) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  std::atomic<int> f1{0}, f2{0};
  WaitForFlag w1{&f1}, w2{&f2};
  // Each side waits for a flag the other sets later: only unordered streams finish both.
  ASSERT_EQ(cudaLaunchHostFunc(s, WaitForFlagFn, &w1), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(nullptr, SetFlag, &f1), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(nullptr, WaitForFlagFn, &w2), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s, SetFlag, &f2), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(w1.got.load(), 1);
  EXPECT_EQ(w2.got.load(), 1);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(Streams, BlockingStreamsDoNotOrderWithEachOther) {
  cudaStream_t s1, s2;
  ASSERT_EQ(cudaStreamCreate(&s1), cudaSuccess);
  ASSERT_EQ(cudaStreamCreate(&s2), cudaSuccess);
  std::atomic<int> flag{0};
  WaitForFlag w{&flag};
  ASSERT_EQ(cudaLaunchHostFunc(s1, WaitForFlagFn, &w), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s2, SetFlag, &flag), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(w.got.load(), 1);
  EXPECT_EQ(cudaStreamDestroy(s1), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s2), cudaSuccess);
}

TEST(Streams, PerThreadDefaultStreamOrdersWithLegacyOnly) {
  cudaStream_t other;
  ASSERT_EQ(cudaStreamCreate(&other), cudaSuccess);
  std::atomic<int> flag{0};
  WaitForFlag w{&flag};
  ASSERT_EQ(cudaLaunchHostFunc(cudaStreamPerThread, WaitForFlagFn, &w), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(other, SetFlag, &flag), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(cudaStreamPerThread), cudaSuccess);
  EXPECT_EQ(w.got.load(), 1);
  // ...but it is ordered with the legacy stream.
  std::atomic<int> slow_done{0};
  SleepThenSet slow{60, &slow_done};
  Observe legacy{&slow_done};
  ASSERT_EQ(cudaLaunchHostFunc(cudaStreamPerThread, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(cudaStreamLegacy, ObserveFn, &legacy), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(legacy.seen.load(), 1);
  EXPECT_EQ(cudaStreamDestroy(other), cudaSuccess);
}

TEST(Streams, PerThreadDefaultStreamsAreDistinctPerThread) {
  std::atomic<int> flag{0};
  WaitForFlag w{&flag};
  std::thread a(
      [&] { EXPECT_EQ(cudaLaunchHostFunc(cudaStreamPerThread, WaitForFlagFn, &w), cudaSuccess); });
  a.join();
  std::thread b(
      [&] { EXPECT_EQ(cudaLaunchHostFunc(cudaStreamPerThread, SetFlag, &flag), cudaSuccess); });
  b.join();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // also waits for streams of ended threads
  EXPECT_EQ(w.got.load(), 1);
}

TEST(Streams, PerThreadEntryPointsMapStreamZeroToThePerThreadStream) {
  unsigned long long ptsz = 0, per_thread = 0, legacy = 0;
  ASSERT_EQ(cudaStreamGetId_ptsz(nullptr, &ptsz), cudaSuccess);
  ASSERT_EQ(cudaStreamGetId(cudaStreamPerThread, &per_thread), cudaSuccess);
  ASSERT_EQ(cudaStreamGetId(nullptr, &legacy), cudaSuccess);
  EXPECT_EQ(ptsz, per_thread);
  EXPECT_NE(ptsz, legacy);
  // Stream 0 of a _ptsz call does not wait for other blocking streams (the legacy stream would).
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  std::atomic<int> flag{0};
  WaitForFlag w{&flag};
  ASSERT_EQ(cudaLaunchHostFunc(s, WaitForFlagFn, &w), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc_ptsz(nullptr, SetFlag, &flag), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(w.got.load(), 1);
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 256), cudaSuccess);
  ASSERT_EQ(cudaMemset_ptds(d, 0x42, 256), cudaSuccess);
  EXPECT_EQ(static_cast<unsigned char*>(d)[255], 0x42);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(Streams, AsyncCopiesQueryAndSynchronize) {
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 8192), cudaSuccess);
  std::vector<unsigned char> host(8192, 0), src(8192, 0x5A);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  const auto before = Counters();
  std::atomic<int> flag{0};
  SleepThenSet slow{50, &flag};
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d, src.data(), 4096, cudaMemcpyHostToDevice, s), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(static_cast<char*>(d) + 4096, 0x33, 4096, s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), d, 8192, cudaMemcpyDeviceToHost, s), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not-ready is not an error
  EXPECT_EQ(host[0], 0);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaSuccess);
  EXPECT_EQ(host[0], 0x5A);
  EXPECT_EQ(host[4095], 0x5A);
  EXPECT_EQ(host[4096], 0x33);
  EXPECT_EQ(host[8191], 0x33);
  const auto after = Counters();
  EXPECT_EQ(after.async_ops - before.async_ops, 4u);
  EXPECT_EQ(after.stream_syncs - before.stream_syncs, 1u);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
}

TEST(Streams, SynchronousCopiesAndPointerChecks) {
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 1024), cudaSuccess);
  std::vector<unsigned char> host(1024, 0);
  ASSERT_EQ(cudaMemset(d, 0x7F, 1024), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(host.data(), d, 1024, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[1023], 0x7F);
  void* pitched = nullptr;
  size_t pitch = 0;
  ASSERT_EQ(cudaMallocPitch(&pitched, &pitch, 100, 4), cudaSuccess);
  ASSERT_EQ(cudaMemset2D(pitched, pitch, 0x11, 100, 4), cudaSuccess);
  std::vector<unsigned char> rows(400, 0);
  ASSERT_EQ(cudaMemcpy2D(rows.data(), 100, pitched, pitch, 100, 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(rows[399], 0x11);
  EXPECT_EQ(cudaMemcpy2D(rows.data(), 50, pitched, pitch, 100, 4, cudaMemcpyDeviceToHost),
            cudaErrorInvalidPitchValue);

  std::vector<unsigned char> plain(64);
  EXPECT_EQ(cudaMemset(plain.data(), 0, 64), cudaErrorInvalidValue);  // not device memory
  EXPECT_EQ(cudaMemset(d, 0, 1025), cudaErrorInvalidValue);           // past the end
  EXPECT_EQ(cudaMemcpy(d, host.data(), 10, static_cast<cudaMemcpyKind>(7)),
            cudaErrorInvalidMemcpyDirection);
  EXPECT_EQ(cudaMemcpy(plain.data(), host.data(), 10, cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(plain.data(), host.data(), 10, cudaMemcpyDefault), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 16, nullptr), cudaErrorInvalidValue);  // freed
  EXPECT_EQ(cudaFree(pitched), cudaSuccess);
  cudaGetLastError();
}

TEST(Streams, DestroyLetsQueuedWorkFinish) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  std::atomic<int> flag{0};
  SleepThenSet slow{50, &flag};
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaStreamDestroy(s), cudaErrorInvalidResourceHandle);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(flag.load(), 1);
  cudaGetLastError();
}

TEST(Streams, FlagsPriorityDeviceAndId) {
  cudaStream_t a, b;
  ASSERT_EQ(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
  int least = 1, greatest = 1;
  ASSERT_EQ(cudaDeviceGetStreamPriorityRange(&least, &greatest), cudaSuccess);
  EXPECT_EQ(least, 0);
  EXPECT_LT(greatest, 0);
  ASSERT_EQ(cudaStreamCreateWithPriority(&b, cudaStreamDefault, -100), cudaSuccess);
  unsigned flags = 99;
  EXPECT_EQ(cudaStreamGetFlags(a, &flags), cudaSuccess);
  EXPECT_EQ(flags, static_cast<unsigned>(cudaStreamNonBlocking));
  int prio = 1;
  EXPECT_EQ(cudaStreamGetPriority(b, &prio), cudaSuccess);
  EXPECT_EQ(prio, greatest);
  int dev = -1;
  EXPECT_EQ(cudaStreamGetDevice(b, &dev), cudaSuccess);
  EXPECT_EQ(dev, 0);
  unsigned long long ida = 0, idb = 0;
  EXPECT_EQ(cudaStreamGetId(a, &ida), cudaSuccess);
  EXPECT_EQ(cudaStreamGetId(b, &idb), cudaSuccess);
  EXPECT_NE(ida, idb);
  EXPECT_EQ(cudaStreamCreateWithFlags(&a, 0x80), cudaErrorInvalidValue);
  EXPECT_EQ(cudaStreamDestroy(a), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(b), cudaSuccess);
  cudaGetLastError();
}

void CUDART_CB MallocFromCallback(void* p) {
  void* mem = nullptr;
  static_cast<std::atomic<int>*>(p)->store(cudaMalloc(&mem, 16));
}

TEST(Streams, CallbacksMayNotCallTheApi) {
  std::atomic<int> result{-1};
  ASSERT_EQ(cudaLaunchHostFunc(nullptr, MallocFromCallback, &result), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(result.load(), cudaErrorNotPermitted);
}

struct CallbackSeen {
  std::atomic<cudaStream_t> stream{nullptr};
  std::atomic<int> status{-1};
};
void CUDART_CB StreamCallback(cudaStream_t s, cudaError_t status, void* p) {
  auto* seen = static_cast<CallbackSeen*>(p);
  seen->stream.store(s);
  seen->status.store(status);
}

TEST(Streams, AddCallbackPassesStreamAndStatus) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  CallbackSeen seen;
  ASSERT_EQ(cudaStreamAddCallback(s, StreamCallback, &seen, 0), cudaSuccess);
  EXPECT_EQ(cudaStreamAddCallback(s, StreamCallback, &seen, 1), cudaErrorInvalidValue);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(seen.stream.load(), s);
  EXPECT_EQ(seen.status.load(), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

// ---- events ------------------------------------------------------------------------------------

TEST(Events, QuerySynchronizeAndElapsedTime) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  cudaEvent_t start, stop, untimed;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(stop), cudaSuccess);  // never recorded
  float ms = 0;
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaErrorInvalidResourceHandle);
  std::atomic<int> flag{0};
  SleepThenSet slow{60, &flag};
  ASSERT_EQ(cudaEventRecord(start, s), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(stop, s), cudaSuccess);
  ASSERT_EQ(cudaEventRecordWithFlags(untimed, s, 0), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(stop), cudaErrorNotReady);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaErrorNotReady);
  const auto before = Counters();
  ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
  EXPECT_EQ(Counters().stream_syncs - before.stream_syncs, 1u);
  EXPECT_EQ(flag.load(), 1);
  EXPECT_EQ(cudaEventQuery(stop), cudaSuccess);
  ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
  EXPECT_GE(ms, 50.0f);
  EXPECT_LT(ms, 5000.0f);
  ASSERT_EQ(cudaEventSynchronize(untimed), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, untimed), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventInterprocess), cudaErrorInvalidValue);
  for (cudaEvent_t e : {start, stop, untimed})
    EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(start), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

TEST(Events, StreamWaitEventOrdersAcrossStreams) {
  cudaStream_t s1, s2;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
  cudaEvent_t e;
  ASSERT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  std::atomic<int> flag{0};
  SleepThenSet slow{60, &flag};
  Observe seen{&flag};
  ASSERT_EQ(cudaLaunchHostFunc(s1, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(e, s1), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(s2, e, 0), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s2, ObserveFn, &seen), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s2), cudaSuccess);
  EXPECT_EQ(seen.seen.load(), 1);
  EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s1), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s2), cudaSuccess);
}

// ---- capture -----------------------------------------------------------------------------------

TEST(Capture, RecordsOpsAndReplaysThem) {
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 4096), cudaSuccess);
  ASSERT_EQ(cudaMemset(d, 0, 4096), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  std::atomic<int> count{0};
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaErrorIllegalState);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  unsigned long long id = 0;
  cudaGraph_t during = nullptr;
  ASSERT_EQ(cudaStreamGetCaptureInfo(s, &status, &id, &during), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  EXPECT_NE(id, 0u);
  EXPECT_NE(during, nullptr);
  ASSERT_EQ(cudaMemsetAsync(d, 7, 4096, s), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s, Increment, &count), cudaSuccess);
  SleepMs(30);
  EXPECT_EQ(count.load(), 0);  // recorded, not run
  EXPECT_EQ(static_cast<unsigned char*>(d)[0], 0);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  EXPECT_EQ(graph, during);
  ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusNone);
  size_t nodes = 0;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 2u);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(count.load(), 2);
  EXPECT_EQ(static_cast<unsigned char*>(d)[4095], 7);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaErrorInvalidValue);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  cudaGetLastError();
}

TEST(Capture, MallocAndFreeDuringGlobalCaptureInvalidateIt) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  void* keep = nullptr;
  ASSERT_EQ(cudaMalloc(&keep, 512), cudaSuccess);
  const auto before = Counters();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaError_t other_thread = cudaSuccess;
  std::thread t([&] {
    void* p = nullptr;
    other_thread = cudaMalloc(&p, 1024);
  });
  t.join();
  EXPECT_EQ(other_thread, cudaErrorStreamCaptureUnsupported);
  cudaStreamCaptureStatus status;
  ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusInvalidated);
  EXPECT_EQ(cudaFree(keep), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaMemsetAsync(keep, 0, 512, s), cudaErrorStreamCaptureInvalidated);
  cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(0x1);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(graph, nullptr);
  EXPECT_EQ(Counters().capture_violations - before.capture_violations, 2u);
  EXPECT_EQ(cudaFree(keep), cudaSuccess);  // capture over: allowed again
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

TEST(Capture, RelaxedThreadModeAllowsMalloc) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  const auto before = Counters();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  ASSERT_EQ(cudaThreadExchangeStreamCaptureMode(&mode), cudaSuccess);
  EXPECT_EQ(mode, cudaStreamCaptureModeGlobal);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 1024), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  ASSERT_EQ(cudaThreadExchangeStreamCaptureMode(&mode), cudaSuccess);
  EXPECT_EQ(mode, cudaStreamCaptureModeRelaxed);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  EXPECT_EQ(Counters().capture_violations, before.capture_violations);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(Capture, ThreadLocalCaptureOnlyRestrictsItsThread) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cudaError_t m = cudaErrorUnknown, f = cudaErrorUnknown;
  std::thread t([&] {
    void* p = nullptr;
    m = cudaMalloc(&p, 1024);
    f = cudaFree(p);
  });
  t.join();
  EXPECT_EQ(m, cudaSuccess);
  EXPECT_EQ(f, cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 1024), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

TEST(Capture, SynchronizationDuringCaptureInvalidatesIt) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  auto before = Counters();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(Counters().capture_violations - before.capture_violations, 1u);

  before = Counters();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  auto after = Counters();
  EXPECT_EQ(after.capture_violations - before.capture_violations, 1u);
  EXPECT_EQ(after.device_syncs, before.device_syncs);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

TEST(Capture, LegacyStreamWorkDuringBlockingCaptureIsImplicitSync) {
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 512), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);  // blocking
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 512, nullptr), cudaErrorStreamCaptureImplicit);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  cudaGetLastError();
}

TEST(Capture, OtherStreamsJoinThroughEvents) {
  cudaStream_t s1, s2;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
  cudaEvent_t fork_ev, join_ev;
  ASSERT_EQ(cudaEventCreateWithFlags(&fork_ev, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&join_ev, cudaEventDisableTiming), cudaSuccess);
  std::atomic<int> count{0};
  ASSERT_EQ(cudaStreamBeginCapture(s1, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(s1, Increment, &count), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(fork_ev, s1), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(s2, fork_ev, 0), cudaSuccess);
  cudaStreamCaptureStatus status;
  ASSERT_EQ(cudaStreamIsCapturing(s2, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  ASSERT_EQ(cudaLaunchHostFunc(s2, Increment, &count), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(join_ev, s2), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(s1, join_ev, 0), cudaSuccess);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s2, &graph), cudaErrorStreamCaptureUnmatched);
  ASSERT_EQ(cudaStreamEndCapture(s1, &graph), cudaSuccess);
  ASSERT_EQ(cudaStreamIsCapturing(s2, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusNone);
  EXPECT_EQ(count.load(), 0);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s1), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s1), cudaSuccess);
  EXPECT_EQ(count.load(), 2);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  for (cudaEvent_t e : {fork_ev, join_ev})
    EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s1), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s2), cudaSuccess);
  cudaGetLastError();
}

TEST(Capture, MisuseErrors) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorIllegalState);
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal),
            cudaErrorStreamCaptureUnsupported);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaError_t from_other = cudaSuccess;
  std::thread t([&] { from_other = cudaStreamEndCapture(s, &graph); });
  t.join();
  EXPECT_EQ(from_other, cudaErrorStreamCaptureWrongThread);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  // Destroying a capturing stream abandons its capture: unsafe calls are allowed again.
  cudaStream_t doomed;
  ASSERT_EQ(cudaStreamCreateWithFlags(&doomed, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(doomed, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(doomed), cudaSuccess);
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 512), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  cudaStreamCaptureMode bad = static_cast<cudaStreamCaptureMode>(9);
  EXPECT_EQ(cudaThreadExchangeStreamCaptureMode(&bad), cudaErrorInvalidValue);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

// ---- injection, counters, reset, IPC, errors, devices ------------------------------------------

TEST(Injection, RuntimeInjectedMallocFailures) {
  const auto before = Counters();
  standinInjectMallocFailures(2);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 0), cudaSuccess);  // allocates nothing: not counted
  EXPECT_EQ(cudaMalloc(&p, 1024), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaMallocManaged(&p, 1024, cudaMemAttachGlobal), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaMalloc(&p, 1024), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  const auto after = Counters();
  EXPECT_EQ(after.malloc_failures - before.malloc_failures, 2u);
  EXPECT_EQ(after.mallocs - before.mallocs, 1u);
  cudaGetLastError();
}

TEST(Counters, ResetKeepsBytesHeld) {
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1000), cudaSuccess);
  const auto held = Counters().bytes_held;
  standinResetCounters();
  auto c = Counters();
  EXPECT_EQ(c.mallocs, 0u);
  EXPECT_EQ(c.frees, 0u);
  EXPECT_EQ(c.async_ops, 0u);
  EXPECT_EQ(c.bytes_held, held);
  EXPECT_EQ(c.peak_bytes_held, held);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  c = Counters();
  EXPECT_EQ(c.frees, 1u);
  EXPECT_EQ(c.bytes_held, held - 1024);
  EXPECT_EQ(c.peak_bytes_held, held);
  EXPECT_EQ(Counters(0).frees, 1u);
  StandinCounters none{};
  EXPECT_EQ(standinGetCounters(1, &none), -1);
  EXPECT_EQ(standinGetCounters(0, nullptr), -1);
}

TEST(Counters, FreeAsyncIsStreamOrdered) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  void* p = nullptr;
  const auto before = Counters();
  ASSERT_EQ(cudaMallocAsync(&p, 4096, s), cudaSuccess);
  std::atomic<int> flag{0};
  SleepThenSet slow{50, &flag};
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &slow), cudaSuccess);
  ASSERT_EQ(cudaFreeAsync(p, s), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(p, s), cudaErrorInvalidValue);  // already being freed
  auto mid = Counters();
  EXPECT_EQ(mid.frees - before.frees, 1u);
  EXPECT_EQ(mid.bytes_held - before.bytes_held, 4096u);  // not yet: queued behind the sleep
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(Counters().bytes_held, before.bytes_held);
  // cudaFree of a stream-ordered allocation does not synchronise.
  ASSERT_EQ(cudaMallocAsync(&p, 4096, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  const auto syncs = Counters().implicit_syncs;
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(Counters().implicit_syncs, syncs);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  cudaGetLastError();
}

TEST(DeviceReset, FreesAllocationsWithoutCountingFrees) {
  void* a = nullptr;
  void* b = nullptr;
  void* async = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 1 * kMiB), cudaSuccess);
  ASSERT_EQ(cudaMallocManaged(&b, 4096, cudaMemAttachGlobal), cudaSuccess);
  ASSERT_EQ(cudaMallocAsync(&async, 512, nullptr), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  std::atomic<int> flag{0};
  SleepThenSet slow{30, &flag};
  ASSERT_EQ(cudaLaunchHostFunc(s, SleepThenSetFn, &slow), cudaSuccess);
  const auto before = Counters();
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  EXPECT_EQ(flag.load(), 1);  // queued work drained first
  const auto after = Counters();
  EXPECT_EQ(after.frees, before.frees);
  EXPECT_EQ(before.bytes_held - after.bytes_held, 1 * kMiB + 4096);
  EXPECT_EQ(cudaStreamQuery(s), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaFree(a), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(async), cudaSuccess);  // cudaMallocAsync memory survives a reset
  void* again = nullptr;
  ASSERT_EQ(cudaMalloc(&again, 512), cudaSuccess);  // the device works after a reset
  EXPECT_EQ(cudaFree(again), cudaSuccess);
  cudaGetLastError();
}

TEST(Ipc, HandleEncodesTheAllocationBase) {
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1 * kMiB), cudaSuccess);
  cudaIpcMemHandle_t base_handle, interior_handle;
  ASSERT_EQ(cudaIpcGetMemHandle(&base_handle, p), cudaSuccess);
  ASSERT_EQ(cudaIpcGetMemHandle(&interior_handle, static_cast<char*>(p) + 4096), cudaSuccess);
  EXPECT_EQ(memcmp(&base_handle, &interior_handle, sizeof base_handle), 0);
  void* opened = nullptr;
  ASSERT_EQ(cudaIpcOpenMemHandle(&opened, interior_handle, cudaIpcMemLazyEnablePeerAccess),
            cudaSuccess);
  EXPECT_EQ(opened, p);  // the offset is lost, as with the real driver
  EXPECT_EQ(cudaIpcCloseMemHandle(opened), cudaSuccess);
  EXPECT_EQ(cudaIpcCloseMemHandle(opened), cudaErrorInvalidValue);
  int local = 0;
  cudaIpcMemHandle_t h;
  EXPECT_EQ(cudaIpcGetMemHandle(&h, &local), cudaErrorInvalidValue);
  EXPECT_EQ(cudaIpcGetMemHandle(&h, static_cast<char*>(p) + kMiB), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaIpcGetMemHandle(&h, p), cudaErrorInvalidValue);
  EXPECT_EQ(cudaIpcOpenMemHandle(&opened, base_handle, 0), cudaErrorInvalidValue);
  cudaGetLastError();
}

TEST(Errors, NamesAndStrings) {
  EXPECT_STREQ(cudaGetErrorName(cudaSuccess), "cudaSuccess");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation");
  EXPECT_STREQ(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorStreamCaptureUnsupported),
               "cudaErrorStreamCaptureUnsupported");
  EXPECT_STREQ(cudaGetErrorName(cudaErrorInsufficientDriver), "cudaErrorInsufficientDriver");
  EXPECT_STRNE(cudaGetErrorString(cudaErrorStreamCaptureMerge), "unrecognized error code");
  EXPECT_STREQ(cudaGetErrorName(static_cast<cudaError_t>(12345)), "unrecognized error code");
  EXPECT_STREQ(cudaGetErrorString(static_cast<cudaError_t>(12345)), "unrecognized error code");
}

TEST(Errors, LastErrorIsPerThread) {
  cudaGetLastError();
  EXPECT_EQ(cudaSetDevice(99), cudaErrorInvalidDevice);
  cudaError_t seen = cudaErrorUnknown;
  std::thread t([&] { seen = cudaPeekAtLastError(); });
  t.join();
  EXPECT_EQ(seen, cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
}

TEST(Devices, CountCurrentDevicePropertiesAttributes) {
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  EXPECT_EQ(n, 1);
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaSetDevice(-1), cudaErrorInvalidDevice);
  int dev = -1;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  EXPECT_EQ(dev, 0);
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_STREQ(prop.name, "cudapool stand-in");
  EXPECT_EQ(prop.totalGlobalMem, 16 * kGiB);
  EXPECT_EQ(cudaGetDeviceProperties(&prop, 1), cudaErrorInvalidDevice);
  int v = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  EXPECT_EQ(v, 9);
  ASSERT_EQ(cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, 0), cudaSuccess);
  EXPECT_EQ(v, 1);
  EXPECT_EQ(cudaDeviceGetAttribute(&v, static_cast<cudaDeviceAttr>(100000), 0),
            cudaErrorInvalidValue);
  unsigned flags = 0;
  ASSERT_EQ(cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync), cudaSuccess);
  ASSERT_EQ(cudaGetDeviceFlags(&flags), cudaSuccess);
  EXPECT_TRUE(flags & cudaDeviceScheduleBlockingSync);
  char bus[32];
  ASSERT_EQ(cudaDeviceGetPCIBusId(bus, sizeof bus, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetByPCIBusId(&dev, bus), cudaSuccess);
  EXPECT_EQ(dev, 0);
  const auto before = Counters();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(Counters().device_syncs - before.device_syncs, 1u);
  cudaGetLastError();
}

TEST(Fork, ChildOfAnInitialisedProcessGetsInitializationError) {
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 512), cudaSuccess);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    void* q = nullptr;
    _exit(cudaMalloc(&q, 512) == cudaErrorInitializationError ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(cudaFree(p), cudaSuccess);  // the parent is unaffected
}

// ---- environment-dependent tests (run in children) ---------------------------------------------

TEST(Env, TwoDevices) {
  ExpectChildPasses(
      "DISABLED_Child.TwoDevices",
      {"STANDIN_SELFTEST_CHILD=1", "STANDIN_DEVICE_COUNT=2", "STANDIN_DEVICE_MEMORY=1GiB"});
}

TEST(Env, NoDriver) {
  ExpectChildPasses("DISABLED_Child.NoDriver", {"STANDIN_SELFTEST_CHILD=1", "STANDIN_NO_DRIVER=1"});
}

TEST(Env, ZeroDevices) {
  ExpectChildPasses("DISABLED_Child.ZeroDevices",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_DEVICE_COUNT=0"});
}

TEST(Env, FailMallocAt) {
  ExpectChildPasses("DISABLED_Child.FailMallocAt",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_FAIL_MALLOC_AT=2,4"});
}

TEST(Env, FailFreeAt) {
  ExpectChildPasses("DISABLED_Child.FailFreeAt",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_FAIL_FREE_AT=2"});
}

TEST(Env, FailMallocRateIsSeededAndDeterministic) {
  auto pattern = [](const std::string& seed) {
    ChildResult r = ExpectChildPasses(
        "DISABLED_Child.FailMallocRate",
        {"STANDIN_SELFTEST_CHILD=1", "STANDIN_FAIL_MALLOC_RATE=0.5", "STANDIN_SEED=" + seed});
    const size_t at = r.output.find("PATTERN=");
    return at == std::string::npos ? std::string() : r.output.substr(at + 8, 200);
  };
  const std::string a = pattern("7"), b = pattern("7"), c = pattern("8");
  ASSERT_EQ(a.size(), 200u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Env, MemorySizesAndOtherMemory) {
  ExpectChildPasses(
      "DISABLED_Child.MemoryFromEnv",
      {"STANDIN_SELFTEST_CHILD=1", "STANDIN_DEVICE_MEMORY=1.5GiB", "STANDIN_OTHER_MEMORY=256M",
       "STANDIN_EXPECT_TOTAL=1610612736", "STANDIN_EXPECT_FREE=1342177280"});
  ExpectChildPasses("DISABLED_Child.MemoryFromEnv",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_DEVICE_MEMORY=80G",
                     "STANDIN_EXPECT_TOTAL=85899345920", "STANDIN_EXPECT_FREE=85899345920"});
  ExpectChildPasses(
      "DISABLED_Child.MemoryFromEnv",
      {"STANDIN_SELFTEST_CHILD=1", "STANDIN_DEVICE_MEMORY=1048576", "STANDIN_OTHER_MEMORY=64KiB",
       "STANDIN_EXPECT_TOTAL=1048576", "STANDIN_EXPECT_FREE=983040"});
  ChildResult r =
      ExpectChildPasses("DISABLED_Child.MemoryFromEnv",
                        {"STANDIN_SELFTEST_CHILD=1", "STANDIN_DEVICE_MEMORY=lots",
                         "STANDIN_EXPECT_TOTAL=17179869184", "STANDIN_EXPECT_FREE=17179869184"});
  EXPECT_NE(r.output.find("ignoring STANDIN_DEVICE_MEMORY=lots"), std::string::npos) << r.output;
}

TEST(Env, MallocAndFreeLatency) {
  ExpectChildPasses("DISABLED_Child.Latency",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_MALLOC_LATENCY_US=30000",
                     "STANDIN_FREE_LATENCY_US=30000"});
}

TEST(Env, AsyncDelay) {
  ExpectChildPasses("DISABLED_Child.AsyncDelay",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_ASYNC_DELAY_US=50000"});
}

TEST(Env, CountersFileWrittenAtExit) {
  char dir[] = "/tmp/standin-selftest-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/counters.txt";
  ExpectChildPasses("DISABLED_Child.CountersWorkload",
                    {"STANDIN_SELFTEST_CHILD=1", "STANDIN_COUNTERS_FILE=" + path});
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line)) << "no counters file at " << path;
  EXPECT_NE(line.find("mallocs=3 "), std::string::npos) << line;
  EXPECT_NE(line.find("frees=2 "), std::string::npos) << line;
  EXPECT_NE(line.find("bytes_held=512 "), std::string::npos) << line;
  EXPECT_NE(line.find("device_syncs=1 "), std::string::npos) << line;
  EXPECT_NE(line.find("implicit_syncs=2 "), std::string::npos) << line;
  EXPECT_NE(line.find("async_ops=1"), std::string::npos) << line;
  EXPECT_NE(line.find("capture_violations=0"), std::string::npos) << line;
  unlink(path.c_str());
  rmdir(dir);
}

TEST(Env, ExitWithQueuedWorkDoesNotHangAndLateCallsUnload) {
  const auto t0 = Clock::now();
  ChildResult r = RunChild("DISABLED_Child.ExitWithQueuedWork", {"STANDIN_SELFTEST_CHILD=1"}, 20);
  EXPECT_FALSE(r.timed_out) << r.output;
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r.output;
  EXPECT_LT(MsSince(t0), 15000.0);
  EXPECT_NE(r.output.find("[  PASSED  ] 1 test."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("LATE_FREE=4"), std::string::npos)
      << r.output;  // cudaErrorCudartUnloading
}

// ================================================================================================
// Child-only tests: run by the Env.* and Free.* tests above with their environment.

#define REQUIRE_CHILD() \
  if (!InChild()) GTEST_SKIP() << "runs in a child process with its own environment"

TEST(DISABLED_Child, UseAfterFree) {
  REQUIRE_CHILD();
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1 * kMiB), cudaSuccess);
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  fprintf(stderr, "touching freed memory\n");
  fflush(stderr);
  static_cast<volatile char*>(p)[100] = 1;
  fprintf(stderr, "SURVIVED\n");
}

TEST(DISABLED_Child, TwoDevices) {
  REQUIRE_CHILD();
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  ASSERT_EQ(n, 2);
  EXPECT_EQ(cudaSetDevice(2), cudaErrorInvalidDevice);
  void* a = nullptr;
  void* b = nullptr;
  void* c = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 768 * kMiB), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&b, 512 * kMiB), cudaErrorMemoryAllocation);  // device 0 is full
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&b, 512 * kMiB), cudaSuccess);  // device 1 has its own capacity
  size_t free1 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_EQ(total, 1 * kGiB);
  EXPECT_EQ(free1, 512 * kMiB);
  StandinAllocationInfo info{};
  ASSERT_EQ(standinGetAllocationInfo(b, &info), 0);
  EXPECT_EQ(info.device, 1);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, a), cudaSuccess);
  EXPECT_EQ(attr.device, 0);
  // Streams belong to the device current at creation; the legacy stream is per device.
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  int dev = -1;
  ASSERT_EQ(cudaStreamGetDevice(s, &dev), cudaSuccess);
  EXPECT_EQ(dev, 1);
  ASSERT_EQ(cudaMemsetAsync(b, 1, 4096, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  // Free a device-0 pointer while device 1 is current; the current device stays 1.
  ASSERT_EQ(cudaFree(a), cudaSuccess);
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  EXPECT_EQ(dev, 1);
  const auto c0 = Counters(0), c1 = Counters(1), all = Counters();
  EXPECT_EQ(c0.mallocs, 1u);
  EXPECT_EQ(c0.malloc_failures, 1u);
  EXPECT_EQ(c0.frees, 1u);
  EXPECT_EQ(c0.bytes_held, 0u);
  EXPECT_EQ(c0.peak_bytes_held, 768 * kMiB);
  EXPECT_EQ(c1.mallocs, 1u);
  EXPECT_EQ(c1.bytes_held, 512 * kMiB);
  EXPECT_EQ(c1.async_ops, 1u);
  EXPECT_EQ(c1.stream_syncs, 1u);
  EXPECT_EQ(all.mallocs, 2u);
  // Reset of device 1 leaves device 0 alone.
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&c, 1024), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  EXPECT_EQ(Counters(1).bytes_held, 0u);
  EXPECT_EQ(Counters(0).bytes_held, 1024u);
  EXPECT_EQ(cudaFree(c), cudaSuccess);
  EXPECT_EQ(cudaFree(b), cudaErrorInvalidValue);
  cudaGetLastError();
}

TEST(DISABLED_Child, NoDriver) {
  REQUIRE_CHILD();
  int n = -7;
  EXPECT_EQ(cudaGetDeviceCount(&n), cudaErrorInsufficientDriver);
  EXPECT_EQ(n, -7);  // left untouched, as NVIDIA's runtime does
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 1 * kMiB), cudaErrorInsufficientDriver);
  EXPECT_EQ(cudaMalloc(&p, 0), cudaErrorInsufficientDriver);
  EXPECT_EQ(cudaFree(nullptr), cudaErrorInsufficientDriver);
  EXPECT_EQ(cudaFree(reinterpret_cast<void*>(0x1000)), cudaErrorInsufficientDriver);
  size_t f = 0, t = 0;
  EXPECT_EQ(cudaMemGetInfo(&f, &t), cudaErrorInsufficientDriver);
  cudaStream_t s;
  EXPECT_EQ(cudaStreamCreate(&s), cudaErrorInsufficientDriver);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInsufficientDriver);
  int v = -1;
  EXPECT_EQ(cudaDriverGetVersion(&v), cudaSuccess);
  EXPECT_EQ(v, 0);
  EXPECT_EQ(cudaRuntimeGetVersion(&v), cudaSuccess);
  EXPECT_EQ(v, 13000);
  EXPECT_EQ(standinIsStandin(), 1);
}

TEST(DISABLED_Child, ZeroDevices) {
  REQUIRE_CHILD();
  int n = -7;
  EXPECT_EQ(cudaGetDeviceCount(&n), cudaErrorNoDevice);
  EXPECT_EQ(n, 0);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 1024), cudaErrorNoDevice);
  StandinCounters c{};
  EXPECT_EQ(standinGetCounters(-1, &c), 0);
  EXPECT_EQ(standinGetCounters(0, &c), -1);
}

TEST(DISABLED_Child, FailMallocAt) {
  REQUIRE_CHILD();
  std::vector<cudaError_t> results;
  std::vector<void*> ptrs;
  for (int i = 0; i < 5; ++i) {
    void* p = nullptr;
    results.push_back(cudaMalloc(&p, 4096));
    if (p) ptrs.push_back(p);
  }
  const std::vector<cudaError_t> expected = {cudaSuccess, cudaErrorMemoryAllocation, cudaSuccess,
                                             cudaErrorMemoryAllocation, cudaSuccess};
  EXPECT_EQ(results, expected);
  EXPECT_EQ(Counters().malloc_failures, 2u);
  for (void* p : ptrs)
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  cudaGetLastError();
}

TEST(DISABLED_Child, FailFreeAt) {
  REQUIRE_CHILD();
  void* a = nullptr;
  void* b = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 512), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&b, 512), cudaSuccess);
  EXPECT_EQ(cudaFree(reinterpret_cast<void*>(0x1000)), cudaErrorInvalidValue);  // not counted
  EXPECT_EQ(cudaFree(a), cudaSuccess);
  EXPECT_EQ(cudaFree(b), cudaErrorLaunchFailure);  // 2nd free of a device allocation
  StandinAllocationInfo info{};
  EXPECT_EQ(standinGetAllocationInfo(b, &info), 0);  // not freed
  EXPECT_EQ(Counters().bytes_held, 512u);
  EXPECT_EQ(cudaFree(b), cudaSuccess);
  const auto c = Counters();
  EXPECT_EQ(c.frees, 2u);
  EXPECT_EQ(c.free_failures, 2u);
  EXPECT_EQ(c.bytes_held, 0u);
  cudaGetLastError();
}

TEST(DISABLED_Child, FailMallocRate) {
  REQUIRE_CHILD();
  std::string pattern;
  int failures = 0;
  for (int i = 0; i < 200; ++i) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, 512);
    pattern += e == cudaSuccess ? '1' : '0';
    if (e == cudaSuccess) {
      EXPECT_EQ(cudaFree(p), cudaSuccess);
    } else {
      EXPECT_EQ(e, cudaErrorMemoryAllocation);
      ++failures;
    }
  }
  EXPECT_GT(failures, 50);
  EXPECT_LT(failures, 150);
  EXPECT_EQ(Counters().malloc_failures, static_cast<unsigned long long>(failures));
  printf("PATTERN=%s\n", pattern.c_str());
  cudaGetLastError();
}

TEST(DISABLED_Child, MemoryFromEnv) {
  REQUIRE_CHILD();
  const char* total_s = getenv("STANDIN_EXPECT_TOTAL");
  const char* free_s = getenv("STANDIN_EXPECT_FREE");
  ASSERT_TRUE(total_s && free_s);
  size_t free_b = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_b, &total), cudaSuccess);
  EXPECT_EQ(total, std::stoull(total_s));
  EXPECT_EQ(free_b, std::stoull(free_s));
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_EQ(prop.totalGlobalMem, total);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, free_b + 1), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaMalloc(&p, free_b), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  cudaGetLastError();
}

TEST(DISABLED_Child, Latency) {
  REQUIRE_CHILD();
  void* p = nullptr;
  auto t0 = Clock::now();
  ASSERT_EQ(cudaMalloc(&p, 512), cudaSuccess);
  EXPECT_GE(MsSince(t0), 29.0);
  t0 = Clock::now();
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_GE(MsSince(t0), 29.0);
}

TEST(DISABLED_Child, AsyncDelay) {
  REQUIRE_CHILD();
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 512), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  const auto t0 = Clock::now();
  ASSERT_EQ(cudaMemsetAsync(p, 1, 512, s), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_GE(MsSince(t0), 45.0);
  EXPECT_EQ(static_cast<unsigned char*>(p)[511], 1);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
}

TEST(DISABLED_Child, CountersWorkload) {
  REQUIRE_CHILD();
  void* p[3] = {};
  for (auto& q : p)
    ASSERT_EQ(cudaMalloc(&q, 500), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(p[0], 0, 500, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaFree(p[0]), cudaSuccess);
  EXPECT_EQ(cudaFree(p[1]), cudaSuccess);
  // p[2] stays allocated: bytes_held=512 at exit
}

void* g_late_ptr = nullptr;
void LateFree() {
  // Registered before the runtime started, so it runs after the runtime's teardown.
  fprintf(stderr, "LATE_FREE=%d\n", static_cast<int>(cudaFree(g_late_ptr)));
  fflush(stderr);
}

void CUDART_CB Sleep200(void*) {
  SleepMs(200);
}

TEST(DISABLED_Child, ExitWithQueuedWork) {
  REQUIRE_CHILD();
  atexit(LateFree);
  ASSERT_EQ(cudaMalloc(&g_late_ptr, 4096), cudaSuccess);
  cudaStream_t streams[3];
  for (auto& s : streams) {
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    for (int i = 0; i < 5; ++i)
      ASSERT_EQ(cudaLaunchHostFunc(s, Sleep200, nullptr), cudaSuccess);
  }
  ASSERT_EQ(cudaMemsetAsync(g_late_ptr, 0, 4096, cudaStreamPerThread), cudaSuccess);
  // Return with 3 s of work still queued: the process must exit promptly.
}

}  // namespace
