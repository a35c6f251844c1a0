#include "control/preload.h"

namespace cudapool {

std::string preload_without_cudapool(const char* current) {
  std::string out;
  if (current == nullptr) return out;
  const std::string list = current;
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t end = list.find_first_of(": ", start);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(start, end - start);
    if (!item.empty() && item.find("libcudapool") == std::string::npos)
      out += (out.empty() ? "" : ":") + item;
    start = end + 1;
  }
  return out;
}

std::string preload_with_cudapool(const char* current, const std::string& library) {
  const std::string rest = preload_without_cudapool(current);
  return rest.empty() ? library : rest + ":" + library;
}

}  // namespace cudapool
