// The fleet side (issue 14), checked against the real programs: `cudapoolctl serve-metrics`
// scraped over HTTP, Prometheus's own linter (promtool check metrics) on what it serves, a real
// Prometheus server scraping it and a real node_exporter reading the textfile output, asked
// through Prometheus's HTTP API for the held bytes of this very process (the stand-in runtime,
// the shim preloaded).
//
// The programs come from Debian's packages (prometheus, prometheus-node-exporter; tools/dev.sh
// installs them) and are passed as --promtool=, --prometheus=, --node-exporter=; each one this test
// starts listens on 127.0.0.1 only, keeps its data in a scratch folder and is stopped at the end.
// Nothing waits for a fixed time: every step polls for its condition with a generous deadline.
//
// Registered with CUDAPOOL_HIGH_WATERMARK=64GiB CUDAPOOL_IDLE_RELEASE_MS=0: the pool holds still,
// so the held bytes Prometheus reports are the held bytes now.
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>

#include "control/client.h"
#include "tests/integration/integration_util.h"

extern char** environ;

namespace integ {
namespace {

// The stand-in's device 0 (tests/standin/driver_table.h: bytes 0x50 + i).
constexpr const char* kStandinUuid0 = "GPU-50515253-5455-5657-5859-5a5b5c5d5e5f";

std::string tool(const char* flag) {
  const std::string path = flag_value(flag);
  EXPECT_FALSE(path.empty()) << "registered without " << flag << "=PATH";
  return path;
}

std::string control_dir() {
  const char* dir = std::getenv("CUDAPOOL_CONTROL_DIR");
  return dir != nullptr ? dir : "";
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A program running in the background for the length of a test, output to `log`; SIGTERM, then
// SIGKILL, when it goes out of scope. Started without the shim (it makes no CUDA call).
class Daemon {
 public:
  Daemon(std::vector<std::string> argv, std::string log) : log_(std::move(log)) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e)
      if (std::string_view(*e).rfind("LD_PRELOAD=", 0) != 0) env.emplace_back(*e);
    std::vector<char*> envp, argvp;
    for (std::string& s : env)
      envp.push_back(s.data());
    envp.push_back(nullptr);
    for (std::string& s : argv)
      argvp.push_back(s.data());
    argvp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    const int err = posix_spawn(&pid_, argvp[0], &actions, nullptr, argvp.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) {
      ADD_FAILURE() << "cannot start " << argv[0] << ": " << std::strerror(err);
      pid_ = -1;
    }
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon() { stop(); }

  // True while it runs (reaps it once it has exited).
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }
  // Stops it; returns its wait status (-1 when it was not running).
  int stop() {
    if (!running()) return exit_status_;
    kill(pid_, SIGTERM);
    if (!wait_until(milliseconds(20000), [&] { return !running(); })) {
      kill(pid_, SIGKILL);
      int status = 0;
      waitpid(pid_, &status, 0);
      exit_status_ = status;
      pid_ = -1;
    }
    return exit_status_;
  }
  std::string output() const { return read_file(log_); }
  pid_t pid() const { return pid_; }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int exit_status_ = -1;
};

// A TCP port that was free a moment ago (for programs that cannot report the one they bound).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  EXPECT_NE(0, port) << "no free port";
  return port;
}

struct HttpAnswer {
  int status = 0;  // 0: no answer
  std::string body;
};

HttpAnswer http_get(int port, const std::string& path, const httplib::Params& params = {}) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(std::chrono::seconds(5));
  client.set_read_timeout(std::chrono::seconds(30));
  auto res = params.empty() ? client.Get(path) : client.Get(path, params, httplib::Headers{});
  if (!res) return {};
  return {res->status, res->body};
}

// serve-metrics on a free port of 127.0.0.1 (it prints the one it bound).
struct MetricsServer {
  std::unique_ptr<Daemon> daemon;
  int port = 0;
};
MetricsServer start_serve_metrics(const std::string& scratch, const std::string& timeout_ms,
                                  const std::string& dir) {
  MetricsServer s;
  s.daemon = std::make_unique<Daemon>(
      std::vector<std::string>{tool("--ctl"), "--dir", dir, "serve-metrics", "--listen",
                               "127.0.0.1:0", "--scrape-timeout", timeout_ms},
      scratch + "/serve-metrics.log");
  static const std::regex listening(R"(listening on http://127\.0\.0\.1:([0-9]+)/metrics)");
  std::smatch m;
  EXPECT_TRUE(wait_until(milliseconds(30000), [&] {
    const std::string out = s.daemon->output();
    if (std::regex_search(out, m, listening)) {
      s.port = std::stoi(m[1]);
      return true;
    }
    return !s.daemon->running();
  }));
  EXPECT_NE(0, s.port) << "serve-metrics did not start: " << s.daemon->output();
  return s;
}

ProcessResult promtool_check_metrics(const std::string& file) {
  return run_process({"/bin/sh", "-c", "\"$0\" check metrics < \"$1\"", tool("--promtool"), file},
                     without_shim(), milliseconds(60000));
}

// Allocations that stay: two live blocks and an idle cache (no idle timer, 64GiB watermark).
std::vector<void*> hold_memory() {
  std::vector<void*> live(2, nullptr);
  EXPECT_CUDA_OK(cudaMalloc(&live[0], 64 * kKiB));
  EXPECT_CUDA_OK(cudaMalloc(&live[1], 48 * kMiB));
  void* idle = nullptr;
  EXPECT_CUDA_OK(cudaMalloc(&idle, 100 * kMiB));
  EXPECT_CUDA_OK(cudaFree(idle));
  return live;
}

// The sample of `family` for this process's device 0 in an exposition, or -1.
long long own_sample(const std::string& text, const std::string& family) {
  const std::regex sample("(^|\n)" + family + "\\{pid=\"" + std::to_string(getpid()) +
                          "\",command=\"[^\"]*\",gpu=\"0\",UUID=\"" + kStandinUuid0 +
                          "\"\\} ([0-9]+)\n");
  std::smatch m;
  return std::regex_search(text, m, sample) ? std::stoll(m[2]) : -1;
}

TEST(Fleet, ServeMetricsScrapesEveryPipeWithADeadlineAndPromtoolAcceptsIt) {
  std::vector<void*> live = hold_memory();
  const std::string scratch = make_scratch_dir("fleet-serve");
  const std::string dir = control_dir();
  const std::uint64_t held = counters().bytes_held;

  // A stuck process: a pipe that someone holds open (so it looks served) and never answers.
  const std::string stuck = cudapool::pipe_path(dir, 999991);
  ASSERT_EQ(0, mkfifo(stuck.c_str(), 0600));
  const int stuck_fd = open(stuck.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(stuck_fd, 0);
  // A dead process's leftover: nobody holds it open.
  const std::string stale = cudapool::pipe_path(dir, 999992);
  ASSERT_EQ(0, mkfifo(stale.c_str(), 0600));

  MetricsServer server = start_serve_metrics(scratch, "500", dir);
  ASSERT_NE(0, server.port);
  HttpAnswer health = http_get(server.port, "/healthz");
  EXPECT_EQ(200, health.status);
  EXPECT_EQ("ok\n", health.body);

  HttpAnswer metrics = http_get(server.port, "/metrics");
  ASSERT_EQ(200, metrics.status) << server.daemon->output();
  const std::string& text = metrics.body;
  EXPECT_EQ(static_cast<long long>(held), own_sample(text, "cudapool_held_bytes")) << text;
  EXPECT_NE(-1, own_sample(text, "cudapool_in_use_bytes")) << text;
  EXPECT_NE(std::string::npos,
            text.find("cudapool_up{pid=\"" + std::to_string(getpid()) + "\"} 1\n"))
      << text;
  EXPECT_NE(std::string::npos, text.find("cudapool_up{pid=\"999991\"} 0\n"))
      << "the stuck pipe is not reported down: " << text;
  EXPECT_NE(std::string::npos,
            text.find("cudapool_build_info{pid=\"" + std::to_string(getpid()) + "\",command=\""))
      << text;
  EXPECT_NE(std::string::npos, text.find("# TYPE cudapool_idle_release_seconds gauge\n")) << text;
  EXPECT_EQ(std::string::npos, text.find("device=\"")) << text;
  EXPECT_FALSE(file_exists(stale)) << "serve-metrics left the pipe nobody serves";
  EXPECT_TRUE(file_exists(stuck)) << "a pipe that is served must stay";
  EXPECT_NE(std::string::npos, server.daemon->output().find("process 999991: no answer within"))
      << server.daemon->output();

  // Prometheus's linter accepts it; and it does reject what the exposition used to be.
  const std::string file = scratch + "/served.prom";
  write_file(file, text);
  ProcessResult lint = promtool_check_metrics(file);
  EXPECT_EQ(0, lint.exit_code) << describe(lint);
  EXPECT_EQ("", lint.output) << describe(lint);
  const std::string old_file = scratch + "/old.prom";
  write_file(old_file,
             "# HELP cudapool_idle_release_milliseconds Policy: idle timer (0 = off).\n"
             "# TYPE cudapool_idle_release_milliseconds gauge\n"
             "cudapool_idle_release_milliseconds{pid=\"1\",command=\"x\",device=\"0\"} 0\n");
  lint = promtool_check_metrics(old_file);
  EXPECT_NE(0, lint.exit_code) << describe(lint);
  EXPECT_NE(std::string::npos, lint.output.find("milliseconds")) << describe(lint);

  // `cudapoolctl metrics` (the textfile writer) says the same, with cudapool_up.
  ProcessResult all = run_process({tool("--ctl"), "--timeout", "500", "metrics"}, without_shim());
  EXPECT_EQ(static_cast<long long>(held), own_sample(all.output, "cudapool_held_bytes"))
      << describe(all);
  EXPECT_NE(std::string::npos, all.output.find("cudapool_up{pid=\"999991\"} 0\n"));

  EXPECT_TRUE(WIFEXITED(server.daemon->stop())) << server.daemon->output();
  EXPECT_NE(std::string::npos, server.daemon->output().find("stopped after 1 scrapes"))
      << server.daemon->output();
  close(stuck_fd);
  unlink(stuck.c_str());
  for (void* p : live)
    EXPECT_CUDA_OK(cudaFree(p));
  remove_path(scratch);
}

// A value of an instant query through Prometheus's HTTP API: the first result's value, or -1.
long long query_value(int port, const std::string& query, std::string* body) {
  HttpAnswer a = http_get(port, "/api/v1/query", {{"query", query}});
  *body = a.body;
  static const std::regex value(R"re("value":\[[0-9.e+]+,"([0-9.e+]+)"\])re");
  std::smatch m;
  if (a.status != 200 || !std::regex_search(a.body, m, value)) return -1;
  return std::stoll(m[1]);
}

TEST(Fleet, PrometheusScrapesServeMetricsAndNodeExporterReadsTheTextfile) {
  std::vector<void*> live = hold_memory();
  const std::string scratch = make_scratch_dir("fleet-prometheus");
  const std::string dir = control_dir();
  const std::uint64_t held = counters().bytes_held;
  const std::string pid = std::to_string(getpid());

  // node_exporter's textfile collector reads what `cudapoolctl metrics --output` writes.
  const std::string textfiles = scratch + "/textfile";
  ASSERT_EQ(0, mkdir(textfiles.c_str(), 0755));
  ProcessResult wrote = run_process(
      {tool("--ctl"), "--dir", dir, "metrics", "--output", textfiles + "/cudapool.prom"},
      without_shim());
  ASSERT_EQ(0, wrote.exit_code) << describe(wrote);

  MetricsServer server = start_serve_metrics(scratch, "2000", dir);
  ASSERT_NE(0, server.port);

  // Programs that cannot say which port they bound get a free one; one taken meanwhile (another
  // test) makes the program exit: start again on another.
  auto start_on_free_port = [&](const std::string& name,
                                const std::function<std::vector<std::string>(int)>& argv,
                                const std::string& ready_path, int* port) {
    std::string attempts;
    for (int attempt = 0; attempt < 5; ++attempt) {
      *port = free_port();
      auto d = std::make_unique<Daemon>(argv(*port), scratch + "/" + name + ".log");
      const bool up = wait_until(milliseconds(60000), [&] {
        return !d->running() || http_get(*port, ready_path).status == 200;
      });
      if (up && d->running()) return d;
      attempts += "\nattempt " + std::to_string(attempt + 1) + ": " + d->output();
    }
    ADD_FAILURE() << name << " did not start:" << attempts;
    return std::unique_ptr<Daemon>();
  };
  int node_port = 0;
  auto node = start_on_free_port(
      "node-exporter",
      [&](int port) {
        return std::vector<std::string>{tool("--node-exporter"), "--collector.disable-defaults",
                                        "--collector.textfile",
                                        "--collector.textfile.directory=" + textfiles,
                                        "--web.listen-address=127.0.0.1:" + std::to_string(port)};
      },
      "/metrics", &node_port);
  ASSERT_TRUE(node);
  HttpAnswer node_metrics = http_get(node_port, "/metrics");
  EXPECT_NE(std::string::npos, node_metrics.body.find("\nnode_textfile_scrape_error 0\n"))
      << "node_exporter could not read the textfile: " << node_metrics.body;

  const std::string config = scratch + "/prometheus.yml";
  write_file(config,
             "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
             "scrape_configs:\n"
             "  - job_name: cudapool\n    static_configs:\n      - targets: ['127.0.0.1:" +
                 std::to_string(server.port) +
                 "']\n"
                 "  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:" +
                 std::to_string(node_port) + "']\n");
  ProcessResult check = run_process({tool("--promtool"), "check", "config", config}, without_shim(),
                                    milliseconds(60000));
  ASSERT_EQ(0, check.exit_code) << describe(check);
  int prom_port = 0;
  auto prometheus = start_on_free_port(
      "prometheus",
      [&](int port) {
        return std::vector<std::string>{tool("--prometheus"), "--config.file=" + config,
                                        "--storage.tsdb.path=" + scratch + "/tsdb",
                                        "--web.listen-address=127.0.0.1:" + std::to_string(port),
                                        "--log.level=warn"};
      },
      "/-/ready", &prom_port);
  ASSERT_TRUE(prometheus);

  // Both ways in, the same number: the held bytes of this process on device 0.
  std::string body;
  for (const char* job : {"cudapool", "node"}) {
    const std::string query = std::string("cudapool_held_bytes{job=\"") + job + "\",pid=\"" + pid +
                              "\",gpu=\"0\",UUID=\"" + kStandinUuid0 + "\"}";
    long long value = -1;
    EXPECT_TRUE(wait_until(milliseconds(90000),
                           [&] {
                             value = query_value(prom_port, query, &body);
                             return value != -1;
                           }))
        << query << ": " << body;
    EXPECT_EQ(static_cast<long long>(held), value) << query << ": " << body;
  }
  EXPECT_EQ(1, query_value(prom_port, "cudapool_up{job=\"cudapool\",pid=\"" + pid + "\"}", &body))
      << body;
  EXPECT_EQ(1, query_value(prom_port, "up{job=\"cudapool\"}", &body)) << body;

  prometheus->stop();
  node->stop();
  server.daemon->stop();
  for (void* p : live)
    EXPECT_CUDA_OK(cudaFree(p));
  remove_path(scratch);
}

}  // namespace
}  // namespace integ
