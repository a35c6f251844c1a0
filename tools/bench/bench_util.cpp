#include "tools/bench/bench_util.h"

#include <dlfcn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "tests/standin/cuda_standin.h"  // the counters' layout only; functions come from dlsym
#include "tools/native_symbol.h"

extern char** environ;

namespace cudapool::bench {

std::string format(const char* fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string human_bytes(double b) {
  constexpr double kKiB = 1024, kMiB = kKiB * 1024, kGiB = kMiB * 1024;
  if (b < 0) return "-" + human_bytes(-b);
  if (b >= kGiB) return format("%.2f GiB", b / kGiB);
  if (b >= 10 * kMiB) return format("%.0f MiB", b / kMiB);
  if (b >= kMiB) return format("%.1f MiB", b / kMiB);
  if (b >= kKiB) return format("%.0f KiB", b / kKiB);
  return format("%.0f B", b);
}

std::string Table::render() const {
  std::vector<std::size_t> width;
  for (const auto& r : rows_) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (std::size_t i = 0; i < r.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (const auto& r : rows_) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      std::string pad(width[i] - r[i].size(), ' ');
      line += i == 0 ? r[i] + pad : "  " + pad + r[i];
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string row_line(const Row& row) {
  std::string s = "R";
  for (const auto& [k, v] : row)
    s += " " + k + "=" + v;
  return s;
}

bool parse_row_line(const std::string& line, Row* row) {
  if (line.rfind("R ", 0) != 0) return false;
  row->clear();
  std::istringstream in(line.substr(2));
  std::string token;
  while (in >> token) {
    std::size_t eq = token.find('=');
    if (eq == std::string::npos) continue;
    (*row)[token.substr(0, eq)] = token.substr(eq + 1);
  }
  return true;
}

double row_number(const Row& row, const std::string& key, double fallback) {
  auto it = row.find(key);
  if (it == row.end()) return fallback;
  char* end = nullptr;
  double v = strtod(it->second.c_str(), &end);
  return end != it->second.c_str() ? v : fallback;
}

bool run_worker(const std::vector<std::string>& args, const std::vector<std::string>& env,
                std::vector<Row>* rows, std::string* error) {
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e)
    vars.emplace_back(*e);
  for (const std::string& kv : env) {
    std::string name = kv.substr(0, kv.find('='));
    vars.erase(std::remove_if(vars.begin(), vars.end(),
                              [&](const std::string& v) { return v.rfind(name + "=", 0) == 0; }),
               vars.end());
    if (kv.size() > name.size() + 1) vars.push_back(kv);
  }
  std::string exe = self_exe();
  std::vector<char*> argv{const_cast<char*>(exe.c_str())};
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& v : vars)
    envp.push_back(v.data());
  envp.push_back(nullptr);

  int fds[2];
  if (pipe(fds) != 0) {
    *error = "pipe failed";
    return false;
  }
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    *error = "fork failed";
    return false;
  }
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  close(fds[1]);
  FILE* in = fdopen(fds[0], "r");
  std::string line;
  char buf[4096];
  while (fgets(buf, sizeof buf, in) != nullptr) {
    line += buf;
    if (line.back() != '\n') continue;
    line.pop_back();
    Row r;
    if (parse_row_line(line, &r)) rows->push_back(std::move(r));
    line.clear();
  }
  fclose(in);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    *error = WIFEXITED(status) ? format("worker exited with status %d", WEXITSTATUS(status))
                               : format("worker killed by signal %d", WTERMSIG(status));
    return false;
  }
  return true;
}

std::string find_cudapool(const std::string& given) {
  if (!given.empty()) return given;
  std::string dir = dir_of(self_exe());
  for (const char* rel : {"/../../shim/libcudapool.so", "/../lib/libcudapool.so",
                          "/../lib64/libcudapool.so", "/libcudapool.so"}) {
    std::string p = dir + rel;
    if (file_exists(p)) return real_path(p);
  }
  return "";
}

StandinProbe StandinProbe::read() {
  static auto get =
      reinterpret_cast<int (*)(int, StandinCounters*)>(dlsym(RTLD_DEFAULT, "standinGetCounters"));
  StandinProbe p;
  if (get == nullptr) return p;
  StandinCounters c{};
  get(-1, &c);
  p.present = true;
  p.mallocs = c.mallocs;
  p.frees = c.frees;
  static auto get_vmm = reinterpret_cast<int (*)(int, StandinVmmCounters*)>(
      dlsym(RTLD_DEFAULT, "standinGetVmmCounters"));
  if (StandinVmmCounters v{}; get_vmm != nullptr && get_vmm(-1, &v) == 0) {
    p.mallocs += v.creates;
    p.frees += v.releases;
    p.maps = v.maps;
    p.unmaps = v.unmaps;
  }
  p.syncs = c.device_syncs;
  p.held = c.bytes_held;
  p.peak_held = c.peak_bytes_held;
  return p;
}

bool device_used_bytes(std::uint64_t* used) {
  using MemInfo = int (*)(size_t*, size_t*);
  static MemInfo mem_info = []() -> MemInfo {
    if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL) == nullptr) return nullptr;
    // The device as the driver sees it, not cudapool's answer (tools/native_symbol.h).
    return reinterpret_cast<MemInfo>(tools::native_symbol("libcuda.so", "cuMemGetInfo_v2"));
  }();
  if (mem_info == nullptr) return false;
  size_t free = 0, total = 0;
  if (mem_info(&free, &total) != 0) return false;
  *used = total - free;
  return true;
}

}  // namespace cudapool::bench
