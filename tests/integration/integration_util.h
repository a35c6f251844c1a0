// Helpers shared by the integration test programs: stand-in counters, the runtime's own functions
// (bypassing the shim), memory patterns, polling, and child processes.
//
// Every program links integration_main.cpp, whose main() runs GoogleTest after checking that
// libcudapool.so is preloaded (a registration without LD_PRELOAD fails), or runs a "scenario"
// (a plain function, see INTEG_SCENARIO) when started with --scenario=NAME: tests start
// themselves again that way to look at a second process (with or without the shim, at exit...).
//
// Nothing here references a stand-in symbol at link time (counters are found with dlsym), so the
// program linked against NVIDIA's runtime shares this code.
#pragma once

#include <signal.h>
#include <sys/wait.h>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tests/standin/cuda_standin.h"

namespace integ {

inline constexpr std::size_t kKiB = 1024;
inline constexpr std::size_t kMiB = 1024 * kKiB;
inline constexpr std::size_t kGiB = 1024 * kMiB;

// ---- the shim and the runtime ------------------------------------------------------------------

// File of the object that defines `symbol` for the process (dlsym(RTLD_DEFAULT) + dladdr); empty
// when no loaded object defines it.
std::string object_defining(const char* symbol);
// True when cudaMalloc resolves to libcudapool.so.
bool shim_preloaded();

// The runtime's (stand-in or NVIDIA) own functions, found in the loaded libcudart.so.13 itself:
// calls through these bypass the shim and give the native answer.
struct NativeRuntime {
  cudaError_t (*cudaMalloc)(void**, size_t) = nullptr;
  cudaError_t (*cudaFree)(void*) = nullptr;
  cudaError_t (*cudaMemGetInfo)(size_t*, size_t*) = nullptr;
  cudaError_t (*cudaDeviceReset)() = nullptr;
  cudaError_t (*cudaIpcGetMemHandle)(cudaIpcMemHandle_t*, void*) = nullptr;
  cudaError_t (*cudaStreamBeginCapture)(cudaStream_t, cudaStreamCaptureMode) = nullptr;
  cudaError_t (*cudaStreamEndCapture)(cudaStream_t, cudaGraph_t*) = nullptr;
};
// Fails the current test (and returns a table of nulls) when no libcudart.so.13 is loaded.
const NativeRuntime& native();

// Stand-in counters of one device (-1: summed over all devices); fails the test when the
// stand-in is not the runtime.
StandinCounters counters(int device = -1);
// Stand-in: the allocation containing `ptr`; false when none, or when the runtime cannot say (not
// the stand-in, or one without standinGetAllocationInfo): tests then skip that extra precision.
bool allocation_info(const void* ptr, StandinAllocationInfo* out);

// Free and total device memory as the runtime itself reports them (no shim adjustment).
std::pair<std::size_t, std::size_t> native_mem_info();
// The same through the shim.
std::pair<std::size_t, std::size_t> shim_mem_info();

// ---- memory patterns ---------------------------------------------------------------------------
// Device memory of the stand-in is host memory: tests write and check it from the host.

// Fills [p, p+n) with bytes derived from `seed` and the offset.
void fill_pattern(void* p, std::size_t n, std::uint64_t seed);
// Offset of the first byte of [p, p+n) that differs from fill_pattern's, or -1.
std::ptrdiff_t pattern_mismatch(const void* p, std::size_t n, std::uint64_t seed);
// Sparse variant for large blocks (touches few pages): 64-byte stamps at the start, at the end and
// every 64 KiB in between.
void stamp_pattern(void* p, std::size_t n, std::uint64_t seed);
bool stamps_intact(const void* p, std::size_t n, std::uint64_t seed);

// ---- time and the process ----------------------------------------------------------------------

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Polls `done` every 10 ms until it returns true or `timeout` passes; returns its last answer.
bool wait_until(milliseconds timeout, const std::function<bool()>& done);
void sleep_ms(int ms);
// Threads of this process (entries of /proc/self/task).
int thread_count();
bool file_exists(const std::string& path);
std::string read_file(const std::string& path);
void remove_path(const std::string& path);  // file or folder, recursively; no error if missing
// A fresh folder under $INTEG_SCRATCH_DIR (the build tree's scratch folder; else /tmp); the caller
// removes it.
std::string make_scratch_dir(const std::string& prefix);

// "a=1 b=2" -> {a: 1, b: 2}
std::map<std::string, unsigned long long> parse_key_values(const std::string& text);

struct EnvChanges {
  std::vector<std::pair<std::string, std::string>> set;
  std::vector<std::string> unset;
};
struct ProcessResult {
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it
  bool timed_out = false;
  std::string output;  // stdout and stderr together
};
// Runs argv[0] (a path) with this process's environment changed by `env`, collecting its output.
ProcessResult run_process(const std::vector<std::string>& argv, const EnvChanges& env,
                          milliseconds timeout = milliseconds(30000));
// Runs this program again with --scenario=NAME (and `args`).
ProcessResult run_scenario(const std::string& name, const EnvChanges& env,
                           const std::vector<std::string>& args = {});
// The environment change that removes the shim from a child.
EnvChanges without_shim();
std::string describe(const ProcessResult& r);

// ---- program flags and scenarios ---------------------------------------------------------------

// Arguments left after GoogleTest took its own: "--expect-corruption", "--plugin=PATH".
bool has_flag(const std::string& name);
std::string flag_value(const std::string& name);

using ScenarioFn = int (*)(int argc, char** argv);
struct ScenarioRegistrar {
  ScenarioRegistrar(const char* name, ScenarioFn fn);
};
#define INTEG_SCENARIO(name)                                                              \
  static int integ_scenario_##name(int argc, char** argv);                                \
  static ::integ::ScenarioRegistrar integ_registrar_##name(#name, integ_scenario_##name); \
  static int integ_scenario_##name([[maybe_unused]] int argc, [[maybe_unused]] char** argv)

// Waits for a child started with fork(); kills it after `timeout`. Returns its exit code, or -1.
inline int wait_child(pid_t pid, milliseconds timeout = milliseconds(10000)) {
  int status = 0;
  const bool exited = wait_until(timeout, [&] { return waitpid(pid, &status, WNOHANG) == pid; });
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ADD_FAILURE() << "child " << pid << " hung (deadlock after fork?)";
    return -1;
  }
  if (WIFSIGNALED(status)) {
    ADD_FAILURE() << "child " << pid << " died of signal " << WTERMSIG(status);
    return -1;
  }
  return WEXITSTATUS(status);
}

}  // namespace integ

// EXPECT/ASSERT that a CUDA call returns cudaSuccess, printing the call.
#define EXPECT_CUDA_OK(call) EXPECT_EQ(cudaSuccess, (call)) << #call
#define ASSERT_CUDA_OK(call) ASSERT_EQ(cudaSuccess, (call)) << #call
