// Sizes and durations as operators write them in CUDAPOOL_* variables and control commands.
//
// Size syntax (case-insensitive, leading/trailing blanks ignored):
//   1048576            plain bytes (whole numbers only)
//   512B               bytes with an explicit B
//   64K 64KB 64KiB     binary units: K = KB = KiB = 1024, M = MB = MiB = 2^20, G/GB/GiB = 2^30,
//   2G  2GB  2GiB      T/TB/TiB = 2^40. KB means 1024 here, as in every GPU tool an operator
//                      meets (nvidia-smi, PyTorch); there are no decimal (1000) units.
//   1.5GiB  0.5 G      a fraction needs a unit other than B; the result is rounded down to whole
//                      bytes (0.3KiB = 307 bytes). Blanks may separate the number from the unit.
//   10%  12.5%         a percentage (0 to 100) of the device's total memory, where allowed.
// Rejected: empty text, signs (-1, +1), exponents (1e9), hex, NaN/inf, unknown units, trailing
// junk, fractions of plain bytes (1.5, 1.5B) and anything above 2^64-1 bytes (no wrap-around).
//
// Duration syntax (IDLE_RELEASE_MS): a whole non-negative number of milliseconds, optionally
// followed by `ms` or `s` (30000 = 30000ms = 30s). No fractions, no other units.

#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace cudapool {

// A size as configured: either absolute bytes or a percentage of the device's total memory,
// which is only known once the device is.
struct SizeSpec {
  uint64_t bytes = 0;
  double percent = 0;  // 0..100, meaningful when is_percent
  bool is_percent = false;

  // Bytes this size stands for on a device with `device_total` bytes (rounded down).
  uint64_t resolve(uint64_t device_total) const;

  static SizeSpec Bytes(uint64_t bytes) { return SizeSpec{bytes, 0, false}; }
  static SizeSpec Percent(double percent) { return SizeSpec{0, percent, true}; }
  bool operator==(const SizeSpec&) const = default;
};

// Parses `text` (syntax above). Percentages are accepted only when `allow_percent`. On failure
// returns false, leaves *out untouched and, when `error` is not null, says why in a short phrase
// (no variable name, the caller adds it). Never throws.
bool parse_size(std::string_view text, bool allow_percent, SizeSpec* out, std::string* error);

// Exact, re-parsable text for a byte count: "0", "512B", "1KiB", "1.5MiB", "2GiB". Uses the
// largest unit that shows the value exactly with at most 3 decimals, else plain bytes with a B
// ("1000001B").
std::string format_size(uint64_t bytes);
// As above, or "10%" / "12.5%" for a percentage.
std::string format_size(const SizeSpec& size);
// "1.50 GiB": short sizes for people (format_size is exact and re-parsable, this one is not).
std::string short_size(std::uint64_t bytes);

// Parses a duration (syntax above) into milliseconds. Same error convention as parse_size.
bool parse_duration_ms(std::string_view text, std::chrono::milliseconds* out, std::string* error);
// Canonical text: the number of milliseconds ("30000").
std::string format_duration_ms(std::chrono::milliseconds duration);

}  // namespace cudapool
