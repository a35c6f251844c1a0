// main() of every integration test program, and the helpers of integration_util.h.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/integration_util.h"

extern char** environ;

namespace integ {

// ---- the shim and the runtime ------------------------------------------------------------------

std::string object_defining(const char* symbol) {
  void* address = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info{};
  if (address == nullptr || dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "";
  // The same library can be loaded under two names (a preloaded sanitizer runtime by its build
  // path, the linked one by its soname): compare canonical paths.
  char resolved[PATH_MAX];
  return realpath(info.dli_fname, resolved) != nullptr ? resolved : info.dli_fname;
}

bool shim_preloaded() {
  return object_defining("cudaMalloc").find("libcudapool") != std::string::npos;
}

namespace {

// The loaded libcudart.so.13 (a reference to it: never loads one). Null until some library loads
// it.
void* runtime_handle() {
  static std::atomic<void*> handle{nullptr};
  if (void* h = handle.load()) return h;
  void* h = dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD);
  if (h != nullptr) handle.store(h);
  return h;
}

// The runtime's own function: dlvsym with the runtime's symbol version, since cudapool answers
// dlsym on the runtime's handle with its own functions (docs/driver-api.md), as it must for
// programs that look the runtime up that way.
template <typename Fn>
void bind(const char* name, Fn*& slot) {
  slot = runtime_handle() != nullptr
             ? reinterpret_cast<Fn*>(dlvsym(runtime_handle(), name, "libcudart.so.13"))
             : nullptr;
}

template <typename Fn>
Fn* standin_function(const char* name) {
  // The stand-in's extension API, looked up in the runtime itself: works for programs that do not
  // link it (plugin hosts) and fails cleanly against NVIDIA's runtime.
  return runtime_handle() != nullptr ? reinterpret_cast<Fn*>(dlsym(runtime_handle(), name))
                                     : nullptr;
}

}  // namespace

const NativeRuntime& native() {
  static const NativeRuntime table = [] {
    NativeRuntime t;
    bind("cudaMalloc", t.cudaMalloc);
    bind("cudaFree", t.cudaFree);
    bind("cudaMemGetInfo", t.cudaMemGetInfo);
    bind("cudaDeviceReset", t.cudaDeviceReset);
    bind("cudaIpcGetMemHandle", t.cudaIpcGetMemHandle);
    bind("cudaStreamBeginCapture", t.cudaStreamBeginCapture);
    bind("cudaStreamEndCapture", t.cudaStreamEndCapture);
    return t;
  }();
  if (table.cudaMalloc == nullptr) ADD_FAILURE() << "libcudart.so.13 is not loaded";
  return table;
}

StandinCounters counters(int device) {
  StandinCounters c{};
  auto get = standin_function<int(int, StandinCounters*)>("standinGetCounters");
  if (get == nullptr) {
    ADD_FAILURE() << "the CUDA runtime is not the stand-in (no standinGetCounters)";
  } else if (get(device, &c) != 0) {
    ADD_FAILURE() << "standinGetCounters(" << device << ") failed";
  }
  return c;
}

bool allocation_info(const void* ptr, StandinAllocationInfo* out) {
  auto get = standin_function<int(const void*, StandinAllocationInfo*)>("standinGetAllocationInfo");
  return get != nullptr && get(ptr, out) == 0;
}

std::pair<std::size_t, std::size_t> native_mem_info() {
  std::size_t free = 0, total = 0;
  const NativeRuntime& rt = native();
  if (rt.cudaMemGetInfo == nullptr || rt.cudaMemGetInfo(&free, &total) != cudaSuccess)
    ADD_FAILURE() << "native cudaMemGetInfo failed";
  return {free, total};
}

std::pair<std::size_t, std::size_t> shim_mem_info() {
  // Looked up, not linked: the plugin host shares this file and must not import cuda* symbols.
  static auto mem_get_info =
      reinterpret_cast<cudaError_t (*)(size_t*, size_t*)>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  std::size_t free = 0, total = 0;
  if (mem_get_info == nullptr || mem_get_info(&free, &total) != cudaSuccess)
    ADD_FAILURE() << "cudaMemGetInfo failed";
  return {free, total};
}

// ---- memory patterns ---------------------------------------------------------------------------

namespace {

inline std::uint8_t pattern_byte(std::uint64_t seed, std::size_t offset) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + (offset / 8) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<std::uint8_t>(x >> (8 * (offset % 8)));
}

constexpr std::size_t kStamp = 64;
constexpr std::size_t kStampStride = 64 * kKiB;

template <typename Fn>
void for_each_stamp(std::size_t n, Fn&& fn) {
  if (n <= 2 * kStamp) {
    fn(0, n);
    return;
  }
  for (std::size_t off = 0; off + kStamp < n - kStamp; off += kStampStride)
    fn(off, kStamp);
  fn(n - kStamp, kStamp);
}

}  // namespace

void fill_pattern(void* p, std::size_t n, std::uint64_t seed) {
  auto* bytes = static_cast<std::uint8_t*>(p);
  for (std::size_t i = 0; i < n; ++i)
    bytes[i] = pattern_byte(seed, i);
}

std::ptrdiff_t pattern_mismatch(const void* p, std::size_t n, std::uint64_t seed) {
  const auto* bytes = static_cast<const std::uint8_t*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (bytes[i] != pattern_byte(seed, i)) return static_cast<std::ptrdiff_t>(i);
  return -1;
}

void stamp_pattern(void* p, std::size_t n, std::uint64_t seed) {
  auto* bytes = static_cast<std::uint8_t*>(p);
  for_each_stamp(n, [&](std::size_t off, std::size_t len) {
    for (std::size_t i = off; i < off + len; ++i)
      bytes[i] = pattern_byte(seed, i);
  });
}

bool stamps_intact(const void* p, std::size_t n, std::uint64_t seed) {
  const auto* bytes = static_cast<const std::uint8_t*>(p);
  bool ok = true;
  for_each_stamp(n, [&](std::size_t off, std::size_t len) {
    for (std::size_t i = off; i < off + len; ++i)
      ok = ok && bytes[i] == pattern_byte(seed, i);
  });
  return ok;
}

// ---- time and the process ----------------------------------------------------------------------

bool wait_until(milliseconds timeout, const std::function<bool()>& done) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (Clock::now() >= deadline) return done();
    std::this_thread::sleep_for(milliseconds(10));
  }
}

void sleep_ms(int ms) {
  std::this_thread::sleep_for(milliseconds(ms));
}

int thread_count() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(dir))
    if (e->d_name[0] != '.') ++n;
  closedir(dir);
  return n;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void remove_path(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* dir = opendir(path.c_str())) {
      while (dirent* e = readdir(dir)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") remove_path(path + "/" + name);
      }
      closedir(dir);
    }
    rmdir(path.c_str());
  } else {
    unlink(path.c_str());
  }
}

std::string make_scratch_dir(const std::string& prefix) {
  const char* base = std::getenv("INTEG_SCRATCH_DIR");
  std::string dir = base != nullptr && *base != '\0' ? base : "/tmp";
  mkdir(dir.c_str(), 0755);
  std::string templ = dir + "/" + prefix + ".XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp(" << templ << ") failed: " << std::strerror(errno);
    return dir;
  }
  return buf.data();
}

std::map<std::string, unsigned long long> parse_key_values(const std::string& text) {
  std::map<std::string, unsigned long long> values;
  std::istringstream in(text);
  std::string item;
  while (in >> item) {
    auto eq = item.find('=');
    if (eq == std::string::npos) continue;
    values[item.substr(0, eq)] = std::strtoull(item.c_str() + eq + 1, nullptr, 10);
  }
  return values;
}

ProcessResult run_process(const std::vector<std::string>& argv, const EnvChanges& env,
                          milliseconds timeout) {
  ProcessResult result;
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    std::string name = entry.substr(0, entry.find('='));
    bool drop = false;
    for (const std::string& u : env.unset)
      drop = drop || u == name;
    for (const auto& kv : env.set)
      drop = drop || kv.first == name;
    if (!drop) env_strings.push_back(entry);
  }
  for (const auto& [name, value] : env.set)
    env_strings.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (std::string& s : env_strings)
    envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argvp;
  for (std::string& s : args)
    argvp.push_back(s.data());
  argvp.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    result.output = "pipe failed";
    return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  pid_t pid = -1;
  int err = posix_spawn(&pid, argvp[0], &actions, nullptr, argvp.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (err != 0) {
    close(fds[0]);
    result.output = std::string("posix_spawn failed: ") + std::strerror(err);
    return result;
  }
  const auto deadline = Clock::now() + timeout;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      result.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 100)));
    if (ready <= 0) continue;
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    result.output.append(buf, static_cast<std::size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  // The child closed its output; give it the rest of the time to exit.
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (Clock::now() >= deadline) {
      result.timed_out = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    sleep_ms(5);
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

ProcessResult run_scenario(const std::string& name, const EnvChanges& env,
                           const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/proc/self/exe", "--scenario=" + name};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, env);
}

EnvChanges without_shim() {
  return EnvChanges{{}, {"LD_PRELOAD"}};
}

std::string describe(const ProcessResult& r) {
  std::ostringstream out;
  out << "exit code " << r.exit_code << ", signal " << r.signal
      << (r.timed_out ? ", timed out" : "") << "; output:\n"
      << r.output;
  return out.str();
}

// ---- program flags and scenarios ---------------------------------------------------------------

namespace {

std::vector<std::string>& program_flags() {
  static std::vector<std::string> flags;
  return flags;
}

std::map<std::string, ScenarioFn>& scenarios() {
  static std::map<std::string, ScenarioFn> table;
  return table;
}

// Fails every test when the shim is not preloaded: a registration that lost its LD_PRELOAD must
// not pass by testing the bare runtime.
class ShimPreloadedCheck : public testing::Environment {
 public:
  void SetUp() override {
    ASSERT_TRUE(shim_preloaded()) << "libcudapool.so is not preloaded: cudaMalloc comes from '"
                                  << object_defining("cudaMalloc") << "' (LD_PRELOAD="
                                  << (std::getenv("LD_PRELOAD") ? std::getenv("LD_PRELOAD") : "")
                                  << ")";
  }
};

}  // namespace

bool has_flag(const std::string& name) {
  for (const std::string& f : program_flags())
    if (f == name) return true;
  return false;
}

std::string flag_value(const std::string& name) {
  for (const std::string& f : program_flags())
    if (f.rfind(name + "=", 0) == 0) return f.substr(name.size() + 1);
  return "";
}

ScenarioRegistrar::ScenarioRegistrar(const char* name, ScenarioFn fn) {
  scenarios()[name] = fn;
}

}  // namespace integ

int main(int argc, char** argv) {
  if (argc >= 2 && std::strncmp(argv[1], "--scenario=", 11) == 0) {
    auto it = integ::scenarios().find(argv[1] + 11);
    if (it == integ::scenarios().end()) {
      std::fprintf(stderr, "unknown scenario %s\n", argv[1] + 11);
      return 2;
    }
    return it->second(argc, argv);
  }
  testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i)
    integ::program_flags().push_back(argv[i]);
  testing::AddGlobalTestEnvironment(new integ::ShimPreloadedCheck);
  const int result = RUN_ALL_TESTS();
  if (testing::UnitTest::GetInstance()->test_to_run_count() == 0) {
    std::fprintf(stderr, "no test matched the filter: a registration that tests nothing fails\n");
    return 1;
  }
  return result;
}
