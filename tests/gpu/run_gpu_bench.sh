#!/usr/bin/env bash
# run_gpu_bench.sh: the GPU part of the benchmark suite (docs/benchmarks.md), one command.
#
# usage: tests/gpu/run_gpu_bench.sh [--build DIR] [--budget SECONDS] [--quick] [OUTDIR]
#
# Build (on any machine; Release keeps the folder small enough to carry, ~10 MiB):
#   cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release
#   ninja -C build-gpu cudapool cudapool_bench cudapool_trace_gen cudapoolctl
# Needs on the GPU machine: NVIDIA's driver and libcudart.so.13 (CUDA_HOME, /usr/local/cuda or
# NVIDIA's pip wheels), Python 3 with torch and torchvision for the PyTorch steps. No network.
#
# Steps (each under `timeout`, a failing one does not stop the others; budget 440 s by default):
#   hotpath_native   cudapool-bench hotpath --quick on NVIDIA's runtime: the pass-through column is
#                    the real cudaMalloc+cudaFree pair (the figures the CPU runs' stand-in latency
#                    comes from), and what cudaGetDevice and cuCtxGetDevice cost
#   replay_<trace>   each generated trace (burst, transformer, cnn, churn) through raw
#                    cudaMalloc/cudaFree, cudapool (on pages, the default where the GPU has virtual
#                    memory management, and on segments: CUDAPOOL_VMM=off), cudaMallocAsync
#                    (release threshold at its maximum, then cudaMemPoolTrimTo) and PyTorch's
#                    caching allocator (torch.empty)
#   infer_*          torchvision resnet50, batches of 4 then 1: PyTorch's caching allocator,
#                    PYTORCH_NO_CUDA_MEMORY_CACHING=1 alone, and with cudapool
# OUTDIR (default $OUT, else ./gpu-bench-results) gets <step>.log, summary.txt and all-logs.txt.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="./build-gpu"
BUDGET=440
QUICK=--quick
OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --full) QUICK=""; shift ;;
    --quick) QUICK=--quick; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) OUTDIR="$1"; shift ;;
  esac
done
[ -n "$OUTDIR" ] || OUTDIR="${OUT:-./gpu-bench-results}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
BUILD="$(cd "$BUILD" && pwd)"
DEADLINE=$((SECONDS + BUDGET))
BENCH="$BUILD/tools/bench/cudapool-bench"
GEN="$BUILD/tools/bench/cudapool-trace-gen"
SHIM="$BUILD/shim/libcudapool.so"
PYTHON="${PYTHON:-python3}"
# shellcheck source=tests/gpu/cuda_lib.sh
. "$HERE/cuda_lib.sh"
export LD_LIBRARY_PATH="$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
CTL="$SCRATCH/ctl"; mkdir -m 700 "$CTL"
SUMMARY="$OUTDIR/summary.txt"
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
echo "device: ${GPU:-unknown}" | tee "$SUMMARY"

step() {  # step NAME LIMIT CMD...: output in OUTDIR/NAME.log, RESULT lines into the summary
  local name="$1" limit="$2"; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then echo "$name SKIP (budget spent)" | tee -a "$SUMMARY"; return; fi
  [ "$limit" -gt "$((left - 5))" ] && limit=$((left - 5))
  local start=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  { printf '%s rc=%s %ss\n' "$name" "$rc" "$((SECONDS - start))"
    grep -h '^RESULT\|^R ' "$OUTDIR/$name.log" | sed 's/^/    /'; } | tee -a "$SUMMARY"
}

POOL_ENV=(CUDAPOOL_HIGH_WATERMARK=1GiB CUDAPOOL_LOW_WATERMARK=256MiB CUDAPOOL_IDLE_RELEASE_MS=2000
          CUDAPOOL_LOG_LEVEL=warn CUDAPOOL_CONTROL_DIR="$CTL" BENCH_CONTROL_DIR="$CTL")
SCALE=0.15; [ -z "$QUICK" ] && SCALE=1

step hotpath_native 90 "$BENCH" hotpath $QUICK --library "$SHIM"
step env_versions 30 "$PYTHON" -c 'import torch, torchvision; print("RESULT torch=" + torch.__version__ + " torchvision=" + torchvision.__version__ + " cuda=" + str(torch.version.cuda))'
for trace in burst transformer cnn churn; do
  "$GEN" "$trace" --scale "$SCALE" -o "$SCRATCH/$trace.csv"
  step "replay_${trace}_raw" 60 "$BENCH" worker replay --trace "$SCRATCH/$trace.csv"
  step "replay_${trace}_cudapool" 60 env "${POOL_ENV[@]}" LD_PRELOAD="$SHIM" \
    "$BENCH" worker replay --trace "$SCRATCH/$trace.csv"
  step "replay_${trace}_cudapool_segments" 60 env "${POOL_ENV[@]}" CUDAPOOL_VMM=off \
    LD_PRELOAD="$SHIM" "$BENCH" worker replay --trace "$SCRATCH/$trace.csv"
  step "replay_${trace}_async" 60 "$BENCH" worker replay --trace "$SCRATCH/$trace.csv" --mode async
  step "replay_${trace}_torch" 90 "$PYTHON" "$HERE/torch_bench.py" replay "$SCRATCH/$trace.csv"
done
step infer_torch_cache 90 env -u PYTORCH_NO_CUDA_MEMORY_CACHING "$PYTHON" "$HERE/torch_bench.py" infer
step infer_nocache 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$PYTHON" "$HERE/torch_bench.py" infer
step infer_nocache_cudapool 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${POOL_ENV[@]}" \
  LD_PRELOAD="$SHIM" "$PYTHON" "$HERE/torch_bench.py" infer

{ cat "$SUMMARY"; for f in "$OUTDIR"/*.log; do printf '\n==== %s ====\n' "$(basename "$f")"; cat "$f"; done; } \
  > "$OUTDIR/all-logs.txt"
echo "done in ${SECONDS}s; summary: $SUMMARY"
