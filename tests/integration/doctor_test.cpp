// cudapoolctl doctor end to end (docs/doctor.md): processes on the stand-in runtime with and
// without the library, one without CUDA, a stand-in PyTorch process, and the tool's errors. The
// program runs cudapoolctl (--ctl=PATH); the PyTorch case needs --python=, --framework-cache= and
// --framework-path= (tests/frameworks), else it is skipped.
#include <pwd.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <regex>
#include <thread>

#include "control/preload.h"
#include "tests/integration/integration_util.h"

namespace integ {
namespace {

std::string ctl_tool() {
  const std::string tool = flag_value("--ctl");
  EXPECT_FALSE(tool.empty()) << "registered without --ctl=PATH";
  return tool;
}

ProcessResult ctl(const std::vector<std::string>& args, const EnvChanges& env = {}) {
  std::vector<std::string> argv = {ctl_tool()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, env, milliseconds(60000));
}

std::string self_exe() {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  return n > 0 ? std::string(self, static_cast<std::size_t>(n)) : std::string();
}

// A number field of doctor's JSON ("runtime_calls":N), or -1.
long long json_number(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\":([0-9]+)"))) return -1;
  return std::stoll(m[1].str());
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A child running argv with `env` set on top of this process's environment; killed by the caller.
pid_t spawn(const std::vector<std::string>& argv,
            const std::vector<std::pair<std::string, std::string>>& env) {
  const pid_t pid = fork();
  if (pid == 0) {
    for (const auto& [k, v] : env)
      setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void end_child(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

std::string exe_of(pid_t pid) {
  char buf[4096];
  const ssize_t n =
      readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

INTEG_SCENARIO(alloc_wait_exit) {
  void* p = nullptr;
  if (cudaMalloc(&p, kMiB) != cudaSuccess) return 10;
  // doctor diagnoses it meanwhile: it asks the pipe as soon as the pipe exists. The one wall-clock
  // dependence of these tests, made generous: 1.5 s failed once on a loaded 2-core machine.
  sleep_ms(8000);
  return 7;
}

TEST(Doctor, ARunningStandinProcessIsPooledThroughTheSharedRuntime) {
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, 4 * kMiB));
  const std::string pid = std::to_string(getpid());
  ProcessResult r = ctl({"doctor", "--json", pid});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "\"cudapool_mapped\":true")) << r.output;
  EXPECT_TRUE(has(r.output, "\"runtime\":\"shared\"")) << r.output;
  EXPECT_TRUE(
      std::regex_search(r.output, std::regex("\"shared_runtimes\":\\[\"[^\"]*libcudart\\.so\\.13")))
      << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\"drivers\":\\[\"[^\"]*libcuda\\.so")))
      << r.output;
  EXPECT_TRUE(has(r.output, "\"pipe_answered\":true")) << r.output;
  EXPECT_GT(json_number(r.output, "runtime_calls"), 0) << r.output;
  EXPECT_GE(json_number(r.output, "in_use"), static_cast<long long>(4 * kMiB)) << r.output;
  EXPECT_TRUE(has(r.output, "\"static_runtimes\":[]")) << r.output;
  r = ctl({"doctor", pid});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "library      mapped: ")) << r.output;
  EXPECT_TRUE(has(r.output, "nothing to do: cudapool pools this process")) << r.output;
  EXPECT_CUDA_OK(cudaFree(p));
}

TEST(Doctor, ACommandThatDropsTheLibraryIsToldHowToStartIt) {
  // doctor -- preloads the library; the shell takes it out again before the program starts.
  const std::string without = cudapool::preload_without_cudapool(std::getenv("LD_PRELOAD"));
  const std::string line =
      "LD_PRELOAD='" + without + "' exec '" + self_exe() + "' --scenario=alloc_wait_exit";
  ProcessResult r = ctl({"doctor", "--json", "--", "/bin/sh", "-c", line});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "\"cudapool_mapped\":false")) << r.output;
  EXPECT_TRUE(has(r.output, "\"runtime\":\"shared\"")) << r.output;
  EXPECT_TRUE(has(r.output, "start it with cudapoolctl run or LD_PRELOAD")) << r.output;
  EXPECT_TRUE(has(r.output, "\"exit_code\":7")) << r.output;
  // With the library kept, the same program is pooled, and its exit code still reported.
  r = ctl({"doctor", "--", self_exe(), "--scenario=alloc_wait_exit"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "library      mapped: ")) << r.output;
  EXPECT_TRUE(has(r.output, "runtime_calls=")) << r.output;
  EXPECT_TRUE(has(r.output, "command exited with code 7")) << r.output;
}

TEST(Doctor, AProcessWithoutCudaHasNoRuntimeOrDriver) {
  const pid_t child = spawn({"/bin/sleep", "60"}, {});
  ASSERT_GT(child, 0);
  ASSERT_TRUE(wait_until(milliseconds(20000),
                         [&] { return exe_of(child).find("sleep") != std::string::npos; }));
  const ProcessResult r = ctl({"doctor", "--json", std::to_string(child)});
  end_child(child);
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "\"runtime\":\"none\"")) << r.output;
  EXPECT_TRUE(has(r.output, "\"drivers\":[]")) << r.output;
  EXPECT_TRUE(has(r.output, "no CUDA runtime or driver is mapped")) << r.output;
}

TEST(Doctor, ErrorsAndExitCodes) {
  ProcessResult r = ctl({"doctor", "abc"});
  EXPECT_EQ(2, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "not a process id: \"abc\"")) << r.output;
  EXPECT_EQ(2, ctl({"doctor"}).exit_code);
  EXPECT_EQ(2, ctl({"doctor", "--wait", "soon", "--", "/bin/true"}).exit_code);
  EXPECT_EQ(2, ctl({"doctor", "1", "--", "/bin/true"}).exit_code);
  EXPECT_EQ(127, ctl({"doctor", "--", "/nonexistent/program"}).exit_code);
  const pid_t gone = spawn({"/bin/true"}, {});
  waitpid(gone, nullptr, 0);
  r = ctl({"doctor", std::to_string(gone)});
  EXPECT_EQ(3, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "no process " + std::to_string(gone))) << r.output;
}

TEST(Doctor, AnotherUsersProcessIsSaidUnreadable) {
  // As root: doctor runs as nobody against this process; else against pid 1 (root's).
  std::string target = "1";
  std::vector<std::string> argv = {ctl_tool(), "doctor", target};
  if (getuid() == 0) {
    const passwd* pw = getpwnam("nobody");
    if (pw == nullptr) GTEST_SKIP() << "no user nobody";
    target = std::to_string(getpid());
    const std::string line = "exec setpriv --reuid=" + std::to_string(pw->pw_uid) +
                             " --regid=" + std::to_string(pw->pw_gid) + " --clear-groups '" +
                             ctl_tool() + "' doctor " + target;
    argv = {"/bin/sh", "-c", line};
  } else if (exe_of(1).empty() && access("/proc/1/environ", R_OK) == 0) {
    GTEST_SKIP() << "pid 1 is readable here";
  }
  const ProcessResult r = run_process(argv, EnvChanges{}, milliseconds(60000));
  if (r.exit_code == 126 || r.exit_code == 127 || has(r.output, "Permission denied: '")) {
    GTEST_SKIP() << "cannot run cudapoolctl as another user here: " << r.output;
  }
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(has(r.output, "environment  not readable: Permission denied")) << r.output;
}

TEST(Doctor, AStandinPytorchProcessShowsFrameworkTorch) {
  const std::string python = flag_value("--python");
  if (python.empty()) GTEST_SKIP() << "registered without --python";
  const std::string script =
      "import sys, time\n"
      "sys.path.insert(0, '" +
      flag_value("--framework-path") +
      "')\n"
      "import torch\n"
      "t = [torch.empty(1 << 20) for _ in range(4)]\n"
      "del t[0]\n"
      "time.sleep(120)\n";
  const pid_t child =
      spawn({python, "-c", script}, {{"STANDIN_FRAMEWORK_CACHE", flag_value("--framework-cache")},
                                     {"PYTHONDONTWRITEBYTECODE", "1"},
                                     {"LSAN_OPTIONS", "detect_leaks=0"}});
  ASSERT_GT(child, 0);
  ProcessResult r;
  // The adapters read once a second; a loaded machine may take longer.
  const bool seen = wait_until(milliseconds(60000), [&] {
    r = ctl({"doctor", "--json", std::to_string(child)});
    return has(r.output, "\"framework\":\"torch\"");
  });
  ProcessResult text = ctl({"doctor", std::to_string(child)});
  end_child(child);
  EXPECT_TRUE(seen) << describe(r);
  EXPECT_TRUE(has(r.output, "\"runtime\":\"shared\"")) << r.output;
  EXPECT_TRUE(has(r.output, "\"cudapool_mapped\":true")) << r.output;
  EXPECT_GT(json_number(r.output, "framework_reserved"), 0) << r.output;
  EXPECT_TRUE(has(text.output, "PyTorch's cache is on and cudapool trims it")) << text.output;
}

}  // namespace
}  // namespace integ
