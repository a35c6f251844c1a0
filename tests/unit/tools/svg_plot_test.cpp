#include "tools/plot/svg_plot.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/unit/tools/xml_check.h"

namespace cudapool::plot {
namespace {

constexpr double kMiB = 1024.0 * 1024;
constexpr double kGiB = 1024 * kMiB;

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1))
    ++n;
  return n;
}

TEST(XmlCheck, RejectsBrokenDocuments) {
  EXPECT_EQ(test::xml_problem("<a><b/></a>"), "");
  EXPECT_NE(test::xml_problem("<a><b></a>"), "");
  EXPECT_NE(test::xml_problem("<a x=1/>"), "");
  EXPECT_NE(test::xml_problem("<a>x < y</a>"), "");
  EXPECT_NE(test::xml_problem("<a>R&D</a>"), "");
  EXPECT_NE(test::xml_problem("<a/><b/>"), "");
}

TEST(Ticks, BytesUseBinaryUnits) {
  std::vector<double> t = nice_ticks(0, 12.75 * kGiB, 6, Unit::kBytes);
  ASSERT_GE(t.size(), 3u);
  EXPECT_EQ(t.front(), 0);
  EXPECT_GE(t.back(), 12.75 * kGiB);
  EXPECT_EQ(format_tick(2 * kGiB, Unit::kBytes), "2 GiB");
  EXPECT_EQ(format_tick(1.5 * kGiB, Unit::kBytes), "1536 MiB");
  EXPECT_EQ(format_tick(3 * kGiB, Unit::kBytes), "3 GiB");
  EXPECT_EQ(format_tick(512 * kMiB, Unit::kBytes), "512 MiB");
  // Evenly spaced, covering the range.
  for (std::size_t i = 2; i < t.size(); ++i)
    EXPECT_DOUBLE_EQ(t[i] - t[i - 1], t[1] - t[0]);
}

TEST(Ticks, Seconds) {
  EXPECT_EQ(format_tick(0.25, Unit::kSeconds), "250 ms");
  EXPECT_EQ(format_tick(12, Unit::kSeconds), "12 s");
  EXPECT_EQ(format_tick(240, Unit::kSeconds), "4 min");
  std::vector<double> t = nice_ticks(0, 7.3, 8, Unit::kSeconds);
  ASSERT_GE(t.size(), 4u);
  EXPECT_EQ(t[1] - t[0], 1.0);
  EXPECT_GE(t.back(), 7.3);
}

TEST(Render, WellFormedWithSeriesMarkersAndLabels) {
  Chart chart;
  chart.title = "GPU memory <pid 42> & friends";
  chart.y_label = "bytes";
  Series held{"held", {0, 1, 2, 3}, {0, 4 * kGiB, 4 * kGiB, 1 * kGiB}};
  Series in_use{"in use", {0, 1, 2, 3}, {0, 3 * kGiB, 0.5 * kGiB, 0.5 * kGiB}};
  chart.series = {held, in_use};
  chart.markers = {{2.5, "watermark release"}, {2.6, "watermark release"}, {2.7, "trim"}};
  const std::string svg = render_svg(chart);
  EXPECT_EQ(test::xml_problem(svg), "") << svg;
  EXPECT_NE(svg.find("data-series=\"held\""), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"in use\""), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"marker\""), 3u);
  EXPECT_NE(svg.find("&lt;pid 42&gt; &amp; friends"), std::string::npos);
  EXPECT_NE(svg.find(" GiB</text>"), std::string::npos);  // y ticks in GiB
  EXPECT_NE(svg.find(">3 s</text>"), std::string::npos);  // x ticks in seconds
  // The legend: both series and one entry per marker kind.
  EXPECT_NE(svg.find(">watermark release</text>"), std::string::npos);
  EXPECT_NE(svg.find(">trim</text>"), std::string::npos);
}

TEST(Render, HigherValuesAreDrawnHigher) {
  Chart chart;
  chart.series = {{"s", {0, 1}, {0, 100}}};
  const std::string svg = render_svg(chart);
  const std::size_t d = svg.find(" d=\"M");
  ASSERT_NE(d, std::string::npos);
  double x0, y0, x1, y1;
  ASSERT_EQ(std::sscanf(svg.c_str() + d + 5, "%lf %lf L%lf %lf", &x0, &y0, &x1, &y1), 4);
  EXPECT_LT(x0, x1);
  EXPECT_GT(y0, y1);  // SVG y grows downwards
}

TEST(Render, EmptyChartIsStillADocument) {
  Chart chart;
  EXPECT_EQ(test::xml_problem(render_svg(chart)), "");
}

}  // namespace
}  // namespace cudapool::plot
