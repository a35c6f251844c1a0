#!/usr/bin/env bash
# The project's set-up and test entry point (README "Quick start").
#
#   tools/dev.sh demo   install what is missing, build, run the demo (stand-in runtime without GPU)
#   tools/dev.sh test   install what is missing, build plain + ASan/UBSan + TSan trees, run all tests,
#                       then the libFuzzer smoke runs (clang tree)
#   tools/dev.sh build  install what is missing and build the plain tree only
#
# Build trees: build/ (plain, warnings are errors), build-asan/, build-tsan/, build-fuzz/ (clang,
# the libFuzzer targets only). Set JOBS to change the parallelism (default: number of cores).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
jobs=${JOBS:-$(nproc)}

# Debian packages the build needs (CUDA headers come from the CUDA toolkit, see below).
packages=(cmake ninja-build g++ libspdlog-dev libfmt-dev libgtest-dev libgmock-dev pkg-config
          libcpp-httplib-dev)  # cpp-httplib: cudapoolctl serve-metrics (never the preload library)
# What only the tests need. The fleet tests run the real programs: Prometheus and promtool,
# node_exporter (tests/integration/fleet_test.cpp, deploy/prometheus), kubectl for the manifests'
# offline check (deploy/kubernetes); the framework adapter tests run Debian's python3
# (tests/frameworks).
test_packages=(prometheus prometheus-node-exporter python3)
command -v kubectl >/dev/null 2>&1 || test_packages+=(kubernetes-client)

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  local cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime_api.h"
  if [ ! -f "$cuda_inc" ] && [ ! -f /usr/include/cuda_runtime_api.h ]; then
    echo "error: CUDA toolkit headers not found ($cuda_inc); install the CUDA toolkit or set CUDA_HOME" >&2
    exit 1
  fi
}

configure_and_build() {  # dir, extra cmake args... (TARGETS="a b": only those targets)
  local dir=$1
  shift
  echo "== building $dir"
  cmake -S . -B "$dir" -G Ninja -DCUDAPOOL_WERROR=ON "$@" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; exit 1; }
  # shellcheck disable=SC2086
  cmake --build "$dir" -j "$jobs" ${TARGETS:+--target $TARGETS}
}

run_tests() {  # dir, extra ctest args...
  local dir=$1
  shift
  echo "== testing $dir"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 300 "$@"
}

case "${1:-}" in
  demo)
    install_missing
    configure_and_build build
    exec build/tools/cudapool-demo "${@:2}"
    ;;
  build)
    install_missing
    configure_and_build build
    ;;
  test)
    packages+=("${test_packages[@]}")
    install_missing
    configure_and_build build
    run_tests build -LE gpu
    configure_and_build build-asan -DCUDAPOOL_SANITIZE="address;undefined"
    run_tests build-asan -LE 'gpu|no-asan'
    configure_and_build build-tsan -DCUDAPOOL_SANITIZE=thread
    run_tests build-tsan -LE 'gpu|no-tsan'
    packages=(clang-14 libclang-rt-14-dev)  # libFuzzer
    install_missing
    TARGETS="command_fuzzer size_fuzzer options_fuzzer" configure_and_build build-fuzz \
      -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14 -DCUDAPOOL_FUZZ=ON
    run_tests build-fuzz -R libfuzzer
    echo "== all test trees passed"
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
