// The shim's lifecycle in the host process: inert until the first call (DESIGN §4.2), fork
// (§4.2), exit (§4.11), and the host's C++ exceptions and unwinder (§4.12).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/integration_util.h"

namespace integ {
namespace {

// ---- Inert (§4.2): CUDAPOOL_LOG_FILE and CUDAPOOL_CONTROL_DIR set, no CUDA call before this
// ------

TEST(Inert, NoThreadNoFileBeforeTheFirstCudaCall) {
  const char* log = std::getenv("CUDAPOOL_LOG_FILE");
  const char* control = std::getenv("CUDAPOOL_CONTROL_DIR");
  ASSERT_NE(nullptr, log);
  ASSERT_NE(nullptr, control);
  remove_path(log);
  remove_path(control);
  const int threads = thread_count();
  ASSERT_GT(threads, 0);
  sleep_ms(300);
  EXPECT_EQ(threads, thread_count()) << "the shim started a thread before any CUDA call";
  EXPECT_FALSE(file_exists(log)) << "the shim created its log file before any CUDA call";
  EXPECT_FALSE(file_exists(control)) << "the shim created its control folder before any call";

  // A helper process that never touches CUDA (it inherits LD_PRELOAD and the variables).
  ProcessResult child = run_process({"/bin/sh", "-c", "sleep 0.2; exit 7"}, EnvChanges{});
  EXPECT_EQ(7, child.exit_code) << describe(child);
  EXPECT_FALSE(file_exists(log)) << "a process that never called CUDA left a log file";
  EXPECT_FALSE(file_exists(control));

  // The check can fail: the first allocation starts the shim, which logs and starts its thread.
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
  EXPECT_TRUE(file_exists(log)) << "the start-up line should be in the log file by now";
  EXPECT_GT(thread_count(), threads) << "the release thread should run by now";
  EXPECT_CUDA_OK(cudaFree(p));
}

// ---- A process that used the driver but never called the shim ----------------------------------

constexpr const char* kNeverCalled = "no cudaMalloc reached cudapool";

// Uses the runtime (which loads the driver library, as NVIDIA's does) without calling a function
// the shim interposes, say to count the devices: no reason to warn, a shared runtime is there.
INTEG_SCENARIO(runtime_without_calls) {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0 ? 0 : 1;
}

INTEG_SCENARIO(runtime_with_calls) {
  void* p = nullptr;
  if (cudaMalloc(&p, 4096) != cudaSuccess) return 1;
  return cudaFree(p) == cudaSuccess ? 0 : 1;
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

// The driver without a shared runtime: what a program linked with the static runtime looks like.
ProcessResult run_driver_only(const EnvChanges& env, bool load_driver = true) {
  const char* program = std::getenv("INTEG_DRIVER_ONLY");
  const char* driver = std::getenv("INTEG_STANDIN_DRIVER");
  EXPECT_NE(nullptr, program);
  EXPECT_NE(nullptr, driver);
  if (program == nullptr || driver == nullptr) return {};
  std::vector<std::string> argv = {program};
  if (load_driver) argv.emplace_back(driver);
  return run_process(argv, env);
}

TEST(NeverCalled, ExitWarnsOnceWhenTheDriverRanWithoutASharedRuntime) {
  ProcessResult r = run_driver_only(EnvChanges{});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(1u, count_of(r.output, kNeverCalled)) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("cudapoolctl doctor")) << describe(r);
}

TEST(NeverCalled, NoWarningWithoutTheDriverOrWhenSilenced) {
  ProcessResult r = run_driver_only(EnvChanges{}, /*load_driver=*/false);
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(0u, count_of(r.output, kNeverCalled)) << describe(r);
  for (const EnvChanges& env : {EnvChanges{{{"CUDAPOOL_LOG_LEVEL", "error"}}, {}},
                                EnvChanges{{{"CUDAPOOL_DISABLE", "1"}}, {}}}) {
    r = run_driver_only(env);
    EXPECT_EQ(0, r.exit_code) << describe(r);
    EXPECT_EQ(0u, count_of(r.output, kNeverCalled)) << env.set[0].first << "\n" << describe(r);
  }
}

TEST(NeverCalled, NoWarningWithASharedRuntime) {
  ProcessResult r = run_scenario("runtime_without_calls", EnvChanges{});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(0u, count_of(r.output, kNeverCalled)) << describe(r);
  r = run_scenario("runtime_with_calls", EnvChanges{});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("active")) << describe(r);  // the start-up line
  EXPECT_EQ(0u, count_of(r.output, kNeverCalled)) << describe(r);
}

// ---- Fork (§4.2) -------------------------------------------------------------------------------

// In a child: prints a failure and counts it (GoogleTest results do not leave the child).
int g_child_failures = 0;
void child_check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fork child %d: %s\n", static_cast<int>(getpid()), what);
  ++g_child_failures;
}

TEST(Fork, ChildOfAParentThatNeverUsedCudaPoolsFreshly) {
  // Registered alone: no CUDA call happened in this process before the fork.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const StandinCounters before = counters();
    for (int i = 0; i < 100; ++i) {
      void* p = nullptr;
      child_check(cudaMalloc(&p, 4096) == cudaSuccess, "cudaMalloc failed");
      child_check(p != nullptr, "cudaMalloc gave null");
      if (p != nullptr) fill_pattern(p, 4096, 9);
      child_check(cudaFree(p) == cudaSuccess, "cudaFree failed");
    }
    const StandinCounters after = counters();
    child_check(after.mallocs - before.mallocs <= 1, "the child's allocations were not pooled");
    child_check(after.frees == before.frees, "a pooled free reached the runtime in the child");
    std::exit(g_child_failures == 0 ? 0 : 1);  // a normal exit: atexit handlers run
  }
  EXPECT_EQ(0, wait_child(pid));
  // The parent's runtime never saw the child's work, and the parent pools as usual.
  EXPECT_EQ(0u, counters().mallocs);
  const unsigned long long before = counters().mallocs;
  for (int i = 0; i < 100; ++i) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
    ASSERT_CUDA_OK(cudaFree(p));
  }
  EXPECT_LE(counters().mallocs - before, 1u);
}

TEST(Fork, ChildOfAPoolingParentGetsTheRuntimesOwnAnswers) {
  // The parent's pool holds a live block and room for more: a child that kept using the parent's
  // pool would answer cudaSuccess from it. The child must start fresh; its calls then get what the
  // runtime answers in a fork child (the real runtime and the stand-in refuse work there).
  void *live = nullptr, *idle = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&live, 64 * kKiB));
  ASSERT_CUDA_OK(cudaMalloc(&idle, 64 * kKiB));
  ASSERT_CUDA_OK(cudaFree(idle));
  fill_pattern(live, 64 * kKiB, 41);
  const StandinCounters parent_before = counters();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const NativeRuntime& rt = native();
    void *p = nullptr, *q = nullptr;
    const cudaError_t m_shim = cudaMalloc(&p, 64 * kKiB);
    const cudaError_t m_native = rt.cudaMalloc(&q, 64 * kKiB);
    child_check(m_shim == m_native, "cudaMalloc: not the runtime's answer");
    if (m_shim == cudaSuccess && m_native == cudaSuccess) {
      cudaFree(p);
      rt.cudaFree(q);
    }
    child_check(cudaFree(live) == rt.cudaFree(live), "cudaFree(parent's block): not native");
    std::size_t f1 = 1, t1 = 1, f2 = 1, t2 = 1;
    child_check(cudaMemGetInfo(&f1, &t1) == rt.cudaMemGetInfo(&f2, &t2),
                "cudaMemGetInfo: not the runtime's answer");
    child_check(cudaFree(nullptr) == rt.cudaFree(nullptr), "cudaFree(nullptr): not native");
    std::exit(g_child_failures == 0 ? 0 : 1);
  }
  EXPECT_EQ(0, wait_child(pid));
  // The parent is unaffected: its block is intact and freeable, and it still pools.
  EXPECT_EQ(-1, pattern_mismatch(live, 64 * kKiB, 41));
  const StandinCounters parent_after = counters();
  EXPECT_EQ(parent_before.mallocs, parent_after.mallocs);
  EXPECT_EQ(parent_before.frees, parent_after.frees);
  EXPECT_CUDA_OK(cudaFree(live));
  const unsigned long long before = counters().mallocs;
  for (int i = 0; i < 100; ++i) {
    void* p = nullptr;
    ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
    ASSERT_CUDA_OK(cudaFree(p));
  }
  EXPECT_LE(counters().mallocs - before, 1u);
}

TEST(Fork, ChildrenExitCleanlyWhileOtherThreadsUseThePool) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < 2; ++t) {
    workers.emplace_back([&stop, t] {
      std::vector<void*> blocks;
      for (unsigned i = 0; !stop.load(); ++i) {
        void* p = nullptr;
        const std::size_t size = (i % 3 == 0 ? 3 * kMiB : 8 * kKiB) + t * 512;
        if (cudaMalloc(&p, size) == cudaSuccess) blocks.push_back(p);
        if (blocks.size() > 8) {
          cudaFree(blocks.front());
          blocks.erase(blocks.begin());
        }
      }
      for (void* p : blocks)
        cudaFree(p);
    });
  }
  for (int i = 0; i < 10; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      void* p = nullptr;
      const cudaError_t a = cudaMalloc(&p, 4096);
      const cudaError_t b = native().cudaMalloc(&p, 4096);
      child_check(a == b, "cudaMalloc: not the runtime's answer");
      cudaFree(nullptr);
      std::exit(g_child_failures == 0 ? 0 : 1);
    }
    EXPECT_EQ(0, wait_child(pid)) << "fork " << i;
    sleep_ms(5);
  }
  stop.store(true);
  for (std::thread& w : workers)
    w.join();
}

// ---- Exit (§4.11) ------------------------------------------------------------------------------

// Frees its blocks from its destructor and writes the answers to $INTEG_LATE_FREE_FILE.
class LateFree {
 public:
  void arm(const char* name, std::vector<void*> blocks) {
    name_ = name;
    blocks_ = std::move(blocks);
  }
  ~LateFree() {
    if (blocks_.empty()) return;
    std::string line = name_;
    for (void* p : blocks_)
      line += " " + std::to_string(static_cast<int>(cudaFree(p)));
    line += "\n";
    const char* path = std::getenv("INTEG_LATE_FREE_FILE");
    if (path == nullptr) return;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return;
    ssize_t written = write(fd, line.data(), line.size());
    (void)written;
    close(fd);
  }

 private:
  std::string name_;
  std::vector<void*> blocks_;
};

// Built before main: destroyed after every atexit handler registered later, the runtime's
// teardown and the shim's own included.
LateFree g_late_free;

INTEG_SCENARIO(exit_with_live_blocks) {
  void *small = nullptr, *large = nullptr, *managed = nullptr, *medium = nullptr;
  if (cudaMalloc(&small, 64 * kKiB) != cudaSuccess ||
      cudaMalloc(&large, 16 * kMiB) != cudaSuccess ||
      cudaMalloc(&medium, 3 * kMiB) != cudaSuccess ||
      cudaMallocManaged(&managed, kMiB) != cudaSuccess)
    return 10;
  // Idle memory, some of it pending a fence: a shim that cleaned up at exit would free or sync.
  for (std::size_t size : {64 * kKiB, 16 * kMiB, 3 * kMiB, 40 * kMiB}) {
    void* p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess || cudaFree(p) != cudaSuccess) return 11;
  }
  g_late_free.arm("global", {small, large, managed});
  // Built during main, after the first CUDA call: destroyed before the runtime's teardown.
  static LateFree local_late_free;
  local_late_free.arm("local", {medium});
  StandinCounters c = counters();
  char line[512];
  std::snprintf(line, sizeof line,
                "mallocs=%llu frees=%llu free_failures=%llu device_syncs=%llu implicit_syncs=%llu "
                "stream_syncs=%llu\n",
                c.mallocs, c.frees, c.free_failures, c.device_syncs, c.implicit_syncs,
                c.stream_syncs);
  FILE* f = std::fopen(std::getenv("INTEG_SNAPSHOT_FILE"), "w");
  if (f == nullptr) return 12;
  std::fputs(line, f);
  std::fclose(f);
  return 0;  // return from main with live blocks
}

TEST(Exit, NothingIsFreedOrSynchronisedAndLateFreesSucceed) {
  const std::string dir = make_scratch_dir("integ-exit");
  const std::string counters_file = dir + "/counters", snapshot = dir + "/snapshot",
                    late = dir + "/late";
  ProcessResult r =
      run_scenario("exit_with_live_blocks", EnvChanges{{{"STANDIN_COUNTERS_FILE", counters_file},
                                                        {"INTEG_SNAPSHOT_FILE", snapshot},
                                                        {"INTEG_LATE_FREE_FILE", late}},
                                                       {}});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(0, r.signal) << describe(r);
  auto at_end_of_main = parse_key_values(read_file(snapshot));
  auto at_exit = parse_key_values(read_file(counters_file));
  ASSERT_FALSE(at_end_of_main.empty()) << describe(r);
  ASSERT_FALSE(at_exit.empty()) << "no STANDIN_COUNTERS_FILE written; " << describe(r);
  for (const char* key :
       {"mallocs", "frees", "free_failures", "device_syncs", "implicit_syncs", "stream_syncs"})
    EXPECT_EQ(at_end_of_main[key], at_exit[key]) << key << " changed after main returned";
  // Late frees from static destructors: success, or cudaErrorCudartUnloading for memory the
  // runtime owns once it is torn down.
  const std::string late_text = read_file(late);
  std::istringstream lines(late_text);
  int seen = 0;
  for (std::string name; lines >> name;) {
    std::string rest;
    std::getline(lines, rest);
    std::istringstream codes(rest);
    for (int code; codes >> code; ++seen)
      EXPECT_TRUE(code == cudaSuccess || code == cudaErrorCudartUnloading)
          << name << " destructor: cudaFree returned " << code;
  }
  EXPECT_EQ(4, seen) << "late frees recorded:\n" << late_text;
  remove_path(dir);
}

// ---- Exceptions (§4.12) -------------------------------------------------------------------------

struct DeepError : std::runtime_error {
  DeepError(int depth) : std::runtime_error("deep error"), depth(depth) {}
  int depth;
};

int g_unwound = 0;
struct CountsUnwinding {
  ~CountsUnwinding() { ++g_unwound; }
};

[[gnu::noinline]] int throw_from(int depth) {
  CountsUnwinding guard;
  if (depth == 0) throw DeepError(7);
  return throw_from(depth - 1) + 1;
}

TEST(Exceptions, ThrowAndCatchThroughFramesWhilePreloaded) {
  void* p = nullptr;  // the shim is active
  ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
  g_unwound = 0;
  try {
    throw_from(8);
    FAIL() << "no exception";
  } catch (const std::exception& e) {
    EXPECT_STREQ("deep error", e.what());
    const auto* deep = dynamic_cast<const DeepError*>(&e);
    ASSERT_NE(nullptr, deep);
    EXPECT_EQ(7, deep->depth);
  }
  EXPECT_EQ(9, g_unwound) << "destructors of unwound frames did not all run";

  std::exception_ptr saved;
  std::thread([&] {
    try {
      throw_from(3);
    } catch (...) {
      saved = std::current_exception();
    }
  }).join();
  ASSERT_TRUE(saved);
  EXPECT_THROW(std::rethrow_exception(saved), DeepError);

  try {
    try {
      throw std::out_of_range("inner");
    } catch (...) {
      std::throw_with_nested(std::runtime_error("outer"));
    }
  } catch (const std::runtime_error& outer) {
    EXPECT_STREQ("outer", outer.what());
    EXPECT_THROW(std::rethrow_if_nested(outer), std::out_of_range);
  }
  EXPECT_CUDA_OK(cudaFree(p));
}

// The C++ runtime and unwinder entry points a host's exceptions go through.
const char* const kRuntimeSymbols[] = {
    "_Unwind_RaiseException",
    "_Unwind_Resume",
    "_Unwind_Backtrace",
    "__cxa_throw",
    "__cxa_begin_catch",
    "__cxa_end_catch",
    "__cxa_rethrow",
    "__gxx_personality_v0",
    "_ZSt9terminatev",                                              // std::terminate
    "_ZSt17rethrow_exceptionNSt15__exception_ptr13exception_ptrE",  // std::rethrow_exception
};

// "symbol=object" lines.
std::string runtime_objects() {
  std::string out;
  for (const char* symbol : kRuntimeSymbols)
    out += std::string(symbol) + "=" + object_defining(symbol) + "\n";
  return out;
}

INTEG_SCENARIO(print_runtime_objects) {
  std::fputs(runtime_objects().c_str(), stdout);
  return 0;
}

TEST(Exceptions, UnwinderAndCxxRuntimeAreTheHostsOwn) {
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 4096));
  const std::string preloaded = runtime_objects();
  EXPECT_EQ(std::string::npos, preloaded.find("cudapool")) << preloaded;
  ProcessResult plain = run_scenario("print_runtime_objects", without_shim());
  ASSERT_EQ(0, plain.exit_code) << describe(plain);
  EXPECT_EQ(plain.output, preloaded) << "without the shim:\n"
                                     << plain.output << "with the shim:\n"
                                     << preloaded;
  EXPECT_NE(std::string::npos, preloaded.find("__cxa_throw=/")) << preloaded;
  EXPECT_CUDA_OK(cudaFree(p));
}

}  // namespace
}  // namespace integ
