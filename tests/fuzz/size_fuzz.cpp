// Fuzz target of the size and duration parser (control/size.h), the syntax of every size in
// CUDAPOOL_* variables and pipe commands. Built as a libFuzzer target with clang
// (-DCUDAPOOL_FUZZ=ON) and always as a plain driver (fuzz_driver.cpp) over tests/fuzz/corpus/size/.
//
// The input is the text itself. Properties checked (a violation traps):
//   - any byte string parses or is refused without crashing, with and without percentages;
//   - a refusal gives a reason and leaves the output untouched;
//   - a percentage is accepted only where allowed, and lies in [0, 100];
//   - what parses prints back (format_size / format_duration_ms) as text that parses again to the
//     same value: the canonical form is a fixed point;
//   - plain digits mean exactly that many bytes.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "control/size.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void size_properties(std::string_view text, bool allow_percent) {
  const cudapool::SizeSpec sentinel{12345, 0, false};
  cudapool::SizeSpec spec = sentinel;
  std::string error;
  const bool ok = cudapool::parse_size(text, allow_percent, &spec, &error);
  if (!ok) {
    check(!error.empty());
    check(spec == sentinel);
    check(!cudapool::parse_size(text, allow_percent, &spec, nullptr));  // null error is fine
    return;
  }
  if (spec.is_percent) {
    check(allow_percent);
    check(spec.percent >= 0 && spec.percent <= 100);
    check(spec.resolve(1ull << 40) <= 1ull << 40);
  }
  const std::string canonical = cudapool::format_size(spec);
  cudapool::SizeSpec again{};
  check(cudapool::parse_size(canonical, true, &again, nullptr));
  check(again == spec);
  check(cudapool::format_size(again) == canonical);
  // Plain digits: exactly that number (when it fits in 64 bits).
  if (!text.empty() && text.size() < 20 &&
      text.find_first_not_of("0123456789") == std::string_view::npos)
    check(!spec.is_percent && spec.bytes == std::strtoull(std::string(text).c_str(), nullptr, 10));
}

void duration_properties(std::string_view text) {
  const std::chrono::milliseconds sentinel(424242);
  std::chrono::milliseconds ms = sentinel;
  std::string error;
  if (!cudapool::parse_duration_ms(text, &ms, &error)) {
    check(!error.empty());
    check(ms == sentinel);
    return;
  }
  check(ms.count() >= 0);
  const std::string canonical = cudapool::format_duration_ms(ms);
  std::chrono::milliseconds again{};
  check(cudapool::parse_duration_ms(canonical, &again, nullptr));
  check(again == ms);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  size_properties(text, true);
  size_properties(text, false);
  duration_properties(text);
  // Every byte value of the format: format_size of the input's first 8 bytes as a number.
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < size && i < 8; ++i)
    bytes = bytes << 8 | data[i];
  cudapool::SizeSpec spec{};
  check(cudapool::parse_size(cudapool::format_size(bytes), false, &spec, nullptr));
  check(spec.bytes == bytes && !spec.is_percent);
  return 0;
}
