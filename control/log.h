// Logging for cudapool: one private spdlog logger, never registered in spdlog's global registry,
// so a host's own spdlog (or its default logger) never sees it.
//
// Lines look like
//   [2026-11-26 12:00:00.123] [cudapool] [pid 4242 tid 4243] [warn] message
// and go to stderr, or to CUDAPOOL_LOG_FILE (appended, one write(2) per line, so processes that
// share the file do not interleave within a line and nothing is lost to buffering at exit).
//
// Guarantees, for a library that lives inside someone else's process:
//   - never throws into the caller, never changes errno;
//   - usable before log_init (stderr, level info: the table's default), during static destruction
//     and in atexit handlers (the logger is a deliberately leaked heap object), and after fork
//     (the child rebuilds its logger on first use, so a lock held by a vanished parent thread is
//     never waited on; log_reopen_after_fork does the same eagerly);
//   - the level check is one relaxed atomic load; arguments are only formatted when enabled.
// Log at info only for the start-up line and rare events; per-allocation detail is debug/trace.

#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <fmt/core.h>

#include "control/options.h"

namespace cudapool {

// Level and destination from LOG_LEVEL and LOG_FILE. When the file cannot be opened, logs to
// stderr and says so in one warning. Meant once per process; a second call switches to the new
// settings (and keeps the earlier file descriptor open, as other threads may still write to it).
void log_init(const Options& options) noexcept;
void log_set_level(LogLevel level) noexcept;  // run-time change (`set LOG_LEVEL ...`)
LogLevel log_level() noexcept;
bool log_enabled(LogLevel level) noexcept;
// Rebuilds the logger in a forked child (same destination and level, fresh locks and rate-limit
// state). Optional: the first log call in the child does it anyway.
void log_reopen_after_fork() noexcept;
// Writes one message (no formatting) at `level` if enabled.
void log_write(LogLevel level, std::string_view message) noexcept;

// Rate limit of the *_ratelimited calls: per key, at most `burst` lines per `window` (default 5
// per 10 s). The last line before the pause says so; the first line after it reports how many
// were dropped. Changing it forgets the current counts.
void log_set_rate_limit(unsigned burst, std::chrono::milliseconds window) noexcept;

// Per-key rate limiting with the time passed in (pure, not thread-safe), so tests drive it with a
// fake clock. Holds at most a bounded number of keys.
class LogRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  struct Decision {
    bool emit = true;                // write this message
    bool last_before_pause = false;  // it is the last one written for this key in this window
    uint64_t suppressed_before = 0;  // dropped in this key's previous window: report them first
  };

  LogRateLimiter(unsigned burst, Clock::duration window) : burst_(burst), window_(window) {}
  Decision admit(std::string_view key, Clock::time_point now);

 private:
  struct KeyState {
    Clock::time_point window_start;
    unsigned written = 0;
    uint64_t suppressed = 0;
  };
  struct KeyHash {
    using is_transparent = void;
    size_t operator()(std::string_view key) const noexcept {
      return std::hash<std::string_view>()(key);
    }
  };

  unsigned burst_;
  Clock::duration window_;
  std::unordered_map<std::string, KeyState, KeyHash, std::equal_to<>> keys_;
};

namespace log_detail {
LogRateLimiter::Decision admit(std::string_view key) noexcept;
void write_admitted(LogLevel level, const LogRateLimiter::Decision& decision, std::string_view key,
                    std::string_view message) noexcept;
}  // namespace log_detail

// Formats with fmt (checked at compile time) and logs at `level`.
template <typename... Args>
void log_at(LogLevel level, fmt::format_string<Args...> format, Args&&... args) noexcept {
  if (!log_enabled(level)) return;
  try {
    log_write(level, fmt::format(format, std::forward<Args>(args)...));
  } catch (...) {
    // A message that cannot be formatted (out of memory, a null C string) is dropped.
  }
}

template <typename... Args>
void log_trace(fmt::format_string<Args...> format, Args&&... args) noexcept {
  log_at(LogLevel::kTrace, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) noexcept {
  log_at(LogLevel::kDebug, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) noexcept {
  log_at(LogLevel::kInfo, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_warn(fmt::format_string<Args...> format, Args&&... args) noexcept {
  log_at(LogLevel::kWarn, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_error(fmt::format_string<Args...> format, Args&&... args) noexcept {
  log_at(LogLevel::kError, format, std::forward<Args>(args)...);
}

// As log_at, but at most `burst` lines per window for each `key` (name the call site or the
// event, e.g. "free-interior-pointer"). Suppressed messages are not formatted.
template <typename... Args>
void log_ratelimited(LogLevel level, std::string_view key, fmt::format_string<Args...> format,
                     Args&&... args) noexcept {
  if (!log_enabled(level)) return;
  const LogRateLimiter::Decision decision = log_detail::admit(key);
  if (!decision.emit) return;
  try {
    log_detail::write_admitted(level, decision, key,
                               fmt::format(format, std::forward<Args>(args)...));
  } catch (...) {
  }
}
template <typename... Args>
void log_warn_ratelimited(std::string_view key, fmt::format_string<Args...> format,
                          Args&&... args) noexcept {
  log_ratelimited(LogLevel::kWarn, key, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_error_ratelimited(std::string_view key, fmt::format_string<Args...> format,
                           Args&&... args) noexcept {
  log_ratelimited(LogLevel::kError, key, format, std::forward<Args>(args)...);
}

}  // namespace cudapool
