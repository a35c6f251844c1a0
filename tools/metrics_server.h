// The node's metrics for cudapoolctl: every managed process's Prometheus text, gathered from the
// control pipes in parallel with a deadline per pipe (one stuck process costs the scrape at most
// that deadline), and `cudapoolctl serve-metrics`, the HTTP endpoint that serves it (GET /metrics,
// GET /healthz). The HTTP library (cpp-httplib) is used here only: libcudapool.so never links it.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace cudapool {

// A control folder and the labels its processes' samples get (`pod="..."`, escaped; may be empty).
struct ControlFolder {
  std::string path;
  std::string labels;
};

// The control folders to scrape: `dir` itself, or with `root` every subfolder of `root`, each
// labelled from its name: "<namespace>_<pod>" gives namespace="<namespace>",pod="<pod>" (neither a
// Kubernetes namespace nor a pod name can hold '_'), any other name pod="<name>".
std::vector<ControlFolder> control_folders(const std::string& dir, const std::string& root);

// Removes a dead process's pipe when it is ours (or we are root). True when removed.
bool remove_stale_pipe(const std::string& dir, int pid);

struct NodeScrape {
  std::string text;   // one valid exposition: every answering process, cudapool_up for each
  int processes = 0;  // pipes with a server
  int answered = 0;   // of those, the ones that answered in time
  int removed_stale = 0;
  std::vector<std::string> problems;  // one line per process that did not answer
};

// Scrapes every pipe of `folders` ("stats prometheus") at once, each with `deadline`. A pipe
// nobody serves (its process is gone, whatever its pid means in this pid namespace) is removed;
// a process that does not answer in time gets cudapool_up 0.
NodeScrape scrape_node(const std::vector<ControlFolder>& folders,
                       std::chrono::milliseconds deadline);

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 9471;   // 0: any free port (printed)
  std::string dir;   // the control folder, or
  std::string root;  // every subfolder of it (listed again at each scrape: pods come and go)
  std::chrono::milliseconds deadline{2000};
};

// Parses "HOST:PORT", "[V6]:PORT" or ":PORT" (all addresses). False with a reason.
bool parse_listen_address(const std::string& text, std::string* host, int* port,
                          std::string* error);

// Serves until SIGTERM or SIGINT; prints one line with the address once listening. Returns the
// exit code (0 after a signal, 3 when the address cannot be bound).
int serve_metrics(const ServeOptions& options);

}  // namespace cudapool
