#include "control/size.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>

namespace cudapool {
namespace {

constexpr uint64_t kMaxBytes = std::numeric_limits<uint64_t>::max();

bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
char to_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && is_blank(text.front()))
    text.remove_prefix(1);
  while (!text.empty() && is_blank(text.back()))
    text.remove_suffix(1);
  return text;
}

bool equals_lower(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (to_lower(text[i]) != lower[i]) return false;
  }
  return true;
}

bool fail(std::string* error, std::string_view why) {
  if (error != nullptr) {
    try {
      error->assign(why);
    } catch (...) {
      // Out of memory while describing an error: the false return still says it failed.
    }
  }
  return false;
}

// The number at the start of a size or duration: digits, optionally '.' and more digits.
struct Number {
  std::string_view text;  // the digits (and dot) as written
  uint64_t whole = 0;     // integer part, valid unless whole_overflow
  bool whole_overflow = false;
  uint64_t fraction = 0;  // first fraction_digits digits after the dot
  int fraction_digits = 0;
  bool has_fraction = false;
};

// Reads a Number from the front of *text and removes it (and any blanks after it).
// Returns false with *error set when text does not start with a well-formed number.
bool take_number(std::string_view* text, Number* number, std::string* error) {
  std::string_view s = *text;
  size_t i = 0;
  if (s.empty() || !is_digit(s[0])) return fail(error, "expected a non-negative number");
  for (; i < s.size() && is_digit(s[i]); ++i) {
    const uint64_t digit = static_cast<uint64_t>(s[i] - '0');
    if (number->whole > (kMaxBytes - digit) / 10) number->whole_overflow = true;
    if (!number->whole_overflow) number->whole = number->whole * 10 + digit;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (i >= s.size() || !is_digit(s[i])) return fail(error, "a '.' must be followed by digits");
    number->has_fraction = true;
    for (; i < s.size() && is_digit(s[i]); ++i) {
      // 19 digits keep the fraction below 10^19 < 2^64; later digits only round down.
      if (number->fraction_digits < 19) {
        number->fraction = number->fraction * 10 + static_cast<uint64_t>(s[i] - '0');
        ++number->fraction_digits;
      }
    }
  }
  number->text = s.substr(0, i);
  s.remove_prefix(i);
  while (!s.empty() && is_blank(s.front()))
    s.remove_prefix(1);
  *text = s;
  return true;
}

struct Unit {
  std::string_view names[3];
  uint64_t bytes;
};

constexpr Unit kUnits[] = {
    {{"b", "b", "b"}, 1},
    {{"k", "kb", "kib"}, uint64_t{1} << 10},
    {{"m", "mb", "mib"}, uint64_t{1} << 20},
    {{"g", "gb", "gib"}, uint64_t{1} << 30},
    {{"t", "tb", "tib"}, uint64_t{1} << 40},
};

uint64_t pow10(int n) {
  uint64_t p = 1;
  for (int i = 0; i < n; ++i)
    p *= 10;
  return p;
}

}  // namespace

uint64_t SizeSpec::resolve(uint64_t device_total) const {
  if (!is_percent) return bytes;
  if (!(percent > 0)) return 0;
  if (percent >= 100) return device_total;
  const long double exact = static_cast<long double>(device_total) * percent / 100.0L;
  const uint64_t result = static_cast<uint64_t>(exact);
  return result > device_total ? device_total : result;
}

bool parse_size(std::string_view text, bool allow_percent, SizeSpec* out, std::string* error) {
  text = trim(text);
  if (text.empty()) return fail(error, "empty");
  Number number;
  if (!take_number(&text, &number, error)) return false;
  const std::string_view unit = text;

  if (unit == "%") {
    if (!allow_percent) return fail(error, "a percentage is not accepted here");
    double percent = 0;
    const char* first = number.text.data();
    const char* last = first + number.text.size();
    // The text is digits with at most one dot, so from_chars sees no sign, exponent, NaN or inf.
    const auto [end, ec] = std::from_chars(first, last, percent, std::chars_format::fixed);
    if (ec != std::errc() || end != last || !std::isfinite(percent)) {
      return fail(error, "not a valid percentage");
    }
    if (percent > 100) return fail(error, "a percentage must be between 0 and 100");
    *out = SizeSpec::Percent(percent);
    return true;
  }

  uint64_t unit_bytes = 0;
  if (unit.empty()) {
    unit_bytes = 1;
  } else {
    for (const Unit& candidate : kUnits) {
      for (std::string_view name : candidate.names) {
        if (equals_lower(unit, name)) unit_bytes = candidate.bytes;
      }
    }
    if (unit_bytes == 0)
      return fail(error, "unknown unit (use B, KiB, MiB, GiB, TiB or K, M, G, T)");
  }
  if (number.has_fraction && unit_bytes == 1) {
    return fail(error, "a fraction needs a unit, as in 1.5GiB");
  }
  if (number.whole_overflow) return fail(error, "too large (at most 2^64-1 bytes)");

  // whole * unit + fraction * unit / 10^digits, rounded down, in 128 bits so nothing wraps.
  using u128 = unsigned __int128;
  u128 total = static_cast<u128>(number.whole) * unit_bytes;
  if (number.has_fraction) {
    total += static_cast<u128>(number.fraction) * unit_bytes / pow10(number.fraction_digits);
  }
  if (total > kMaxBytes) return fail(error, "too large (at most 2^64-1 bytes)");
  *out = SizeSpec::Bytes(static_cast<uint64_t>(total));
  return true;
}

std::string format_size(uint64_t bytes) {
  if (bytes == 0) return "0";
  static constexpr std::string_view kNames[] = {"TiB", "GiB", "MiB", "KiB"};
  static constexpr int kShifts[] = {40, 30, 20, 10};
  for (int u = 0; u < 4; ++u) {
    const uint64_t unit = uint64_t{1} << kShifts[u];
    if (bytes < unit) continue;
    for (int decimals = 0; decimals <= 3; ++decimals) {
      const unsigned __int128 scaled = static_cast<unsigned __int128>(bytes) * pow10(decimals);
      if (scaled % unit != 0) continue;
      const uint64_t value = static_cast<uint64_t>(scaled / unit);  // < 2^24 * 1000
      std::string text = std::to_string(value / pow10(decimals));
      if (decimals > 0) {
        std::string fraction = std::to_string(value % pow10(decimals));
        text += '.';
        text.append(static_cast<size_t>(decimals) - fraction.size(), '0');
        text += fraction;
      }
      text += kNames[u];
      return text;
    }
  }
  return std::to_string(bytes) + "B";
}

std::string format_size(const SizeSpec& size) {
  if (!size.is_percent) return format_size(size.bytes);
  // Fixed notation (parse_size takes no exponent): the shortest digits that read back the same
  // double; a tiny percentage has up to ~330 of them.
  char buffer[512];
  const auto [end, ec] =
      std::to_chars(buffer, buffer + sizeof(buffer), size.percent, std::chars_format::fixed);
  if (ec != std::errc()) return "?%";
  return std::string(buffer, end) + "%";
}

bool parse_duration_ms(std::string_view text, std::chrono::milliseconds* out, std::string* error) {
  text = trim(text);
  if (text.empty()) return fail(error, "empty");
  Number number;
  if (!take_number(&text, &number, error)) return false;
  if (number.has_fraction) return fail(error, "a duration must be a whole number");
  uint64_t scale = 0;
  if (text.empty() || equals_lower(text, "ms")) {
    scale = 1;
  } else if (equals_lower(text, "s")) {
    scale = 1000;
  } else {
    return fail(error, "unknown unit (use ms or s)");
  }
  const uint64_t max_ms = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (number.whole_overflow || number.whole > max_ms / scale) return fail(error, "too large");
  *out = std::chrono::milliseconds(static_cast<int64_t>(number.whole * scale));
  return true;
}

std::string format_duration_ms(std::chrono::milliseconds duration) {
  return std::to_string(duration.count());
}

std::string short_size(std::uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[unit]);
  }
  return buf;
}

}  // namespace cudapool
