#include "control/size.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>

namespace cudapool {
namespace {

constexpr uint64_t KiB = uint64_t{1} << 10;
constexpr uint64_t MiB = uint64_t{1} << 20;
constexpr uint64_t GiB = uint64_t{1} << 30;
constexpr uint64_t TiB = uint64_t{1} << 40;
constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

SizeSpec parsed(std::string_view text, bool allow_percent = true) {
  SizeSpec out = SizeSpec::Bytes(12345);  // a sentinel that no case below expects
  std::string error;
  EXPECT_TRUE(parse_size(text, allow_percent, &out, &error)) << text << ": " << error;
  EXPECT_TRUE(error.empty()) << text;
  return out;
}

std::string rejection(std::string_view text, bool allow_percent = true) {
  SizeSpec out = SizeSpec::Bytes(777);
  std::string error;
  EXPECT_FALSE(parse_size(text, allow_percent, &out, &error)) << "accepted: \"" << text << "\"";
  EXPECT_EQ(out, SizeSpec::Bytes(777)) << "output changed on failure: " << text;
  EXPECT_FALSE(error.empty()) << text;
  return error;
}

TEST(ParseSize, PlainBytes) {
  EXPECT_EQ(parsed("0"), SizeSpec::Bytes(0));
  EXPECT_EQ(parsed("1048576"), SizeSpec::Bytes(MiB));
  EXPECT_EQ(parsed("512B"), SizeSpec::Bytes(512));
  EXPECT_EQ(parsed("512b"), SizeSpec::Bytes(512));
  EXPECT_EQ(parsed("007"), SizeSpec::Bytes(7));
}

TEST(ParseSize, BinaryUnitsInEverySpelling) {
  const struct {
    const char* suffix[3];
    uint64_t unit;
  } kUnits[] = {{{"K", "KB", "KiB"}, KiB},
                {{"M", "MB", "MiB"}, MiB},
                {{"G", "GB", "GiB"}, GiB},
                {{"T", "TB", "TiB"}, TiB}};
  for (const auto& unit : kUnits) {
    for (const char* suffix : unit.suffix) {
      std::string upper = std::string("3") + suffix;
      std::string lower = upper;
      for (char& c : lower)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      EXPECT_EQ(parsed(upper), SizeSpec::Bytes(3 * unit.unit)) << upper;
      EXPECT_EQ(parsed(lower), SizeSpec::Bytes(3 * unit.unit)) << lower;
      EXPECT_EQ(parsed(std::string("3 ") + suffix), SizeSpec::Bytes(3 * unit.unit)) << suffix;
    }
  }
}

TEST(ParseSize, FractionsRoundDownToWholeBytes) {
  EXPECT_EQ(parsed("1.5GiB"), SizeSpec::Bytes(GiB + GiB / 2));
  EXPECT_EQ(parsed("0.5G"), SizeSpec::Bytes(GiB / 2));
  EXPECT_EQ(parsed("0.25 MiB"), SizeSpec::Bytes(MiB / 4));
  EXPECT_EQ(parsed("0.3KiB"), SizeSpec::Bytes(307));  // 307.2
  EXPECT_EQ(parsed("0.0009765625K"), SizeSpec::Bytes(1));
  EXPECT_EQ(parsed("0.0009765624K"), SizeSpec::Bytes(0));
  // Digits beyond the 19th only ever round down.
  EXPECT_EQ(parsed("1.99999999999999999999999999T"), SizeSpec::Bytes(2 * TiB - 1));
}

TEST(ParseSize, BlanksAroundAndBetween) {
  EXPECT_EQ(parsed("  64MiB\t"), SizeSpec::Bytes(64 * MiB));
  EXPECT_EQ(parsed("64 \t MiB"), SizeSpec::Bytes(64 * MiB));
  EXPECT_EQ(parsed(" 10 % "), SizeSpec::Percent(10));
}

TEST(ParseSize, Percentages) {
  EXPECT_EQ(parsed("10%"), SizeSpec::Percent(10));
  EXPECT_EQ(parsed("12.5%"), SizeSpec::Percent(12.5));
  EXPECT_EQ(parsed("0%"), SizeSpec::Percent(0));
  EXPECT_EQ(parsed("100%"), SizeSpec::Percent(100));
  EXPECT_EQ(parsed("100.000%"), SizeSpec::Percent(100));
  EXPECT_NE(rejection("100.001%").find("100"), std::string::npos);
  rejection("101%");
  rejection("-1%");
  rejection("%");
  rejection("nan%");
  rejection("inf%");
  rejection("10%%");
  rejection("10%GiB");
}

TEST(ParseSize, PercentagesOnlyWhereAllowed) {
  EXPECT_NE(rejection("10%", /*allow_percent=*/false).find("percentage"), std::string::npos);
  EXPECT_EQ(parsed("10MiB", /*allow_percent=*/false), SizeSpec::Bytes(10 * MiB));
}

TEST(ParseSize, Rejections) {
  for (const char* text :
       {"",      "   ",   "-1",    "+1",   "-1GiB", "GiB",   "abc",  "1e9",      "1E3",   "0x10",
        "1.",    ".5G",   "1..5G", "1.5",  "1.5B",  "nan",   "inf",  "infinity", "12 34", "1GiB x",
        "1GiBB", "1KiBi", "1Gi",   "1EiB", "1PB",   "1 000", "1,5G", "1_000",    "10ms"}) {
    rejection(text);
  }
}

TEST(ParseSize, OverflowBoundary) {
  EXPECT_EQ(parsed("18446744073709551615"), SizeSpec::Bytes(kMax));
  EXPECT_EQ(parsed("18446744073709551615B"), SizeSpec::Bytes(kMax));
  EXPECT_EQ(parsed("16777215T"), SizeSpec::Bytes(16777215 * TiB));
  EXPECT_EQ(parsed("17179869183.999999999G"), SizeSpec::Bytes(kMax - GiB + 1 + 1073741822));
  EXPECT_NE(rejection("18446744073709551616").find("large"), std::string::npos);
  rejection("99999999999999999999999999");
  rejection("16777216T");  // exactly 2^64
  rejection("17179869184G");
  rejection("18014398509481984K");
  // 2^64 - 2^40 + floor(0.9999999999999999999 * 2^40) = 2^64 - 1: fits, by rounding down.
  EXPECT_EQ(parsed("16777215.99999999999999999999999T"), SizeSpec::Bytes(kMax));
}

TEST(ParseSize, ErrorPointerMayBeNull) {
  SizeSpec out;
  EXPECT_FALSE(parse_size("junk", true, &out, nullptr));
  EXPECT_TRUE(parse_size("1G", true, &out, nullptr));
  EXPECT_EQ(out, SizeSpec::Bytes(GiB));
}

TEST(ResolveSize, BytesAndPercent) {
  EXPECT_EQ(SizeSpec::Bytes(5 * GiB).resolve(80 * GiB), 5 * GiB);
  EXPECT_EQ(SizeSpec::Percent(10).resolve(80 * GiB), 8 * GiB);
  EXPECT_EQ(SizeSpec::Percent(12.5).resolve(80 * GiB), 10 * GiB);
  EXPECT_EQ(SizeSpec::Percent(100).resolve(kMax), kMax);
  EXPECT_EQ(SizeSpec::Percent(0).resolve(kMax), 0u);
  EXPECT_EQ(SizeSpec::Percent(50).resolve(3), 1u);  // rounds down
  EXPECT_LE(SizeSpec::Percent(99.9999999).resolve(kMax), kMax);
}

TEST(FormatSize, ExactText) {
  EXPECT_EQ(format_size(0), "0");
  EXPECT_EQ(format_size(1), "1B");
  EXPECT_EQ(format_size(512), "512B");
  EXPECT_EQ(format_size(1023), "1023B");
  EXPECT_EQ(format_size(KiB), "1KiB");
  EXPECT_EQ(format_size(KiB + KiB / 2), "1.5KiB");
  EXPECT_EQ(format_size(MiB + MiB / 2), "1.5MiB");
  EXPECT_EQ(format_size(512 * MiB), "512MiB");
  EXPECT_EQ(format_size(2 * GiB), "2GiB");
  EXPECT_EQ(format_size(GiB + GiB / 4), "1.25GiB");
  EXPECT_EQ(format_size(GiB + GiB / 8), "1.125GiB");
  EXPECT_EQ(format_size(GiB + GiB / 16), "1088MiB");  // 1.0625GiB needs 4 decimals
  EXPECT_EQ(format_size(3 * TiB), "3TiB");
  EXPECT_EQ(format_size(1024 * TiB), "1024TiB");
  EXPECT_EQ(format_size(1000001), "1000001B");
  EXPECT_EQ(format_size(kMax), "18446744073709551615B");
  EXPECT_EQ(format_size(SizeSpec::Percent(10)), "10%");
  EXPECT_EQ(format_size(SizeSpec::Percent(12.5)), "12.5%");
  EXPECT_EQ(format_size(SizeSpec::Bytes(2 * GiB)), "2GiB");
}

TEST(FormatSize, RoundTripsThroughParse) {
  std::mt19937_64 random(42);
  std::vector<uint64_t> values = {0, 1, 512, KiB, MiB, GiB, TiB, kMax, kMax - 1, 5 * GiB / 4};
  for (int i = 0; i < 2000; ++i) {
    values.push_back(random());
    values.push_back(random() >> (random() % 64));
    values.push_back((random() % 4096) << (10 * (1 + random() % 4)) >> (random() % 4));
  }
  for (uint64_t value : values) {
    const std::string text = format_size(value);
    SizeSpec back;
    ASSERT_TRUE(parse_size(text, false, &back, nullptr)) << text;
    EXPECT_EQ(back.bytes, value) << text;
  }
  for (double percent : {0.0, 1.0, 10.0, 12.5, 33.3, 99.99, 100.0}) {
    const std::string text = format_size(SizeSpec::Percent(percent));
    SizeSpec back;
    ASSERT_TRUE(parse_size(text, true, &back, nullptr)) << text;
    EXPECT_EQ(back, SizeSpec::Percent(percent)) << text;
  }
}

std::chrono::milliseconds parsed_ms(std::string_view text) {
  std::chrono::milliseconds out(-1);
  std::string error;
  EXPECT_TRUE(parse_duration_ms(text, &out, &error)) << text << ": " << error;
  return out;
}

TEST(ParseDuration, AcceptedForms) {
  using std::chrono::milliseconds;
  EXPECT_EQ(parsed_ms("0"), milliseconds(0));
  EXPECT_EQ(parsed_ms("30000"), milliseconds(30000));
  EXPECT_EQ(parsed_ms("250ms"), milliseconds(250));
  EXPECT_EQ(parsed_ms("250 MS"), milliseconds(250));
  EXPECT_EQ(parsed_ms("30s"), milliseconds(30000));
  EXPECT_EQ(parsed_ms(" 30 S "), milliseconds(30000));
  EXPECT_EQ(parsed_ms("9223372036854775807"), milliseconds(INT64_MAX));
  EXPECT_EQ(parsed_ms("9223372036854775s"), milliseconds(INT64_C(9223372036854775000)));
}

TEST(ParseDuration, Rejections) {
  for (const char* text : {"", "-1", "+5", "1.5s", "1.5", "10m", "10min", "1h", "abc", "10 ms x",
                           "9223372036854775808", "9223372036854776s", "nan", "1e3"}) {
    std::chrono::milliseconds out(-7);
    std::string error;
    EXPECT_FALSE(parse_duration_ms(text, &out, &error)) << "accepted: \"" << text << "\"";
    EXPECT_EQ(out.count(), -7) << text;
    EXPECT_FALSE(error.empty()) << text;
  }
}

TEST(FormatDuration, RoundTrip) {
  for (int64_t ms : {int64_t{0}, int64_t{1}, int64_t{30000}, INT64_MAX}) {
    const std::string text = format_duration_ms(std::chrono::milliseconds(ms));
    EXPECT_EQ(parsed_ms(text).count(), ms) << text;
  }
  EXPECT_EQ(format_duration_ms(std::chrono::milliseconds(30000)), "30000");
}

}  // namespace
}  // namespace cudapool
