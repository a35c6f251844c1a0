// The command language of the control pipe (DESIGN §3, §5): parsing and execution, no I/O.
//
// One command per line, words separated by blanks, command names case-insensitive:
//   help                                 the commands, one per line
//   stats [text|json|prometheus]         counters and policy per device (stats_format.h)
//   trim [KEEP] [device=N]               release idle memory down to KEEP (default 0) now
//   get NAME                             an option's value, canonical text
//   set NAME VALUE                       change a run-time option (options table,
//   control/options.h) reset-peaks                          peak_held := held, peak_in_use :=
//   in_use
//   snapshot [text|json] [top=N]         live bytes by allocation stack, segment maps
// Any command may end with `reply=PATH` (an absolute path of a FIFO): the pipe server writes the
// answer there, last line `OK` or `ERR <reason>`; without it the answer goes to the log.
//
// The parser is bounded (kMaxLineBytes) and total: any byte string gives a Command or an error,
// never an exception or a crash. The executor talks to the process through ControlTarget, so both
// are unit-tested (and fuzzed, tests/fuzz/) without the shim.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "allocator/types.h"
#include "control/size.h"
#include "control/snapshot.h"

namespace cudapool {

// Longest accepted line, newline included. Equal to PIPE_BUF on Linux, so a line written with one
// write(2) reaches the server whole even when several writers share the pipe.
inline constexpr std::size_t kMaxLineBytes = 4096;

enum class CommandKind { kHelp, kStats, kTrim, kGet, kSet, kResetPeaks, kSnapshot };
enum class StatsFormat { kText, kJson, kPrometheus };

struct Command {
  CommandKind kind = CommandKind::kHelp;
  StatsFormat format = StatsFormat::kText;  // stats
  SizeSpec keep;                            // trim: idle bytes to keep per device
  int device = -1;                          // trim: -1 = every device
  std::string name;                         // get, set
  std::string value;                        // set (the rest of the line, blanks inside kept)
  std::size_t top = 10;                     // snapshot: groups shown
};

struct ParsedLine {
  std::optional<Command> command;  // empty: the line is refused, `error` says why
  std::string error;
  std::string reply_path;  // from reply=PATH; set even when the command itself is refused
  bool blank = false;      // an empty line (or only blanks): nothing to do, no answer
};

// Parses one line (without its newline). Refuses lines longer than kMaxLineBytes, bytes that are
// not printable ASCII or blanks, unknown commands and malformed arguments. A reply path must be
// absolute and printable; a bad one is an error (with reply_path empty).
ParsedLine parse_command(std::string_view line);

// One device as the control channel sees it.
struct DeviceReport {
  int device = 0;
  PoolStats stats;
  Policy policy;
  std::uint64_t device_total = 0;  // bytes; 0 when unknown
  std::uint64_t device_free = 0;   // whole device, every process; 0 when unknown
  std::string uuid;                // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"; empty when unknown
  // The framework whose cache sits above the pool (shim/frameworks.h), or empty.
  std::string framework;
  std::uint64_t framework_reserved = 0;   // bytes the framework holds from the pool
  std::uint64_t framework_allocated = 0;  // of those, bytes it has handed out
};

// How the application's calls reached cudapool (cudapoolctl doctor reads these): pool calls
// through the runtime's names (cudaMalloc, cudaFree) and through the driver's (cuMemAlloc_v2,
// cuMemFree_v2), and the lookups of a pooled driver name that cudapool answered with its own entry
// point, through dlsym/dlvsym and through cuGetProcAddress/cudaGetDriverEntryPoint.
struct RouteCounts {
  std::uint64_t runtime_calls = 0;
  std::uint64_t driver_calls = 0;
  std::uint64_t dlsym_lookups = 0;
  std::uint64_t proc_address_lookups = 0;
};

struct TrimReport {
  int device = 0;
  std::uint64_t released = 0;    // bytes returned to the driver by this trim
  std::uint64_t held_after = 0;  // bytes the pool still holds
  std::uint64_t idle_after = 0;
  bool framework = false;  // a framework's cache was emptied first
  std::uint64_t framework_reserved_after = 0;
};

// What a command acts on: the shim in the library, a fake in the tests.
class ControlTarget {
 public:
  virtual ~ControlTarget() = default;
  virtual int pid() const = 0;
  virtual std::string process_name() const = 0;
  // Every device with a pool, by device number.
  virtual std::vector<DeviceReport> devices() = 0;
  virtual RouteCounts routes() { return {}; }
  // Releases idle memory of `device` (-1: each) down to `keep` bytes (a percentage resolved per
  // device), waiting for fences as needed; never touches blocks in use or pending. False with a
  // reason when the device has no pool or the release cannot run now.
  virtual bool trim(int device, const SizeSpec& keep, std::vector<TrimReport>* out,
                    std::string* error) = 0;
  // set_option/get_option of control/options.h on the process's options (run-time options only
  // for set), applied to every pool. *note: a remark (the low watermark was lowered...).
  virtual bool set_option(std::string_view name, std::string_view value, std::string* error,
                          std::string* note) = 0;
  virtual std::optional<std::string> get_option(std::string_view name) = 0;
  virtual void reset_peaks() = 0;
  // Live bytes by allocation stack (or size) and the segment maps (control/snapshot.h). False with
  // a reason where the target cannot take one.
  virtual bool snapshot(Snapshot* out, std::string* error) {
    (void)out;
    *error = "snapshot is not supported here";
    return false;
  }
};

struct CommandResult {
  bool ok = true;
  std::string body;   // zero or more lines, each ending with '\n'
  std::string error;  // when !ok: one line, no newline
};

CommandResult execute_command(const Command& command, ControlTarget& target);

// The answer as written to a reply FIFO: the body, then "OK\n" or "ERR <reason>\n".
std::string format_reply(const CommandResult& result);

// The text of `help`.
std::string_view command_help();

}  // namespace cudapool
