// Unit tests of tools/bench: the trace format, the generators and the replay on the simulated
// backend (the counts the benchmark's targets are about; never times).
#include <gtest/gtest.h>

#include <sstream>

#include "allocator/size_classes.h"
#include "tools/bench/sim_replay.h"
#include "tools/bench/trace.h"

namespace cudapool::bench {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

bool parse(const std::string& text, Trace* t, std::string* error) {
  std::istringstream in(text);
  return parse_trace(in, t, error);
}

TEST(TraceFormat, ParsesEveryField) {
  Trace t;
  std::string error;
  ASSERT_TRUE(
      parse("# comment\nthread,time_us,action,id,size,device\n"
            "0,0,alloc,0x7f00,4096\n"
            "1,5,alloc,b,100,1\n"
            "\n"
            "1,7,mark,after-burst,0\n"
            "0,9,free,0x7f00,0\n"
            "0,9,free,b,0,0\n",
            &t, &error))
      << error;
  ASSERT_EQ(t.events.size(), 5u);
  EXPECT_EQ(t.ids, 2u);
  EXPECT_EQ(t.devices, 2);
  EXPECT_EQ(t.end_us, 9u);
  EXPECT_EQ(t.events[0].action, Action::kAlloc);
  EXPECT_EQ(t.events[0].size, 4096u);
  EXPECT_EQ(t.events[1].thread, 1u);
  EXPECT_EQ(t.events[1].device, 1);
  EXPECT_EQ(t.events[2].action, Action::kMark);
  EXPECT_EQ(t.labels.at(t.events[2].label), "after-burst");
  EXPECT_EQ(t.events[3].id, t.events[0].id);
  EXPECT_EQ(t.events[4].id, t.events[1].id);
  EXPECT_EQ(t.events[4].device, 1) << "a free takes the device of its alloc";
  EXPECT_EQ(t.repaired, 0u);
}

TEST(TraceFormat, RejectsBadLinesWithTheLineNumber) {
  const char* bad[] = {
      "0,0,alloc,a\n",                   // too few fields
      "0,0,alloc,a,1,0,9\n",             // too many
      "x,0,alloc,a,1\n",                 // thread
      "0,-1,alloc,a,1\n",                // time
      "0,5,alloc,a,1\n0,4,alloc,b,1\n",  // time backwards
      "0,0,grab,a,1\n",                  // action
      "0,0,alloc,a,0\n",                 // size 0
      "0,0,alloc,,1\n",                  // id
      "0,0,alloc,a,1,dev\n",             // device
  };
  for (const char* text : bad) {
    Trace t;
    std::string error;
    EXPECT_FALSE(parse(text, &t, &error)) << text;
    EXPECT_NE(error.find("line "), std::string::npos) << text << " -> " << error;
  }
}

TEST(TraceFormat, RepairsAddressesReusedAcrossThreads) {
  Trace t;
  std::string error;
  ASSERT_TRUE(parse("0,0,alloc,p,10\n1,1,alloc,p,20\n0,2,free,p,0\n0,3,free,p,0\n", &t, &error));
  // alloc p, (implicit free p), alloc p, free p; the last free names nothing live.
  ASSERT_EQ(t.events.size(), 4u);
  EXPECT_EQ(t.events[1].action, Action::kFree);
  EXPECT_EQ(t.repaired, 2u);
}

TEST(TraceFormat, WriteThenParseGivesTheSameTrace) {
  Trace t;
  std::string error;
  ASSERT_TRUE(generate_trace("cnn", 7, 0.05, &t, &error)) << error;
  std::ostringstream out;
  write_trace(t, out);
  Trace back;
  ASSERT_TRUE(parse(out.str(), &back, &error)) << error;
  ASSERT_EQ(back.events.size(), t.events.size());
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    EXPECT_EQ(back.events[i].action, t.events[i].action);
    EXPECT_EQ(back.events[i].time_us, t.events[i].time_us);
    EXPECT_EQ(back.events[i].size, t.events[i].size);
    if (HasFailure()) break;
  }
  EXPECT_EQ(back.labels, t.labels);
}

TEST(Generators, SameSeedSameTraceOtherSeedOtherTrace) {
  for (const std::string& name : generator_names()) {
    Trace a, b, c;
    std::string error;
    ASSERT_TRUE(generate_trace(name, 3, 0.05, &a, &error)) << error;
    ASSERT_TRUE(generate_trace(name, 3, 0.05, &b, &error));
    ASSERT_TRUE(generate_trace(name, 4, 0.05, &c, &error));
    std::ostringstream sa, sb, sc;
    write_trace(a, sa);
    write_trace(b, sb);
    write_trace(c, sc);
    EXPECT_EQ(sa.str(), sb.str()) << name;
    EXPECT_NE(sa.str(), sc.str()) << name;
    EXPECT_GT(a.events.size(), 1000u) << name;
    // Every trace ends with a quiet period between its "end" and "after-idle" marks.
    ASSERT_GE(a.labels.size(), 2u);
    EXPECT_EQ(a.labels.back(), "after-idle") << name;
  }
  Trace t;
  std::string error;
  EXPECT_FALSE(generate_trace("nope", 1, 1, &t, &error));
}

Policy bench_policy() {
  Policy p;
  p.high_watermark = 1024 * kMiB;
  p.low_watermark = 256 * kMiB;
  p.idle_release_ms = 2000;
  return p;
}

TEST(SimReplay, PassThroughCallsTheDriverForEveryCall) {
  Trace t;
  std::string error;
  ASSERT_TRUE(generate_trace("churn", 1, 0.05, &t, &error));
  SimResult r = replay_simulated(t, SimMode::kPassThrough, bench_policy(), false);
  EXPECT_EQ(r.failures, 0u);
  EXPECT_EQ(r.driver_calls(), r.app_calls);
  EXPECT_EQ(r.held_end, 0u);
  EXPECT_EQ(r.peak_held, r.peak_in_use);
}

TEST(SimReplay, ChurnCallsTheDriverForAtMostOnePercentOfCalls) {
  Trace t;
  std::string error;
  ASSERT_TRUE(generate_trace("churn", 1, 0.15, &t, &error));
  // In the steady phase, on pages and on segments (filling the pool and emptying it are not
  // churn: with pages they take a driver call per page).
  for (SimMode mode : {SimMode::kPool, SimMode::kPoolSegments}) {
    SimResult r = replay_simulated(t, mode, bench_policy(), true);
    EXPECT_EQ(r.failures, 0u);
    std::uint64_t driver = 0, app = 0;
    r.calls_between("steady", "steady-end", &driver, &app);
    EXPECT_GT(app, 100000u) << to_string(mode);
    EXPECT_LE(driver * 100, app) << to_string(mode) << ": " << driver << " driver calls for " << app
                                 << " application calls";
  }
}

TEST(SimReplay, BurstIsReleasedDownToTheLowWatermarkAndTrimmedToNothing) {
  Trace t;
  std::string error;
  ASSERT_TRUE(generate_trace("burst", 1, 1, &t, &error));
  Policy p = bench_policy();
  SimResult r = replay_simulated(t, SimMode::kPool, p, true);
  EXPECT_EQ(r.failures, 0u);
  const HeldAt* after = nullptr;
  for (const HeldAt& h : r.at_marks)
    if (h.label == "after-burst") after = &h;
  ASSERT_NE(after, nullptr);
  EXPECT_GT(r.peak_held, 8 * 1024 * kMiB) << "the burst needs more than 8 GiB";
  EXPECT_LE(after->held, after->in_use + p.low_watermark + kMediumSegment);
  // At the end only the weights are in use: trim returns everything else (partly used shared
  // segments aside).
  ASSERT_EQ(r.at_marks.back().label, "after-idle");
  EXPECT_LE(r.held_after_trim, r.at_marks.back().in_use + 64 * kMiB);
  EXPECT_LT(r.held_after_trim, r.held_end);
  EXPECT_FALSE(r.releases.empty());
  EXPECT_FALSE(r.timeline.empty());

  // The framework cache keeps the burst.
  SimResult cache = replay_simulated(t, SimMode::kCache, p, false);
  EXPECT_GE(cache.held_end, r.peak_in_use / 2);
  EXPECT_LT(r.held_end, cache.held_end);
}

}  // namespace
}  // namespace cudapool::bench
