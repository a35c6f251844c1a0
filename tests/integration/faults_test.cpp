// Fault paths, one by one (issue 4): the driver failing at every point of a pool growth, a
// segment's cudaFree failing, a trim racing with cudaDeviceReset, the control folder deleted under
// a running process, an unwritable log file, SIGTERM in the middle of a release. Each ends with
// the process alive (or ended as the host chose) and the pool's figures equal to the driver's.
//
// Registered one test per process (CMakeLists.txt) with its own environment; scenarios run in
// child processes where the fault concerns the process's start or end.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <thread>

#include "control/client.h"
#include "tests/integration/integration_util.h"
#include "tests/integration/own_pipe.h"

namespace integ {
namespace {

using cudapool::ClientReply;

// The pool's held bytes and segments summed over devices ("stats text" through the pipe).
struct PoolFigures {
  std::uint64_t held = 0, segments = 0, live_blocks = 0;
  bool ok = false;
};
PoolFigures pool_figures() {
  PoolFigures f;
  const ClientReply r = command("stats text");
  if (r.status != ClientReply::Status::kOk) return f;
  std::istringstream lines(r.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("device=", 0) != 0) continue;
    auto kv = parse_key_values(line);
    f.held += kv["held"];
    f.segments += kv["segments"];
    f.live_blocks += kv["live_blocks"];
  }
  f.ok = true;
  return f;
}

// The pool and the driver agree (once any release in flight has finished). After a
// cudaDeviceReset the driver's malloc/free counts no longer tell its allocations (the reset frees
// without counting): then only the bytes are compared.
void expect_pool_equals_driver(const char* when, bool compare_segments = true) {
  PoolFigures f;
  StandinCounters c{};
  const bool agreed = wait_until(milliseconds(5000), [&] {
    f = pool_figures();
    c = counters();
    return f.ok && f.held == c.bytes_held &&
           (!compare_segments || f.segments == c.mallocs - c.frees);
  });
  EXPECT_TRUE(agreed) << when << ": pool held=" << f.held << " segments=" << f.segments
                      << ", driver bytes_held=" << c.bytes_held
                      << " allocations=" << c.mallocs - c.frees;
}

// ---- cudaMalloc failing at every point of a pool growth
// ------------------------------------------

// A fixed sequence of allocations of every size class, with frees between them, so that the pool
// grows several times (small, medium and large segments, regrowth after a release). Every answer
// must be success with a clean cudaGetLastError: a single driver failure is always recoverable
// (the pool releases and retries, or the native call serves the request). Prints the driver's
// mallocs. Exit code: 0, or the number of the check that failed.
INTEG_SCENARIO(growth_sequence) {
  struct Live {
    void* p;
    std::size_t n;
    std::uint64_t seed;
  };
  std::vector<Live> live;
  std::uint64_t seed = 1;
  int failures = 0;
  auto alloc = [&](std::size_t n) {
    (void)cudaGetLastError();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
      std::printf("cudaMalloc(%zu) = %d\n", n, static_cast<int>(e));
      ++failures;
      return;
    }
    if (cudaGetLastError() != cudaSuccess) {
      std::printf("cudaMalloc(%zu) succeeded with a last error left behind\n", n);
      ++failures;
    }
    if (reinterpret_cast<std::uintptr_t>(p) % 512 != 0) ++failures;
    stamp_pattern(p, n, ++seed);
    live.push_back({p, n, seed});
  };
  auto free_some = [&](std::size_t keep) {
    while (live.size() > keep) {
      const Live b = live.back();
      live.pop_back();
      if (!stamps_intact(b.p, b.n, b.seed)) ++failures;
      if (cudaFree(b.p) != cudaSuccess) ++failures;
    }
  };
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 20; ++i)
      alloc(64 * kKiB + static_cast<std::size_t>(i) * 512);
    for (int i = 0; i < 8; ++i)
      alloc(3 * kMiB);
    for (int i = 0; i < 3; ++i)
      alloc(40 * kMiB);
    free_some(10);
    if (command("trim").status != ClientReply::Status::kOk) return 20;  // next round regrows
  }
  alloc(200 * kMiB);
  free_some(0);
  if (command("trim").status != ClientReply::Status::kOk) return 21;
  if (!wait_until(milliseconds(5000), [] { return counters().bytes_held == 0; })) return 22;
  const StandinCounters c = counters();
  if (c.mallocs != c.frees) return 23;
  std::printf("driver_mallocs=%llu driver_malloc_failures=%llu app_failures=%d\n", c.mallocs,
              c.malloc_failures, failures);
  return failures == 0 ? 0 : 24;
}

TEST(Faults, MallocFailingAtEveryPointOfAPoolGrowth) {
  // Without faults: how many driver mallocs the sequence makes.
  ProcessResult clean = run_scenario("growth_sequence", EnvChanges{});
  ASSERT_EQ(0, clean.exit_code) << describe(clean);
  const auto kv = parse_key_values(clean.output.substr(clean.output.find("driver_mallocs=")));
  const unsigned long long calls = kv.at("driver_mallocs");
  ASSERT_GE(calls, 5u) << "the sequence must grow the pool several times";
  EXPECT_EQ(0u, kv.at("driver_malloc_failures"));
  // The Nth driver cudaMalloc fails, for every N (and one beyond the last); then the Nth and the
  // next one (the pool's retry fails too, so the request goes to the runtime itself).
  for (unsigned long long n = 1; n <= calls + 1; ++n) {
    ProcessResult r = run_scenario("growth_sequence",
                                   EnvChanges{{{"STANDIN_FAIL_MALLOC_AT", std::to_string(n)}}, {}});
    EXPECT_EQ(0, r.exit_code) << "driver cudaMalloc #" << n << " failing: " << describe(r);
    if (n <= calls) {
      const std::size_t at = r.output.find("driver_malloc_failures=");
      ASSERT_NE(std::string::npos, at) << describe(r);
      EXPECT_EQ(1u, parse_key_values(r.output.substr(at)).at("driver_malloc_failures"))
          << "the fault was not injected at #" << n;
    }
    const std::string pair = std::to_string(n) + "," + std::to_string(n + 1);
    r = run_scenario("growth_sequence", EnvChanges{{{"STANDIN_FAIL_MALLOC_AT", pair}}, {}});
    EXPECT_EQ(0, r.exit_code) << "driver cudaMalloc #" << pair << " failing: " << describe(r);
  }
}

// ---- cudaFree of a segment failing
// --------------------------------------------------------------- Registered with
// STANDIN_FAIL_FREE_AT=1: the first cudaFree the driver sees (the first segment the trim returns)
// fails with cudaErrorLaunchFailure and frees nothing.

TEST(Faults, SegmentFreeFailingKeepsTheSegmentUsable) {
  std::vector<void*> blocks(3);
  for (void*& p : blocks)
    ASSERT_CUDA_OK(cudaMalloc(&p, 40 * kMiB));
  for (void* p : blocks)
    ASSERT_CUDA_OK(cudaFree(p));
  const StandinCounters before = counters();
  ASSERT_EQ(ClientReply::Status::kOk, command("trim").status);
  const StandinCounters after = counters();
  EXPECT_EQ(before.free_failures + 1, after.free_failures) << "the injected failure happened";
  EXPECT_GT(after.bytes_held, 0u) << "the segment whose free failed is still the pool's";
  EXPECT_LT(after.bytes_held, before.bytes_held) << "the other segments went back";
  expect_pool_equals_driver("after the failed release");

  // The kept segment serves the next request without a driver call, intact.
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 40 * kMiB));
  EXPECT_EQ(after.mallocs, counters().mallocs) << "the kept segment was not reused";
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
  stamp_pattern(p, 40 * kMiB, 9);
  EXPECT_TRUE(stamps_intact(p, 40 * kMiB, 9));
  ASSERT_CUDA_OK(cudaFree(p));
  // And a later trim returns it.
  ASSERT_EQ(ClientReply::Status::kOk, command("trim").status);
  EXPECT_TRUE(wait_until(milliseconds(5000), [] { return counters().bytes_held == 0; }))
      << "held " << counters().bytes_held;
  expect_pool_equals_driver("after the second trim");
}

// ---- a trim racing with cudaDeviceReset
// ---------------------------------------------------------- Registered with
// CUDAPOOL_IDLE_RELEASE_MS=20 and CUDAPOOL_LOW_WATERMARK=0: the idle timer's releases race too.

TEST(Faults, TrimRacingWithDeviceResetFreesNothingTwice) {
  void* first = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&first, kKiB));  // starts the pipe
  ASSERT_CUDA_OK(cudaFree(first));
  std::atomic<bool> stop{false};
  std::atomic<int> trims{0}, trim_errors{0};
  std::thread trimmer([&] {
    while (!stop.load()) {
      const ClientReply r = command(trims.load() % 2 == 0 ? "trim" : "trim 1MiB");
      if (r.status != ClientReply::Status::kOk) ++trim_errors;
      ++trims;
    }
  });
  std::mt19937_64 rng(5);
  // At least 40 rounds, and on until the trims had their share of the race.
  for (int round = 0; round < 40 || (trims.load() < 20 && round < 100000); ++round) {
    std::vector<std::pair<void*, std::size_t>> live;
    for (int i = 0; i < 24; ++i) {
      const std::size_t n = i % 6 == 0   ? 24 * kMiB + rng() % kMiB
                            : i % 3 == 0 ? 2 * kMiB
                                         : 1 + rng() % (64 * kKiB);
      void* p = nullptr;
      ASSERT_CUDA_OK(cudaMalloc(&p, n));
      fill_pattern(p, std::min<std::size_t>(n, 4096), round);
      live.emplace_back(p, n);
    }
    for (std::size_t i = 0; i < live.size(); i += 2)
      ASSERT_CUDA_OK(cudaFree(live[i].first));
    // The rest is dropped by the reset (the runtime frees it), while trims run.
    ASSERT_CUDA_OK(cudaDeviceReset());
  }
  stop = true;
  trimmer.join();
  EXPECT_GE(trims.load(), 20);
  EXPECT_EQ(0, trim_errors.load());
  EXPECT_EQ(0u, counters().free_failures) << "a segment was freed after the reset freed it";
  ASSERT_EQ(ClientReply::Status::kOk, command("trim").status);
  EXPECT_TRUE(wait_until(milliseconds(5000), [] { return counters().bytes_held == 0; }))
      << "held " << counters().bytes_held;
  expect_pool_equals_driver("after the race", /*compare_segments=*/false);
}

// ---- the control folder deleted under a running process
// ------------------------------------------

INTEG_SCENARIO(pipe_dir_deleted) {
  void* p = nullptr;
  if (cudaMalloc(&p, kMiB) != cudaSuccess) return 10;
  if (!file_exists(own_pipe()) && access(own_pipe().c_str(), F_OK) != 0) return 11;
  remove_path(std::getenv("CUDAPOOL_CONTROL_DIR"));
  if (command("stats").status != ClientReply::Status::kNoPipe) return 12;
  for (int i = 0; i < 500; ++i) {
    void* q = nullptr;
    if (cudaMalloc(&q, 64 * kKiB + i) != cudaSuccess || cudaFree(q) != cudaSuccess) return 13;
  }
  std::size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return 14;
  // Someone makes the folder again (a tmp cleaner, an operator): nothing changes for the process.
  mkdir(std::getenv("CUDAPOOL_CONTROL_DIR"), 0700);
  if (cudaFree(p) != cudaSuccess) return 15;
  return 0;  // exit: removing a pipe that is gone must not fail or hang
}

TEST(Faults, PipeFolderDeletedUnderARunningProcess) {
  const std::string dir = make_scratch_dir("integ-faults-pipe");
  ProcessResult r =
      run_scenario("pipe_dir_deleted", EnvChanges{{{"CUDAPOOL_CONTROL_DIR", dir}}, {}});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(0, r.signal) << describe(r);
  EXPECT_FALSE(r.timed_out);
  remove_path(dir);
}

// ---- an unwritable log file
// ----------------------------------------------------------------------

// Work that logs: a bad option (warning at start), trims (info), a double free (warning).
INTEG_SCENARIO(log_and_work) {
  void* p = nullptr;
  for (int i = 0; i < 200; ++i) {
    if (cudaMalloc(&p, 3 * kMiB) != cudaSuccess) return 10;
    if (cudaFree(p) != cudaSuccess) return 11;
  }
  if (cudaFree(p) != cudaErrorInvalidValue) return 12;  // double free: a warning line
  for (int i = 0; i < 20; ++i)
    if (command("trim").status != ClientReply::Status::kOk) return 13;
  if (cudaMalloc(&p, kMiB) != cudaSuccess || cudaFree(p) != cudaSuccess) return 14;
  std::printf("worked\n");
  return 0;
}

TEST(Faults, UnwritableLogFileChangesNothing) {
  const std::string dir = make_scratch_dir("integ-faults-log");
  const std::vector<std::string> targets = {
      "/dev/full",                    // every write fails (ENOSPC)
      dir + "/no/such/folder/x.log",  // cannot be opened
      dir,                            // a folder
  };
  for (const std::string& log : targets) {
    ProcessResult r =
        run_scenario("log_and_work", EnvChanges{{{"CUDAPOOL_LOG_FILE", log},
                                                 {"CUDAPOOL_LOG_LEVEL", "info"},
                                                 {"CUDAPOOL_HIGH_WATERMARK", "plenty"}},
                                                {}});
    EXPECT_EQ(0, r.exit_code) << "CUDAPOOL_LOG_FILE=" << log << ": " << describe(r);
    EXPECT_EQ(0, r.signal) << "CUDAPOOL_LOG_FILE=" << log << ": " << describe(r);
    EXPECT_NE(std::string::npos, r.output.find("worked")) << describe(r);
  }
  remove_path(dir);
}

// ---- SIGTERM in the middle of a release
// ----------------------------------------------------------

std::atomic<bool> g_sigterm{false};
void on_sigterm(int) {
  g_sigterm = true;
}

// Ten idle 40 MiB segments, each cudaFree slow (STANDIN_FREE_LATENCY_US): a trim sent through the
// pipe returns them one by one on the pipe's thread; SIGTERM arrives after the first. argv:
// "handler" (the host catches it and exits normally, as servers do) or "default" (it kills).
INTEG_SCENARIO(sigterm_during_release) {
  const bool handler = argc > 0 && std::string(argv[argc - 1]) == "handler";
  if (handler) signal(SIGTERM, on_sigterm);
  std::vector<void*> blocks(10);
  for (void*& p : blocks)
    if (cudaMalloc(&p, 40 * kMiB) != cudaSuccess) return 10;
  for (void* p : blocks)
    if (cudaFree(p) != cudaSuccess) return 11;
  const unsigned long long frees = counters().frees;
  std::string error;
  if (!cudapool::send_line(own_pipe(), "trim", &error)) return 12;
  if (!wait_until(milliseconds(10000), [&] { return counters().frees > frees; })) return 13;
  std::printf("release in flight\n");
  std::fflush(stdout);
  kill(getpid(), SIGTERM);
  if (!wait_until(milliseconds(10000), [] { return g_sigterm.load(); })) return 14;
  std::exit(0);  // while the pipe's thread is still inside the release
}

TEST(Faults, SigtermInTheMiddleOfARelease) {
  const std::string dir = make_scratch_dir("integ-faults-sigterm");
  const EnvChanges env{
      {{"STANDIN_FREE_LATENCY_US", "200000"}, {"STANDIN_COUNTERS_FILE", dir + "/counters"}}, {}};
  const auto start = Clock::now();
  ProcessResult r = run_scenario("sigterm_during_release", env, {"handler"});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(0, r.signal) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("release in flight")) << describe(r);
  EXPECT_LT(Clock::now() - start, milliseconds(8000)) << "exit waited for the whole release";
  const auto at_exit = parse_key_values(read_file(dir + "/counters"));
  ASSERT_FALSE(at_exit.empty()) << "no counters written at exit: " << describe(r);
  EXPECT_EQ(0u, at_exit.at("free_failures")) << "a segment was freed twice or after teardown";

  r = run_scenario("sigterm_during_release", env, {"default"});
  EXPECT_EQ(SIGTERM, r.signal) << "the host's own SIGTERM disposition must stand: " << describe(r);
  EXPECT_FALSE(r.timed_out);
  remove_path(dir);
}

}  // namespace
}  // namespace integ
