// cudapoolctl doctor: why a process is (or is not) pooled. Reads what the kernel shows of a process
// (/proc/PID/maps, environ, exe), the ELF files it has mapped, and its control pipe's `stats`, and
// says what to do, one line each (docs/doctor.md).
//
// The pieces are pure functions over text and files so that the unit tests drive them with
// fixtures (tests/unit/tools/doctor_test.cpp); diagnose() does the reading.
//
// Static runtime: an ELF object carries a CUDA runtime of its own when it is not libcudart,
// libcuda or libcudapool itself (by SONAME, else by file name), does not depend on a libcudart
// (DT_NEEDED), and either defines `cudaMalloc` (.dynsym or, unstripped, .symtab) or has both
// "libcuda.so.1" and "cudaMalloc" as whole NUL-terminated strings in its read-only data sections
// (NVIDIA's libcudart_static.a brings both: it dlopens the driver and names its API functions;
// they survive `strip`). A shared-runtime program names cudaMalloc only in .dynstr, which is not
// searched; device code sections (.nv_fatbin ...) are skipped.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cudapool::doctor {

// ---- /proc/PID/maps ----------------------------------------------------------------------------

struct MappedFile {
  std::string path;
  bool deleted = false;  // "(deleted)": the file was replaced or removed since it was mapped
};
// The files a maps text names, each once, in the order of their first mapping. Anonymous and
// special mappings ([heap], [vdso], ...) are left out.
std::vector<MappedFile> mapped_files(std::string_view maps_text);

// What a mapped file is, by its name.
enum class LibraryKind {
  kOther,
  kCudapool,  // libcudapool.so*
  kRuntime,   // libcudart.so*
  kDriver,    // libcuda.so*
  kTorch,     // libtorch_cuda.so, libc10_cuda.so
  kCupy,      // CuPy's CUDA modules (cupy/cuda/..., cupy_backends/cuda/...)
  kJax,       // XLA: xla_extension.so, jaxlib's and the jax CUDA plugins' modules
  kNumba,     // numba's modules
};
LibraryKind classify_library(std::string_view path);
std::string_view to_string(LibraryKind kind);

// ---- ELF files ---------------------------------------------------------------------------------

struct ElfFacts {
  bool readable = false;              // opened and read
  bool is_elf = false;                // a 64-bit ELF file whose headers are in bounds
  std::string error;                  // why not readable or not ELF
  std::string soname;                 // DT_SONAME
  std::vector<std::string> needed;    // DT_NEEDED
  bool defines_cuda_malloc = false;   // a defined cudaMalloc symbol (.dynsym or .symtab)
  bool has_driver_name = false;       // "libcuda.so.1" in read-only data
  bool has_cuda_malloc_name = false;  // "cudaMalloc" in read-only data
};
ElfFacts inspect_elf(const std::string& path);

enum class RuntimeRole {
  kNone,
  kSharedRuntime,  // it is a libcudart
  kDriver,         // it is a libcuda
  kCudapool,       // it is libcudapool
  kStaticRuntime,  // it carries a runtime of its own (rule above)
};
// `name` is the mapped path (or the executable's), used when the file has no SONAME.
RuntimeRole runtime_role(std::string_view name, const ElfFacts& facts);
// The evidence for kStaticRuntime, in words: "defines cudaMalloc; no libcudart dependency".
std::string static_runtime_evidence(const ElfFacts& facts);

// ---- /proc/PID/environ and the pipe's stats -----------------------------------------------------

// NUL-separated NAME=value entries.
std::map<std::string, std::string> parse_environ(std::string_view bytes);

struct DeviceSeen {
  int device = 0;
  std::uint64_t held = 0;
  std::uint64_t in_use = 0;
  std::string framework;
  std::uint64_t framework_reserved = 0;
  std::uint64_t framework_allocated = 0;
};
struct PipeStats {
  std::uint64_t runtime_calls = 0;
  std::uint64_t driver_calls = 0;
  std::uint64_t dlsym_lookups = 0;
  std::uint64_t proc_address_lookups = 0;
  std::vector<DeviceSeen> devices;
};
// The answer of `stats text` (control/stats_format.h); false without a pid= line.
bool parse_stats(std::string_view text, PipeStats* out);

// ---- the diagnosis -----------------------------------------------------------------------------

struct RuntimeObject {
  std::string path;
  std::string evidence;  // for static runtimes
};
struct FrameworkSeen {
  std::string name;  // "torch", "cupy", "jax", "numba"
  std::string path;  // the first mapped module that shows it, or empty (known from the pipe only)
};

struct Diagnosis {
  int pid = 0;
  unsigned uid = 0;
  std::string command;  // /proc/PID/comm
  std::string exe;      // /proc/PID/exe
  bool maps_read = false;
  std::string maps_error;
  std::vector<std::string> cudapool_libs;
  std::vector<std::string> shared_runtimes;
  std::vector<RuntimeObject> static_runtimes;
  std::vector<std::string> drivers;
  std::vector<FrameworkSeen> frameworks;
  bool environ_read = false;
  std::string environ_error;
  std::optional<std::string> ld_preload;
  std::vector<std::pair<std::string, std::string>> cudapool_variables;
  std::optional<std::string> torch_no_caching;  // PYTORCH_NO_CUDA_MEMORY_CACHING
  std::optional<std::string> xla_allocator;     // XLA_PYTHON_CLIENT_ALLOCATOR
  std::string pipe;                             // the control pipe's path
  bool pipe_answered = false;
  std::string pipe_error;  // why not
  PipeStats stats;
  // A command started by doctor --.
  bool started = false;
  std::vector<std::string> argv;
  bool exited = false;          // it ended before the diagnosis: what it had mapped last is shown
  bool seen_too_early = false;  // it ended before the loader had mapped its libraries
  std::optional<int> exit_code;
  std::optional<int> exit_signal;
  std::vector<std::string> advice;  // filled by advise()
};

// The "what to do" lines of a diagnosis (every other field filled).
std::vector<std::string> advise(const Diagnosis& d);

std::string format_text(const Diagnosis& d);
std::string format_json(const Diagnosis& d);

// What /proc shows of a process, read in one go (cheap: no ELF file is opened), so that a
// command that ends can still be diagnosed from its last snapshot.
struct Snapshot {
  int pid = 0;
  unsigned uid = 0;  // the owner of /proc/PID
  std::string comm, exe;
  bool maps_read = false;
  std::string maps, maps_error;
  bool environ_read = false;
  std::string environ, environ_error;  // environ: the raw NUL-separated bytes
};
// False when the process does not exist (error says so); unreadable parts are recorded.
bool take_snapshot(int pid, Snapshot* s, std::string* error);
// Fills the /proc and ELF parts of a diagnosis. `exe_file`: where to read the executable
// (/proc/PID/exe while it lives; empty: its path in maps).
void diagnose_snapshot(const Snapshot& s, const std::string& exe_file, Diagnosis* d);
// The process's control folder: `dir` (--dir) when given, else the folder its environment names
// (CUDAPOOL_CONTROL_DIR, XDG_RUNTIME_DIR/cudapool), else /tmp/cudapool-<its uid>.
std::string control_folder(const Snapshot& s, const std::optional<std::string>& dir);
// Asks the control pipe for `stats text` and fills the pipe part of the diagnosis.
void ask_pipe(const std::string& pipe, std::chrono::milliseconds timeout, Diagnosis* d);

}  // namespace cudapool::doctor
