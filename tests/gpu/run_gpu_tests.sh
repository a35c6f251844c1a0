#!/usr/bin/env bash
# run_gpu_tests.sh: the GPU checks of cudapool, for a machine with an NVIDIA GPU.
#
# usage: tests/gpu/run_gpu_tests.sh [--build DIR] [--budget SECONDS] [OUTDIR]
#
# Needs: an NVIDIA driver and GPU, the CUDA 13 toolkit's runtime (CUDA_HOME or /usr/local/cuda),
# Python 3 with PyTorch for the PyTorch step, and a build folder made elsewhere (no compiler,
# package registry or gtest/spdlog needed here). Release keeps it small enough to carry (~10 MiB
# with these targets, ~24 MiB with all; RelWithDebInfo with all is ~180 MiB):
#   cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUDAPOOL_BUILD_GPU_TESTS=ON
#   ninja -C build-gpu cudapool cudapool_demo cudapool_hotpath reuse_kernels cudapoolctl
# Optional: CuPy and ONNX Runtime (with its CUDA provider; onnx or PyTorch to build its model) for
# the frameworks steps (tests/gpu/frameworks_check.py); without them those steps are SKIP.
# --build DIR   that build folder (default ./build-gpu); it may have been moved or copied.
# --budget S    time for the whole run (default 440 s); steps get at most what is left.
# OUTDIR        where the logs go (default $OUT, else ./gpu-results): OUTDIR/<step>.log for every
#               step, OUTDIR/summary.txt (step, status, seconds, key numbers) and all of them in
#               OUTDIR/all-logs.txt. Through the device tool, which brings back at most 8 files,
#               write to another folder and copy summary.txt and all-logs.txt to $OUT.
#
# Every step runs on its own under `timeout`; a failing step does not stop the others. Exit
# status: 0 when no step failed (WARN and SKIP do not count), 1 otherwise.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BUILD="./build-gpu"
BUDGET=440
OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD="$2"; shift 2 ;;
    --build=*) BUILD="${1#--build=}"; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) OUTDIR="$1"; shift ;;
  esac
done
[ -n "$OUTDIR" ] || OUTDIR="${OUT:-./gpu-results}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
BUILD="$(cd "$BUILD" 2>/dev/null && pwd || echo "$BUILD")"
SUMMARY="$OUTDIR/summary.txt"
DEADLINE=$((SECONDS + BUDGET))

SHIM="$BUILD/shim/libcudapool.so"
DEMO="$BUILD/tools/cudapool-demo"
HOTPATH="$BUILD/tools/cudapool-hotpath"
REUSE="$BUILD/tests/gpu/reuse_kernels"
PYTHON="${PYTHON:-python3}"
# shellcheck source=tests/gpu/cuda_lib.sh
. "$HERE/cuda_lib.sh"
# NVIDIA's runtime first: the tools are linked against the stand-in's soname (libcudart.so.13).
NV_LD_PATH="$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

FAILED=0
printf '%-16s %-5s %6s  %s\n' step status secs "key numbers" > "$SUMMARY"

record() {  # step status seconds notes
  printf '%-16s %-5s %6s  %s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"
  printf '%-16s %-5s %6s  %s\n' "$1" "$2" "$3" "$4"
  [ "$2" = FAIL ] && FAILED=1
  return 0
}

# run_step NAME LIMIT CMD...: runs CMD with its output in OUTDIR/NAME.log; sets RC and TOOK.
run_step() {
  local name="$1" limit="$2"; shift 2
  local log="$OUTDIR/$name.log" left=$((DEADLINE - SECONDS))
  RC=0; TOOK=0
  if [ "$left" -lt 20 ]; then
    echo "skipped: the time budget is spent" > "$log"
    RC=skip
    return
  fi
  [ "$limit" -gt "$((left - 5))" ] && limit=$((left - 5))
  { printf '+'; printf ' %q' "$@"; printf '\n(timeout %ss)\n\n' "$limit"; } > "$log"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  RC=$?
  TOOK=$((SECONDS - start))
  [ "$RC" = 124 ] && echo "TIMEOUT after ${limit}s" >> "$log"
  return 0
}

# status_of: PASS for RC 0, SKIP, FAIL (with the reason) otherwise.
status_of() {
  case "$RC" in
    0) echo PASS ;;
    skip) echo SKIP ;;
    *) echo FAIL ;;
  esac
}
# why STEP: for a failed step, the exit status and the log's last line.
why() {
  case "$RC" in
    0|skip) return 0 ;;
    124) printf 'timeout; ' ;;
    *)
      local line
      line="$(grep -iE 'error|failed|fatal|traceback|not found|violation|mismatch' "$OUTDIR/$1.log" | tail -1)"
      [ -n "$line" ] || line="$(grep -v '^[[:space:]]*$' "$OUTDIR/$1.log" | tail -1)"
      printf 'rc %s: %s; ' "$RC" "$(echo "$line" | cut -c1-160)" ;;
  esac
}

need() {  # need NAME FILE: a missing binary fails its step at once
  if [ ! -e "$2" ]; then
    echo "missing: $2 (build with -DCUDAPOOL_BUILD_GPU_TESTS=ON and pass --build)" > "$OUTDIR/$1.log"
    record "$1" FAIL 0 "missing $2"
    return 1
  fi
}

echo "cudapool GPU checks: build $BUILD, logs in $OUTDIR, budget ${BUDGET}s"

# ---- env: the machine ---------------------------------------------------------------------------
# shellcheck disable=SC2317  # run through bash -c
env_info() {  # CUDA_LIB NV_LD_PATH PYTHON BINARIES...
  local cuda_lib="$1" ld_path="$2" python="$3"; shift 3
  nvidia-smi; echo
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv; echo
  echo "CUDA runtime folder: $cuda_lib"; ls -l "$cuda_lib"/libcudart.so* 2>&1; echo
  for f in "$@"; do echo "== ldd $f"; LD_LIBRARY_PATH="$ld_path" ldd "$f" 2>&1; done
  echo
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1
  nvidia-smi -L
}
export -f env_info
run_step env 60 bash -c 'env_info "$@"' env_info "$CUDA_LIB" "$NV_LD_PATH" "$PYTHON" \
  "$SHIM" "$DEMO" "$HOTPATH" "$REUSE"
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
record env "$(status_of)" "$TOOK" "$(why env)${GPU:-no nvidia-smi}"

# ---- reuse_kernels: real kernels on several streams, cudapool preloaded -------------------------
if need reuse_fence "$REUSE" && need reuse_fence "$SHIM"; then
  run_step reuse_fence 150 env LD_LIBRARY_PATH="$NV_LD_PATH" LD_PRELOAD="$SHIM" \
    CUDAPOOL_REUSE=fence "$REUSE" --threads 4 --iterations 500
  record reuse_fence "$(status_of)" "$TOOK" "$(why reuse_fence)$(grep -h '^RESULT' "$OUTDIR/reuse_fence.log" | head -1)"
fi

if [ -e "$REUSE" ] && [ -e "$SHIM" ]; then
  # Immediate reuse must let the race through: violations are the expected outcome (rc 1). None
  # means the test did not provoke the race on this GPU: recorded as WARN, not a failure.
  run_step reuse_immediate 150 env LD_LIBRARY_PATH="$NV_LD_PATH" LD_PRELOAD="$SHIM" \
    CUDAPOOL_REUSE=immediate "$REUSE" --threads 4 --iterations 500
  res="$(grep -h '^RESULT' "$OUTDIR/reuse_immediate.log" | head -1)"
  case "$RC" in
    1) record reuse_immediate PASS "$TOOK" "violations caught as expected: $res" ;;
    0) record reuse_immediate WARN "$TOOK" "NO violation with CUDAPOOL_REUSE=immediate (race not provoked): $res" ;;
    skip) record reuse_immediate SKIP 0 "time budget" ;;
    *) record reuse_immediate FAIL "$TOOK" "$(why reuse_immediate)$res" ;;
  esac
fi

# ---- the demo against NVIDIA's runtime ----------------------------------------------------------
if need demo "$DEMO" && need demo "$SHIM"; then
  run_step demo 180 env LD_LIBRARY_PATH="$NV_LD_PATH" "$DEMO" --runtime real \
    --scale "${DEMO_SCALE:-1}"
  record demo "$(status_of)" "$TOOK" "$(why demo)$(grep -h '^After the burst' "$OUTDIR/demo.log" | head -1)"
fi

# ---- hot path: pool hits vs NVIDIA's own cudaMalloc/cudaFree ------------------------------------
hot_numbers() {  # "alloc-free X ns (glibc Y); window-64 ..."
  awk '/^(alloc-free|window-64) /{printf "%s%s %s ns/pair (glibc %s), %s Mpair/s", sep, $1, $2, $4, $7; sep="; "}' "$1"
}
if need hotpath_pool "$HOTPATH" && need hotpath_pool "$SHIM"; then
  run_step hotpath_pool 90 env LD_LIBRARY_PATH="$NV_LD_PATH" LD_PRELOAD="$SHIM" \
    CUDAPOOL_LOG_LEVEL=warn "$HOTPATH"
  record hotpath_pool "$(status_of)" "$TOOK" "$(why hotpath_pool)$(hot_numbers "$OUTDIR/hotpath_pool.log")"
  run_step hotpath_pool_2t 90 env LD_LIBRARY_PATH="$NV_LD_PATH" LD_PRELOAD="$SHIM" \
    CUDAPOOL_LOG_LEVEL=warn "$HOTPATH" --threads 2 --batches 100
  record hotpath_pool_2t "$(status_of)" "$TOOK" "$(why hotpath_pool_2t)$(hot_numbers "$OUTDIR/hotpath_pool_2t.log")"
fi
if need hotpath_native "$HOTPATH"; then
  run_step hotpath_native 120 env LD_LIBRARY_PATH="$NV_LD_PATH" "$HOTPATH" --batches 50 --warmup 5
  record hotpath_native "$(status_of)" "$TOOK" "$(why hotpath_native)$(hot_numbers "$OUTDIR/hotpath_native.log")"
fi

# ---- the control pipe: cudapoolctl trim against a PyTorch process --------------------------------
CTL="$BUILD/tools/cudapoolctl"
if need control_trim "$CTL" && "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  run_step control_trim 90 env LD_LIBRARY_PATH="$NV_LD_PATH" PYTHON="$PYTHON" \
    "$HERE/control_trim.sh" "$SHIM" "$CTL"
  record control_trim "$(status_of)" "$TOOK" "$(why control_trim)$(grep -h '^RESULT' "$OUTDIR/control_trim.log" | tail -1)"
fi

# ---- PyTorch: per-tensor cudaMalloc under cudapool, against PyTorch without it -----------------
# The reference outputs are computed once (first run, in a subprocess without cudapool) and
# shared by the three runs.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
TORCH_REF="$SCRATCH/torch_reference.pt"
torch_step() {  # name [env arguments: NAME=value, -u NAME]...
  local name="$1"; shift
  run_step "$name" 150 env "$@" "$PYTHON" "$HERE/torch_check.py" --reference "$TORCH_REF" \
    --json "$SCRATCH/$name.json"
  local s; s="$(grep -h '^SUMMARY' "$OUTDIR/$name.log" | head -1 | sed 's/^SUMMARY //')"
  local active=""
  grep -q 'cudapool .* active' "$OUTDIR/$name.log" && active=" (cudapool log: active)"
  record "$name" "$(status_of)" "$TOOK" "$(why "$name")$s$active"
}
if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  if need torch_cudapool "$SHIM"; then
    torch_step torch_cudapool PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD="$SHIM" \
      CUDAPOOL_IDLE_RELEASE_MS="${CUDAPOOL_IDLE_RELEASE_MS:-2000}"
  fi
  torch_step torch_nocache PYTORCH_NO_CUDA_MEMORY_CACHING=1
  # PyTorch turns its cache off when the variable exists at all: unset it.
  torch_step torch_cache -u PYTORCH_NO_CUDA_MEMORY_CACHING
else
  echo "python3 cannot import torch" > "$OUTDIR/torch_cudapool.log"
  record torch_cudapool FAIL 0 "python3 cannot import torch"
fi

# ---- other frameworks: CuPy and ONNX Runtime with cudapool preloaded -----------------------------
# PASS needs the same results as NumPy and the exit report showing that the pool served
# cudaMalloc calls. Same results but no pool calls is a WARN: the framework does not call the
# shared runtime (CuPy 14 links it statically; README, "What cudapool cannot see"). A framework
# that is not installed (with GPU support) is a SKIP.
framework_step() {  # name frameworks_check.py arguments...
  local name="$1"; shift
  if ! need "$name" "$SHIM"; then return; fi
  run_step "$name" 120 env LD_LIBRARY_PATH="$NV_LD_PATH" LD_PRELOAD="$SHIM" \
    CUDAPOOL_REPORT_AT_EXIT=1 "$PYTHON" "$HERE/frameworks_check.py" "$@"
  local res served status
  res="$(grep -h '^RESULT' "$OUTDIR/$name.log" | head -1 | sed 's/^RESULT [A-Z]* //')"
  served="$(grep -ohE 'cudaMalloc [0-9]+ \(hits [0-9]+' "$OUTDIR/$name.log" | head -1)"
  status="$(status_of)"
  [ "$RC" = 3 ] && status=SKIP
  if [ "$status" = PASS ] && [ -z "$served" ]; then
    status=WARN
    res="results unchanged but cudapool saw no cudaMalloc (runtime linked statically?); $res"
  fi
  record "$name" "$status" "$TOOK" "$([ "$RC" = 3 ] || why "$name")$res${served:+ (pool: $served)}"
}
framework_step cupy_nopool cupy --no-cupy-pool
framework_step cupy_pool cupy
framework_step onnxruntime onnxruntime

# ---- ctest -L gpu (paths rewritten if the build folder moved) ----------------------------------
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
  run_step ctest_gpu 240 env LD_LIBRARY_PATH="$NV_LD_PATH" "$PYTHON" "$HERE/ctest_relocated.py" \
    "$BUILD" gpu "$REPO"
  record ctest_gpu "$(status_of)" "$TOOK" "$(why ctest_gpu)$(grep -hE 'tests passed|of [0-9]+ tests? passed' "$OUTDIR/ctest_gpu.log" | tail -1)"
else
  record ctest_gpu FAIL 0 "no CTestTestfile.cmake in $BUILD"
fi

# Everything in one file too (the device tool brings back at most 8 files).
{
  cat "$SUMMARY"
  for log in "$OUTDIR"/*.log; do
    printf '\n\n======== %s ========\n' "$(basename "$log")"
    cat "$log"
  done
} > "$OUTDIR/all-logs.txt"

echo
echo "summary ($SUMMARY), $SECONDS s in all; every log in $OUTDIR/all-logs.txt:"
cat "$SUMMARY"
exit $FAILED
