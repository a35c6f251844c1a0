// The stand-in self-tests' child processes: a test that needs its own environment (device count,
// failure injection, ...) runs this binary again with only one test selected.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace standin_test {

struct ChildResult {
  bool exited = false;  // normal exit (else signal or timeout)
  int exit_code = -1;
  int signal = 0;
  bool timed_out = false;
  std::string output;
};

// True in a child started by RunChild.
inline bool InChild() {
  return std::getenv("STANDIN_SELFTEST_CHILD") != nullptr;
}

// Runs this binary with only `test` selected, STANDIN_SELFTEST_CHILD=1 and `env` added (other
// STANDIN_* and GTEST_* variables removed). Kills it after `timeout_s`.
inline ChildResult RunChild(const std::string& test, const std::vector<std::string>& env,
                            int timeout_s = 60) {
  ChildResult r;
  std::vector<std::string> vars;
  for (char** e = environ; *e; ++e) {
    if (std::strncmp(*e, "STANDIN_", 8) == 0 || std::strncmp(*e, "GTEST_", 6) == 0) continue;
    vars.emplace_back(*e);
  }
  vars.emplace_back("STANDIN_SELFTEST_CHILD=1");
  for (const auto& v : env)
    vars.push_back(v);
  std::vector<char*> envp;
  envp.reserve(vars.size() + 1);
  for (auto& v : vars)
    envp.push_back(v.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=" + test;
  std::string disabled = "--gtest_also_run_disabled_tests";
  char* argv[] = {exe.data(), filter.data(), disabled.data(), nullptr};

  int fds[2];
  if (pipe(fds) != 0) {
    ADD_FAILURE() << "pipe failed";
    return r;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    ADD_FAILURE() << "posix_spawn failed: " << rc;
    return r;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    r.output.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) {
    r.exited = true;
    r.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.signal = WTERMSIG(status);
  }
  return r;
}

// The child ran exactly the one selected test, and it passed.
inline ChildResult ExpectChildPasses(const std::string& test, const std::vector<std::string>& env) {
  ChildResult r = RunChild(test, env);
  EXPECT_FALSE(r.timed_out) << r.output;
  EXPECT_TRUE(r.exited && r.exit_code == 0)
      << "exit " << r.exit_code << " signal " << r.signal << "\n"
      << r.output;
  EXPECT_NE(r.output.find("[  PASSED  ] 1 test."), std::string::npos) << r.output;
  return r;
}

}  // namespace standin_test
