// A plain main() for the fuzz target where libFuzzer is not available (GCC): runs every file of
// the corpus folders given as arguments, then `--mutations=N` deterministic mutations of them
// (byte flips, insertions, deletions, splices). A crash or trap fails the CTest test.
#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

void run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

std::vector<std::string> read_corpus(const std::string& dir) {
  std::vector<std::string> inputs;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return inputs;
  std::vector<std::string> names;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') names.push_back(e->d_name);
  closedir(d);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    std::ifstream in(dir + "/" + name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    inputs.push_back(ss.str());
  }
  return inputs;
}

}  // namespace

int main(int argc, char** argv) {
  long mutations = 0;
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--mutations=", 0) == 0) {
      mutations = std::atol(arg.c_str() + 12);
      continue;
    }
    std::vector<std::string> found = read_corpus(arg);
    if (found.empty()) {
      std::fprintf(stderr, "no corpus files in %s\n", arg.c_str());
      return 1;
    }
    corpus.insert(corpus.end(), found.begin(), found.end());
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR... [--mutations=N]\n", argv[0]);
    return 1;
  }
  for (const std::string& input : corpus)
    run(input);
  std::mt19937_64 rng(20261126);
  for (long m = 0; m < mutations; ++m) {
    std::string input = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const std::size_t pos = input.empty() ? 0 : rng() % (input.size() + 1);
      switch (rng() % 5) {
        case 0:
          if (!input.empty() && pos < input.size()) input[pos] = static_cast<char>(rng());
          break;
        case 1:
          input.insert(pos, 1, static_cast<char>(rng()));
          break;
        case 2:
          if (pos < input.size()) input.erase(pos, 1 + rng() % 8);
          break;
        case 3:
          input.insert(pos, corpus[rng() % corpus.size()]);
          break;
        case 4:
          input.insert(pos, std::string(rng() % 5000, static_cast<char>(rng())));
          break;
      }
    }
    run(input);
  }
  std::printf("ran %zu corpus inputs and %ld mutations\n", corpus.size(), mutations);
  return 0;
}
