// cudapoolctl: start programs with libcudapool.so preloaded, and steer running ones through their
// control pipes (<dir>/<pid>.ctl, DESIGN §3). See docs/control.md.
//
// Exit codes, for scripts:
//   0  done
//   1  the process refused the command (ERR <reason>)
//   2  usage error (unknown subcommand or option, bad value)
//   3  no such process, no control pipe, no answer in time
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "control/client.h"
#include "control/options.h"
#include "control/preload.h"
#include "control/size.h"
#include "control/stats_format.h"
#include "tools/doctor.h"
#include "tools/metrics_server.h"
#include "tools/plot/timeline_chart.h"

namespace cudapool {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoProcess = 3;

using Args = std::vector<std::string>;

struct Global {
  std::string dir;         // control folder
  bool dir_given = false;  // --dir on the command line (doctor: else the process's own folder)
  std::string root;        // --root: every subfolder is a control folder (one per pod)
  std::chrono::milliseconds timeout{5000};
};

// ---- help texts ---------------------------------------------------------------------------------

constexpr std::string_view kMainHelp =
    "usage: cudapoolctl [--dir DIR] [--timeout MS] COMMAND [ARGS]\n"
    "\n"
    "Start programs with libcudapool.so and steer running ones through their control pipes.\n"
    "\n"
    "commands:\n"
    "  run [OPTIONS] -- CMD ARGS...   run CMD with the pool preloaded and options set\n"
    "  ps                             every process with a control pipe, memory per device\n"
    "  stats PID [--json|--text]      counters and policy of a process\n"
    "  trim PID|--all [--keep SIZE] [--device N]\n"
    "                                 return idle memory to the driver now\n"
    "  get PID NAME                   an option's value (HIGH_WATERMARK, LIMIT, ...)\n"
    "  set PID NAME VALUE             change a run-time option\n"
    "  reset-peaks PID                peaks := current values\n"
    "  watch PID [--interval MS] [--count N]\n"
    "                                 a refreshing view of a process\n"
    "  metrics [PID|--all] [--output FILE]\n"
    "                                 Prometheus text (node_exporter textfile collector)\n"
    "  serve-metrics [--listen ADDR:PORT] [--scrape-timeout MS]\n"
    "                                 HTTP endpoint for Prometheus: GET /metrics, /healthz\n"
    "  options                        the options table (names, defaults, run time)\n"
    "  snapshot PID [--top N] [--json]\n"
    "                                 who holds the GPU memory: live bytes by allocation stack\n"
    "  plot FILE.csv [-o FILE.svg]    draw a timeline (CUDAPOOL_TIMELINE_FILE) as SVG\n"
    "  doctor PID | [--wait MS] -- CMD ARGS...\n"
    "                                 why a process is or is not pooled, and what to do\n"
    "\n"
    "global options:\n"
    "  --dir DIR       control folder (default: $CUDAPOOL_CONTROL_DIR, else\n"
    "                  $XDG_RUNTIME_DIR/cudapool, else /tmp/cudapool-<uid>)\n"
    "  --timeout MS    how long to wait for an answer (default 5000)\n"
    "  --root DIR      every subfolder of DIR is a control folder (one per pod, named\n"
    "                  NAMESPACE_POD): ps, trim --all, metrics and serve-metrics cover them all\n"
    "\n"
    "exit codes: 0 done, 1 refused by the process, 2 usage error, 3 no such process, no pipe\n"
    "or no answer. `cudapoolctl COMMAND --help` describes one command.\n";

const std::map<std::string, std::string_view, std::less<>>& command_help_texts() {
  static const std::map<std::string, std::string_view, std::less<>> help = {
      {"run",
       "usage: cudapoolctl run [OPTIONS] [--] CMD [ARGS...]\n"
       "Runs CMD with libcudapool.so preloaded (LD_PRELOAD) and CUDAPOOL_* set.\n"
       "  --high SIZE          CUDAPOOL_HIGH_WATERMARK (bytes, 64MiB, 1.5GiB or 10%)\n"
       "  --low SIZE           CUDAPOOL_LOW_WATERMARK\n"
       "  --limit SIZE         CUDAPOOL_LIMIT (0 = none)\n"
       "  --min-free SIZE      CUDAPOOL_MIN_DEVICE_FREE\n"
       "  --idle-ms MS         CUDAPOOL_IDLE_RELEASE_MS (0 = off)\n"
       "  --reuse MODE         CUDAPOOL_REUSE: fence or immediate\n"
       "  --log-level LEVEL    CUDAPOOL_LOG_LEVEL\n"
       "  --log-file FILE      CUDAPOOL_LOG_FILE\n"
       "  --no-control         CUDAPOOL_CONTROL=0 (no control pipe)\n"
       "  --set NAME=VALUE     any option of the table (cudapoolctl options)\n"
       "  --library PATH       the library to preload (default: found beside cudapoolctl,\n"
       "                       in ../lib, or in the install prefix)\n"
       "Values are checked before CMD starts; a bad one is a usage error (exit 2).\n"},
      {"ps",
       "usage: cudapoolctl ps\n"
       "Lists every live process with a control pipe in the control folder: pid, command, and\n"
       "per device the bytes held from the driver, in use and idle. Pipes of processes that are\n"
       "gone are removed.\n"},
      {"stats",
       "usage: cudapoolctl stats PID [--json|--text]\n"
       "Counters and policy of each device's pool. Default: a readable list; --text: the\n"
       "key=value lines of `stats text`; --json: one JSON object.\n"},
      {"trim",
       "usage: cudapoolctl trim PID|--all [--keep SIZE] [--device N]\n"
       "Returns idle memory to the driver now, down to SIZE idle bytes per device (default 0).\n"
       "Blocks in use, and blocks still waiting for the device, are never touched.\n"},
      {"get",
       "usage: cudapoolctl get PID NAME\n"
       "Prints the current value of option NAME (see cudapoolctl options).\n"},
      {"set",
       "usage: cudapoolctl set PID NAME VALUE\n"
       "Changes a run-time option of a running process: HIGH_WATERMARK, LOW_WATERMARK,\n"
       "IDLE_RELEASE_MS, MIN_DEVICE_FREE, LIMIT, REUSE, LOG_LEVEL.\n"},
      {"reset-peaks",
       "usage: cudapoolctl reset-peaks PID\n"
       "Sets the peak held and peak in-use figures to the current ones.\n"},
      {"watch",
       "usage: cudapoolctl watch PID [--interval MS] [--count N]\n"
       "Redraws the process's memory per device every MS milliseconds (default 1000) until\n"
       "interrupted, the process ends, or N views were shown.\n"},
      {"metrics",
       "usage: cudapoolctl metrics [PID|--all] [--output FILE]\n"
       "Prometheus text exposition of one process or of all (default; each process also gets\n"
       "cudapool_up, 0 when its pipe did not answer within --timeout). With --output, writes\n"
       "FILE atomically (for node_exporter's textfile collector), e.g.\n"
       "  cudapoolctl metrics --output /var/lib/node_exporter/textfile/cudapool.prom\n"},
      {"serve-metrics",
       "usage: cudapoolctl serve-metrics [--listen ADDR:PORT] [--scrape-timeout MS]\n"
       "Serves the Prometheus text of every managed process (of the control folder, or of every\n"
       "folder under --root) over HTTP: GET /metrics scrapes all pipes at once, each with a\n"
       "deadline (--scrape-timeout, default 2000 ms), so a stuck process costs at most that and\n"
       "shows as cudapool_up 0; GET /healthz answers ok. Pipes of processes that are gone are\n"
       "removed. --listen: default 127.0.0.1:9471; :9471 listens on every address, port 0 on\n"
       "a free port (printed). Runs until SIGTERM or SIGINT.\n"},
      {"snapshot",
       "usage: cudapoolctl snapshot PID [--top N] [--json]\n"
       "Live GPU memory of a process grouped by the call stack that allocated it, largest first\n"
       "(with CUDAPOOL_BACKTRACE=on; else grouped by block size), then per device the segments\n"
       "with a map of in-use (#), idle (.) and pending (p) ranges. --top: groups shown (10).\n"},
      {"plot",
       "usage: cudapoolctl plot FILE.csv [-o FILE.svg]\n"
       "Draws a timeline written with CUDAPOOL_TIMELINE_FILE: held and in-use bytes per device\n"
       "over time, release events marked. Default output: FILE.csv with .svg instead of .csv.\n"},
      {"doctor",
       "usage: cudapoolctl doctor [--json] PID\n"
       "       cudapoolctl doctor [--json] [--wait MS] [--library PATH] -- CMD [ARGS...]\n"
       "Says whether a process is pooled and why not: is libcudapool.so mapped, LD_PRELOAD and\n"
       "CUDAPOOL_* in its environment, which CUDA runtime (shared libcudart, or linked statically\n"
       "into the executable or a library) and driver it has mapped, what cudapool saw (the\n"
       "control pipe's runtime_calls, driver_calls, dlsym_lookups, proc_address_lookups and per\n"
       "device held, in use and framework), which framework caches sit in front (PyTorch, CuPy,\n"
       "JAX/XLA, numba), then what to do, one line each.\n"
       "With -- it starts CMD with the library preloaded (as `run`), waits for its first CUDA\n"
       "activity (its control pipe; without the library: the driver mapped), its end, or MS\n"
       "milliseconds (default 10000), diagnoses it, and waits for it to end: its exit code is\n"
       "reported. With --json the report is one JSON object on stdout (CMD's stdout goes to\n"
       "stderr). Exit codes: 0 diagnosed, 2 usage error, 3 no such process; with --, 126/127\n"
       "when CMD cannot be run.\n"},
      {"options",
       "usage: cudapoolctl options\n"
       "The options table: every CUDAPOOL_* variable, its default and whether `set` can change "
       "it.\n"},
  };
  return help;
}

bool wants_help(const Args& args) {
  for (const std::string& a : args)
    if (a == "--help" || a == "-h") return true;
  return false;
}

int usage_error(std::string_view command, const std::string& message) {
  std::fprintf(stderr, "cudapoolctl%s%.*s: %s\n", command.empty() ? "" : " ",
               static_cast<int>(command.size()), command.data(), message.c_str());
  std::fprintf(stderr, "try: cudapoolctl %.*s%s--help\n", static_cast<int>(command.size()),
               command.data(), command.empty() ? "" : " ");
  return kExitUsage;
}

bool parse_int(const std::string& text, long long min, long long max, long long* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || value < min || value > max) return false;
  *out = value;
  return true;
}

bool parse_pid(const std::string& text, int* pid) {
  long long value = 0;
  if (!parse_int(text, 1, 0x3fffffff, &value)) return false;
  *pid = static_cast<int>(value);
  return true;
}

// Exit code and message for a failed request.
int report_failure(int pid, const ClientReply& reply) {
  switch (reply.status) {
    case ClientReply::Status::kOk:
      return kExitOk;
    case ClientReply::Status::kRefused:
      if (!reply.body.empty()) std::fputs(reply.body.c_str(), stdout);
      std::fprintf(stderr, "cudapoolctl: process %d refused: %s\n", pid, reply.error.c_str());
      return kExitRefused;
    case ClientReply::Status::kNoPipe:
      if (!process_alive(pid)) {
        std::fprintf(stderr, "cudapoolctl: no process %d\n", pid);
      } else {
        std::fprintf(stderr,
                     "cudapoolctl: process %d has no control pipe (%s): it does not run with "
                     "libcudapool.so, has not made a CUDA call yet, runs with CUDAPOOL_CONTROL=0, "
                     "or uses another control folder (--dir)\n",
                     pid, reply.error.c_str());
      }
      return kExitNoProcess;
    case ClientReply::Status::kNoServer:
      std::fprintf(stderr, "cudapoolctl: process %d %s; its pipe is stale\n", pid,
                   process_alive(pid) ? "does not serve its control pipe" : "is gone");
      return kExitNoProcess;
    case ClientReply::Status::kTimeout:
      std::fprintf(stderr, "cudapoolctl: process %d: %s\n", pid, reply.error.c_str());
      return kExitNoProcess;
    case ClientReply::Status::kError:
      break;
  }
  std::fprintf(stderr, "cudapoolctl: process %d: %s\n", pid, reply.error.c_str());
  return kExitNoProcess;
}

// Sends a command to one process and prints the answer's body. Returns the exit code.
int simple_command(const Global& g, int pid, const std::string& command) {
  const ClientReply reply = request(pipe_path(g.dir, pid), command, g.timeout);
  if (reply.status != ClientReply::Status::kOk) return report_failure(pid, reply);
  std::fputs(reply.body.c_str(), stdout);
  return kExitOk;
}

bool is_byte_key(std::string_view key) {
  static const char* const kBytes[] = {
      "held",          "in_use",          "idle",         "pending",     "peak_held",
      "peak_in_use",   "released_bytes",  "device_total", "device_free", "high_watermark",
      "low_watermark", "min_device_free", "limit",
  };
  for (const char* k : kBytes)
    if (key == k) return true;
  return false;
}

// `stats text` as a readable list: sizes with units, one counter a line.
void print_pretty_stats(const std::string& text) {
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(start, nl - start);
    start = nl + 1;
    std::vector<std::pair<std::string, std::string>> kv;
    std::size_t pos = 0;
    while (pos < line.size()) {
      std::size_t sp = line.find(' ', pos);
      if (sp == std::string::npos) sp = line.size();
      const std::string word = line.substr(pos, sp - pos);
      pos = sp + 1;
      const std::size_t eq = word.find('=');
      if (eq != std::string::npos) kv.emplace_back(word.substr(0, eq), word.substr(eq + 1));
    }
    if (kv.empty()) continue;
    if (kv[0].first == "pid") {
      std::string command, devices;
      for (auto& [k, v] : kv) {
        if (k == "command") command = v;
        if (k == "devices") devices = v;
      }
      std::printf("process %s (%s), %s device(s) with a pool\n", kv[0].second.c_str(),
                  command.c_str(), devices.c_str());
      continue;
    }
    std::printf("device %s\n", kv[0].second.c_str());
    for (std::size_t i = 1; i < kv.size(); ++i) {
      const auto& [k, v] = kv[i];
      char* end = nullptr;
      const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
      if (is_byte_key(k) && end != nullptr && *end == '\0') {
        std::printf("  %-26s %-12s (%s)\n", k.c_str(), short_size(n).c_str(), v.c_str());
      } else {
        std::printf("  %-26s %s\n", k.c_str(), v.c_str());
      }
    }
  }
}

void print_summary_header() {
  std::printf("%-8s %-16s %-6s %12s %12s %12s  %s\n", "PID", "COMMAND", "DEVICE", "HELD", "IN USE",
              "IDLE", "FRAMEWORK RESERVED/ALLOCATED");
}

void print_summary(const ProcessSummary& s) {
  if (s.devices.empty()) {
    std::printf("%-8d %-16s %-6s %12s %12s %12s  -\n", s.pid, s.command.c_str(), "-", "-", "-",
                "-");
    return;
  }
  for (const DeviceSummary& d : s.devices) {
    const std::string framework = d.framework.empty()
                                      ? "-"
                                      : d.framework + " " + short_size(d.framework_reserved) + "/" +
                                            short_size(d.framework_allocated);
    std::printf("%-8d %-16s %-6d %12s %12s %12s  %s\n", s.pid, s.command.c_str(), d.device,
                short_size(d.held).c_str(), short_size(d.in_use).c_str(),
                short_size(d.idle).c_str(), framework.c_str());
  }
}

struct LiveProcess {
  int pid;
  std::string dir;  // its control folder
  ProcessSummary summary;
};

// Every live process with a pipe, with its summary; stale pipes are cleaned up on the way. A pipe
// is stale when nobody serves it (its process holds it open as long as it lives): /proc says
// nothing about pids of another pid namespace (a pod's processes seen from the node).
std::vector<LiveProcess> live_processes(const Global& g, bool say_stale) {
  std::vector<LiveProcess> live;
  for (const ControlFolder& folder : control_folders(g.dir, g.root)) {
    for (int pid : list_pipes(folder.path)) {
      const std::string path = pipe_path(folder.path, pid);
      const ClientReply reply = request(path, "stats text", g.timeout);
      if (reply.status == ClientReply::Status::kNoPipe) continue;  // exited meanwhile
      if (reply.status == ClientReply::Status::kNoServer) {
        if (remove_stale_pipe(folder.path, pid) && say_stale)
          std::fprintf(stderr, "cudapoolctl: removed the stale pipe %s (its process is gone)\n",
                       path.c_str());
        continue;
      }
      if (reply.status != ClientReply::Status::kOk) {
        if (say_stale)
          std::fprintf(stderr, "cudapoolctl: process %d: %s\n", pid, reply.error.c_str());
        continue;
      }
      LiveProcess p{pid, folder.path, {}};
      if (!parse_stats_text(reply.body, &p.summary)) p.summary.pid = pid;
      live.push_back(std::move(p));
    }
  }
  return live;
}

// ---- subcommands --------------------------------------------------------------------------------

std::string find_library(const std::string& explicit_path) {
  if (!explicit_path.empty()) return explicit_path;
  std::vector<std::string> candidates;
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    std::string dir(self);
    dir = dir.substr(0, dir.rfind('/'));
    candidates.push_back(dir + "/libcudapool.so");
    candidates.push_back(dir + "/../" CUDAPOOL_INSTALL_LIBDIR "/libcudapool.so");
    candidates.push_back(dir + "/../lib/libcudapool.so");
    candidates.push_back(dir + "/../shim/libcudapool.so");  // the build tree
  }
  candidates.push_back(CUDAPOOL_INSTALL_PREFIX "/" CUDAPOOL_INSTALL_LIBDIR "/libcudapool.so");
  for (const std::string& c : candidates) {
    char resolved[4096];
    if (realpath(c.c_str(), resolved) != nullptr && access(resolved, R_OK) == 0) return resolved;
  }
  return "";
}

int cmd_run(const Args& args) {
  std::vector<std::pair<std::string, std::string>> settings;  // option name, value
  std::string library;
  std::size_t i = 0;
  const std::map<std::string, std::string, std::less<>> flags = {
      {"--high", "HIGH_WATERMARK"},
      {"--low", "LOW_WATERMARK"},
      {"--limit", "LIMIT"},
      {"--min-free", "MIN_DEVICE_FREE"},
      {"--idle-ms", "IDLE_RELEASE_MS"},
      {"--reuse", "REUSE"},
      {"--log-level", "LOG_LEVEL"},
      {"--log-file", "LOG_FILE"},
      {"--control-dir", "CONTROL_DIR"},
  };
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.empty() || a[0] != '-') break;
    if (a == "--no-control") {
      settings.emplace_back("CONTROL", "0");
      continue;
    }
    std::string name, value;
    std::string flag = a;
    const std::size_t eq = a.find('=');
    std::optional<std::string> inline_value;
    if (a.rfind("--", 0) == 0 && eq != std::string::npos && a.rfind("--set", 0) != 0) {
      flag = a.substr(0, eq);
      inline_value = a.substr(eq + 1);
    }
    auto take_value = [&]() -> std::optional<std::string> {
      if (inline_value) return inline_value;
      if (i + 1 >= args.size()) return std::nullopt;
      return args[++i];
    };
    if (flag == "--library") {
      auto v = take_value();
      if (!v) return usage_error("run", "--library needs a path");
      library = *v;
      continue;
    }
    if (flag == "--set") {
      auto v = take_value();
      const std::size_t e = v ? v->find('=') : std::string::npos;
      if (e == std::string::npos) return usage_error("run", "--set needs NAME=VALUE");
      settings.emplace_back(v->substr(0, e), v->substr(e + 1));
      continue;
    }
    auto it = flags.find(flag);
    if (it == flags.end()) return usage_error("run", "unknown option " + a);
    auto v = take_value();
    if (!v) return usage_error("run", flag + " needs a value");
    settings.emplace_back(it->second, *v);
  }
  if (i >= args.size()) return usage_error("run", "no command to run (cudapoolctl run -- CMD)");

  // Checks every value with the options' own parsers before anything starts.
  Options checked;
  for (const auto& [name, value] : settings) {
    std::string error;
    if (!set_option(&checked, name, value, &error, /*runtime_only=*/false))
      return usage_error("run", error);
  }
  const std::string lib = find_library(library);
  if (lib.empty() || access(lib.c_str(), R_OK) != 0) {
    std::fprintf(stderr,
                 "cudapoolctl run: libcudapool.so not found beside cudapoolctl, in ../lib or in "
                 "%s/%s; use --library PATH\n",
                 CUDAPOOL_INSTALL_PREFIX, CUDAPOOL_INSTALL_LIBDIR);
    return kExitNoProcess;
  }
  for (const auto& [name, value] : settings) {
    const OptionInfo* info = find_option(name);
    const std::string variable = std::string(kEnvPrefix) + std::string(info->name);
    setenv(variable.c_str(), value.c_str(), 1);
  }
  setenv("LD_PRELOAD", preload_with_cudapool(std::getenv("LD_PRELOAD"), lib).c_str(), 1);

  std::vector<char*> argv;
  for (std::size_t k = i; k < args.size(); ++k)
    argv.push_back(const_cast<char*>(args[k].c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::fprintf(stderr, "cudapoolctl run: cannot run %s: %s\n", argv[0], std::strerror(errno));
  return errno == ENOENT ? 127 : 126;
}

int cmd_ps(const Global& g, const Args& args) {
  if (!args.empty()) return usage_error("ps", "takes no arguments");
  const std::vector<LiveProcess> live = live_processes(g, /*say_stale=*/true);
  print_summary_header();
  for (const LiveProcess& p : live)
    print_summary(p.summary);
  return kExitOk;
}

int cmd_stats(const Global& g, const Args& args) {
  int pid = 0;
  std::string format = "pretty";
  for (const std::string& a : args) {
    if (a == "--json") {
      format = "json";
    } else if (a == "--text") {
      format = "text";
    } else if (a == "--prometheus") {
      format = "prometheus";
    } else if (pid == 0 && parse_pid(a, &pid)) {
    } else {
      return usage_error("stats", "unexpected argument " + a);
    }
  }
  if (pid == 0) return usage_error("stats", "which process? cudapoolctl stats PID");
  const ClientReply reply =
      request(pipe_path(g.dir, pid), "stats " + (format == "pretty" ? "text" : format), g.timeout);
  if (reply.status != ClientReply::Status::kOk) return report_failure(pid, reply);
  if (format == "pretty") {
    print_pretty_stats(reply.body);
  } else {
    std::fputs(reply.body.c_str(), stdout);
  }
  return kExitOk;
}

int cmd_trim(const Global& g, const Args& args) {
  int pid = 0;
  bool all = false;
  std::string command = "trim";
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--all") {
      all = true;
    } else if (a == "--keep" || a == "--device") {
      if (i + 1 >= args.size()) return usage_error("trim", a + " needs a value");
      const std::string& v = args[++i];
      if (a == "--keep") {
        SizeSpec keep;
        std::string why;
        if (!parse_size(v, /*allow_percent=*/true, &keep, &why))
          return usage_error("trim", "bad size \"" + v + "\": " + why);
        command += " " + v;
      } else {
        long long device = 0;
        if (!parse_int(v, 0, 1023, &device)) return usage_error("trim", "bad device " + v);
        command += " device=" + v;
      }
    } else if (pid == 0 && parse_pid(a, &pid)) {
    } else {
      return usage_error("trim", "unexpected argument " + a);
    }
  }
  if (all == (pid != 0)) return usage_error("trim", "give one PID or --all");
  if (!all) return simple_command(g, pid, command);
  int worst = kExitOk;
  for (const LiveProcess& p : live_processes(g, /*say_stale=*/false)) {
    std::printf("process %d (%s):\n", p.pid, p.summary.command.c_str());
    Global in_folder = g;
    in_folder.dir = p.dir;
    worst = std::max(worst, simple_command(in_folder, p.pid, command));
  }
  return worst;
}

int cmd_get_set(const Global& g, const std::string& name, const Args& args) {
  const std::size_t want = name == "get" ? 2 : 3;
  if (args.size() < want) {
    return usage_error(name, name == "get" ? "usage: cudapoolctl get PID NAME"
                                           : "usage: cudapoolctl set PID NAME VALUE");
  }
  int pid = 0;
  if (!parse_pid(args[0], &pid)) return usage_error(name, "bad pid " + args[0]);
  const OptionInfo* info = find_option(args[1]);
  if (info == nullptr) return usage_error(name, "unknown option " + args[1]);
  if (name == "get") {
    if (args.size() != 2) return usage_error(name, "usage: cudapoolctl get PID NAME");
    return simple_command(g, pid, "get " + std::string(info->name));
  }
  std::string value = args[2];
  for (std::size_t i = 3; i < args.size(); ++i)
    value += " " + args[i];
  if (!info->runtime) {
    return usage_error(name, std::string(info->name) + " can only be set at start-up (CUDAPOOL_" +
                                 std::string(info->name) + ")");
  }
  Options scratch;
  std::string why;
  if (!set_option(&scratch, info->name, value, &why, /*runtime_only=*/true))
    return usage_error(name, why);
  return simple_command(g, pid, "set " + std::string(info->name) + " " + value);
}

int cmd_reset_peaks(const Global& g, const Args& args) {
  int pid = 0;
  if (args.size() != 1 || !parse_pid(args[0], &pid))
    return usage_error("reset-peaks", "usage: cudapoolctl reset-peaks PID");
  return simple_command(g, pid, "reset-peaks");
}

int cmd_watch(const Global& g, const Args& args) {
  int pid = 0;
  long long interval = 1000, count = 0;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--interval" || a == "--count") {
      if (i + 1 >= args.size()) return usage_error("watch", a + " needs a value");
      long long* slot = a == "--interval" ? &interval : &count;
      if (!parse_int(args[++i], a == "--interval" ? 50 : 1, 1LL << 40, slot))
        return usage_error("watch", "bad value for " + a);
    } else if (pid == 0 && parse_pid(a, &pid)) {
    } else {
      return usage_error("watch", "unexpected argument " + a);
    }
  }
  if (pid == 0) return usage_error("watch", "which process? cudapoolctl watch PID");
  const bool tty = isatty(STDOUT_FILENO) != 0;
  for (long long shown = 0; count == 0 || shown < count; ++shown) {
    if (shown > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval));
    const ClientReply reply = request(pipe_path(g.dir, pid), "stats text", g.timeout);
    if (reply.status != ClientReply::Status::kOk) {
      if (shown > 0 && !process_alive(pid)) {
        std::printf("process %d ended\n", pid);
        return kExitOk;
      }
      return report_failure(pid, reply);
    }
    ProcessSummary summary;
    parse_stats_text(reply.body, &summary);
    if (tty) std::fputs("\x1b[H\x1b[2J", stdout);
    const std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%H:%M:%S", std::localtime(&now));
    std::printf("cudapoolctl watch %d   %s   every %lld ms (Ctrl-C to stop)\n", pid, stamp,
                interval);
    print_summary_header();
    print_summary(summary);
    std::fflush(stdout);
  }
  return kExitOk;
}

int cmd_metrics(const Global& g, const Args& args) {
  int pid = 0;
  std::string output;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--all") {
    } else if (a == "--output") {
      if (i + 1 >= args.size()) return usage_error("metrics", "--output needs a file");
      output = args[++i];
    } else if (pid == 0 && parse_pid(a, &pid)) {
    } else {
      return usage_error("metrics", "unexpected argument " + a);
    }
  }
  std::vector<std::string> expositions;
  int code = kExitOk;
  if (pid != 0) {
    const ClientReply reply = request(pipe_path(g.dir, pid), "stats prometheus", g.timeout);
    if (reply.status != ClientReply::Status::kOk) return report_failure(pid, reply);
    expositions.push_back(reply.body);
  } else {
    NodeScrape scrape = scrape_node(control_folders(g.dir, g.root), g.timeout);
    for (const std::string& p : scrape.problems)
      std::fprintf(stderr, "cudapoolctl metrics: %s\n", p.c_str());
    expositions.push_back(std::move(scrape.text));
  }
  const std::string text = merge_prometheus(expositions);
  if (output.empty()) {
    std::fputs(text.c_str(), stdout);
    return code;
  }
  // Written beside the target and renamed: the collector never reads half a file.
  const std::string temp = output + ".tmp." + std::to_string(getpid());
  FILE* f = std::fopen(temp.c_str(), "w");
  if (f == nullptr || std::fputs(text.c_str(), f) < 0 || std::fclose(f) != 0 ||
      std::rename(temp.c_str(), output.c_str()) != 0) {
    std::fprintf(stderr, "cudapoolctl metrics: cannot write %s: %s\n", output.c_str(),
                 std::strerror(errno));
    std::remove(temp.c_str());
    return kExitNoProcess;
  }
  return code;
}

int cmd_serve_metrics(const Global& g, const Args& args) {
  ServeOptions options;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--listen" || a == "--scrape-timeout") {
      if (i + 1 >= args.size()) return usage_error("serve-metrics", a + " needs a value");
      const std::string& v = args[++i];
      if (a == "--listen") {
        std::string error;
        if (!parse_listen_address(v, &options.host, &options.port, &error))
          return usage_error("serve-metrics", error);
      } else {
        long long ms = 0;
        if (!parse_int(v, 1, 600000, &ms)) return usage_error("serve-metrics", "bad " + a);
        options.deadline = std::chrono::milliseconds(ms);
      }
    } else {
      return usage_error("serve-metrics", "unexpected argument " + a);
    }
  }
  options.dir = g.dir;
  options.root = g.root;
  if (!g.root.empty()) {
    struct stat st {};
    if (stat(g.root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      std::fprintf(stderr, "cudapoolctl serve-metrics: --root %s is not a folder\n",
                   g.root.c_str());
      return kExitUsage;
    }
  }
  return serve_metrics(options);
}

int cmd_snapshot(const Global& g, const Args& args) {
  int pid = 0;
  std::string command = "snapshot";
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--json") {
      command += " json";
    } else if (a == "--top" && i + 1 < args.size()) {
      command += " top=" + args[++i];
    } else if (pid == 0 && parse_pid(a, &pid)) {
    } else {
      return usage_error("snapshot", "unexpected argument " + a);
    }
  }
  if (pid == 0) return usage_error("snapshot", "which process? cudapoolctl snapshot PID");
  const ClientReply reply = request(pipe_path(g.dir, pid), command, g.timeout);
  if (reply.status != ClientReply::Status::kOk) return report_failure(pid, reply);
  std::fputs(reply.body.c_str(), stdout);
  return kExitOk;
}

int cmd_plot(const Args& args) {
  std::string input, output;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if ((args[i] == "-o" || args[i] == "--output") && i + 1 < args.size()) {
      output = args[++i];
    } else if (input.empty()) {
      input = args[i];
    } else {
      return usage_error("plot", "unexpected argument " + args[i]);
    }
  }
  if (input.empty()) return usage_error("plot", "which file? cudapoolctl plot FILE.csv");
  if (output.empty())
    output =
        (input.size() > 4 && input.ends_with(".csv") ? input.substr(0, input.size() - 4) : input) +
        ".svg";
  std::string csv;
  if (std::FILE* f = std::fopen(input.c_str(), "re")) {
    char buf[65536];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;)
      csv.append(buf, n);
    std::fclose(f);
  } else {
    std::fprintf(stderr, "cudapoolctl plot: cannot read %s: %s\n", input.c_str(),
                 std::strerror(errno));
    return kExitUsage;
  }
  plot::Chart chart;
  std::string error;
  const std::size_t slash = input.rfind('/');
  const std::string name = slash == std::string::npos ? input : input.substr(slash + 1);
  if (!plot::timeline_chart(csv, "GPU memory: " + name, &chart, &error) ||
      !plot::write_svg(chart, output, &error)) {
    std::fprintf(stderr, "cudapoolctl plot: %s: %s\n", input.c_str(), error.c_str());
    return kExitUsage;
  }
  std::printf("%s\n", output.c_str());
  return kExitOk;
}

int cmd_options(const Args& args) {
  if (!args.empty()) return usage_error("options", "takes no arguments");
  for (const OptionInfo& info : option_table()) {
    std::printf("%-16s default %-8s %-9s %.*s\n", std::string(info.name).c_str(),
                info.default_value.empty() ? "(empty)" : std::string(info.default_value).c_str(),
                info.runtime ? "run-time" : "start-up", static_cast<int>(info.doc.size()),
                info.doc.data());
  }
  return kExitOk;
}

// ---- doctor (tools/doctor.h, docs/doctor.md) ---------------------------------------------------

std::optional<std::string> doctor_dir(const Global& g) {
  return g.dir_given ? std::optional<std::string>(g.dir) : std::nullopt;
}

// The whole diagnosis of a live process (or of its last snapshot when `gone`).
doctor::Diagnosis diagnose(const Global& g, const doctor::Snapshot& s, bool gone) {
  doctor::Diagnosis d;
  doctor::diagnose_snapshot(s, gone ? "" : "/proc/" + std::to_string(s.pid) + "/exe", &d);
  if (gone) {
    d.pipe_error = "not asked: the process ended";
  } else {
    doctor::ask_pipe(pipe_path(doctor::control_folder(s, doctor_dir(g)), s.pid), g.timeout, &d);
  }
  return d;
}

void print_diagnosis(doctor::Diagnosis* d, bool json) {
  d->advice = doctor::advise(*d);
  const std::string text = json ? doctor::format_json(*d) : doctor::format_text(*d);
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

// True once the started command shows CUDA activity: with the library mapped, its control pipe
// exists (made at the first CUDA call); without it, the driver is mapped.
bool shows_cuda_activity(const Global& g, const doctor::Snapshot& s) {
  bool library = false, driver = false;
  for (const doctor::MappedFile& f : doctor::mapped_files(s.maps)) {
    const doctor::LibraryKind kind = doctor::classify_library(f.path);
    library = library || kind == doctor::LibraryKind::kCudapool;
    driver = driver || kind == doctor::LibraryKind::kDriver;
  }
  if (!library) return driver;
  struct stat st {};
  return lstat(pipe_path(doctor::control_folder(s, doctor_dir(g)), s.pid).c_str(), &st) == 0;
}

// True once the dynamic loader has mapped the libraries (something besides the executable and
// the loader itself): earlier snapshots would miss the preloaded library.
bool loader_done(const doctor::Snapshot& s) {
  for (const doctor::MappedFile& f : doctor::mapped_files(s.maps)) {
    const std::string base = f.path.substr(f.path.rfind('/') + 1);
    if (f.path != s.exe && base.rfind("ld-", 0) != 0) return true;
  }
  return false;
}

int doctor_command(const Global& g, const Args& argv, long long wait_ms, bool json,
                   const std::string& library) {
  const std::string lib = find_library(library);
  if (lib.empty() || access(lib.c_str(), R_OK) != 0) {
    std::fprintf(stderr,
                 "cudapoolctl doctor: libcudapool.so not found beside cudapoolctl, in ../lib or "
                 "in %s/%s; use --library PATH\n",
                 CUDAPOOL_INSTALL_PREFIX, CUDAPOOL_INSTALL_LIBDIR);
    return kExitNoProcess;
  }
  // The child reports a failed exec through a close-on-exec pipe: EOF means CMD runs.
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "cudapoolctl doctor: pipe: %s\n", std::strerror(errno));
    return kExitNoProcess;
  }
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child < 0) {
    std::fprintf(stderr, "cudapoolctl doctor: fork: %s\n", std::strerror(errno));
    return kExitNoProcess;
  }
  if (child == 0) {
    close(report[0]);
    setenv("LD_PRELOAD", preload_with_cudapool(std::getenv("LD_PRELOAD"), lib).c_str(), 1);
    if (json) dup2(STDERR_FILENO, STDOUT_FILENO);  // stdout is the report's
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    const int e = errno;
    (void)!write(report[1], &e, sizeof e);
    _exit(127);
  }
  close(report[1]);
  int exec_errno = 0;
  ssize_t got;
  do {
    got = read(report[0], &exec_errno, sizeof exec_errno);
  } while (got < 0 && errno == EINTR);
  close(report[0]);
  if (got == static_cast<ssize_t>(sizeof exec_errno)) {
    waitpid(child, nullptr, 0);
    std::fprintf(stderr, "cudapoolctl doctor: cannot run %s: %s\n", argv[0].c_str(),
                 std::strerror(exec_errno));
    return exec_errno == ENOENT ? 127 : 126;
  }
  // Ctrl-C reaches the command; doctor stays to report how it ended.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGQUIT, SIG_IGN);

  doctor::Snapshot last;
  bool have_last = false, ended = false;
  const auto started = std::chrono::steady_clock::now();
  const auto deadline = started + std::chrono::milliseconds(wait_ms);
  for (;;) {
    siginfo_t info{};
    ended = waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == child;
    if (ended) break;
    doctor::Snapshot s;
    std::string error;
    if (doctor::take_snapshot(child, &s, &error) && s.maps_read &&
        (!have_last || loader_done(s) || !loader_done(last))) {
      last = std::move(s);
      have_last = true;
      if (shows_cuda_activity(g, last)) break;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    // Often at first, to see a short-lived command's libraries; then every 20 ms.
    std::this_thread::sleep_for(now - started < std::chrono::milliseconds(200)
                                    ? std::chrono::microseconds(500)
                                    : std::chrono::microseconds(20000));
  }
  doctor::Diagnosis d;
  if (!ended) {
    doctor::Snapshot now;
    std::string error;
    if (doctor::take_snapshot(child, &now, &error) && now.maps_read &&
        (!have_last || loader_done(now) || !loader_done(last))) {
      last = std::move(now);
      have_last = true;
    }
  }
  if (have_last) {
    d = diagnose(g, last, ended);
  } else {
    d.pid = child;
    d.maps_error = "the process ended before it could be read";
    d.pipe_error = "not asked: the process ended";
  }
  d.started = true;
  d.argv = argv;
  d.exited = ended;
  d.seen_too_early = ended && have_last && !loader_done(last);
  if (!json) {
    print_diagnosis(&d, false);
    d.advice.clear();
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) d.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) d.exit_signal = WTERMSIG(status);
  if (json) {
    print_diagnosis(&d, true);
  } else if (d.exit_code) {
    std::printf("command exited with code %d\n", *d.exit_code);
  } else if (d.exit_signal) {
    std::printf("command ended by signal %d\n", *d.exit_signal);
  }
  return kExitOk;
}

int cmd_doctor(const Global& g, const Args& args) {
  bool json = false;
  long long wait_ms = 10000;
  std::string library;
  std::string pid_text;
  bool command_follows = false;
  std::size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      ++i;
      command_follows = true;
      break;
    }
    if (a == "--json") {
      json = true;
    } else if (a == "--wait" || a == "--library") {
      if (i + 1 >= args.size()) return usage_error("doctor", a + " needs a value");
      const std::string& v = args[++i];
      if (a == "--library") {
        library = v;
      } else if (!parse_int(v, 0, 3600000, &wait_ms)) {
        return usage_error("doctor", "bad --wait " + v + " (milliseconds, 0 to 3600000)");
      }
    } else if (pid_text.empty() && !a.empty() && a[0] != '-') {
      pid_text = a;
    } else {
      return usage_error("doctor", "unexpected argument " + a);
    }
  }
  if (command_follows) {
    if (!pid_text.empty()) return usage_error("doctor", "give a PID or -- CMD, not both");
    if (i >= args.size()) return usage_error("doctor", "no command after --");
    return doctor_command(g, Args(args.begin() + static_cast<std::ptrdiff_t>(i), args.end()),
                          wait_ms, json, library);
  }
  if (pid_text.empty()) return usage_error("doctor", "which process? cudapoolctl doctor PID");
  int pid = 0;
  if (!parse_pid(pid_text, &pid))
    return usage_error("doctor", "not a process id: \"" + pid_text + "\" (a number)");
  doctor::Snapshot s;
  std::string error;
  if (!doctor::take_snapshot(pid, &s, &error)) {
    std::fprintf(stderr, "cudapoolctl doctor: %s\n", error.c_str());
    return kExitNoProcess;
  }
  doctor::Diagnosis d = diagnose(g, s, /*gone=*/false);
  print_diagnosis(&d, json);
  return kExitOk;
}

int main_impl(int argc, char** argv) {
  Args args(argv + 1, argv + argc);
  Global g;
  std::vector<std::string> warnings;
  g.dir = resolve_control_dir(load_options_from_environment(&warnings));
  std::size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--dir" || a == "--timeout" || a == "--root") {
      if (i + 1 >= args.size()) return usage_error("", a + " needs a value");
      if (a == "--dir") {
        g.dir = args[++i];
        g.dir_given = true;
      } else if (a == "--root") {
        g.root = args[++i];
      } else {
        long long ms = 0;
        if (!parse_int(args[++i], 1, 3600000, &ms)) return usage_error("", "bad --timeout");
        g.timeout = std::chrono::milliseconds(ms);
      }
    } else if (a == "--help" || a == "-h" || a == "help") {
      if (a == "help" && i + 1 < args.size()) {
        auto it = command_help_texts().find(args[i + 1]);
        if (it != command_help_texts().end()) {
          std::fputs(std::string(it->second).c_str(), stdout);
          return kExitOk;
        }
      }
      std::fputs(std::string(kMainHelp).c_str(), stdout);
      return kExitOk;
    } else {
      break;
    }
  }
  if (i >= args.size()) {
    std::fputs(std::string(kMainHelp).c_str(), stderr);
    return kExitUsage;
  }
  const std::string command = args[i];
  Args rest(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
  auto help = command_help_texts().find(command);
  if (help == command_help_texts().end())
    return usage_error("", "unknown command \"" + command + "\" (cudapoolctl --help)");
  // `run` passes everything after its own options to the program: only its own --help counts.
  const bool run_help =
      command == "run" && !rest.empty() && (rest[0] == "--help" || rest[0] == "-h");
  // doctor: a --help after `--` is CMD's.
  Args doctor_own(rest.begin(), std::find(rest.begin(), rest.end(), std::string("--")));
  const bool own_help = command == "doctor" ? wants_help(doctor_own) : wants_help(rest);
  if ((command != "run" && own_help) || run_help) {
    std::fputs(std::string(help->second).c_str(), stdout);
    return kExitOk;
  }
  if (command == "run") return cmd_run(rest);
  if (command == "ps") return cmd_ps(g, rest);
  if (command == "stats") return cmd_stats(g, rest);
  if (command == "trim") return cmd_trim(g, rest);
  if (command == "get" || command == "set") return cmd_get_set(g, command, rest);
  if (command == "reset-peaks") return cmd_reset_peaks(g, rest);
  if (command == "watch") return cmd_watch(g, rest);
  if (command == "metrics") return cmd_metrics(g, rest);
  if (command == "serve-metrics") return cmd_serve_metrics(g, rest);
  if (command == "options") return cmd_options(rest);
  if (command == "snapshot") return cmd_snapshot(g, rest);
  if (command == "plot") return cmd_plot(rest);
  if (command == "doctor") return cmd_doctor(g, rest);
  return usage_error("", "unknown command " + command);
}

}  // namespace
}  // namespace cudapool

int main(int argc, char** argv) {
  try {
    return cudapool::main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cudapoolctl: %s\n", e.what());
    return cudapool::kExitNoProcess;
  }
}
