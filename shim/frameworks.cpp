#include "shim/frameworks.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "control/log.h"
#include "control/size.h"
#include "shim/python.h"

namespace cudapool {

namespace {

// One adapter: Python run with `sys`, `devices` (ordinals with a pool), `empty` (empty the cache
// first) and `ready(module)` (imported, not half-way through its import) defined. It appends
// (device, reserved, allocated, activity) to `rows` when the framework holds a cache, and must
// not import the framework itself.
struct Adapter {
  const char* name;
  const char* body;
};

constexpr Adapter kAdapters[] = {
    // PyTorch's caching allocator: per-device figures with the device passed explicitly;
    // empty_cache() empties every device's cache. Activity: its allocation count.
    {"torch", R"(
m = sys.modules.get('torch')
c = getattr(m, 'cuda', None) if ready(m) else None
if c is not None and c.is_initialized():
    if empty:
        c.empty_cache()
    for d in devices:
        rows.append((d, c.memory_reserved(d), c.memory_allocated(d),
                     c.memory_stats(d).get('allocation.all.allocated', 0)))
)"},
    // CuPy's default memory pool: one pool per device, reached with that device current (on this
    // thread only). CuPy counts no allocations: its in-use bytes stand for activity.
    {"cupy", R"(
m = sys.modules.get('cupy')
if ready(m):
    pool = m.get_default_memory_pool()
    for d in devices:
        with m.cuda.Device(d):
            if empty:
                pool.free_all_blocks()
            total, used = pool.total_bytes(), pool.used_bytes()
        if total:
            rows.append((d, total, used, used))
)"},
};
constexpr int kAdapterCount = static_cast<int>(std::size(kAdapters));

constexpr const char* kPrelude = R"(import sys
def ready(m):
    return m is not None and not getattr(getattr(m, '__spec__', None), '_initializing', False)
)";

std::string indent(const char* body) {
  std::string out = "    ";
  for (const char* c = body; *c != '\0'; ++c) {
    out += *c;
    if (*c == '\n' && c[1] != '\0') out += "    ";
  }
  return out;
}

}  // namespace

std::unique_ptr<Frameworks> Frameworks::create() {
  const python::Api* api = python::find_api();
  if (api == nullptr) return nullptr;
  return std::unique_ptr<Frameworks>(new Frameworks(*api));
}

void Frameworks::add_device(int device) {
  if (device < 0 || device >= kMaxDevices) return;
  std::lock_guard lock(mutex_);
  devices_ |= std::uint64_t{1} << device;
  search_ms_ = 1000;  // a new device is a sign of a framework starting: look again soon
  next_read_ms_ = 0;
}

void Frameworks::stop() {
  std::lock_guard lock(mutex_);
  stopping_ = true;
  work_cv_.notify_all();
  done_cv_.notify_all();
}

std::string Frameworks::attached() const {
  std::lock_guard lock(mutex_);
  std::string names;
  for (int a = 0; a < kAdapterCount; ++a) {
    if ((attached_ & (1u << a)) == 0) continue;
    if (!names.empty()) names += '+';
    names += kAdapters[a].name;
  }
  return names;
}

void Frameworks::tick(std::uint64_t now_ms) {
  std::lock_guard lock(mutex_);
  if (state_ == State::kOff || stopping_ || devices_ == 0 || now_ms < next_read_ms_) return;
  if (state_ == State::kAttached) {
    next_read_ms_ = now_ms + kPollMs;
  } else {
    next_read_ms_ = now_ms + search_ms_;
    search_ms_ = std::min(search_ms_ * 2, kMaxSearchMs);
  }
  read_requested_ = true;
  start_thread_locked();
  work_cv_.notify_one();
}

FrameworkUsage Frameworks::usage(int device) {
  if (device < 0 || device >= kMaxDevices) return {};
  std::lock_guard lock(mutex_);
  return usage_[device];
}

FrameworkUsage Frameworks::release(int device) {
  std::unique_lock lock(mutex_);
  if (state_ == State::kOff || stopping_ || device >= kMaxDevices) return {};
  const std::uint64_t ticket = ++release_requested_;
  start_thread_locked();
  work_cv_.notify_one();
  const bool done = done_cv_.wait_for(lock, std::chrono::milliseconds(kReleaseWaitMs), [&] {
    return runs_done_ >= ticket || stopping_ || state_ == State::kOff;
  });
  if (!done && !wait_logged_) {
    wait_logged_ = true;
    log_warn(
        "framework adapters: no answer within {} ms (the interpreter did not hand over its lock); "
        "releasing the pool's own idle memory only",
        kReleaseWaitMs);
  }
  return device < 0 ? FrameworkUsage{} : usage_[device];
}

void Frameworks::start_thread_locked() {
  if (thread_started_) return;
  thread_started_ = true;
  // Detached: it may wait for the GIL while the process exits. Not noexcept anywhere: CPython
  // <= 3.13 ends a thread that takes the GIL during finalisation with pthread_exit, whose unwind
  // must pass (python.h: the first run only).
  std::thread([this] { run(); }).detach();
}

std::string Frameworks::code(std::uint64_t devices, bool empty) const {
  std::string c = kPrelude;
  c += "devices = [";
  for (int d = 0; d < kMaxDevices; ++d) {
    if ((devices & (std::uint64_t{1} << d)) != 0) c += std::to_string(d) + ",";
  }
  c += "]\nempty = ";
  c += empty ? "True" : "False";
  c += '\n';
  for (int a = 0; a < kAdapterCount; ++a) {
    if ((quiet_ & (1u << a)) != 0) continue;
    const std::string name = kAdapters[a].name;
    c += "rows = []\ntry:\n" + indent(kAdapters[a].body) + "except Exception as e:\n    err += '" +
         name + " %s: %s\\n' % (type(e).__name__, e)\nelse:\n    out += ''.join('" + name +
         " %d %d %d %d\\n' % r for r in rows)\n";
  }
  return c;
}

void Frameworks::take_result(const std::string& out, const std::string& error) {
  FrameworkUsage fresh[kMaxDevices];
  unsigned attached = 0;
  std::size_t pos = 0;
  while (pos < out.size()) {  // "name device reserved allocated activity" per line
    std::size_t nl = out.find('\n', pos);
    if (nl == std::string::npos) nl = out.size();
    const std::string line = out.substr(pos, nl - pos);
    pos = nl + 1;
    char name[16] = {};
    int d = -1;
    unsigned long long reserved = 0, allocated = 0, activity = 0;
    if (std::sscanf(line.c_str(), "%15s %d %llu %llu %llu", name, &d, &reserved, &allocated,
                    &activity) != 5 ||
        d < 0 || d >= kMaxDevices)
      continue;
    for (int a = 0; a < kAdapterCount; ++a) {
      if (std::string_view(name) == kAdapters[a].name) attached |= 1u << a;
    }
    FrameworkUsage& u = fresh[d];
    u.known = true;
    u.reserved += reserved;
    u.allocated += allocated;
    u.activity += activity;
  }
  pos = 0;
  while (pos < error.size()) {  // "name what" per line: that adapter goes quiet
    std::size_t nl = error.find('\n', pos);
    if (nl == std::string::npos) nl = error.size();
    const std::string line = error.substr(pos, nl - pos);
    pos = nl + 1;
    for (int a = 0; a < kAdapterCount; ++a) {
      const std::string name = kAdapters[a].name;
      if (line.compare(0, name.size() + 1, name + " ") != 0 || (quiet_ & (1u << a)) != 0) continue;
      quiet_ |= 1u << a;
      log_warn("framework adapter {}: {}; it reads and empties that cache no more", name,
               line.substr(name.size() + 1));
    }
  }
  for (int a = 0; a < kAdapterCount; ++a) {
    const unsigned bit = 1u << a;
    if ((attached & bit) != 0 && (attached_ & bit) == 0)
      log_info(
          "framework adapter {}: its cache counts as idle memory in cudapool's rules, which "
          "empty it before they release",
          kAdapters[a].name);
  }
  attached_ = attached;
  std::copy(std::begin(fresh), std::end(fresh), std::begin(usage_));
  if (attached != 0)
    state_ = State::kAttached;
  else if (state_ == State::kAttached)
    state_ = State::kSearching;
  if (quiet_ == (1u << kAdapterCount) - 1) state_ = State::kOff;  // every adapter raised
}

void Frameworks::run() {
  pthread_setname_np(pthread_self(), "cudapool-py");
  std::unique_lock lock(mutex_);
  for (;;) {
    work_cv_.wait(lock,
                  [&] { return stopping_ || read_requested_ || release_requested_ > runs_done_; });
    if (stopping_ || state_ == State::kOff) return;
    const std::uint64_t ticket = release_requested_;
    const bool empty = ticket > runs_done_;
    read_requested_ = false;
    const std::string c = code(devices_, empty);
    lock.unlock();
    const python::RunResult r = python::run(api_, c);  // no lock of ours held
    lock.lock();
    switch (r.status) {
      case python::RunStatus::kOk:
        take_result(r.out, r.error);
        break;
      case python::RunStatus::kNotStarted:
        break;  // looked for again at the next reading
      case python::RunStatus::kExiting:
        state_ = State::kOff;
        break;
      case python::RunStatus::kUnsupported:
      case python::RunStatus::kFailed:
        state_ = State::kOff;
        log_info("framework adapters off: {}", r.error);
        break;
    }
    if (state_ == State::kOff) std::fill(std::begin(usage_), std::end(usage_), FrameworkUsage{});
    runs_done_ = std::max(runs_done_, ticket);
    done_cv_.notify_all();
  }
}

}  // namespace cudapool
