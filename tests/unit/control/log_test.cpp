#include "control/log.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace cudapool {
namespace {

using namespace std::chrono_literals;

long this_tid() {
  return static_cast<long>(::syscall(SYS_gettid));
}

// A fresh file for one test's log lines, removed afterwards.
class TempLog {
 public:
  TempLog() {
    char path[] = "/tmp/cudapool-log-test-XXXXXX";
    const int fd = ::mkstemp(path);
    EXPECT_GE(fd, 0);
    ::close(fd);
    path_ = path;
  }
  ~TempLog() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

  std::vector<std::string> lines() const {
    std::ifstream in(path_);
    std::vector<std::string> result;
    for (std::string line; std::getline(in, line);)
      result.push_back(line);
    return result;
  }
  // The message part of each line (after "[level] ").
  std::vector<std::string> messages() const {
    std::vector<std::string> result;
    for (const std::string& line : lines()) {
      const size_t start = line.find("] ", line.find("[pid "));
      const size_t message = line.find("] ", start + 2);
      result.push_back(message == std::string::npos ? line : line.substr(message + 2));
    }
    return result;
  }

 private:
  std::string path_;
};

void init_logging(const std::string& file, LogLevel level = LogLevel::kInfo) {
  Options options;
  options.log_file = file;
  options.log_level = level;
  log_init(options);
}

const std::regex kLine(
    R"(^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}\] \[cudapool\] \[pid (\d+) tid (\d+)\] \[(\w+)\] (.*)$)");

// Logs from a static destructor that runs after every object constructed later in the process
// (spdlog's and the standard library's included), when a test arms it in a child process.
std::atomic<bool> g_log_at_exit{false};
struct LogDuringStaticDestruction {
  ~LogDuringStaticDestruction() {
    if (g_log_at_exit) log_warn("logged during static destruction {}", 7);
  }
} g_log_during_static_destruction;

// Waits for a child and returns its exit code, or -signal if it was killed.
int wait_for(pid_t child) {
  int status = 0;
  if (::waitpid(child, &status, 0) != child) return -1000;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? -WTERMSIG(status) : -1001;
}

TEST(Log, LineFormatHasTimeNamePidTidAndLevel) {
  TempLog log;
  init_logging(log.path());
  log_warn("hello {} {}", 42, std::string("world"));
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  std::smatch match;
  ASSERT_TRUE(std::regex_match(lines[0], match, kLine)) << lines[0];
  EXPECT_EQ(std::stol(match[1]), static_cast<long>(::getpid()));
  EXPECT_EQ(std::stol(match[2]), this_tid());
  EXPECT_EQ(match[3], "warn");
  EXPECT_EQ(match[4], "hello 42 world");
}

std::string local_time_now() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S", &local);
  return text;
}

// The timestamp is local time computed without localtime_r on each line; check it against
// localtime_r in a zone with a half-hour offset (a POSIX TZ string, no zone database needed).
TEST(Log, TimestampIsLocalTime) {
  for (const char* zone : {"UTC0", "XST-5:30", "YST+9:30"}) {
    ::setenv("TZ", zone, 1);
    ::tzset();
    TempLog log;
    init_logging(log.path());
    const std::string before = local_time_now();
    log_info("now");
    const std::string after = local_time_now();
    const auto lines = log.lines();
    ASSERT_EQ(lines.size(), 1u);
    const std::string stamp = lines[0].substr(1, 19);  // "[YYYY-MM-DD HH:MM:SS"
    EXPECT_LE(before, stamp) << zone << ": " << lines[0];
    EXPECT_LE(stamp, after) << zone << ": " << lines[0];
  }
  ::unsetenv("TZ");
  ::tzset();
}

TEST(Log, LevelNames) {
  TempLog log;
  init_logging(log.path(), LogLevel::kTrace);
  log_trace("t");
  log_debug("d");
  log_info("i");
  log_warn("w");
  log_error("e");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 5u);
  const char* names[] = {"trace", "debug", "info", "warn", "error"};
  for (size_t i = 0; i < 5; ++i) {
    std::smatch match;
    ASSERT_TRUE(std::regex_match(lines[i], match, kLine)) << lines[i];
    EXPECT_EQ(match[3], names[i]);
  }
}

TEST(Log, LevelFilteringAndRunTimeChange) {
  TempLog log;
  init_logging(log.path(), LogLevel::kWarn);
  EXPECT_EQ(log_level(), LogLevel::kWarn);
  EXPECT_FALSE(log_enabled(LogLevel::kInfo));
  EXPECT_TRUE(log_enabled(LogLevel::kError));
  log_info("not shown");
  log_warn("shown 1");
  log_set_level(LogLevel::kDebug);
  log_debug("shown 2");
  log_trace("not shown");
  log_set_level(LogLevel::kOff);
  EXPECT_FALSE(log_enabled(LogLevel::kError));
  EXPECT_FALSE(log_enabled(LogLevel::kOff));
  log_error("not shown");
  log_write(LogLevel::kOff, "not shown");
  EXPECT_EQ(log.messages(), (std::vector<std::string>{"shown 1", "shown 2"}));
}

TEST(Log, AppendsToAnExistingFile) {
  TempLog log;
  {
    std::ofstream out(log.path());
    out << "earlier line\n";
  }
  init_logging(log.path());
  log_info("new line");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "earlier line");
}

TEST(Log, FallsBackToStderrWithOneWarningWhenTheFileCannotBeOpened) {
  testing::internal::CaptureStderr();
  init_logging("/nonexistent-cudapool-dir/sub/cudapool.log");
  log_info("still logging");
  const std::string output = testing::internal::GetCapturedStderr();
  size_t warnings = 0;
  for (size_t at = output.find("cannot open"); at != std::string::npos;
       at = output.find("cannot open", at + 1)) {
    ++warnings;
  }
  EXPECT_EQ(warnings, 1u) << output;
  EXPECT_NE(output.find("[warn] cannot open CUDAPOOL_LOG_FILE "
                        "\"/nonexistent-cudapool-dir/sub/cudapool.log\""),
            std::string::npos)
      << output;
  EXPECT_NE(output.find("logging to stderr"), std::string::npos) << output;
  EXPECT_NE(output.find("[info] still logging\n"), std::string::npos) << output;
}

TEST(Log, EmptyLogFileMeansStderr) {
  testing::internal::CaptureStderr();
  init_logging("");
  log_warn("to stderr");
  const std::string output = testing::internal::GetCapturedStderr();
  EXPECT_NE(output.find("[warn] to stderr\n"), std::string::npos) << output;
}

TEST(Log, NeverThrowsNorChangesErrno) {
  static_assert(noexcept(log_warn<int>(std::declval<fmt::format_string<int>>(), 1)));
  static_assert(
      noexcept(log_warn_ratelimited<int>("key", std::declval<fmt::format_string<int>>(), 1)));
  static_assert(noexcept(log_init(std::declval<const Options&>())));
  TempLog log;
  init_logging(log.path());
  errno = 1234;
  const char* null_text = nullptr;
  log_warn("null C string: {}", null_text);  // fmt throws; the message is dropped
  log_warn("fine");
  init_logging("/nonexistent-cudapool-dir/x.log");
  init_logging(log.path());
  EXPECT_EQ(errno, 1234);
  EXPECT_EQ(log.messages(), std::vector<std::string>{"fine"});
}

TEST(Log, LoggerIsNotInSpdlogsRegistry) {
  TempLog log;
  init_logging(log.path());
  log_info("x");
  EXPECT_EQ(spdlog::get("cudapool"), nullptr);
  EXPECT_NE(spdlog::default_logger_raw()->name(), "cudapool");
}

TEST(LogDeathTest, BeforeInitLogsToStderrAtInfo) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: nothing initialised yet
  EXPECT_EXIT(
      {
        log_debug("hidden");
        log_info("early {}", 1);
        std::fprintf(stderr, "done\n");
        std::fflush(stderr);
        std::_Exit(0);
      },
      testing::ExitedWithCode(0), "\\[info\\] early 1\ndone");
}

// ---- Rate limiting -----------------------------------------------------------------------------

TEST(LogRateLimiter, BurstThenPauseThenReport) {
  using Clock = LogRateLimiter::Clock;
  LogRateLimiter limiter(3, 10s);
  const Clock::time_point t0{};
  for (int i = 0; i < 3; ++i) {
    const auto d = limiter.admit("a", t0 + i * 1ms);
    EXPECT_TRUE(d.emit);
    EXPECT_EQ(d.last_before_pause, i == 2);
    EXPECT_EQ(d.suppressed_before, 0u);
  }
  for (int i = 0; i < 8; ++i)
    EXPECT_FALSE(limiter.admit("a", t0 + 5s).emit);
  EXPECT_FALSE(limiter.admit("a", t0 + 9999ms).emit);
  EXPECT_TRUE(limiter.admit("b", t0 + 9999ms).emit);  // keys are independent
  const auto after = limiter.admit("a", t0 + 10s);
  EXPECT_TRUE(after.emit);
  EXPECT_FALSE(after.last_before_pause);
  EXPECT_EQ(after.suppressed_before, 9u);
  const auto next = limiter.admit("a", t0 + 10s + 1ms);
  EXPECT_TRUE(next.emit);
  EXPECT_EQ(next.suppressed_before, 0u);
  // A quiet window reports nothing.
  EXPECT_EQ(limiter.admit("b", t0 + 60s).suppressed_before, 0u);
}

TEST(LogRateLimiter, ManyKeysStayBounded) {
  LogRateLimiter limiter(1, 1s);
  const LogRateLimiter::Clock::time_point t0{};
  for (int i = 0; i < 5000; ++i) {
    EXPECT_TRUE(limiter.admit("key " + std::to_string(i), t0).emit);
  }
}

TEST(Log, RateLimitedLinesPerKeyInAFile) {
  TempLog log;
  init_logging(log.path());
  log_set_rate_limit(3, 1h);
  for (int i = 0; i < 10; ++i)
    log_warn_ratelimited("double-free", "a {}", i);
  for (int i = 0; i < 2; ++i)
    log_warn_ratelimited("other", "b {}", i);
  const auto messages = log.messages();
  ASSERT_EQ(messages.size(), 5u) << testing::PrintToString(messages);
  EXPECT_EQ(messages[0], "a 0");
  EXPECT_EQ(messages[1], "a 1");
  EXPECT_EQ(messages[2], "a 2 [double-free: similar messages are suppressed for up to 3600s]");
  EXPECT_EQ(messages[3], "b 0");
  EXPECT_EQ(messages[4], "b 1");
}

TEST(Log, RateLimitReportsHowManyWereSuppressed) {
  TempLog log;
  init_logging(log.path());
  log_set_rate_limit(2, 500ms);
  for (int i = 0; i < 7; ++i)
    log_error_ratelimited("ipc", "m {}", i);
  std::this_thread::sleep_for(600ms);
  log_error_ratelimited("ipc", "m {}", 7);
  const auto messages = log.messages();
  ASSERT_EQ(messages.size(), 4u) << testing::PrintToString(messages);
  EXPECT_EQ(messages[0], "m 0");
  EXPECT_EQ(messages[1], "m 1 [ipc: similar messages are suppressed for up to 500ms]");
  EXPECT_EQ(messages[2], "[ipc] 5 similar messages were suppressed");
  EXPECT_EQ(messages[3], "m 7");
}

TEST(Log, RateLimitedCallsBelowTheLevelAreNotCounted) {
  TempLog log;
  init_logging(log.path(), LogLevel::kError);
  log_set_rate_limit(1, 1h);
  for (int i = 0; i < 5; ++i)
    log_warn_ratelimited("k", "hidden {}", i);
  log_error_ratelimited("k", "shown");
  EXPECT_EQ(log.messages(),
            std::vector<std::string>{"shown [k: similar messages are suppressed for up to 3600s]"});
}

// ---- Processes: fork and exit ------------------------------------------------------------------

TEST(Log, ForkedChildLogsWithItsOwnPidAndTid) {
  TempLog log;
  init_logging(log.path());
  log_info("parent");
  std::fflush(nullptr);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    log_info("child implicit");
    log_reopen_after_fork();
    log_info("child explicit");
    ::_exit(0);
  }
  ASSERT_EQ(wait_for(child), 0);
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 3u);
  for (size_t i = 1; i < 3; ++i) {
    std::smatch match;
    ASSERT_TRUE(std::regex_match(lines[i], match, kLine)) << lines[i];
    EXPECT_EQ(std::stol(match[1]), static_cast<long>(child)) << lines[i];
    EXPECT_EQ(std::stol(match[2]), static_cast<long>(child)) << lines[i];  // its main thread
  }
  EXPECT_EQ(log.messages()[2], "child explicit");
}

// A child forked while another thread is inside the logger (holding its lock) must still log.
TEST(Log, ForkWhileAnotherThreadLogsDoesNotDeadlockTheChild) {
  TempLog log;
  init_logging(log.path());
  log_set_rate_limit(1000000, 1h);
  std::atomic<bool> stop{false};
  std::thread spammer([&] {
    while (!stop) {
      log_info("spam");
      log_warn_ratelimited("spam", "spam");
    }
  });
  int failures = 0;
  for (int i = 0; i < 30 && failures == 0; ++i) {
    std::fflush(nullptr);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::alarm(3);  // a deadlock ends in SIGALRM instead of a hung test
      log_warn_ratelimited("child", "child {}", i);
      log_info("child {}", i);
      ::_exit(0);
    }
    if (wait_for(child) != 0) ++failures;
  }
  stop = true;
  spammer.join();
  EXPECT_EQ(failures, 0);
  size_t child_lines = 0;
  for (const std::string& message : log.messages()) {
    if (message.rfind("child ", 0) == 0) ++child_lines;
  }
  EXPECT_EQ(child_lines, 60u);
}

TEST(Log, WorksDuringStaticDestructionAtExit) {
  TempLog log;
  init_logging(log.path());
  log_info("before exit");
  std::fflush(nullptr);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    g_log_at_exit = true;
    std::exit(0);  // runs every static destructor, ending with g_log_during_static_destruction's
  }
  ASSERT_EQ(wait_for(child), 0);
  const auto messages = log.messages();
  ASSERT_EQ(messages.size(), 2u) << testing::PrintToString(messages);
  EXPECT_EQ(messages[1], "logged during static destruction 7");
}

}  // namespace
}  // namespace cudapool
