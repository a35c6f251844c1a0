// cudapool-trace-gen: writes a generated workload as a trace (tools/bench/trace.h, the format of
// docs/benchmarks.md), for `cudapool-bench replay FILE` or any other replayer.
//
//   cudapool-trace-gen burst|transformer|cnn|churn [--seed S] [--scale X] [-o FILE]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "tools/bench/trace.h"

int main(int argc, char** argv) {
  using namespace cudapool::bench;
  std::string name, out_path;
  unsigned long long seed = 1;
  double scale = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--seed" || a == "--scale" || a == "-o") && i + 1 < argc) {
      const char* v = argv[++i];
      if (a == "--seed") seed = std::strtoull(v, nullptr, 10);
      if (a == "--scale") scale = std::atof(v);
      if (a == "-o") out_path = v;
    } else if (a == "-h" || a == "--help") {
      printf(
          "usage: cudapool-trace-gen burst|transformer|cnn|churn [--seed S] [--scale X] "
          "[-o FILE]\n");
      return 0;
    } else if (name.empty() && a[0] != '-') {
      name = a;
    } else {
      fprintf(stderr, "cudapool-trace-gen: bad argument %s\n", a.c_str());
      return 2;
    }
  }
  Trace t;
  std::string error;
  if (name.empty() || !generate_trace(name, seed, scale, &t, &error)) {
    fprintf(stderr, "cudapool-trace-gen: %s\n", name.empty() ? "which workload?" : error.c_str());
    return 2;
  }
  if (out_path.empty()) {
    write_trace(t, std::cout);
    return std::cout.good() ? 0 : 1;
  }
  std::ofstream out(out_path);
  write_trace(t, out);
  out.close();
  if (!out) {
    fprintf(stderr, "cudapool-trace-gen: cannot write %s\n", out_path.c_str());
    return 1;
  }
  return 0;
}
