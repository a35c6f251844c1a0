// Stats formats (control/stats_format.h): text round trip, JSON shape, Prometheus validity.
#include "control/stats_format.h"

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace cudapool {
namespace {

ProcessReport sample_report() {
  ProcessReport r;
  r.pid = 77;
  r.command = "my server \"x\"";
  for (int d = 0; d < 2; ++d) {
    DeviceReport dev;
    dev.device = d;
    dev.stats.held = 1000 + d;
    dev.stats.in_use = 400;
    dev.stats.releases_by_reason[static_cast<int>(ReleaseReason::kTrim)] = 3;
    dev.policy.high_watermark = 2048;
    dev.policy.reuse = d == 1 ? ReuseMode::kImmediate : ReuseMode::kFence;
    dev.device_total = 1 << 20;
    dev.policy.idle_release_ms = d == 0 ? 30000 : 1500;
    if (d == 1) dev.uuid = "GPU-50515253-5455-5657-5859-5a5b5c5d5e5f";
    r.devices.push_back(dev);
  }
  return r;
}

TEST(StatsFormat, TextReadsBack) {
  const std::string text = format_stats_text(sample_report());
  EXPECT_EQ(0u, text.find("pid=77 command=my_server__x_ devices=2 runtime_calls=0 driver_calls=0 "
                          "dlsym_lookups=0 proc_address_lookups=0\n"))
      << text;
  EXPECT_NE(std::string::npos, text.find("releases_trim=3")) << text;
  EXPECT_NE(std::string::npos, text.find("reuse=immediate")) << text;
  ProcessSummary s;
  ASSERT_TRUE(parse_stats_text(text, &s));
  EXPECT_EQ(77, s.pid);
  EXPECT_EQ("my_server__x_", s.command);
  ASSERT_EQ(2u, s.devices.size());
  EXPECT_EQ(1, s.devices[1].device);
  EXPECT_EQ(1001u, s.devices[1].held);
  EXPECT_EQ(400u, s.devices[1].in_use);
  EXPECT_EQ(601u, s.devices[1].idle);
  EXPECT_FALSE(parse_stats_text("garbage\n", &s));
}

TEST(StatsFormat, JsonEscapesAndHasEveryDevice) {
  const std::string json = format_stats_json(sample_report());
  EXPECT_EQ(0u, json.find("{\"pid\":77,\"command\":\"my server \\\"x\\\"\",\"runtime_calls\":0,"
                          "\"driver_calls\":0,\"dlsym_lookups\":0,\"proc_address_lookups\":0,"
                          "\"devices\":[{"))
      << json;
  EXPECT_NE(std::string::npos, json.find("\"device\":1,\"held\":1001,")) << json;
  EXPECT_NE(std::string::npos, json.find("\"reuse\":\"fence\"")) << json;
  EXPECT_EQ("]}\n", json.substr(json.size() - 3));
  // Balanced braces outside strings.
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < json.size(); ++i) {
    if (in_string) {
      if (json[i] == '\\')
        ++i;
      else if (json[i] == '"')
        in_string = false;
      continue;
    }
    if (json[i] == '"') in_string = true;
    if (json[i] == '{' || json[i] == '[') ++depth;
    if (json[i] == '}' || json[i] == ']') --depth;
    EXPECT_GE(depth, 0);
  }
  EXPECT_EQ(0, depth);
}

// Checks the text exposition format: HELP/TYPE at most once per family and before its samples,
// samples of a family contiguous, every sample line well formed, no duplicate series.
void expect_valid_prometheus(const std::string& text) {
  static const std::regex sample(
      R"re(^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*)\} [0-9]+(\.[0-9]+)?$)re");
  static const std::regex comment(R"(^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$)");
  std::set<std::string> finished, typed, series;
  std::string current;
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    std::string family;
    if (std::regex_match(line, m, comment)) {
      family = m[2];
      if (m[1] == "TYPE") {
        EXPECT_TRUE(typed.insert(family).second) << "TYPE twice: " << family;
        EXPECT_TRUE(m[3] == "gauge" || m[3] == "counter") << line;
      }
    } else if (std::regex_match(line, m, sample)) {
      family = m[1];
      ++samples;
      EXPECT_TRUE(series.insert(m[1].str() + "{" + m[2].str() + "}").second) << "dup: " << line;
      EXPECT_EQ(1u, typed.count(family)) << "sample before its TYPE: " << line;
    } else {
      ADD_FAILURE() << "not Prometheus text: \"" << line << "\"";
      continue;
    }
    if (family != current) {
      EXPECT_EQ(0u, finished.count(family)) << "family " << family << " is split";
      if (!current.empty()) finished.insert(current);
      current = family;
    }
  }
  EXPECT_GT(samples, 0);
}

TEST(StatsFormat, PrometheusIsValid) {
  const std::string text = format_stats_prometheus(sample_report());
  expect_valid_prometheus(text);
  EXPECT_NE(std::string::npos,
            text.find("cudapool_held_bytes{pid=\"77\",command=\"my server \\\"x\\\"\",gpu=\"1\","
                      "UUID=\"GPU-50515253-5455-5657-5859-5a5b5c5d5e5f\"} 1001\n"))
      << text;
  // Without a known UUID the label is left out (an empty label is no label to Prometheus).
  EXPECT_NE(std::string::npos,
            text.find("cudapool_releases_by_reason_total{pid=\"77\",command=\"my server "
                      "\\\"x\\\"\",gpu=\"0\",reason=\"trim\"} 3\n"))
      << text;
  // DCGM's `device` label means "nvidia0": ours is `gpu`, never `device`.
  EXPECT_EQ(std::string::npos, text.find("device=\"")) << text;
  // Base units: seconds, exact decimals.
  EXPECT_NE(std::string::npos, text.find("# TYPE cudapool_idle_release_seconds gauge\n")) << text;
  EXPECT_NE(std::string::npos, text.find("gpu=\"0\"} 30\n", text.find("idle_release_seconds{")));
  EXPECT_NE(std::string::npos,
            text.find("5e5f\"} 1.5\n", text.find("idle_release_seconds{pid=\"77\"")))
      << text;
  EXPECT_EQ(std::string::npos, text.find("milliseconds")) << text;
  // The library's version, once per process.
  EXPECT_EQ(0u, text.find("# HELP cudapool_build_info ")) << text;
  EXPECT_NE(std::string::npos,
            text.find("cudapool_build_info{pid=\"77\",command=\"my server \\\"x\\\"\",version=\"" +
                      std::string(CUDAPOOL_VERSION) + "\"} 1\n"))
      << text;
}

TEST(StatsFormat, TextAndJsonCarryTheUuidWhenKnown) {
  const std::string text = format_stats_text(sample_report());
  EXPECT_NE(std::string::npos, text.find(" uuid=GPU-50515253-5455-5657-5859-5a5b5c5d5e5f\n"));
  EXPECT_EQ(1u, [&] {
    std::size_t n = 0;
    for (std::size_t at = text.find("uuid="); at != std::string::npos;
         at = text.find("uuid=", at + 1))
      ++n;
    return n;
  }()) << text;
  EXPECT_NE(std::string::npos, text.find("idle_release_ms=30000")) << "text keeps milliseconds";
  const std::string json = format_stats_json(sample_report());
  EXPECT_NE(
      std::string::npos,
      json.find("\"reuse\":\"immediate\",\"uuid\":\"GPU-50515253-5455-5657-5859-5a5b5c5d5e5f\"}"))
      << json;
}

TEST(StatsFormat, DecimalRatiosAreExact) {
  EXPECT_EQ("0", format_decimal_ratio(0, 1000));
  EXPECT_EQ("30", format_decimal_ratio(30000, 1000));
  EXPECT_EQ("1.5", format_decimal_ratio(1500, 1000));
  EXPECT_EQ("0.001", format_decimal_ratio(1, 1000));
  EXPECT_EQ("18446744073709551.615", format_decimal_ratio(UINT64_MAX, 1000));
  EXPECT_EQ("7", format_decimal_ratio(7, 1));
  EXPECT_EQ("0.333333333333333333", format_decimal_ratio(1, 3));  // bounded, not endless
}

TEST(StatsFormat, GpuUuidAsNvidiaPrintsIt) {
  unsigned char bytes[16];
  for (int i = 0; i < 16; ++i)
    bytes[i] = static_cast<unsigned char>(0xf0 + i);
  EXPECT_EQ("GPU-f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff", format_gpu_uuid(bytes));
}

TEST(StatsFormat, UpMetricIsOneDocument) {
  const std::string merged =
      merge_prometheus({format_up_metric(5, true), format_up_metric(6, false)});
  expect_valid_prometheus(merged);
  EXPECT_NE(std::string::npos, merged.find("cudapool_up{pid=\"5\"} 1\n")) << merged;
  EXPECT_NE(std::string::npos, merged.find("cudapool_up{pid=\"6\"} 0\n")) << merged;
}

TEST(StatsFormat, CollectorLabelsGoOnEverySampleOnly) {
  const std::string text = add_prometheus_labels(
      "# HELP a_total x {y}\n# TYPE a_total counter\na_total{pid=\"1\"} 3\nb 4\nc{} 5\n",
      "pod=\"" + escape_label_value("we\"ird") + "\"");
  EXPECT_EQ(
      "# HELP a_total x {y}\n# TYPE a_total counter\na_total{pod=\"we\\\"ird\",pid=\"1\"} 3\n"
      "b{pod=\"we\\\"ird\"} 4\nc{pod=\"we\\\"ird\"} 5\n",
      text);
  const std::string whole = add_prometheus_labels(format_stats_prometheus(sample_report()),
                                                  "namespace=\"ml\",pod=\"server-0\"");
  expect_valid_prometheus(whole);
  EXPECT_NE(std::string::npos,
            whole.find("cudapool_held_bytes{namespace=\"ml\",pod=\"server-0\",pid=\"77\""))
      << whole;
}

TEST(StatsFormat, MergedPrometheusOfSeveralProcessesIsValid) {
  ProcessReport a = sample_report(), b = sample_report();
  b.pid = 78;
  const std::string merged =
      merge_prometheus({format_stats_prometheus(a), format_stats_prometheus(b), "junk line\n"});
  expect_valid_prometheus(merged);
  EXPECT_NE(std::string::npos, merged.find("pid=\"78\""));
  // The check itself fails on a plain concatenation (HELP/TYPE repeated, families split).
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    expect_valid_prometheus(format_stats_prometheus(a) + format_stats_prometheus(b));
  }
  EXPECT_GT(failures.size(), 0);
}

TEST(StatsFormat, RoutesAppearInEveryFormat) {
  ProcessReport r;
  r.pid = 5;
  r.command = "x";
  r.routes = RouteCounts{11, 22, 33, 44};
  EXPECT_NE(std::string::npos,
            format_stats_text(r).find(" runtime_calls=11 driver_calls=22 dlsym_lookups=33 "
                                      "proc_address_lookups=44\n"));
  EXPECT_NE(std::string::npos,
            format_stats_json(r).find("\"runtime_calls\":11,\"driver_calls\":22,"
                                      "\"dlsym_lookups\":33,\"proc_address_lookups\":44"));
  const std::string prom = format_stats_prometheus(r);
  EXPECT_NE(std::string::npos,
            prom.find("cudapool_pool_calls_total{pid=\"5\",command=\"x\",api=\"driver\"} 22\n"));
  EXPECT_NE(std::string::npos, prom.find("cudapool_entry_point_lookups_total{pid=\"5\",command="
                                         "\"x\",lookup=\"proc_address\"} 44\n"));
}

TEST(StatsFormat, NoDevicesIsStillValid) {
  ProcessReport r;
  r.pid = 1;
  r.command = "x";
  EXPECT_EQ(
      "pid=1 command=x devices=0 runtime_calls=0 driver_calls=0 dlsym_lookups=0 "
      "proc_address_lookups=0\n",
      format_stats_text(r));
  EXPECT_EQ(
      "{\"pid\":1,\"command\":\"x\",\"runtime_calls\":0,\"driver_calls\":0,"
      "\"dlsym_lookups\":0,\"proc_address_lookups\":0,\"devices\":[]}\n",
      format_stats_json(r));
  // Only the process's build_info.
  const std::string prom = format_stats_prometheus(r);
  expect_valid_prometheus(prom);
  EXPECT_NE(std::string::npos, prom.find("cudapool_build_info{pid=\"1\",command=\"x\""));
  EXPECT_EQ(std::string::npos, prom.find("cudapool_held_bytes")) << prom;
}

TEST(StatsFormat, SanitizedNames) {
  EXPECT_EQ("?", sanitize_process_name(""));
  EXPECT_EQ("a_b_c", sanitize_process_name("a b\tc"));
  EXPECT_EQ("x__", sanitize_process_name("x=\xff"));
  EXPECT_EQ(64u, sanitize_process_name(std::string(100, 'a')).size());
}

}  // namespace
}  // namespace cudapool
