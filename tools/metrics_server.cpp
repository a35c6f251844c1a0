#include "tools/metrics_server.h"

#include <dirent.h>
#include <httplib.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <thread>

#include "control/client.h"
#include "control/stats_format.h"

namespace cudapool {
namespace {

// Pipes scraped at the same time; more wait for a free slot (each holds a thread and two FIFOs).
constexpr std::size_t kParallelScrapes = 32;

std::string folder_labels(const std::string& name) {
  const std::size_t sep = name.find('_');
  if (sep == std::string::npos || sep == 0 || sep + 1 == name.size())
    return "pod=\"" + escape_label_value(name) + "\"";
  return "namespace=\"" + escape_label_value(name.substr(0, sep)) + "\",pod=\"" +
         escape_label_value(name.substr(sep + 1)) + "\"";
}

struct PipeScrape {
  const ControlFolder* folder = nullptr;
  int pid = 0;
  ClientReply reply;
};

}  // namespace

std::vector<ControlFolder> control_folders(const std::string& dir, const std::string& root) {
  if (root.empty()) return {ControlFolder{dir, ""}};
  std::vector<ControlFolder> folders;
  DIR* d = opendir(root.c_str());
  if (d == nullptr) return folders;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    const std::string path = root + "/" + name;
    struct stat st {};
    if (lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;  // no symlinks
    folders.push_back(ControlFolder{path, folder_labels(name)});
  }
  closedir(d);
  std::sort(folders.begin(), folders.end(),
            [](const ControlFolder& a, const ControlFolder& b) { return a.path < b.path; });
  return folders;
}

bool remove_stale_pipe(const std::string& dir, int pid) {
  const std::string path = pipe_path(dir, pid);
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0 || !S_ISFIFO(st.st_mode) ||
      (st.st_uid != geteuid() && geteuid() != 0))
    return false;
  return unlink(path.c_str()) == 0;
}

NodeScrape scrape_node(const std::vector<ControlFolder>& folders,
                       std::chrono::milliseconds deadline) {
  std::vector<PipeScrape> work;
  for (const ControlFolder& f : folders)
    for (int pid : list_pipes(f.path))
      work.push_back(PipeScrape{&f, pid, {}});
  // Every pipe at once (in slots of kParallelScrapes): the scrape takes about the slowest answer,
  // at most `deadline` per slot, whatever the number of stuck processes in a slot.
  for (std::size_t start = 0; start < work.size(); start += kParallelScrapes) {
    const std::size_t end = std::min(work.size(), start + kParallelScrapes);
    std::vector<std::thread> threads;
    for (std::size_t i = start; i < end; ++i) {
      PipeScrape* s = &work[i];
      auto scrape = [s, deadline] {
        s->reply = request(pipe_path(s->folder->path, s->pid), "stats prometheus", deadline);
      };
      try {
        threads.emplace_back(scrape);
      } catch (const std::system_error&) {
        scrape();  // no thread to be had: this one in line
      }
    }
    for (std::thread& t : threads)
      t.join();
  }
  NodeScrape out;
  std::vector<std::string> expositions;
  for (const PipeScrape& s : work) {
    const std::string& labels = s.folder->labels;
    const std::string where = labels.empty() ? std::string() : " (" + labels + ")";
    switch (s.reply.status) {
      case ClientReply::Status::kNoServer:
        // Nobody holds the FIFO open: its process is gone. (Its pid may name a live process of
        // another pid namespace, or none in this one, so /proc says nothing here.)
        if (remove_stale_pipe(s.folder->path, s.pid)) ++out.removed_stale;
        continue;
      case ClientReply::Status::kNoPipe:
        continue;  // it exited between the listing and the request
      case ClientReply::Status::kOk:
        ++out.processes;
        ++out.answered;
        expositions.push_back(add_prometheus_labels(s.reply.body, labels));
        expositions.push_back(add_prometheus_labels(format_up_metric(s.pid, true), labels));
        continue;
      default:
        ++out.processes;
        out.problems.push_back("process " + std::to_string(s.pid) + where + ": " + s.reply.error);
        expositions.push_back(add_prometheus_labels(format_up_metric(s.pid, false), labels));
        continue;
    }
  }
  out.text = merge_prometheus(expositions);
  return out;
}

bool parse_listen_address(const std::string& text, std::string* host, int* port,
                          std::string* error) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos) {
    *error = "\"" + text + "\" is not HOST:PORT";
    return false;
  }
  std::string h = text.substr(0, colon);
  const std::string p = text.substr(colon + 1);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h.empty()) h = "0.0.0.0";
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(p.c_str(), &end, 10);
  if (p.empty() || errno != 0 || *end != '\0' || value < 0 || value > 65535) {
    *error = "bad port \"" + p + "\" in \"" + text + "\"";
    return false;
  }
  *host = h;
  *port = static_cast<int>(value);
  return true;
}

int serve_metrics(const ServeOptions& options) {
  // SIGTERM/SIGINT are taken by one thread that stops the server; blocked before any thread
  // starts, so that the server's threads inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a scraper that hangs up mid-answer

  httplib::Server server;
  std::atomic<unsigned long long> scrapes{0};
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    try {
      NodeScrape scrape = scrape_node(control_folders(options.dir, options.root), options.deadline);
      ++scrapes;
      for (const std::string& p : scrape.problems)
        std::fprintf(stderr, "cudapoolctl serve-metrics: %s\n", p.c_str());
      res.set_content(scrape.text, "text/plain; version=0.0.4; charset=utf-8");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cudapoolctl serve-metrics: scrape failed: %s\n", e.what());
      res.status = 500;
      res.set_content(std::string("scrape failed: ") + e.what() + "\n", "text/plain");
    }
  });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("cudapoolctl serve-metrics: GET /metrics (Prometheus text), GET /healthz\n",
                    "text/plain");
  });

  int port = options.port;
  if (port == 0) {
    port = server.bind_to_any_port(options.host);
  } else if (!server.bind_to_port(options.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    std::fprintf(stderr, "cudapoolctl serve-metrics: cannot listen on %s:%d: %s\n",
                 options.host.c_str(), options.port, std::strerror(errno));
    return 3;
  }
  const bool v6 = options.host.find(':') != std::string::npos;
  std::printf(
      "cudapoolctl serve-metrics: listening on http://%s%s%s:%d/metrics (%s %s, %lld ms "
      "per pipe)\n",
      v6 ? "[" : "", options.host.c_str(), v6 ? "]" : "", port,
      options.root.empty() ? "control folder" : "control folders under",
      options.root.empty() ? options.dir.c_str() : options.root.c_str(),
      static_cast<long long>(options.deadline.count()));
  std::fflush(stdout);

  std::thread stopper([&server, stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    server.stop();
  });
  const bool served = server.listen_after_bind();
  if (!served && server.is_running()) server.stop();
  // listen_after_bind returns after stop(); wake the stopper if the server ended on its own.
  pthread_kill(stopper.native_handle(), SIGTERM);
  stopper.join();
  std::printf("cudapoolctl serve-metrics: stopped after %llu scrapes\n", scrapes.load());
  return 0;
}

}  // namespace cudapool
