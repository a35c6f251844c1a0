// The options table: every CUDAPOOL_* environment variable, declared once.
//
// Glossary
//   option        one setting, named without the prefix (HIGH_WATERMARK); its environment
//                 variable is CUDAPOOL_ + name, its field in Options the name in lower case.
//   row           one line of CUDAPOOL_OPTION_TABLE below: name, field, type, default (as text,
//                 read by the same parser as the environment), run-time flag and one-line doc.
//   type          how the text is read and written back (OptionType); each type has one parser
//                 and one canonical formatter, so get(set(x)) gives back the canonical x.
//   run time      a run-time option may be changed while the process runs (`set` over the control
//                 pipe); the others are read once, at start-up, from the environment.
//   idle bytes    bytes a device's pool holds from the driver but has not handed to the program.
//
// Everything else comes from the table: the Options struct, the defaults, environment loading,
// get/set by name, the start-up summary line and the README's table. Nothing else in the project
// reads the environment.
//
// Sizes accept bytes, binary units and percentages of device memory; see control/size.h.

#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "allocator/types.h"  // ReuseMode, VmmMode: the pool's own types (header only, no CUDA)
#include "control/size.h"

// X(NAME, field, Type, "default", runtime, "doc")   -- the one table; keep the docs one line.
// clang-format off
#define CUDAPOOL_OPTION_TABLE(X)                                                                   \
  X(DISABLE, disable, Bool, "0", false,                                                            \
    "Pass every call straight through to the CUDA runtime; the pool is never used.")              \
  X(HIGH_WATERMARK, high_watermark, Size, "4GiB", true,                                            \
    "When a device's idle bytes (held from the driver but not in use) exceed this, release idle "  \
    "memory down to LOW_WATERMARK. Size or % of device memory.")                                 \
  X(LOW_WATERMARK, low_watermark, Size, "1GiB", true,                                              \
    "Idle bytes a device keeps after a release by HIGH_WATERMARK or IDLE_RELEASE_MS; at most "     \
    "HIGH_WATERMARK. Size or % of device memory.")                                                 \
  X(IDLE_RELEASE_MS, idle_release_ms, Duration, "30000", true,                                     \
    "After this many milliseconds with no allocation on a device, release its idle bytes down "    \
    "to LOW_WATERMARK; 0 turns the timer off.")                                                    \
  X(MIN_DEVICE_FREE, min_device_free, Size, "0", true,                                             \
    "While the device's free memory (all processes) is below this, release idle memory until "     \
    "it is back above it or nothing idle is left; 0 turns the rule off.")                          \
  X(LIMIT, limit, Size, "0", true,                                                                 \
    "Most bytes this process may hold per device; a request beyond it first releases idle "        \
    "memory, then fails with cudaErrorMemoryAllocation; 0 = no limit.")                            \
  X(REUSE, reuse, Reuse, "fence", true,                                                            \
    "fence: reuse a freed block only once the device has finished the work issued before the "     \
    "free; immediate: reuse it at once (only for programs that use a single stream).")             \
  X(VMM, vmm, Vmm, "auto", false,                                                                  \
    "Back blocks with 2 MiB physical pages (CUDA virtual memory) so held follows in use: auto "    \
    "(where the device supports it), on (warn where not), off (whole segments; for CUDA IPC).")    \
  X(FRAMEWORK, framework, Framework, "auto", false,                                                \
    "auto: where the process runs CPython with PyTorch or CuPy, their caches count as idle "       \
    "memory, and the release rules and trim empty them first (docs/frameworks.md); off: not.")    \
  X(LOG_LEVEL, log_level, LogLevel, "info", true,                                                  \
    "Least severe messages logged: trace, debug, info (the start-up line and rare events), "       \
    "warn, error or off.")                                                                         \
  X(LOG_FILE, log_file, String, "", false,                                                         \
    "Append log lines to this file instead of stderr; empty = stderr.")                            \
  X(CONTROL, control, Bool, "1", false,                                                            \
    "Serve the control pipe <CONTROL_DIR>/<pid>.ctl (trim, stats, set, ...); 0 = no pipe.")        \
  X(CONTROL_DIR, control_dir, String, "", false,                                                   \
    "Folder of the control pipes; empty = $XDG_RUNTIME_DIR/cudapool, else /tmp/cudapool-<uid>.")   \
  X(BACKTRACE, backtrace, Backtrace, "off", false,                                                 \
    "Record the call stack of each live block at cudaMalloc (libunwind): off, on, or a size (only "\
    "blocks of at least that size); shown by snapshot and REPORT_AT_EXIT.")                        \
  X(REPORT_AT_EXIT, report_at_exit, Bool, "0", false,                                              \
    "At exit, log a summary per device: peaks, driver calls, hits, releases, and the blocks never "\
    "freed (by allocation stack).")                                                                \
  X(TIMELINE_FILE, timeline_file, String, "", false,                                               \
    "Write held, in use, idle and pending bytes per device and release events to this CSV file "   \
    "(docs/observability.md); %p = pid; empty = off.")                                             \
  X(TIMELINE_MS, timeline_ms, Duration, "100", false,                                              \
    "Sampling interval of TIMELINE_FILE in milliseconds.")                                         \
  X(TRACE_FILE, trace_file, String, "", false,                                                    \
    "Write every cudaMalloc/cudaFree the pool serves to this CSV trace, replayable with "          \
    "cudapool-bench replay (docs/benchmarks.md); %p = pid; empty = off.")
// clang-format on

namespace cudapool {

inline constexpr std::string_view kEnvPrefix = "CUDAPOOL_";

enum class OptionType {
  kBool,
  kSize,
  kDuration,
  kReuse,
  kVmm,
  kFramework,
  kLogLevel,
  kString,
  kBacktrace
};

// BACKTRACE: off, on (every block) or on for blocks of at least min_size bytes.
struct BacktraceMode {
  bool enabled = false;
  std::uint64_t min_size = 0;
  bool operator==(const BacktraceMode&) const = default;
};
// ReuseMode { kFence, kImmediate } is the pool's own type (allocator/types.h): REUSE feeds
// Policy::reuse directly.
enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };
// FRAMEWORK: the framework adapters (shim/frameworks.h) where a framework is found, or never.
enum class FrameworkMode { kAuto, kOff };

// The C++ type of an option's field, by OptionType.
template <OptionType>
struct OptionValueOf;
template <>
struct OptionValueOf<OptionType::kBool> {
  using type = bool;
};
template <>
struct OptionValueOf<OptionType::kSize> {
  using type = SizeSpec;
};
template <>
struct OptionValueOf<OptionType::kDuration> {
  using type = std::chrono::milliseconds;
};
template <>
struct OptionValueOf<OptionType::kReuse> {
  using type = ReuseMode;
};
template <>
struct OptionValueOf<OptionType::kVmm> {
  using type = VmmMode;
};
template <>
struct OptionValueOf<OptionType::kFramework> {
  using type = FrameworkMode;
};
template <>
struct OptionValueOf<OptionType::kLogLevel> {
  using type = LogLevel;
};
template <>
struct OptionValueOf<OptionType::kString> {
  using type = std::string;
};
template <>
struct OptionValueOf<OptionType::kBacktrace> {
  using type = BacktraceMode;
};
template <OptionType T>
using OptionValue = typename OptionValueOf<T>::type;

// One row of the table, as data.
struct OptionInfo {
  std::string_view name;           // "HIGH_WATERMARK"; the variable is CUDAPOOL_HIGH_WATERMARK
  std::string_view default_value;  // canonical text, parsed like a value from the environment
  std::string_view doc;            // one line for the README and `cudapoolctl`
  std::string_view accepted;       // the accepted forms, for error messages
  OptionType type;
  bool runtime;  // may be changed with `set` while the process runs
};

std::span<const OptionInfo> option_table();
// The row for `name`: case-insensitive, with or without the CUDAPOOL_ prefix; null if none.
const OptionInfo* find_option(std::string_view name);

// Typed settings, one field per row. A default-constructed Options holds the table's defaults.
struct Options {
  Options();
#define CUDAPOOL_OPTION_FIELD(NAME, field, Type, default_value, runtime, doc) \
  OptionValue<OptionType::k##Type> field{}; /* NOLINT(bugprone-macro-parentheses) */
  CUDAPOOL_OPTION_TABLE(CUDAPOOL_OPTION_FIELD)
#undef CUDAPOOL_OPTION_FIELD
};

Options default_options();

// Value parsers shared with the command language. Same convention as parse_size: false and a
// short reason in *error (may be null); *out is written only on success. Case-insensitive.
bool parse_bool(std::string_view text, bool* out,
                std::string* error);  // 1/0 true/false yes/no on/off
bool parse_reuse_mode(std::string_view text, ReuseMode* out, std::string* error);
bool parse_vmm_mode(std::string_view text, VmmMode* out, std::string* error);  // auto, on, off
bool parse_log_level(std::string_view text, LogLevel* out, std::string* error);
bool parse_backtrace_mode(std::string_view text, BacktraceMode* out,
                          std::string* error);  // off/on/0/1/..., or a size
std::string_view to_string(ReuseMode mode);
std::string_view to_string(VmmMode mode);
bool parse_framework_mode(std::string_view text, FrameworkMode* out,
                          std::string* error);  // auto, off
std::string_view to_string(FrameworkMode mode);
std::string_view to_string(LogLevel level);

// Returns the value of an environment variable or null (getenv's contract).
using EnvLookup = std::function<const char*(const char*)>;

// Reads every CUDAPOOL_* variable through `lookup`. An empty value counts as unset. A value that
// does not parse adds one warning naming the variable, the value and the accepted forms, and the
// default stays. `environ_list` (null-terminated "NAME=value" strings, may be null) is scanned for
// CUDAPOOL_* names that are no option (typos, any letter case): each gets one warning naming the
// closest option. Then the watermarks are checked (clamp_watermarks), which may add a warning.
Options load_options(const EnvLookup& lookup, const char* const* environ_list,
                     std::vector<std::string>* warnings);
// The same with the process's own environment (getenv, environ).
Options load_options_from_environment(std::vector<std::string>* warnings);

// Sets option `name` (case-insensitive, with or without CUDAPOOL_) from text. With runtime_only,
// start-up options are refused. On failure returns false, says why in *error and changes nothing.
// On success the watermarks are checked; when that changed LOW_WATERMARK, *note (if not null)
// says so, else it is cleared.
bool set_option(Options* options, std::string_view name, std::string_view value, std::string* error,
                bool runtime_only, std::string* note = nullptr);
// Canonical, re-parsable text of an option's value; nullopt for an unknown name.
std::optional<std::string> get_option(const Options& options, std::string_view name);

// One line for the start-up log: "disable=0 high_watermark=2GiB ... control_dir=\"\"".
std::string describe_options(const Options& options);
// The README's table: header "| Variable | Default | Run time | Description |", one row per
// option, in table order, ending with a newline.
std::string options_markdown_table();

// LOW_WATERMARK above HIGH_WATERMARK (comparable only when both are bytes or both percentages):
// lowers it to HIGH_WATERMARK, returns true and says so in *note (if not null).
bool clamp_watermarks(Options* options, std::string* note);

// The byte values of the size options on a device with `device_total` bytes; the low watermark
// is at most the high one (this also covers a percentage mixed with bytes).
struct DeviceLimits {
  uint64_t high_watermark = 0;
  uint64_t low_watermark = 0;
  uint64_t min_device_free = 0;  // 0 = off
  uint64_t limit = 0;            // 0 = none
};
DeviceLimits resolve_device_limits(const Options& options, uint64_t device_total);

// Folder of the control pipes: CONTROL_DIR if set, else $XDG_RUNTIME_DIR/cudapool (when that is
// an absolute path), else /tmp/cudapool-<uid>.
std::string resolve_control_dir(const Options& options, const EnvLookup& lookup);
std::string resolve_control_dir(const Options& options);  // the process's own environment

// The path a file option (TIMELINE_FILE, TRACE_FILE) names in this process: every %p becomes the
// pid.
std::string expand_pid(const std::string& pattern);

}  // namespace cudapool
