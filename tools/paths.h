// File and path helpers the tools share (the demo, the benchmarks, the soak).
#pragma once

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

namespace cudapool::tools {

// This executable's path, "" when /proc is not there.
inline std::string self_exe() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = '\0';
  return buf;
}

inline std::string dir_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// A regular file (or a link to one) at `path`.
inline bool file_exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The canonical path, or `path` itself when it cannot be resolved.
inline std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) != nullptr ? std::string(buf) : path;
}

// The file a symbol's definition comes from (canonical path), or "" when it has none.
inline std::string library_of(const char* symbol) {
  void* addr = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info;
  if (addr == nullptr || dladdr(addr, &info) == 0 || info.dli_fname == nullptr) return "";
  return real_path(info.dli_fname);
}

}  // namespace cudapool::tools
