// cudapoolctl doctor: the reading of /proc, the ELF inspection, the advice and the two formats.
#include "tools/doctor.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "control/client.h"
#include "control/options.h"
#include "control/size.h"
#include "control/stats_format.h"

namespace cudapool::doctor {
namespace {

std::string_view basename_of(std::string_view path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

bool read_whole(const std::string& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = std::strerror(errno);
    return false;
  }
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  return true;
}

// A whole NUL-terminated string `word` inside [data, data+size): preceded by NUL (or the start).
bool has_whole_string(const char* data, std::size_t size, std::string_view word) {
  const std::string needle = std::string(word) + '\0';
  const char* p = data;
  const char* end = data + size;
  while (p < end) {
    const void* hit = memmem(p, static_cast<std::size_t>(end - p), needle.data(), needle.size());
    if (hit == nullptr) return false;
    const char* at = static_cast<const char*>(hit);
    if (at == data || at[-1] == '\0') return true;
    p = at + 1;
  }
  return false;
}

// A read-only mapping of a file, unmapped at the end of its scope.
class MappedBytes {
 public:
  explicit MappedBytes(const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      error_ = std::strerror(errno);
      return;
    }
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      error_ = "not a regular file";
      close(fd);
      return;
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        error_ = std::strerror(errno);
        size_ = 0;
      } else {
        data_ = static_cast<const char*>(p);
      }
    }
    close(fd);
    ok_ = error_.empty();
  }
  ~MappedBytes() {
    if (data_ != nullptr) munmap(const_cast<char*>(data_), size_);
  }
  MappedBytes(const MappedBytes&) = delete;
  MappedBytes& operator=(const MappedBytes&) = delete;
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const char* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  std::size_t size_ = 0;
  bool ok_ = false;
  std::string error_;
};

bool in_bounds(std::size_t size, std::uint64_t offset, std::uint64_t length) {
  return offset <= size && length <= size - offset;
}

// A NUL-terminated string at `offset` of a string table section, or empty when out of bounds.
std::string_view string_at(const MappedBytes& f, const Elf64_Shdr& table, std::uint64_t offset) {
  if (offset >= table.sh_size || !in_bounds(f.size(), table.sh_offset, table.sh_size)) return {};
  const char* start = f.data() + table.sh_offset + offset;
  const std::size_t room = table.sh_size - offset;
  const void* nul = std::memchr(start, '\0', room);
  if (nul == nullptr) return {};
  return std::string_view(start, static_cast<std::size_t>(static_cast<const char*>(nul) - start));
}

bool is_device_code_section(std::string_view name) {
  return contains(name, "fatbin") || contains(name, "nvFatBin") || starts_with(name, ".nv");
}

bool has_framework(const Diagnosis& d, std::string_view name) {
  for (const FrameworkSeen& f : d.frameworks)
    if (f.name == name) return true;
  return false;
}

std::string framework_title(std::string_view name) {
  if (name == "torch") return "PyTorch";
  if (name == "cupy") return "CuPy";
  if (name == "jax") return "JAX/XLA";
  if (name == "numba") return "numba";
  return std::string(name);
}

// The framework the pipe reports on any device, or empty.
std::string pipe_framework(const Diagnosis& d) {
  for (const DeviceSeen& dev : d.stats.devices)
    if (!dev.framework.empty()) return dev.framework;
  return "";
}

}  // namespace

// ---- /proc/PID/maps ----------------------------------------------------------------------------

std::vector<MappedFile> mapped_files(std::string_view maps_text) {
  std::vector<MappedFile> files;
  std::set<std::string, std::less<>> seen;
  while (!maps_text.empty()) {
    const std::size_t nl = maps_text.find('\n');
    std::string_view line = maps_text.substr(0, nl);
    maps_text = nl == std::string_view::npos ? std::string_view() : maps_text.substr(nl + 1);
    // address perms offset dev inode, then the path (which may hold blanks).
    std::size_t pos = 0;
    for (int field = 0; field < 5 && pos != std::string_view::npos; ++field) {
      pos = line.find_first_not_of(' ', pos);
      if (pos != std::string_view::npos) pos = line.find(' ', pos);
    }
    if (pos == std::string_view::npos) continue;
    pos = line.find_first_not_of(' ', pos);
    if (pos == std::string_view::npos || line[pos] != '/') continue;
    std::string_view path = line.substr(pos);
    MappedFile f;
    constexpr std::string_view kDeleted = " (deleted)";
    if (path.size() > kDeleted.size() && path.substr(path.size() - kDeleted.size()) == kDeleted) {
      path.remove_suffix(kDeleted.size());
      f.deleted = true;
    }
    if (!seen.insert(std::string(path)).second) continue;
    f.path = std::string(path);
    files.push_back(std::move(f));
  }
  return files;
}

LibraryKind classify_library(std::string_view path) {
  const std::string_view base = basename_of(path);
  if (starts_with(base, "libcudapool") && contains(base, ".so")) return LibraryKind::kCudapool;
  if (starts_with(base, "libcudart.so")) return LibraryKind::kRuntime;
  if (starts_with(base, "libcuda.so")) return LibraryKind::kDriver;
  if (starts_with(base, "libtorch_cuda.so") || starts_with(base, "libc10_cuda.so"))
    return LibraryKind::kTorch;
  if (!contains(base, ".so")) return LibraryKind::kOther;
  if (contains(path, "/cupy/cuda/") || contains(path, "/cupy_backends/cuda/"))
    return LibraryKind::kCupy;
  if (starts_with(base, "xla_extension") || contains(path, "/jaxlib/") ||
      contains(path, "/jax_cuda") || contains(path, "/jax_plugins/"))
    return LibraryKind::kJax;
  if (contains(path, "/numba/")) return LibraryKind::kNumba;
  return LibraryKind::kOther;
}

std::string_view to_string(LibraryKind kind) {
  switch (kind) {
    case LibraryKind::kCudapool:
      return "cudapool";
    case LibraryKind::kRuntime:
      return "runtime";
    case LibraryKind::kDriver:
      return "driver";
    case LibraryKind::kTorch:
      return "torch";
    case LibraryKind::kCupy:
      return "cupy";
    case LibraryKind::kJax:
      return "jax";
    case LibraryKind::kNumba:
      return "numba";
    case LibraryKind::kOther:
      break;
  }
  return "other";
}

// ---- ELF files ---------------------------------------------------------------------------------

ElfFacts inspect_elf(const std::string& path) {
  ElfFacts facts;
  const MappedBytes f(path);
  if (!f.ok()) {
    facts.error = f.error();
    return facts;
  }
  facts.readable = true;
  if (f.size() < sizeof(Elf64_Ehdr) || std::memcmp(f.data(), ELFMAG, SELFMAG) != 0) {
    facts.error = "not an ELF file";
    return facts;
  }
  Elf64_Ehdr eh;
  std::memcpy(&eh, f.data(), sizeof eh);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) {
    facts.error = "not a 64-bit ELF file";
    return facts;
  }
  if (eh.e_shnum == 0 || eh.e_shentsize != sizeof(Elf64_Shdr) ||
      !in_bounds(f.size(), eh.e_shoff, std::uint64_t{eh.e_shnum} * sizeof(Elf64_Shdr)) ||
      eh.e_shstrndx >= eh.e_shnum) {
    facts.error = "no readable section headers";
    return facts;
  }
  facts.is_elf = true;
  std::vector<Elf64_Shdr> sections(eh.e_shnum);
  std::memcpy(sections.data(), f.data() + eh.e_shoff, sections.size() * sizeof(Elf64_Shdr));
  const Elf64_Shdr& names = sections[eh.e_shstrndx];
  for (const Elf64_Shdr& s : sections) {
    if (s.sh_type == SHT_NOBITS || !in_bounds(f.size(), s.sh_offset, s.sh_size)) continue;
    const char* body = f.data() + s.sh_offset;
    if (s.sh_type == SHT_DYNAMIC && s.sh_link < sections.size()) {
      const Elf64_Shdr& strings = sections[s.sh_link];
      for (std::uint64_t off = 0; off + sizeof(Elf64_Dyn) <= s.sh_size; off += sizeof(Elf64_Dyn)) {
        Elf64_Dyn dyn;
        std::memcpy(&dyn, body + off, sizeof dyn);
        if (dyn.d_tag == DT_NULL) break;
        if (dyn.d_tag == DT_NEEDED) {
          facts.needed.emplace_back(string_at(f, strings, dyn.d_un.d_val));
        } else if (dyn.d_tag == DT_SONAME) {
          facts.soname = std::string(string_at(f, strings, dyn.d_un.d_val));
        }
      }
    } else if ((s.sh_type == SHT_DYNSYM || s.sh_type == SHT_SYMTAB) &&
               s.sh_link < sections.size() && !facts.defines_cuda_malloc) {
      const Elf64_Shdr& strings = sections[s.sh_link];
      for (std::uint64_t off = 0; off + sizeof(Elf64_Sym) <= s.sh_size; off += sizeof(Elf64_Sym)) {
        Elf64_Sym sym;
        std::memcpy(&sym, body + off, sizeof sym);
        if (sym.st_shndx == SHN_UNDEF || ELF64_ST_TYPE(sym.st_info) != STT_FUNC) continue;
        if (string_at(f, strings, sym.st_name) == "cudaMalloc") {
          facts.defines_cuda_malloc = true;
          break;
        }
      }
    } else if (s.sh_type == SHT_PROGBITS && (s.sh_flags & SHF_ALLOC) != 0 &&
               (s.sh_flags & (SHF_WRITE | SHF_EXECINSTR)) == 0 &&
               !is_device_code_section(string_at(f, names, s.sh_name))) {
      facts.has_driver_name =
          facts.has_driver_name || has_whole_string(body, s.sh_size, "libcuda.so.1");
      facts.has_cuda_malloc_name =
          facts.has_cuda_malloc_name || has_whole_string(body, s.sh_size, "cudaMalloc");
    }
  }
  return facts;
}

RuntimeRole runtime_role(std::string_view name, const ElfFacts& facts) {
  const std::string_view own = facts.soname.empty() ? name : std::string_view(facts.soname);
  switch (classify_library(own)) {
    case LibraryKind::kCudapool:
      return RuntimeRole::kCudapool;
    case LibraryKind::kRuntime:
      return RuntimeRole::kSharedRuntime;
    case LibraryKind::kDriver:
      return RuntimeRole::kDriver;
    default:
      break;
  }
  if (!facts.is_elf) return RuntimeRole::kNone;
  for (const std::string& n : facts.needed)
    if (classify_library(n) == LibraryKind::kRuntime) return RuntimeRole::kNone;
  if (facts.defines_cuda_malloc || (facts.has_driver_name && facts.has_cuda_malloc_name))
    return RuntimeRole::kStaticRuntime;
  return RuntimeRole::kNone;
}

std::string static_runtime_evidence(const ElfFacts& facts) {
  std::string why;
  if (facts.defines_cuda_malloc) why = "defines cudaMalloc";
  if (facts.has_driver_name && facts.has_cuda_malloc_name)
    why += std::string(why.empty() ? "" : ", ") + "names libcuda.so.1 and cudaMalloc";
  return why + ", no libcudart dependency";
}

// ---- environ, stats ----------------------------------------------------------------------------

std::map<std::string, std::string> parse_environ(std::string_view bytes) {
  std::map<std::string, std::string> env;
  while (!bytes.empty()) {
    const std::size_t nul = bytes.find('\0');
    const std::string_view entry = bytes.substr(0, nul);
    bytes = nul == std::string_view::npos ? std::string_view() : bytes.substr(nul + 1);
    const std::size_t eq = entry.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  return env;
}

bool parse_stats(std::string_view text, PipeStats* out) {
  bool have_pid = false;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    std::map<std::string, std::string, std::less<>> kv;
    std::istringstream words{std::string(line)};
    for (std::string word; words >> word;) {
      const std::size_t eq = word.find('=');
      if (eq != std::string::npos) kv[word.substr(0, eq)] = word.substr(eq + 1);
    }
    auto number = [&](std::string_view key) -> std::uint64_t {
      auto it = kv.find(key);
      return it == kv.end() ? 0 : std::strtoull(it->second.c_str(), nullptr, 10);
    };
    if (kv.count("pid") != 0) {
      have_pid = true;
      out->runtime_calls = number("runtime_calls");
      out->driver_calls = number("driver_calls");
      out->dlsym_lookups = number("dlsym_lookups");
      out->proc_address_lookups = number("proc_address_lookups");
    } else if (kv.count("device") != 0) {
      DeviceSeen d;
      d.device = static_cast<int>(number("device"));
      d.held = number("held");
      d.in_use = number("in_use");
      if (auto it = kv.find("framework"); it != kv.end()) d.framework = it->second;
      d.framework_reserved = number("framework_reserved");
      d.framework_allocated = number("framework_allocated");
      out->devices.push_back(d);
    }
  }
  return have_pid;
}

// ---- reading a process -------------------------------------------------------------------------

bool take_snapshot(int pid, Snapshot* s, std::string* error) {
  const std::string proc = "/proc/" + std::to_string(pid);
  struct stat st {};
  if (stat(proc.c_str(), &st) != 0) {
    *error = errno == ENOENT ? "no process " + std::to_string(pid) : std::strerror(errno);
    return false;
  }
  s->pid = pid;
  s->uid = st.st_uid;
  std::string why;
  if (read_whole(proc + "/comm", &s->comm, &why)) {
    while (!s->comm.empty() && s->comm.back() == '\n')
      s->comm.pop_back();
  }
  char exe[4096];
  const ssize_t n = readlink((proc + "/exe").c_str(), exe, sizeof exe - 1);
  s->exe = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : std::string();
  s->maps_read = read_whole(proc + "/maps", &s->maps, &s->maps_error);
  if (s->maps_read && s->maps.empty()) {
    s->maps_read = false;
    s->maps_error = "empty (the process is exiting, or a kernel thread)";
  }
  s->environ_read = read_whole(proc + "/environ", &s->environ, &s->environ_error);
  return true;
}

void diagnose_snapshot(const Snapshot& s, const std::string& exe_file, Diagnosis* d) {
  d->pid = s.pid;
  d->uid = s.uid;
  d->command = s.comm;
  d->exe = s.exe;
  d->maps_read = s.maps_read;
  d->maps_error = s.maps_error;
  // maps: the files, and what each is. The executable is read through exe_file (/proc/PID/exe
  // while the process lives: it works when the file was replaced or lives in another mount
  // namespace); libraries by their path.
  std::set<std::string> framework_names;
  for (const MappedFile& f : s.maps_read ? mapped_files(s.maps) : std::vector<MappedFile>{}) {
    const LibraryKind kind = classify_library(f.path);
    switch (kind) {
      case LibraryKind::kCudapool:
        d->cudapool_libs.push_back(f.path);
        continue;
      case LibraryKind::kRuntime:
        d->shared_runtimes.push_back(f.path);
        continue;
      case LibraryKind::kDriver:
        d->drivers.push_back(f.path);
        continue;
      case LibraryKind::kTorch:
      case LibraryKind::kCupy:
      case LibraryKind::kJax:
      case LibraryKind::kNumba:
        if (framework_names.insert(std::string(to_string(kind))).second)
          d->frameworks.push_back({std::string(to_string(kind)), f.path});
        break;
      case LibraryKind::kOther:
        break;
    }
    const bool is_exe = f.path == s.exe && !exe_file.empty();
    const ElfFacts facts = inspect_elf(is_exe ? exe_file : f.path);
    const RuntimeRole role = runtime_role(f.path, facts);
    if (role == RuntimeRole::kStaticRuntime) {
      d->static_runtimes.push_back({f.path, static_runtime_evidence(facts)});
    } else if (role == RuntimeRole::kSharedRuntime) {
      d->shared_runtimes.push_back(f.path);  // by SONAME under another file name
    } else if (role == RuntimeRole::kDriver) {
      d->drivers.push_back(f.path);
    } else if (role == RuntimeRole::kCudapool) {
      d->cudapool_libs.push_back(f.path);
    }
  }
  d->environ_read = s.environ_read;
  d->environ_error = s.environ_error;
  if (s.environ_read) {
    for (const auto& [name, value] : parse_environ(s.environ)) {
      if (name == "LD_PRELOAD") d->ld_preload = value;
      if (name == "PYTORCH_NO_CUDA_MEMORY_CACHING") d->torch_no_caching = value;
      if (name == "XLA_PYTHON_CLIENT_ALLOCATOR") d->xla_allocator = value;
      if (starts_with(name, kEnvPrefix)) d->cudapool_variables.emplace_back(name, value);
    }
  }
}

std::string control_folder(const Snapshot& s, const std::optional<std::string>& dir) {
  if (dir) return *dir;
  const std::map<std::string, std::string> env = parse_environ(s.environ);
  const EnvLookup lookup = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  std::vector<std::string> warnings;
  const Options options = load_options(lookup, nullptr, &warnings);
  if (options.control_dir.empty() && lookup("XDG_RUNTIME_DIR") == nullptr)
    return "/tmp/cudapool-" + std::to_string(s.uid);  // the process's user, not ours
  return resolve_control_dir(options, lookup);
}

void ask_pipe(const std::string& pipe, std::chrono::milliseconds timeout, Diagnosis* d) {
  d->pipe = pipe;
  const ClientReply reply = request(d->pipe, "stats text", timeout);
  switch (reply.status) {
    case ClientReply::Status::kOk:
      d->pipe_answered = parse_stats(reply.body, &d->stats);
      if (!d->pipe_answered) d->pipe_error = "the answer has no pid= line";
      return;
    case ClientReply::Status::kNoPipe:
      d->pipe_error = "no control pipe";
      return;
    case ClientReply::Status::kNoServer:
      d->pipe_error = "nobody serves the pipe";
      return;
    case ClientReply::Status::kRefused:
      d->pipe_error = "refused: " + reply.error;
      return;
    case ClientReply::Status::kTimeout:
    case ClientReply::Status::kError:
      d->pipe_error = reply.error;
      return;
  }
}

// ---- advice ------------------------------------------------------------------------------------

std::vector<std::string> advise(const Diagnosis& d) {
  std::vector<std::string> out;
  const bool library = !d.cudapool_libs.empty();
  const bool shared = !d.shared_runtimes.empty();
  const bool static_rt = !d.static_runtimes.empty();
  const bool driver = !d.drivers.empty();
  const bool control_off = [&] {
    for (const auto& [name, value] : d.cudapool_variables)
      if (name == "CUDAPOOL_CONTROL" && value == "0") return true;
    return false;
  }();
  const bool disabled = [&] {
    for (const auto& [name, value] : d.cudapool_variables)
      if (name == "CUDAPOOL_DISABLE" && value != "0" && !value.empty()) return true;
    return false;
  }();

  if (d.started && d.exited && (!d.maps_read || d.seen_too_early)) {
    out.push_back(
        "it ended before its libraries could be seen: run doctor on a longer run of it, "
        "or doctor PID while it runs");
    if (!d.static_runtimes.empty())
      out.push_back("its runtime is linked statically (" +
                    std::string(basename_of(d.static_runtimes[0].path)) +
                    "): cudapool pools it only through the driver API (needs cudapool with "
                    "driver interposition) or rebuild with -cudart shared");
    return out;
  }
  if (!d.maps_read) {
    out.push_back("its memory map is not readable (" + d.maps_error +
                  "): run cudapoolctl doctor as the process's user or as root");
    return out;
  }
  if (!shared && !static_rt && !driver && !d.pipe_answered) {
    out.push_back(
        "no CUDA runtime or driver is mapped: the process has not used CUDA (yet); run doctor "
        "again once it has");
    if (!library) out.push_back("when it does, start it with cudapoolctl run or LD_PRELOAD");
    return out;
  }
  if (!library) {
    if (d.ld_preload && contains(*d.ld_preload, "libcudapool")) {
      out.push_back(
          "LD_PRELOAD names libcudapool.so but it is not mapped: the file is missing "
          "or was refused at start (the loader's message is on the process's stderr)");
    } else {
      out.push_back(
          "libcudapool.so is not loaded: start it with cudapoolctl run or "
          "LD_PRELOAD=/path/to/libcudapool.so (a running process cannot be given it)");
    }
  } else if (disabled) {
    out.push_back("CUDAPOOL_DISABLE is set: every call passes straight through, nothing is pooled");
  }

  if (static_rt) {
    std::string where;
    for (const RuntimeObject& r : d.static_runtimes)
      where += (where.empty() ? "" : ", ") + std::string(basename_of(r.path));
    const bool pooled_by_driver = d.pipe_answered && d.stats.driver_calls > 0;
    if (library && pooled_by_driver) {
      out.push_back("its runtime is linked statically (" + where +
                    "): cudapool pools it through the driver API (driver_calls=" +
                    std::to_string(d.stats.driver_calls) + ")");
    } else if (library || !shared) {
      out.push_back("its runtime is linked statically (" + where +
                    "): cudapool pools it only through the driver API (needs cudapool with "
                    "driver interposition) or rebuild with -cudart shared");
    }
  }

  if (library && !disabled) {
    if (!d.pipe_answered) {
      if (d.exited) {
        out.push_back(
            "it ended before doctor could ask its control pipe: cudapool's exit warning "
            "in its log says whether a call reached it");
      } else if (control_off) {
        out.push_back(
            "its control pipe is off (CUDAPOOL_CONTROL=0): doctor cannot see what "
            "cudapool saw; start it without CUDAPOOL_CONTROL=0");
      } else if (d.pipe_error == "no control pipe") {
        out.push_back("no control pipe at " + d.pipe +
                      ": no cudaMalloc reached cudapool yet (the pipe is made at the first), or "
                      "the process uses another control folder (--dir)");
      } else {
        out.push_back("its control pipe did not answer (" + d.pipe_error +
                      "): try again with a longer --timeout");
      }
    } else if (shared && d.stats.runtime_calls == 0) {
      out.push_back(
          "cudapool saw no runtime call (runtime_calls=0): the program has not "
          "allocated yet, or its cudaMalloc does not go through the dynamic linker");
    }
  }

  // Framework caches in front of the pool.
  const std::string seen_framework = pipe_framework(d);
  if (has_framework(d, "torch") || seen_framework == "torch") {
    const bool cache_off = d.torch_no_caching && *d.torch_no_caching == "1";
    if (cache_off) {
      out.push_back(
          "PyTorch's cache is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1): cudapool is the "
          "cache, every tensor a pooled cudaMalloc");
    } else if (seen_framework == "torch") {
      out.push_back("PyTorch's cache is on and cudapool trims it (framework=torch): nothing to do");
    } else if (library) {
      out.push_back(
          "PyTorch's cache is on and not trimmed: cudapool's framework adapters have not found it "
          "(CUDAPOOL_FRAMEWORK=off, torch.cuda not initialised yet, or CPython's API not global); "
          "or set PYTORCH_NO_CUDA_MEMORY_CACHING=1 to make cudapool the cache "
          "(docs/frameworks.md)");
    } else {
      out.push_back(
          "PyTorch's cache is on: with cudapool preloaded its adapters trim it, or "
          "PYTORCH_NO_CUDA_MEMORY_CACHING=1 makes cudapool the cache");
    }
  }
  if (has_framework(d, "cupy") || seen_framework == "cupy") {
    out.push_back(seen_framework == "cupy"
                      ? "CuPy's memory pool is in front and cudapool trims it (framework=cupy)"
                      : "CuPy's memory pool is in front: cupy.cuda.set_allocator(None) turns it "
                        "off; CuPy's wheels link the runtime statically (see above)");
  }
  if (has_framework(d, "jax")) {
    out.push_back(
        "JAX/XLA preallocates and caches in its own allocator; XLA_PYTHON_CLIENT_PREALLOCATE=false "
        "XLA_PYTHON_CLIENT_ALLOCATOR=platform makes it allocate and free through the driver API " +
        std::string(d.xla_allocator ? "(set: " + *d.xla_allocator + ")" : "(not set)"));
  }
  if (has_framework(d, "numba")) {
    out.push_back(
        "numba allocates through the driver API (ctypes on libcuda.so.1): pooled only "
        "by cudapool's driver interposition (dlsym_lookups=" +
        (d.pipe_answered ? std::to_string(d.stats.dlsym_lookups) : std::string("?")) + ")");
  }
  if (out.empty()) {
    out.push_back("nothing to do: cudapool pools this process (runtime_calls=" +
                  std::to_string(d.stats.runtime_calls) +
                  ", driver_calls=" + std::to_string(d.stats.driver_calls) + ")");
  }
  return out;
}

// ---- formats -----------------------------------------------------------------------------------

std::string format_text(const Diagnosis& d) {
  std::string out;
  auto line = [&out](std::string_view label, const std::string& value) {
    char head[32];
    std::snprintf(head, sizeof head, "  %-12s ", std::string(label).c_str());
    out += head + value + "\n";
  };
  out += "process " + std::to_string(d.pid) + " (" + (d.command.empty() ? "?" : d.command) + ")" +
         (d.exe.empty() ? "" : ", " + d.exe) + "\n";
  if (d.started) {
    std::string cmd;
    for (const std::string& a : d.argv)
      cmd += (cmd.empty() ? "" : " ") + a;
    line("started", cmd);
    if (d.exited)
      line("note", d.seen_too_early
                       ? "it ended before its libraries were mapped: only its executable is shown"
                       : "it ended before the diagnosis: what it had mapped last is shown");
  }
  out += "cudapool\n";
  if (!d.maps_read) {
    line("maps", "not readable: " + d.maps_error);
  } else if (d.cudapool_libs.empty()) {
    line("library", "not mapped");
  } else {
    for (const std::string& l : d.cudapool_libs)
      line("library", "mapped: " + l);
  }
  if (!d.environ_read) {
    line("environment", "not readable: " + d.environ_error);
  } else {
    line("LD_PRELOAD", d.ld_preload ? *d.ld_preload : "(not set)");
    std::string vars;
    for (const auto& [name, value] : d.cudapool_variables)
      vars += (vars.empty() ? "" : " ") + name + "=" + value;
    line("variables", vars.empty() ? "(no CUDAPOOL_* set)" : vars);
  }
  out += "CUDA\n";
  for (const std::string& r : d.shared_runtimes)
    line("runtime", "shared: " + r);
  for (const RuntimeObject& r : d.static_runtimes)
    line("runtime", "static, in " + r.path + " (" + r.evidence + ")");
  if (d.shared_runtimes.empty() && d.static_runtimes.empty()) line("runtime", "none mapped");
  for (const std::string& r : d.drivers)
    line("driver", r);
  if (d.drivers.empty()) line("driver", "none mapped");
  out += "what cudapool saw" + (d.pipe.empty() ? std::string() : " (" + d.pipe + ")") + "\n";
  if (!d.pipe_answered) {
    line("pipe", d.pipe_error.empty() ? "not asked" : d.pipe_error);
  } else {
    line("routes", "runtime_calls=" + std::to_string(d.stats.runtime_calls) +
                       " driver_calls=" + std::to_string(d.stats.driver_calls) +
                       " dlsym_lookups=" + std::to_string(d.stats.dlsym_lookups) +
                       " proc_address_lookups=" + std::to_string(d.stats.proc_address_lookups));
    if (d.stats.devices.empty()) line("devices", "no pool yet");
    for (const DeviceSeen& dev : d.stats.devices) {
      std::string v = "held " + short_size(dev.held) + ", in use " + short_size(dev.in_use);
      v += dev.framework.empty() ? ", framework none"
                                 : ", framework " + dev.framework + " reserved " +
                                       short_size(dev.framework_reserved) + " allocated " +
                                       short_size(dev.framework_allocated);
      line("device " + std::to_string(dev.device), v);
    }
  }
  out += "frameworks\n";
  const std::string seen = pipe_framework(d);
  if (d.frameworks.empty() && seen.empty()) line("none", "no framework's CUDA modules mapped");
  for (const FrameworkSeen& f : d.frameworks) {
    std::string v = "mapped: " + f.path;
    if (f.name == "torch")
      v += d.torch_no_caching ? "; PYTORCH_NO_CUDA_MEMORY_CACHING=" + *d.torch_no_caching
                              : "; cache on (PYTORCH_NO_CUDA_MEMORY_CACHING not set)";
    line(framework_title(f.name), v);
  }
  if (!seen.empty() && !has_framework(d, seen))
    line(framework_title(seen), "found by cudapool's framework adapters (framework=" + seen + ")");
  if (d.started) {
    if (d.exit_code) line("exit code", std::to_string(*d.exit_code));
    if (d.exit_signal) line("signal", std::to_string(*d.exit_signal));
  }
  out += "what to do\n";
  for (const std::string& a : d.advice)
    out += "  - " + a + "\n";
  return out;
}

std::string format_json(const Diagnosis& d) {
  std::string out = "{\"pid\":" + std::to_string(d.pid) + ",\"command\":";
  append_json_string(&out, d.command);
  out += ",\"exe\":";
  append_json_string(&out, d.exe);
  auto strings = [&out](std::string_view key, const std::vector<std::string>& list) {
    out += ",\"";
    out += key;
    out += "\":[";
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (i > 0) out += ',';
      append_json_string(&out, list[i]);
    }
    out += ']';
  };
  auto optional = [&out](std::string_view key, const std::optional<std::string>& v) {
    out += ",\"";
    out += key;
    out += "\":";
    if (v) {
      append_json_string(&out, *v);
    } else {
      out += "null";
    }
  };
  out += ",\"maps_readable\":" + std::string(d.maps_read ? "true" : "false");
  if (!d.maps_read) {
    out += ",\"maps_error\":";
    append_json_string(&out, d.maps_error);
  }
  out += ",\"cudapool_mapped\":" + std::string(d.cudapool_libs.empty() ? "false" : "true");
  strings("cudapool_libraries", d.cudapool_libs);
  out += ",\"environ_readable\":" + std::string(d.environ_read ? "true" : "false");
  if (!d.environ_read) {
    out += ",\"environ_error\":";
    append_json_string(&out, d.environ_error);
  }
  optional("ld_preload", d.ld_preload);
  out += ",\"cudapool_variables\":{";
  for (std::size_t i = 0; i < d.cudapool_variables.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(&out, d.cudapool_variables[i].first);
    out += ':';
    append_json_string(&out, d.cudapool_variables[i].second);
  }
  out += '}';
  optional("pytorch_no_cuda_memory_caching", d.torch_no_caching);
  optional("xla_python_client_allocator", d.xla_allocator);
  const char* runtime = !d.shared_runtimes.empty()   ? "shared"
                        : !d.static_runtimes.empty() ? "static"
                                                     : "none";
  out += ",\"runtime\":\"" + std::string(runtime) + "\"";
  strings("shared_runtimes", d.shared_runtimes);
  out += ",\"static_runtimes\":[";
  for (std::size_t i = 0; i < d.static_runtimes.size(); ++i) {
    if (i > 0) out += ',';
    out += "{\"path\":";
    append_json_string(&out, d.static_runtimes[i].path);
    out += ",\"evidence\":";
    append_json_string(&out, d.static_runtimes[i].evidence);
    out += '}';
  }
  out += ']';
  strings("drivers", d.drivers);
  out += ",\"frameworks\":[";
  for (std::size_t i = 0; i < d.frameworks.size(); ++i) {
    if (i > 0) out += ',';
    out += "{\"name\":";
    append_json_string(&out, d.frameworks[i].name);
    out += ",\"path\":";
    append_json_string(&out, d.frameworks[i].path);
    out += '}';
  }
  out += "],\"pipe\":";
  append_json_string(&out, d.pipe);
  out += ",\"pipe_answered\":" + std::string(d.pipe_answered ? "true" : "false");
  if (!d.pipe_answered) {
    out += ",\"pipe_error\":";
    append_json_string(&out, d.pipe_error);
  } else {
    out += ",\"runtime_calls\":" + std::to_string(d.stats.runtime_calls) +
           ",\"driver_calls\":" + std::to_string(d.stats.driver_calls) +
           ",\"dlsym_lookups\":" + std::to_string(d.stats.dlsym_lookups) +
           ",\"proc_address_lookups\":" + std::to_string(d.stats.proc_address_lookups);
    out += ",\"devices\":[";
    for (std::size_t i = 0; i < d.stats.devices.size(); ++i) {
      const DeviceSeen& dev = d.stats.devices[i];
      if (i > 0) out += ',';
      out += "{\"device\":" + std::to_string(dev.device) + ",\"held\":" + std::to_string(dev.held) +
             ",\"in_use\":" + std::to_string(dev.in_use) + ",\"framework\":";
      append_json_string(&out, dev.framework);
      out += ",\"framework_reserved\":" + std::to_string(dev.framework_reserved) +
             ",\"framework_allocated\":" + std::to_string(dev.framework_allocated) + "}";
    }
    out += ']';
  }
  if (d.started) {
    strings("argv", d.argv);
    out += ",\"exited_before_diagnosis\":" + std::string(d.exited ? "true" : "false");
    out += ",\"seen_too_early\":" + std::string(d.seen_too_early ? "true" : "false");
    out += ",\"exit_code\":" + (d.exit_code ? std::to_string(*d.exit_code) : "null");
    out += ",\"exit_signal\":" + (d.exit_signal ? std::to_string(*d.exit_signal) : "null");
  }
  strings("advice", d.advice);
  out += "}\n";
  return out;
}

}  // namespace cudapool::doctor
