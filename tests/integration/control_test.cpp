// The control pipe end to end (issue 3): a process running on the stand-in runtime with the shim
// preloaded is steered through its own pipe, by cudapoolctl (--ctl=PATH) and by plain shell
// tools; hostile files, lines and floods leave it working; fork children and exit.
//
// Registered with CUDAPOOL_HIGH_WATERMARK=64GiB CUDAPOOL_IDLE_RELEASE_MS=0 (nothing is released
// unless a command asks) and STANDIN_DEVICE_MEMORY=32GiB; each registration has its own control
// folder ($CUDAPOOL_CONTROL_DIR).
#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "control/client.h"
#include "control/preload.h"
#include "tests/integration/integration_util.h"

namespace integ {
namespace {

using cudapool::ClientReply;

std::string control_dir() {
  const char* dir = std::getenv("CUDAPOOL_CONTROL_DIR");
  return dir != nullptr ? dir : "";
}

std::string own_pipe() {
  return cudapool::pipe_path(control_dir(), getpid());
}

std::string ctl_tool() {
  const std::string tool = flag_value("--ctl");
  EXPECT_FALSE(tool.empty()) << "registered without --ctl=PATH";
  return tool;
}

// Runs cudapoolctl with `args`.
ProcessResult ctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {ctl_tool()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, EnvChanges{}, milliseconds(20000));
}

// Runs a shell command line.
ProcessResult shell(const std::string& line) {
  return run_process({"/bin/sh", "-c", line}, EnvChanges{}, milliseconds(20000));
}

bool is_fifo(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

// Starts the shim (and so the pipe) with one allocation; returns the block (64 KiB).
void* first_call() {
  void* p = nullptr;
  EXPECT_CUDA_OK(cudaMalloc(&p, 64 * kKiB));
  EXPECT_TRUE(is_fifo(own_pipe())) << "no control pipe at " << own_pipe();
  return p;
}

struct Cache {
  std::vector<void*> blocks;
  std::uint64_t bytes = 0;
};

// Allocates `count` blocks of `size` and frees them: an idle cache of count * size bytes.
Cache fill_idle_cache(int count, std::size_t size) {
  Cache c;
  for (int i = 0; i < count; ++i) {
    void* p = nullptr;
    EXPECT_CUDA_OK(cudaMalloc(&p, size));
    c.blocks.push_back(p);
    c.bytes += size;
  }
  for (void* p : c.blocks)
    EXPECT_CUDA_OK(cudaFree(p));
  return c;
}

// Bytes of the driver allocation (segment) that holds `ptr`.
std::uint64_t segment_of(const void* ptr) {
  StandinAllocationInfo info{};
  EXPECT_TRUE(allocation_info(ptr, &info));
  return info.size;
}

// ---- trim, stats, set/get, metrics -------------------------------------------------------------

TEST(ControlE2E, TrimByCudapoolctlAndByEchoReturnsIdleMemory) {
  void* small = first_call();
  void* live = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&live, 48 * kMiB));
  stamp_pattern(live, 48 * kMiB, 7);
  const std::uint64_t live_bytes = 64 * kKiB + 48 * kMiB;
  // At most the segments that hold the live blocks stay (the test's "one segment" per block).
  const std::uint64_t bound = live_bytes + segment_of(small) + segment_of(live);

  Cache cache = fill_idle_cache(20, 100 * kMiB);
  sleep_ms(200);
  ASSERT_GE(counters().bytes_held, cache.bytes) << "the cache is gone before the trim";

  const auto start = Clock::now();
  ProcessResult r = ctl({"trim", std::to_string(getpid())});
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("released=")) << r.output;
  EXPECT_LE(counters().bytes_held, bound) << "after cudapoolctl trim: " << r.output;
  std::printf("[ measure ] cudapoolctl trim: %lld ms (process start included), %s",
              static_cast<long long>(took.count()),
              r.output.substr(r.output.rfind("released=")).c_str());
  EXPECT_TRUE(stamps_intact(live, 48 * kMiB, 7)) << "the live block was touched";

  // The same with plain shell tools, fire and forget.
  cache = fill_idle_cache(20, 100 * kMiB);
  ASSERT_GE(counters().bytes_held, cache.bytes);
  r = shell("echo trim > '" + own_pipe() + "'");
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_TRUE(wait_until(milliseconds(20000), [&] { return counters().bytes_held <= bound; }))
      << "after echo trim the process holds " << counters().bytes_held / kMiB << " MiB";
  EXPECT_TRUE(stamps_intact(live, 48 * kMiB, 7));

  // trim KEEP keeps that much idle memory.
  cache = fill_idle_cache(10, 100 * kMiB);
  r = ctl({"trim", std::to_string(getpid()), "--keep", "300MiB"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  // Whole 100 MiB segments go until idle <= 300 MiB: between 200 and 300 MiB stay idle.
  EXPECT_GE(counters().bytes_held, live_bytes + 200 * kMiB);
  EXPECT_LE(counters().bytes_held, bound + 300 * kMiB);
  EXPECT_CUDA_OK(cudaFree(live));
  EXPECT_CUDA_OK(cudaFree(small));
  EXPECT_EQ(0u, counters().free_failures);
}

// Names of this process's threads (/proc/self/task/*/comm).
std::vector<std::string> thread_names() {
  std::vector<std::string> names;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (dirent* e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      std::string name = read_file(std::string("/proc/self/task/") + e->d_name + "/comm");
      if (!name.empty() && name.back() == '\n') name.pop_back();
      names.push_back(name);
    }
    closedir(dir);
  }
  return names;
}

// Without a CPython interpreter the framework adapters never start: no thread, no framework in
// stats or trim (tests/frameworks checks the other side).
TEST(ControlE2E, NoFrameworkAdaptersWithoutPython) {
  void* p = first_call();
  ProcessResult r = ctl({"trim", std::to_string(getpid())});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ(std::string::npos, r.output.find("framework")) << r.output;
  ClientReply stats = cudapool::request(own_pipe(), "stats json", milliseconds(5000));
  ASSERT_EQ(ClientReply::Status::kOk, stats.status) << stats.error;
  EXPECT_EQ(std::string::npos, stats.body.find("framework")) << stats.body;
  for (const std::string& name : thread_names())
    EXPECT_NE(name, "cudapool-py");
  EXPECT_CUDA_OK(cudaFree(p));
}

TEST(ControlE2E, StatsAgreeWithTheRuntimesCounters) {
  void* small = first_call();
  void* a = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&a, 30 * kMiB));
  fill_idle_cache(3, 64 * kMiB);
  ProcessResult r = ctl({"stats", std::to_string(getpid()), "--text"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  std::istringstream lines(r.output);
  std::string first, device;
  std::getline(lines, first);
  std::getline(lines, device);
  EXPECT_EQ(std::to_string(getpid()), std::to_string(parse_key_values(first)["pid"])) << first;
  auto kv = parse_key_values(device);
  EXPECT_EQ(counters().bytes_held, kv["held"]) << r.output;
  if (kv["page_size"] != 0) {  // pages: every page the runtime created is the pool's
    EXPECT_EQ(kv["pages"] * kv["page_size"], kv["held"]) << r.output;
    EXPECT_EQ(kv["page_creates"] - kv["page_releases"], kv["pages"]) << r.output;
  } else {
    EXPECT_EQ(counters().mallocs - counters().frees, kv["segments"]) << r.output;
  }
  EXPECT_EQ(64 * kKiB + 30 * kMiB, kv["in_use"]) << r.output;
  EXPECT_EQ(kv["held"] - kv["in_use"], kv["idle"]);
  EXPECT_EQ(2u, kv["live_blocks"]);

  // ps lists this process with the same figures.
  r = ctl({"ps"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find(std::to_string(getpid()) + " ")) << r.output;

  // JSON, and the readable form.
  r = ctl({"stats", std::to_string(getpid()), "--json"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("\"held\":" + std::to_string(counters().bytes_held)))
      << r.output;
  r = ctl({"stats", std::to_string(getpid())});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("in_use")) << r.output;
  EXPECT_CUDA_OK(cudaFree(a));
  EXPECT_CUDA_OK(cudaFree(small));
}

TEST(ControlE2E, SetWatermarkChangesWhatTheNextBurstLeavesAndGetReturnsIt) {
  void* small = first_call();
  const std::string pid = std::to_string(getpid());
  // Control: with the registered 64GiB watermark a burst stays cached.
  fill_idle_cache(10, 100 * kMiB);
  sleep_ms(300);
  const std::uint64_t cached = counters().bytes_held;
  ASSERT_GE(cached, 1000 * kMiB);
  ProcessResult r = ctl({"trim", pid});
  ASSERT_EQ(0, r.exit_code) << describe(r);

  r = ctl({"set", pid, "HIGH_WATERMARK", "256MiB"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  r = ctl({"set", pid, "low_watermark", "0"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  r = ctl({"get", pid, "HIGH_WATERMARK"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ("256MiB\n", r.output);
  r = ctl({"get", pid, "LOW_WATERMARK"});
  EXPECT_EQ("0\n", r.output);

  fill_idle_cache(10, 100 * kMiB);
  const std::uint64_t bound = 2 * kMiB + 256 * kMiB;
  EXPECT_TRUE(wait_until(milliseconds(1500), [&] { return counters().bytes_held <= bound; }))
      << "after set HIGH_WATERMARK 256MiB a burst left " << counters().bytes_held / kMiB << " MiB";

  // Refused values change nothing, with the documented exit codes.
  r = ctl({"set", pid, "HIGH_WATERMARK", "lots"});
  EXPECT_EQ(2, r.exit_code) << describe(r);
  r = ctl({"set", pid, "CONTROL_DIR", "/tmp"});
  EXPECT_EQ(2, r.exit_code) << describe(r);
  r = ctl({"get", pid, "HIGH_WATERMARK"});
  EXPECT_EQ("256MiB\n", r.output);
  // The process itself refuses (exit 1) what slips past the tool: a raw line.
  ClientReply raw = cudapool::request(own_pipe(), "set HIGH_WATERMARK -5", milliseconds(5000));
  EXPECT_EQ(ClientReply::Status::kRefused, raw.status) << raw.error;
  r = ctl({"trim", pid, "--device", "7"});
  EXPECT_EQ(1, r.exit_code) << describe(r);
  // Run-time log level.
  r = ctl({"set", pid, "LOG_LEVEL", "debug"});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_EQ("debug\n", ctl({"get", pid, "log_level"}).output);
  // Reuse mode both ways, with blocks in flight.
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, kMiB));
  EXPECT_EQ(0, ctl({"set", pid, "REUSE", "immediate"}).exit_code);
  ASSERT_CUDA_OK(cudaFree(p));
  EXPECT_EQ(0, ctl({"set", pid, "REUSE", "fence"}).exit_code);
  ASSERT_CUDA_OK(cudaMalloc(&p, kMiB));
  ASSERT_CUDA_OK(cudaFree(p));
  EXPECT_CUDA_OK(cudaFree(small));
}

// Prometheus text exposition: comments and `name{labels} value` samples only, each family's TYPE
// before its samples.
void expect_prometheus(const std::string& text) {
  static const std::regex sample(
      R"re(^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\} [0-9]+$)re");
  static const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter)$)");
  static const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$)");
  std::set<std::string> typed;
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, type)) {
      EXPECT_TRUE(typed.insert(m[1]).second) << "TYPE twice: " << line;
    } else if (std::regex_match(line, m, sample)) {
      EXPECT_EQ(1u, typed.count(m[1])) << "no TYPE before " << line;
      ++samples;
    } else {
      EXPECT_TRUE(std::regex_match(line, help)) << "not Prometheus text: " << line;
    }
  }
  EXPECT_GT(samples, 0) << text;
}

TEST(ControlE2E, MetricsParseAsPrometheusText) {
  void* small = first_call();
  const std::string pid = std::to_string(getpid());
  ProcessResult r = ctl({"metrics", pid});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  expect_prometheus(r.output);
  const std::string held_sample = "cudapool_held_bytes{pid=\"" + pid + "\"";
  EXPECT_NE(std::string::npos, r.output.find(held_sample)) << r.output;
  EXPECT_NE(std::string::npos,
            r.output.find("gpu=\"0\",UUID=\"GPU-50515253-5455-5657-5859-5a5b5c5d5e5f\"} " +
                          std::to_string(counters().bytes_held) + "\n"))
      << r.output;

  // --all with a second managed process: a child of this test running the same program.
  const std::string dir = control_dir();
  pid_t child = fork();
  if (child == 0) {
    void* p = nullptr;
    cudaMalloc(&p, kMiB);  // the stand-in refuses work in a fork child; the pipe comes anyway
    sleep_ms(3000);
    _exit(0);
  }
  const std::string child_pipe = cudapool::pipe_path(dir, child);
  EXPECT_TRUE(wait_until(milliseconds(2000), [&] { return is_fifo(child_pipe); }));
  r = ctl({"metrics", "--all"});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  expect_prometheus(r.output);
  EXPECT_NE(std::string::npos, r.output.find("pid=\"" + pid + "\"")) << r.output;
  r = ctl({"ps"});
  EXPECT_NE(std::string::npos, r.output.find(std::to_string(child) + " ")) << r.output;
  // The textfile collector's way: an atomic file.
  const std::string file = make_scratch_dir("metrics") + "/cudapool.prom";
  r = ctl({"metrics", "--all", "--output", file});
  ASSERT_EQ(0, r.exit_code) << describe(r);
  expect_prometheus(read_file(file));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  // The dead child's pipe (it was killed: no exit handler) is cleaned up by ps.
  ASSERT_TRUE(is_fifo(child_pipe));
  r = ctl({"ps"});
  EXPECT_FALSE(is_fifo(child_pipe)) << "ps left the stale pipe of a dead process: " << r.output;
  EXPECT_EQ(3, ctl({"stats", std::to_string(child)}).exit_code);
  EXPECT_CUDA_OK(cudaFree(small));
}

TEST(ControlE2E, ToolMessagesAndExitCodes) {
  void* small = first_call();
  ProcessResult r = ctl({"stats", "999999"});
  EXPECT_EQ(3, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("no process 999999")) << r.output;
  r = ctl({"stats", "1"});  // alive, but no pipe in this folder
  EXPECT_EQ(3, r.exit_code);
  EXPECT_NE(std::string::npos, r.output.find("no control pipe")) << r.output;
  EXPECT_EQ(2, ctl({"frobnicate"}).exit_code);
  EXPECT_EQ(2, ctl({"trim"}).exit_code);
  EXPECT_EQ(2, ctl({"trim", "--keep", "lots", std::to_string(getpid())}).exit_code);
  EXPECT_EQ(2, ctl({}).exit_code);
  for (const char* sub : {"run", "ps", "stats", "trim", "get", "set", "watch", "metrics"}) {
    r = ctl({sub, "--help"});
    EXPECT_EQ(0, r.exit_code) << sub;
    EXPECT_NE(std::string::npos, r.output.find("usage: cudapoolctl " + std::string(sub))) << sub;
  }
  r = ctl({"watch", std::to_string(getpid()), "--count", "2", "--interval", "50"});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("HELD")) << r.output;
  EXPECT_CUDA_OK(cudaFree(small));
}

INTEG_SCENARIO(print_held) {
  void* p = nullptr;
  if (cudaMalloc(&p, 5 * kMiB) != cudaSuccess) return 10;
  const char* h = std::getenv("CUDAPOOL_HIGH_WATERMARK");
  const char* l = std::getenv("CUDAPOOL_LIMIT");
  std::printf("high=%s limit=%s\n", h ? h : "", l ? l : "");
  return 0;
}

TEST(ControlE2E, RunStartsAProgramWithTheLibraryAndOptions) {
  void* small = first_call();
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = '\0';
  ProcessResult r = run_process(
      {ctl_tool(), "run", "--high", "1GiB", "--limit=2GiB", "--", self, "--scenario=print_held"},
      EnvChanges{{{"LD_PRELOAD", cudapool::preload_without_cudapool(std::getenv("LD_PRELOAD"))}},
                 {}});
  EXPECT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("high=1GiB limit=2GiB")) << r.output;
  EXPECT_NE(std::string::npos, r.output.find("cudapool 0")) << "no start-up line: " << r.output;
  EXPECT_EQ(2, ctl({"run", "--high", "lots", "--", "/bin/true"}).exit_code);
  EXPECT_EQ(2, ctl({"run", "--bogus", "1", "--", "/bin/true"}).exit_code);
  EXPECT_CUDA_OK(cudaFree(small));
}

// ---- hostile input -----------------------------------------------------------------------------

// In a fresh process: one allocation, then says whether its pipe exists.
INTEG_SCENARIO(alloc_and_report_pipe) {
  void* p = nullptr;
  if (cudaMalloc(&p, kMiB) != cudaSuccess) return 10;
  if (cudaFree(p) != cudaSuccess) return 11;
  std::printf("pipe=%d\n", is_fifo(own_pipe()) ? 1 : 0);
  return 0;
}

uid_t nobody() {
  const passwd* pw = getpwnam("nobody");
  return pw != nullptr ? pw->pw_uid : 65534;
}

TEST(ControlHostile, PlantedPathsAndBadFoldersAreRefusedAndTheProcessRuns) {
  const std::string base = make_scratch_dir("hostile");
  ASSERT_EQ(0, chmod(base.c_str(), 0755));
  struct Case {
    std::string name;
    std::function<void(const std::string& dir)> plant;  // the pid is unknown: plants for all
  };
  const std::string victim = base + "/victim";
  close(open(victim.c_str(), O_CREAT | O_WRONLY, 0600));
  std::vector<Case> cases = {
      {"folder writable by all",
       [](const std::string& d) {
         mkdir(d.c_str(), 0700);
         chmod(d.c_str(), 0777);
       }},
      {"folder is a symlink",
       [&](const std::string& d) {
         mkdir((d + ".real").c_str(), 0700);
         symlink((d + ".real").c_str(), d.c_str());
       }},
      {"folder is a file",
       [](const std::string& d) { close(open(d.c_str(), O_CREAT | O_WRONLY, 0600)); }},
  };
  if (geteuid() == 0) {
    cases.push_back({"folder of another user", [](const std::string& d) {
                       mkdir(d.c_str(), 0700);
                       EXPECT_EQ(0, chown(d.c_str(), nobody(), static_cast<gid_t>(-1)));
                     }});
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string dir = base + "/case" + std::to_string(i);
    cases[i].plant(dir);
    const std::string log = base + "/case" + std::to_string(i) + ".log";
    ProcessResult r =
        run_scenario("alloc_and_report_pipe",
                     EnvChanges{{{"CUDAPOOL_CONTROL_DIR", dir}, {"CUDAPOOL_LOG_FILE", log}}, {}});
    EXPECT_EQ(0, r.exit_code) << cases[i].name << ": " << describe(r);
    EXPECT_NE(std::string::npos, r.output.find("pipe=0")) << cases[i].name << ": " << r.output;
    EXPECT_NE(std::string::npos, read_file(log).find("control pipe off")) << cases[i].name;
  }
  EXPECT_EQ("", read_file(victim));
  // Control: a good folder gets a pipe (so pipe=0 above means refused, not broken).
  ProcessResult r = run_scenario("alloc_and_report_pipe",
                                 EnvChanges{{{"CUDAPOOL_CONTROL_DIR", base + "/good"}}, {}});
  EXPECT_NE(std::string::npos, r.output.find("pipe=1")) << describe(r);
  // CUDAPOOL_CONTROL=0: no pipe.
  r = run_scenario(
      "alloc_and_report_pipe",
      EnvChanges{{{"CUDAPOOL_CONTROL_DIR", base + "/off"}, {"CUDAPOOL_CONTROL", "0"}}, {}});
  EXPECT_NE(std::string::npos, r.output.find("pipe=0")) << describe(r);
  remove_path(base);
}

TEST(ControlHostile, SymlinkOrFilePlantedAtThePipePathBeforeTheFirstCall) {
  // This process has made no CUDA call yet: plant at its own pipe path first.
  const std::string dir = control_dir();
  remove_path(dir);  // a leftover of an earlier run
  ASSERT_EQ(0, mkdir(dir.c_str(), 0700));
  const std::string victim = dir + "/victim";
  close(open(victim.c_str(), O_CREAT | O_WRONLY, 0600));
  ASSERT_EQ(0, symlink(victim.c_str(), own_pipe().c_str()));
  void* p = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&p, kMiB));
  EXPECT_FALSE(is_fifo(own_pipe()));
  EXPECT_FALSE(is_fifo(victim));
  EXPECT_EQ("", read_file(victim));
  ASSERT_CUDA_OK(cudaFree(p));
  ASSERT_CUDA_OK(cudaMalloc(&p, kMiB));  // still pooling
  ASSERT_CUDA_OK(cudaFree(p));
  // A regular file, in a child (its own pid, its own first call).
  const std::string log = make_scratch_dir("planted") + "/log";
  pid_t child = fork();
  if (child == 0) {
    const std::string path = cudapool::pipe_path(dir, getpid());
    close(open(path.c_str(), O_CREAT | O_WRONLY, 0600));
    void* q = nullptr;
    cudaMalloc(&q, kMiB);
    struct stat st {};
    _exit(lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the planted file was replaced";
}

TEST(ControlHostile, BadReplyPathsGetNothingAndTheProcessKeepsAnswering) {
  void* small = first_call();
  const std::string scratch = make_scratch_dir("reply");
  const std::string file = scratch + "/file";
  close(open(file.c_str(), O_CREAT | O_WRONLY, 0600));
  const std::string fifo = scratch + "/fifo";
  ASSERT_EQ(0, mkfifo(fifo.c_str(), 0600));
  const std::string link = scratch + "/link";
  ASSERT_EQ(0, symlink(fifo.c_str(), link.c_str()));
  const int reader = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  std::vector<std::string> paths = {file, link, scratch + "/missing", "relative"};
  int their_reader = -1;
  const std::string theirs = scratch + "/theirs";
  if (geteuid() == 0) {
    ASSERT_EQ(0, mkfifo(theirs.c_str(), 0666));
    ASSERT_EQ(0, chown(theirs.c_str(), nobody(), static_cast<gid_t>(-1)));
    their_reader = open(theirs.c_str(), O_RDONLY | O_NONBLOCK);
    paths.push_back(theirs);
  }
  for (const std::string& path : paths) {
    std::string error;
    ASSERT_TRUE(cudapool::send_line(own_pipe(), "stats reply=" + path, &error)) << error;
  }
  ClientReply r = cudapool::request(own_pipe(), "help", milliseconds(5000));
  EXPECT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  char buf[64];
  EXPECT_LE(read(reader, buf, sizeof buf), 0) << "an answer went through a symlink";
  if (their_reader >= 0) {
    EXPECT_LE(read(their_reader, buf, sizeof buf), 0) << "answered another user's FIFO";
    close(their_reader);
  }
  close(reader);
  EXPECT_EQ("", read_file(file));
  remove_path(scratch);
  EXPECT_CUDA_OK(cudaFree(small));
}

TEST(ControlHostile, GarbageFloodsAndCommandsRacingWithAllocationsLoseNothing) {
  void* small = first_call();
  const std::string pipe = own_pipe();
  std::atomic<bool> stop{false};
  std::atomic<int> corrupt{0}, failures{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 6; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::pair<void*, std::size_t>> held;
      std::uint64_t seed = static_cast<std::uint64_t>(t) << 32;
      while (!stop.load()) {
        const std::size_t size = (1 + rng() % 64) * 64 * kKiB;
        void* p = nullptr;
        if (cudaMalloc(&p, size) != cudaSuccess) {
          ++failures;
          continue;
        }
        stamp_pattern(p, size, seed + reinterpret_cast<std::uintptr_t>(p));
        held.emplace_back(p, size);
        if (held.size() > 8 || rng() % 3 == 0) {
          auto [q, n] = held.front();
          held.erase(held.begin());
          if (!stamps_intact(q, n, seed + reinterpret_cast<std::uintptr_t>(q))) ++corrupt;
          if (cudaFree(q) != cudaSuccess) ++failures;
        }
      }
      for (auto [q, n] : held) {
        if (!stamps_intact(q, n, seed + reinterpret_cast<std::uintptr_t>(q))) ++corrupt;
        if (cudaFree(q) != cudaSuccess) ++failures;
      }
    });
  }
  // The flood: commands, overlong lines, random bytes, thousands of lines, from two writers.
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      const int fd = open(pipe.c_str(), O_WRONLY);
      ASSERT_GE(fd, 0);
      std::mt19937 rng(100 + w);
      const char* commands[] = {"stats\n",
                                "trim\n",
                                "trim 64MiB\n",
                                "stats json\n",
                                "stats prometheus\n",
                                "reset-peaks\n",
                                "get LIMIT\n",
                                "set IDLE_RELEASE_MS 0\n",
                                "help\n",
                                "set LIMIT lots\n",
                                "frobnicate\n",
                                "trim device=9\n"};
      for (int i = 0; i < 3000; ++i) {
        std::string chunk;
        switch (rng() % 5) {
          case 0:
            chunk.assign(1 + rng() % 200, '\0');
            for (char& c : chunk)
              c = static_cast<char>(rng());
            break;
          case 1:
            if (i % 100 == 0) chunk = "set HIGH_WATERMARK 1MiB" + std::string(5000, 'x') + "\n";
            break;
          default:
            chunk = commands[rng() % std::size(commands)];
        }
        for (std::size_t off = 0; off < chunk.size();) {
          const std::size_t n = std::min<std::size_t>(chunk.size() - off, 4096);
          const ssize_t done = write(fd, chunk.data() + off, n);
          if (done <= 0) break;
          off += static_cast<std::size_t>(done);
        }
      }
      const char end = '\n';
      [[maybe_unused]] ssize_t n = write(fd, &end, 1);
      close(fd);
    });
  }
  for (std::thread& w : writers)
    w.join();
  sleep_ms(200);
  stop = true;
  for (std::thread& w : workers)
    w.join();
  EXPECT_EQ(0, corrupt.load()) << "a block changed while the flood ran";
  EXPECT_EQ(0, failures.load());
  EXPECT_EQ(0u, counters().free_failures);
  // Settings are what they were (64GiB from the registration): garbage changed nothing.
  ClientReply r = cudapool::request(pipe, "get HIGH_WATERMARK", milliseconds(10000));
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_EQ("64GiB\n", r.body);
  r = cudapool::request(pipe, "stats", milliseconds(10000));
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  std::istringstream lines(r.body);
  std::string line;
  std::getline(lines, line);
  std::getline(lines, line);
  EXPECT_EQ(64 * kKiB, parse_key_values(line)["in_use"]) << r.body;
  EXPECT_CUDA_OK(cudaFree(small));
}

// ---- fork and exit -----------------------------------------------------------------------------

TEST(ControlLifecycle, ForkChildMakesItsOwnPipeAndItGoesAtExit) {
  void* small = first_call();
  const std::string parent_pipe = own_pipe();
  int fds[2];
  ASSERT_EQ(0, pipe(fds));
  pid_t child = fork();
  if (child == 0) {
    close(fds[0]);
    const std::string mine = own_pipe();
    int code = 0;
    if (is_fifo(mine)) code |= 1;  // nothing before the child's first call
    void* p = nullptr;
    cudaMalloc(&p, kMiB);  // the stand-in refuses work in a fork child; the shim starts anyway
    if (!is_fifo(mine)) code |= 2;
    ClientReply r = cudapool::request(mine, "stats", milliseconds(5000));
    if (r.status != ClientReply::Status::kOk ||
        r.body.find("pid=" + std::to_string(getpid())) == std::string::npos)
      code |= 4;
    [[maybe_unused]] ssize_t n = write(fds[1], &code, sizeof code);
    std::exit(0);  // a normal exit: the exit handler removes the child's pipe
  }
  close(fds[1]);
  int code = -1;
  ASSERT_EQ(static_cast<ssize_t>(sizeof code), read(fds[0], &code, sizeof code));
  close(fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_EQ(0, code) << "1: pipe before the first call, 2: no pipe after it, 4: no answer";
  EXPECT_FALSE(is_fifo(cudapool::pipe_path(control_dir(), child))) << "the child's pipe stayed";
  ASSERT_TRUE(is_fifo(parent_pipe)) << "the child removed the parent's pipe";
  ClientReply r = cudapool::request(parent_pipe, "stats", milliseconds(5000));
  EXPECT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_NE(std::string::npos, r.body.find("pid=" + std::to_string(getpid()))) << r.body;
  EXPECT_CUDA_OK(cudaFree(small));
}

INTEG_SCENARIO(alloc_then_exit) {
  void* p = nullptr;
  if (cudaMalloc(&p, kMiB) != cudaSuccess) return 10;
  std::printf("pid=%d pipe=%d\n", static_cast<int>(getpid()), is_fifo(own_pipe()) ? 1 : 0);
  return 0;  // leaves its block live: nothing is freed at exit
}

TEST(ControlLifecycle, ThePipeDisappearsAtExitAndDoesNotDelayIt) {
  const auto start = Clock::now();
  ProcessResult r = run_scenario("alloc_then_exit", EnvChanges{});
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  ASSERT_EQ(0, r.exit_code) << describe(r);
  EXPECT_NE(std::string::npos, r.output.find("pipe=1")) << r.output;
  const int pid = std::atoi(r.output.c_str() + r.output.find("pid=") + 4);
  EXPECT_FALSE(is_fifo(cudapool::pipe_path(control_dir(), pid))) << "the pipe outlived its process";
  EXPECT_LT(took.count(), 2000) << "exit took " << took.count() << " ms";
}

}  // namespace
}  // namespace integ
