// Median and 99th percentile of a benchmark's samples (cudapool-bench, cudapool-hotpath).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace cudapool::tools {

struct Distribution {
  double median = 0, p99 = 0;
};

inline Distribution summarize(std::vector<double> v) {
  Distribution d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  d.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  const auto i99 = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(n)));
  d.p99 = v[std::min(i99 == 0 ? 0 : i99 - 1, n - 1)];
  return d;
}

}  // namespace cudapool::tools
