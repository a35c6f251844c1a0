// The command language (control/command.h): parsing, bounds, execution against a fake target.
#include "control/command.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/unit/control/fake_target.h"

namespace cudapool {
namespace {

using testing_support::FakeTarget;

Command parse_ok(std::string_view line) {
  ParsedLine p = parse_command(line);
  EXPECT_TRUE(p.command.has_value()) << "\"" << line << "\": " << p.error;
  return p.command.value_or(Command{});
}

std::string parse_error(std::string_view line) {
  ParsedLine p = parse_command(line);
  EXPECT_FALSE(p.command.has_value()) << "\"" << line << "\" was accepted";
  EXPECT_FALSE(p.error.empty());
  return p.error;
}

TEST(CommandParse, EveryCommand) {
  EXPECT_EQ(CommandKind::kHelp, parse_ok("help").kind);
  EXPECT_EQ(CommandKind::kHelp, parse_ok("  HELP\t").kind);
  EXPECT_EQ(CommandKind::kResetPeaks, parse_ok("reset-peaks").kind);

  Command stats = parse_ok("stats");
  EXPECT_EQ(CommandKind::kStats, stats.kind);
  EXPECT_EQ(StatsFormat::kText, stats.format);
  EXPECT_EQ(StatsFormat::kJson, parse_ok("stats json").format);
  EXPECT_EQ(StatsFormat::kPrometheus, parse_ok("stats Prometheus").format);
  EXPECT_EQ(StatsFormat::kText, parse_ok("stats text").format);

  Command trim = parse_ok("trim");
  EXPECT_EQ(CommandKind::kTrim, trim.kind);
  EXPECT_EQ(SizeSpec::Bytes(0), trim.keep);
  EXPECT_EQ(-1, trim.device);
  trim = parse_ok("trim 256MiB device=1");
  EXPECT_EQ(SizeSpec::Bytes(256ull << 20), trim.keep);
  EXPECT_EQ(1, trim.device);
  trim = parse_ok("trim device=0 keep=10%");
  EXPECT_EQ(SizeSpec::Percent(10), trim.keep);
  EXPECT_EQ(0, trim.device);

  Command get = parse_ok("get high_watermark");
  EXPECT_EQ(CommandKind::kGet, get.kind);
  EXPECT_EQ("high_watermark", get.name);

  Command set = parse_ok("set LOW_WATERMARK 1.5 GiB");
  EXPECT_EQ(CommandKind::kSet, set.kind);
  EXPECT_EQ("LOW_WATERMARK", set.name);
  EXPECT_EQ("1.5 GiB", set.value);
}

TEST(CommandParse, ReplyPathIsTakenOffEveryCommand) {
  ParsedLine p = parse_command("stats json reply=/tmp/r.fifo");
  ASSERT_TRUE(p.command);
  EXPECT_EQ(StatsFormat::kJson, p.command->format);
  EXPECT_EQ("/tmp/r.fifo", p.reply_path);

  p = parse_command("set LIMIT 1GiB reply=/x/y");
  ASSERT_TRUE(p.command);
  EXPECT_EQ("1GiB", p.command->value);
  EXPECT_EQ("/x/y", p.reply_path);

  // A refused command still knows where to send its ERR.
  p = parse_command("frobnicate reply=/tmp/r");
  EXPECT_FALSE(p.command);
  EXPECT_EQ("/tmp/r", p.reply_path);

  p = parse_command("stats reply=relative/path");
  EXPECT_FALSE(p.command);
  EXPECT_TRUE(p.reply_path.empty());
  EXPECT_NE(std::string::npos, p.error.find("absolute"));

  p = parse_command("reply=/tmp/r");
  EXPECT_FALSE(p.command);
  EXPECT_EQ("/tmp/r", p.reply_path);
}

TEST(CommandParse, RefusesMalformedLines) {
  EXPECT_NE(std::string::npos, parse_error("frobnicate").find("unknown command"));
  parse_error("stats xml");
  parse_error("stats json extra");
  parse_error("help me");
  parse_error("trim lots");
  parse_error("trim 1GiB 2GiB");
  parse_error("trim -1");
  parse_error("trim device=");
  parse_error("trim device=x");
  parse_error("trim device=-1");
  parse_error("trim device=99999999999999999999");
  parse_error("trim device=0 device=1");
  parse_error("get");
  parse_error("get a b");
  parse_error("set");
  parse_error("set LIMIT");
  parse_error("reset-peaks now");
}

TEST(CommandParse, BlankLinesAreNothing) {
  EXPECT_TRUE(parse_command("").blank);
  EXPECT_TRUE(parse_command("   \t ").blank);
  EXPECT_TRUE(parse_command("\r").blank);
  EXPECT_FALSE(parse_command("help\r").blank);
  EXPECT_TRUE(parse_command("help\r").command);  // sent from a CRLF tool
}

TEST(CommandParse, BoundedLength) {
  std::string long_line = "set LOG_FILE " + std::string(kMaxLineBytes, 'a');
  EXPECT_NE(std::string::npos, parse_error(long_line).find("too long"));
  std::string just_fits = "get " + std::string(kMaxLineBytes - 5, 'a');
  ASSERT_EQ(kMaxLineBytes - 1, just_fits.size());
  EXPECT_TRUE(parse_command(just_fits).command);
}

TEST(CommandParse, RefusesBinaryBytes) {
  EXPECT_NE(std::string::npos, parse_error(std::string("stats\0json", 10)).find("not a text"));
  parse_error("stats \x01");
  parse_error("trim \xff\xfe");
  parse_error("get \x1b[31mLIMIT");
}

TEST(CommandParse, RandomBytesNeverCrash) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> byte(0, 255), len(0, 300);
  for (int i = 0; i < 20000; ++i) {
    std::string line(static_cast<std::size_t>(len(rng)), '\0');
    for (char& c : line)
      c = static_cast<char>(byte(rng));
    ParsedLine p = parse_command(line);
    EXPECT_TRUE(p.blank || p.command || !p.error.empty());
  }
}

TEST(CommandExecute, HelpListsEveryCommand) {
  FakeTarget target;
  CommandResult r = execute_command(parse_ok("help"), target);
  EXPECT_TRUE(r.ok);
  for (const char* name : {"stats", "trim", "get", "set", "reset-peaks", "reply="})
    EXPECT_NE(std::string::npos, r.body.find(name)) << name;
}

TEST(CommandExecute, StatsTextHasTheTargetsNumbers) {
  FakeTarget target;
  CommandResult r = execute_command(parse_ok("stats"), target);
  ASSERT_TRUE(r.ok);
  EXPECT_NE(std::string::npos,
            r.body.find(
                "pid=4242 command=server devices=1 runtime_calls=0 driver_calls=0 dlsym_lookups=0 "
                "proc_address_lookups=0\n"))
      << r.body;
  EXPECT_NE(std::string::npos, r.body.find("held=1073741824 in_use=67108864 idle=1006632960"))
      << r.body;
}

TEST(CommandExecute, TrimReportsWhatWasReleased) {
  FakeTarget target;
  CommandResult r = execute_command(parse_ok("trim 6MiB"), target);
  ASSERT_TRUE(r.ok) << r.error;
  const std::uint64_t released = (1ull << 30) - (64ull << 20) - (6ull << 20);
  EXPECT_NE(std::string::npos, r.body.find("device=0 released=" + std::to_string(released)))
      << r.body;
  EXPECT_EQ(1, target.trims.load());
  EXPECT_EQ((64ull + 6) << 20, target.devices()[0].stats.held);

  r = execute_command(parse_ok("trim device=3"), target);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.error.find("no pool"));
}

TEST(CommandExecute, SetThenGetGivesTheCanonicalValue) {
  FakeTarget target;
  CommandResult r = execute_command(parse_ok("set high_watermark 1024 MiB"), target);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ("HIGH_WATERMARK=1GiB\n", r.body);
  r = execute_command(parse_ok("get HIGH_WATERMARK"), target);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ("1GiB\n", r.body);
  r = execute_command(parse_ok("get CUDAPOOL_high_watermark"), target);
  EXPECT_EQ("1GiB\n", r.body);
}

TEST(CommandExecute, SetRefusesBadValuesAndStartUpOptionsAndChangesNothing) {
  FakeTarget target;
  const std::string before = *target.get_option("LIMIT");
  CommandResult r = execute_command(parse_ok("set LIMIT lots"), target);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.error.find("LIMIT")) << r.error;
  EXPECT_EQ(before, *target.get_option("LIMIT"));

  r = execute_command(parse_ok("set CONTROL_DIR /tmp/x"), target);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.error.find("start-up")) << r.error;
  EXPECT_EQ("", *target.get_option("CONTROL_DIR"));

  r = execute_command(parse_ok("set NO_SUCH 1"), target);
  EXPECT_FALSE(r.ok);
  r = execute_command(parse_ok("get NO_SUCH"), target);
  EXPECT_FALSE(r.ok);
}

TEST(CommandExecute, SetLowAboveHighIsClampedWithANote) {
  FakeTarget target;
  ASSERT_TRUE(execute_command(parse_ok("set HIGH_WATERMARK 1GiB"), target).ok);
  CommandResult r = execute_command(parse_ok("set LOW_WATERMARK 2GiB"), target);
  ASSERT_TRUE(r.ok);
  EXPECT_NE(std::string::npos, r.body.find("note:")) << r.body;
  EXPECT_EQ("1GiB", *target.get_option("LOW_WATERMARK"));
}

TEST(CommandExecute, ResetPeaks) {
  FakeTarget target;
  EXPECT_TRUE(execute_command(parse_ok("reset-peaks"), target).ok);
  EXPECT_EQ(1, target.peak_resets.load());
}

TEST(CommandReply, EndsWithOkOrErr) {
  CommandResult ok;
  ok.body = "a\nb";
  EXPECT_EQ("a\nb\nOK\n", format_reply(ok));
  CommandResult err;
  err.ok = false;
  err.error = "bad\nthing";
  EXPECT_EQ("ERR bad thing\n", format_reply(err));
}

}  // namespace
}  // namespace cudapool
