#include "shim/trace_recorder.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "control/options.h"

namespace cudapool {

std::atomic<bool> g_trace_recording{false};

namespace {

struct Record {
  std::uint64_t time_us;
  std::uintptr_t ptr;
  std::uint64_t size;
  std::uint32_t thread;
  std::int16_t device;
  bool alloc;
};

constexpr std::size_t kBufferRecords = 1 << 15;  // 32768 records, 1 MiB per buffer

// Never destroyed: cudaFree calls from static destructors may still record after exit handlers.
struct Recorder {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<Record> active, full;
  bool full_ready = false;  // `full` holds records for the writer
  bool writing = false;
  int fd = -1;
  std::chrono::steady_clock::time_point start;
  pid_t pid = 0;

  void write_records(const std::vector<Record>& records) {
    std::string out;
    out.reserve(records.size() * 48);
    char line[160];
    for (const Record& r : records) {
      int n = snprintf(line, sizeof line, "%u,%llu,%s,0x%llx,%llu,%d\n", r.thread,
                       static_cast<unsigned long long>(r.time_us), r.alloc ? "alloc" : "free",
                       static_cast<unsigned long long>(r.ptr),
                       static_cast<unsigned long long>(r.size), r.device);
      if (n > 0) out.append(line, static_cast<std::size_t>(n));
    }
    write_all(out);
  }
  void write_all(const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::write(fd, s.data() + off, s.size() - off);
      if (n <= 0) return;  // nothing sensible to do: the trace is incomplete
      off += static_cast<std::size_t>(n);
    }
  }
  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      cv.wait(lock, [this] { return full_ready; });
      writing = true;
      lock.unlock();
      write_records(full);
      lock.lock();
      full.clear();
      full_ready = false;
      writing = false;
      cv.notify_all();
    }
  }
};

Recorder* g_recorder = nullptr;
std::atomic<std::uint32_t> g_next_thread{0};
thread_local std::uint32_t t_thread __attribute__((tls_model("initial-exec"))) = 0;
thread_local bool t_has_thread __attribute__((tls_model("initial-exec"))) = false;
bool g_per_pid = false;  // the name has %p

void on_fork_child() {
  // The writer thread is gone and the recorder's lock may be held: a child records only into its
  // own file (a name with %p), which Shim's next start opens afresh.
  g_trace_recording.store(false, std::memory_order_relaxed);
  g_recorder = nullptr;
}

}  // namespace

bool trace_recorder_start(const std::string& pattern, std::string* error) {
  if (g_recorder != nullptr) return true;
  static bool handler = false;
  if (!handler) {
    handler = true;
    pthread_atfork(nullptr, nullptr, &on_fork_child);
  }
  g_per_pid = pattern.find("%p") != std::string::npos;
  static bool started_once = false;
  if (started_once && !g_per_pid) return true;  // a fork child: the parent owns the file
  const std::string path = expand_pid(pattern);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (error != nullptr) *error = path + ": " + strerror(errno);
    return false;
  }
  started_once = true;
  auto* r = new Recorder;
  r->fd = fd;
  r->pid = getpid();
  r->start = std::chrono::steady_clock::now();
  r->active.reserve(kBufferRecords);
  r->full.reserve(kBufferRecords);
  r->write_all("# cudapool trace of pid " + std::to_string(r->pid) +
               " (docs/benchmarks.md: replay with cudapool-bench replay FILE)\n"
               "thread,time_us,action,id,size,device\n");
  std::thread([r] { r->run(); }).detach();
  g_recorder = r;
  g_trace_recording.store(true, std::memory_order_release);
  return true;
}

void trace_record(bool alloc, const void* ptr, std::size_t size, int device) {
  Recorder* r = g_recorder;
  if (r == nullptr) return;
  if (!t_has_thread) {
    t_thread = g_next_thread.fetch_add(1, std::memory_order_relaxed);
    t_has_thread = true;
  }
  auto now = std::chrono::steady_clock::now();
  std::unique_lock lock(r->mutex);
  if (!g_trace_recording.load(std::memory_order_relaxed)) return;  // flushed at exit
  Record rec;
  rec.time_us = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(now - r->start).count());
  rec.ptr = reinterpret_cast<std::uintptr_t>(ptr);
  rec.size = size;
  rec.thread = t_thread;
  rec.device = static_cast<std::int16_t>(device);
  rec.alloc = alloc;
  // Times must not go backwards in the file: another thread may have taken its time first.
  if (!r->active.empty() && r->active.back().time_us > rec.time_us)
    rec.time_us = r->active.back().time_us;
  r->active.push_back(rec);
  if (r->active.size() < kBufferRecords) return;
  r->cv.wait(lock, [r] { return !r->full_ready; });  // the writer is a whole buffer behind
  // The writer cleared `full` (keeping its capacity): it becomes the active buffer.
  std::swap(r->full, r->active);
  r->full_ready = true;
  r->cv.notify_all();
}

void trace_recorder_flush() {
  Recorder* r = g_recorder;
  if (r == nullptr || r->pid != getpid()) return;
  std::unique_lock lock(r->mutex);
  g_trace_recording.store(false, std::memory_order_relaxed);
  r->cv.wait(lock, [r] { return !r->full_ready && !r->writing; });
  r->write_records(r->active);
  r->active.clear();
}

}  // namespace cudapool
