// reuse_kernels: catches a pool that hands out a freed block while the GPU still writes to it
// (DESIGN §4.5). Run it with libcudapool.so preloaded; built with -cudart shared so that its
// cudaMalloc/cudaFree go through libcudart.so and can be interposed.
//
// Each iteration, in each of several host threads:
//   1. cudaMalloc a block of a random size (512 B to 8 MiB, 1 in 20 of 12 to 48 MiB); launch on
//      stream A a slow kernel that spins for 1-5 ms and then fills the block with the OLD
//      owner's pattern;
//   2. cudaFree the block right after the launch (natively this waits for the kernel) and at once
//      cudaMalloc the same size again: the NEW owner;
//   3. write the new owner's pattern on stream B (a kernel or cudaMemsetAsync);
//   4. wait for both streams, copy the new block back and check every word.
// A, B are two different streams among the legacy default stream, a blocking stream and a
// non-blocking stream of the thread. If the pool reused the block before the slow kernel finished
// and B is not ordered after A, the old owner's late write shows up as a violation. With
// CUDAPOOL_REUSE=immediate (reuse without a fence) violations are expected: that shows the test
// can see the race. Exit status: 0 no violation, 1 violations, 2 setup or CUDA error.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

__device__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Spins for `spin_ns`, then fills the block: the old owner's last, late write.
__global__ void slow_fill(std::uint32_t* p, std::size_t words, std::uint32_t value,
                          unsigned long long spin_ns) {
  unsigned long long start = global_ns();
  while (global_ns() - start < spin_ns) {
  }
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    p[i] = value;
}

__global__ void fill(std::uint32_t* p, std::size_t words, std::uint32_t value) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    p[i] = value;
}

struct Args {
  int threads = 4;
  int iterations = 500;  // per thread
  int spin_min_us = 1000;
  int spin_max_us = 5000;
  std::size_t max_size = 8u << 20;
  std::uint64_t seed = 1;
};

enum StreamKind { kLegacy = 0, kBlocking = 1, kNonBlocking = 2 };
const char* const kStreamNames[] = {"legacy", "blocking", "non-blocking"};

// Per (A, B) stream pair.
struct Tally {
  std::atomic<long long> iterations{0}, busy_at_free{0}, same_address{0}, violations{0};
};
Tally g_tally[3][3];
std::atomic<bool> g_error{false};
std::mutex g_print;
int g_printed = 0;

bool ok(cudaError_t err, const char* what, int thread) {
  if (err == cudaSuccess) return true;
  std::lock_guard lock(g_print);
  fprintf(stderr, "thread %d: %s failed: %s (%d)\n", thread, what, cudaGetErrorString(err),
          static_cast<int>(err));
  g_error = true;
  return false;
}

void worker(const Args& args, int id) {
  std::mt19937_64 rng(args.seed * 1000003u + id);
  cudaStream_t streams[3] = {nullptr, nullptr, nullptr};  // [kLegacy] = the legacy stream (0)
  if (!ok(cudaStreamCreate(&streams[kBlocking]), "cudaStreamCreate", id)) return;
  if (!ok(cudaStreamCreateWithFlags(&streams[kNonBlocking], cudaStreamNonBlocking),
          "cudaStreamCreateWithFlags", id))
    return;
  std::vector<std::uint32_t> host;
  std::uniform_real_distribution<double> log_size(std::log(512.0),
                                                  std::log(static_cast<double>(args.max_size)));
  for (int it = 0; it < args.iterations && !g_error; ++it) {
    std::size_t size = static_cast<std::size_t>(std::exp(log_size(rng))) & ~std::size_t{3};
    size = std::max<std::size_t>(size, 512);
    if (rng() % 20 == 0)  // now and then a large block: a whole segment of its own in the pool
      size = ((12u << 20) + rng() % (36u << 20)) & ~std::size_t{3};
    std::size_t words = size / 4;
    int a = static_cast<int>(rng() % 3);
    int b = (a + 1 + static_cast<int>(rng() % 2)) % 3;  // a different stream
    unsigned long long spin_ns =
        1000ull *
        (args.spin_min_us + rng() % static_cast<unsigned>(args.spin_max_us - args.spin_min_us + 1));
    std::uint32_t old_value = 0xA0000000u | (static_cast<std::uint32_t>(id) << 20) |
                              (static_cast<std::uint32_t>(it) & 0xFFFFF);
    bool use_memset = rng() % 2 == 0;
    unsigned char byte = static_cast<unsigned char>(0x11 + rng() % 0x60);  // not 0xA0: old
    std::uint32_t new_value = use_memset ? byte * 0x01010101u
                                         : (0x50000000u | (static_cast<std::uint32_t>(id) << 20) |
                                            (static_cast<std::uint32_t>(it) & 0xFFFFF));

    void* p = nullptr;
    if (!ok(cudaMalloc(&p, size), "cudaMalloc", id)) break;
    int grid = static_cast<int>(std::min<std::size_t>(16, (words + 255) / 256));
    slow_fill<<<grid, 256, 0, streams[a]>>>(static_cast<std::uint32_t*>(p), words, old_value,
                                            spin_ns);
    if (!ok(cudaGetLastError(), "slow_fill launch", id)) break;
    if (!ok(cudaFree(p), "cudaFree", id)) break;
    bool busy = cudaStreamQuery(streams[a]) == cudaErrorNotReady;
    void* q = nullptr;
    if (!ok(cudaMalloc(&q, size), "cudaMalloc (new owner)", id)) break;
    if (use_memset) {
      if (!ok(cudaMemsetAsync(q, byte, size, streams[b]), "cudaMemsetAsync", id)) break;
    } else {
      fill<<<grid, 256, 0, streams[b]>>>(static_cast<std::uint32_t*>(q), words, new_value);
      if (!ok(cudaGetLastError(), "fill launch", id)) break;
    }
    // Wait for both: a late write of the old owner lands before the check.
    if (!ok(cudaStreamSynchronize(streams[b]), "cudaStreamSynchronize", id)) break;
    if (!ok(cudaStreamSynchronize(streams[a]), "cudaStreamSynchronize", id)) break;
    // Copy back on the non-blocking stream: a cudaMemcpy on the legacy stream would also wait for
    // the other threads' blocking streams.
    host.resize(words);
    if (!ok(cudaMemcpyAsync(host.data(), q, size, cudaMemcpyDeviceToHost, streams[kNonBlocking]),
            "cudaMemcpyAsync", id))
      break;
    if (!ok(cudaStreamSynchronize(streams[kNonBlocking]), "cudaStreamSynchronize", id)) break;
    std::size_t bad = 0, first_bad = 0;
    std::uint32_t seen = 0;
    for (std::size_t i = 0; i < words; ++i) {
      if (host[i] != new_value) {
        if (bad++ == 0) {
          first_bad = i;
          seen = host[i];
        }
      }
    }
    Tally& t = g_tally[a][b];
    ++t.iterations;
    if (busy) ++t.busy_at_free;
    if (q == p) ++t.same_address;
    if (bad != 0) {
      ++t.violations;
      std::lock_guard lock(g_print);
      if (g_printed++ < 20)
        printf(
            "VIOLATION thread %d iteration %d: %zu of %zu words wrong (first at word %zu: "
            "0x%08x, expected 0x%08x%s); block %zu B, old owner on %s stream, new owner on %s "
            "stream (%s), %s address, old kernel %s at the free\n",
            id, it, bad, words, first_bad, seen, new_value,
            seen == old_value ? " = the old owner's pattern" : "", size, kStreamNames[a],
            kStreamNames[b], use_memset ? "cudaMemsetAsync" : "kernel",
            q == p ? "same" : "different", busy ? "still running" : "finished");
    }
    if (!ok(cudaFree(q), "cudaFree (new owner)", id)) break;
  }
  cudaStreamSynchronize(streams[kBlocking]);
  cudaStreamSynchronize(streams[kNonBlocking]);
  cudaStreamDestroy(streams[kBlocking]);
  cudaStreamDestroy(streams[kNonBlocking]);
}

std::string library_of(const char* symbol) {
  void* addr = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info;
  if (addr == nullptr || dladdr(addr, &info) == 0 || info.dli_fname == nullptr) return "?";
  return info.dli_fname;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (v == nullptr) {
      fprintf(stderr,
              "usage: reuse_kernels [--threads N] [--iterations N] [--spin-min-us N] "
              "[--spin-max-us N] [--max-size BYTES] [--seed N]\n");
      return 2;
    }
    ++i;
    if (a == "--threads") {
      args.threads = std::max(1, atoi(v));
    } else if (a == "--iterations") {
      args.iterations = std::max(1, atoi(v));
    } else if (a == "--spin-min-us") {
      args.spin_min_us = std::max(0, atoi(v));
    } else if (a == "--spin-max-us") {
      args.spin_max_us = std::max(0, atoi(v));
    } else if (a == "--max-size") {
      args.max_size = std::max<std::size_t>(1024, strtoull(v, nullptr, 10));
    } else if (a == "--seed") {
      args.seed = strtoull(v, nullptr, 10);
    } else {
      fprintf(stderr, "reuse_kernels: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  args.spin_max_us = std::max(args.spin_max_us, args.spin_min_us);

  cudaError_t err = cudaFree(nullptr);
  if (err != cudaSuccess) {
    fprintf(stderr, "reuse_kernels: no usable GPU: %s (%d)\n", cudaGetErrorString(err),
            static_cast<int>(err));
    return 2;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&prop, dev);
  const char* reuse = getenv("CUDAPOOL_REUSE");
  printf("reuse_kernels: %s; cudaMalloc from %s; CUDAPOOL_REUSE=%s\n", prop.name,
         library_of("cudaMalloc").c_str(), reuse != nullptr ? reuse : "(unset)");
  printf("%d threads x %d iterations, spin %d-%d us, sizes 512 B - %zu B (1 in 20: 12-48 MiB)\n",
         args.threads, args.iterations, args.spin_min_us, args.spin_max_us, args.max_size);
  fflush(stdout);

  std::vector<std::thread> threads;
  for (int t = 0; t < args.threads; ++t)
    threads.emplace_back(worker, std::cref(args), t);
  for (auto& t : threads)
    t.join();

  long long total = 0, violations = 0, busy = 0, same = 0;
  printf("\n%-13s %-13s %10s %14s %13s %11s\n", "old owner", "new owner", "iterations",
         "busy at free", "same address", "violations");
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      Tally& t = g_tally[a][b];
      if (t.iterations == 0) continue;
      printf("%-13s %-13s %10lld %14lld %13lld %11lld\n", kStreamNames[a], kStreamNames[b],
             t.iterations.load(), t.busy_at_free.load(), t.same_address.load(),
             t.violations.load());
      total += t.iterations;
      violations += t.violations;
      busy += t.busy_at_free;
      same += t.same_address;
    }
  printf("%-27s %10lld %14lld %13lld %11lld\n", "total", total, busy, same, violations);
  printf(
      "\n'busy at free': the old kernel was still running when cudaFree returned; 'same "
      "address': the new owner got the freed block back.\n");
  if (g_error) {
    printf("RESULT: ERROR (a CUDA call failed)\n");
    return 2;
  }
  printf("RESULT: %s (%lld violations in %lld iterations)\n", violations ? "VIOLATIONS" : "OK",
         violations, total);
  return violations ? 1 : 0;
}
