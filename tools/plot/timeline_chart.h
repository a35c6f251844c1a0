// A timeline CSV (CUDAPOOL_TIMELINE_FILE, docs/observability.md) as a chart: per device, held and
// in-use bytes over seconds, with the events (releases, trims, limit hits, OOM retries) marked.
#pragma once

#include <string>
#include <string_view>

#include "tools/plot/svg_plot.h"

namespace cudapool::plot {

// Parses the CSV text. False with *error (line number and reason) when it is not a timeline.
// `title` names the chart (the file's name, say).
bool timeline_chart(std::string_view csv, const std::string& title, Chart* out,
                    std::string* error);

}  // namespace cudapool::plot
