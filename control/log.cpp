#include "control/log.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iterator>
#include <memory>
#include <mutex>

#include <spdlog/logger.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>

namespace cudapool {
namespace {

constexpr int kStderr = 2;
constexpr size_t kMaxRateLimitKeys = 1024;

// Writes each formatted line with one write(2): no buffer to lose at exit or crash, no
// interleaving within a line for O_APPEND files shared by several processes, and after fork the
// sink can be rebuilt around the same descriptor.
class FdSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit FdSink(int fd) : fd_(fd) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    const char* data = line.data();
    size_t left = line.size();
    while (left > 0) {
      const ssize_t written = ::write(fd_, data, left);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) return;  // nowhere to report a failing log destination
      data += written;
      left -= static_cast<size_t>(written);
    }
  }
  void flush_() override {}

 private:
  int fd_;
};

void append_number(long value, spdlog::memory_buf_t& dest) {
  const fmt::format_int text(value);
  dest.append(text.data(), text.data() + text.size());
}

// %& : the kernel thread id, asked for on every line (spdlog's %t caches it per thread, which
// gives the parent's id in a forked child).
class ThreadIdFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    append_number(static_cast<long>(::syscall(SYS_gettid)), dest);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<ThreadIdFlag>();
  }
};

// %# : local time, "2026-11-26 12:00:00.123", without spdlog's %Y..%e. Those call localtime_r,
// which takes a glibc lock that a forked child inherits locked if a parent thread held it at the
// fork, and then waits forever. Here the conversion is arithmetic with a cached UTC offset, which
// localtime_r refreshes at most once a minute, and never in a forked child (it keeps the offset
// it inherited).
std::atomic<long> g_utc_offset_s{0};
std::atomic<pid_t> g_utc_offset_pid{0};  // process that computed it; 0 = not yet
std::atomic<int64_t> g_utc_offset_at_s{0};

void refresh_utc_offset(int64_t now_s) {
  const std::time_t now = static_cast<std::time_t>(now_s);
  std::tm local{};
  if (::localtime_r(&now, &local) == nullptr) return;
  g_utc_offset_s.store(local.tm_gmtoff);
  g_utc_offset_at_s.store(now_s);
  g_utc_offset_pid.store(::getpid());
}

class LocalTimeFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    const auto since_epoch = duration_cast<milliseconds>(msg.time.time_since_epoch());
    const int64_t now_s = duration_cast<seconds>(since_epoch).count();
    const pid_t offset_pid = g_utc_offset_pid.load();
    if (offset_pid == 0 || (offset_pid == ::getpid() && now_s - g_utc_offset_at_s.load() >= 60)) {
      refresh_utc_offset(now_s);
    }
    const sys_time<milliseconds> local{since_epoch + seconds(g_utc_offset_s.load())};
    const sys_days day = floor<days>(local);
    const year_month_day date{day};
    const hh_mm_ss<milliseconds> time{local - day};
    fmt::format_to(std::back_inserter(dest), "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
                   static_cast<int>(date.year()), static_cast<unsigned>(date.month()),
                   static_cast<unsigned>(date.day()), time.hours().count(), time.minutes().count(),
                   time.seconds().count(), time.subseconds().count());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<LocalTimeFlag>();
  }
};

// %* : our level names (trace debug info warn error), as in LOG_LEVEL.
class LevelFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    static constexpr std::string_view kNames[] = {"trace", "debug",    "info", "warn",
                                                  "error", "critical", "off"};
    const auto index = static_cast<size_t>(msg.level);
    const std::string_view name = index < std::size(kNames) ? kNames[index] : "?";
    dest.append(name.data(), name.data() + name.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<LevelFlag>();
  }
};

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return spdlog::level::trace;
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
    case LogLevel::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::off;
}

// Everything a process's logging needs, rebuilt whole after fork. Never deleted once published:
// another thread may still be using it, and late calls during static destruction need it.
struct LoggerBox {
  LoggerBox(int fd_in, unsigned burst, std::chrono::milliseconds window)
      : logger("cudapool", std::make_shared<FdSink>(fd_in)),
        limiter(burst, window),
        fd(fd_in),
        pid(::getpid()) {}

  spdlog::logger logger;
  std::mutex limiter_mutex;
  LogRateLimiter limiter;  // guarded by limiter_mutex
  const int fd;
  const pid_t pid;  // the process that built it; another pid means we are in a forked child
  LoggerBox* retired_next = nullptr;
};

// Constant-initialised and trivially destructible: valid before any constructor and after
// every destructor of the process has run.
std::atomic<LoggerBox*> g_box{nullptr};
std::atomic<LoggerBox*> g_retired{nullptr};  // replaced boxes, kept reachable (leak checkers)
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<unsigned> g_burst{5};
std::atomic<int64_t> g_window_ms{10000};

LoggerBox* make_box(int fd) {
  auto* box = new LoggerBox(fd, g_burst.load(), std::chrono::milliseconds(g_window_ms.load()));
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<LocalTimeFlag>('#').add_flag<ThreadIdFlag>('&').add_flag<LevelFlag>('*');
  formatter->set_pattern("[%#] [cudapool] [pid %P tid %&] [%*] %v");
  box->logger.set_formatter(std::move(formatter));
  box->logger.set_level(spdlog::level::trace);  // the level check is ours (g_level)
  box->logger.flush_on(spdlog::level::off);     // FdSink does not buffer
  box->logger.set_error_handler([](const std::string&) {});
  return box;
}

void retire(LoggerBox* box) {
  LoggerBox* head = g_retired.load();
  do {
    box->retired_next = head;
  } while (!g_retired.compare_exchange_weak(head, box));
}

void install(LoggerBox* box) {
  LoggerBox* old = g_box.exchange(box);
  if (old != nullptr) retire(old);
}

// The current box; built on first use (stderr), and rebuilt in a forked child so that the child
// never waits on a lock held by a parent's thread that does not exist here.
LoggerBox* current_box() {
  LoggerBox* box = g_box.load(std::memory_order_acquire);
  if (box != nullptr && box->pid == ::getpid()) return box;
  LoggerBox* fresh = make_box(box != nullptr ? box->fd : kStderr);
  if (g_box.compare_exchange_strong(box, fresh)) {
    if (box != nullptr) retire(box);
    return fresh;
  }
  delete fresh;  // another thread won; `box` now holds its box
  return box;
}

std::string describe_window(std::chrono::milliseconds window) {
  if (window.count() % 1000 == 0) return std::to_string(window.count() / 1000) + "s";
  return std::to_string(window.count()) + "ms";
}

}  // namespace

LogRateLimiter::Decision LogRateLimiter::admit(std::string_view key, Clock::time_point now) {
  Decision decision;
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    if (keys_.size() >= kMaxRateLimitKeys) keys_.clear();
    it = keys_.emplace(std::string(key), KeyState{now, 0, 0}).first;
  }
  KeyState& state = it->second;
  if (now - state.window_start >= window_) {
    decision.suppressed_before = state.suppressed;
    state = KeyState{now, 0, 0};
  }
  if (state.written >= burst_) {
    ++state.suppressed;
    decision.emit = false;
    return decision;
  }
  ++state.written;
  decision.last_before_pause = state.written == burst_;
  return decision;
}

void log_init(const Options& options) noexcept {
  const int saved_errno = errno;
  try {
    g_level.store(static_cast<int>(options.log_level));
    refresh_utc_offset(std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count());
    int fd = kStderr;
    std::string open_error;
    if (!options.log_file.empty()) {
      fd = ::open(options.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) {
        open_error = std::strerror(errno);
        fd = kStderr;
      }
    }
    install(make_box(fd));
    if (!open_error.empty()) {
      log_write(LogLevel::kWarn, "cannot open CUDAPOOL_LOG_FILE \"" + options.log_file + "\" (" +
                                     open_error + "); logging to stderr");
    }
  } catch (...) {
  }
  errno = saved_errno;
}

void log_set_level(LogLevel level) noexcept {
  g_level.store(static_cast<int>(level));
}

LogLevel log_level() noexcept {
  return static_cast<LogLevel>(g_level.load());
}

bool log_enabled(LogLevel level) noexcept {
  return level != LogLevel::kOff &&
         static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void log_reopen_after_fork() noexcept {
  const int saved_errno = errno;
  try {
    LoggerBox* box = g_box.load();
    install(make_box(box != nullptr ? box->fd : kStderr));
  } catch (...) {
  }
  errno = saved_errno;
}

void log_write(LogLevel level, std::string_view message) noexcept {
  if (!log_enabled(level)) return;
  const int saved_errno = errno;
  try {
    current_box()->logger.log(to_spdlog(level),
                              spdlog::string_view_t(message.data(), message.size()));
  } catch (...) {
  }
  errno = saved_errno;
}

void log_set_rate_limit(unsigned burst, std::chrono::milliseconds window) noexcept {
  const int saved_errno = errno;
  try {
    g_burst.store(burst);
    g_window_ms.store(window.count());
    LoggerBox* box = current_box();
    std::lock_guard lock(box->limiter_mutex);
    box->limiter = LogRateLimiter(burst, window);
  } catch (...) {
  }
  errno = saved_errno;
}

namespace log_detail {

LogRateLimiter::Decision admit(std::string_view key) noexcept {
  const int saved_errno = errno;
  LogRateLimiter::Decision decision;
  try {
    LoggerBox* box = current_box();
    std::lock_guard lock(box->limiter_mutex);
    decision = box->limiter.admit(key, LogRateLimiter::Clock::now());
  } catch (...) {
    decision.emit = false;
  }
  errno = saved_errno;
  return decision;
}

void write_admitted(LogLevel level, const LogRateLimiter::Decision& decision, std::string_view key,
                    std::string_view message) noexcept {
  try {
    const std::string window = describe_window(std::chrono::milliseconds(g_window_ms.load()));
    if (decision.suppressed_before > 0) {
      log_write(level, "[" + std::string(key) + "] " + std::to_string(decision.suppressed_before) +
                           " similar messages were suppressed");
    }
    if (decision.last_before_pause) {
      log_write(level, std::string(message) + " [" + std::string(key) +
                           ": similar messages are suppressed for up to " + window + "]");
    } else {
      log_write(level, message);
    }
  } catch (...) {
  }
}

}  // namespace log_detail
}  // namespace cudapool
