#!/usr/bin/env bash
# control_trim.sh SHIM CUDAPOOLCTL: cudapoolctl trim against a real PyTorch process on a GPU.
#
# A Python process (PyTorch, per-tensor cudaMalloc under cudapool, watermark and idle timer out of
# the way) allocates 4 GiB, frees it and keeps a 64 MiB tensor; then `cudapoolctl trim PID` must
# return the idle memory: the device's used memory (nvidia-smi, device-wide) drops by about 4 GiB,
# the trim answers in well under a second, and the kept tensor is intact. Prints RESULT lines.
set -u
SHIM="$1"
CTL="$2"
PYTHON="${PYTHON:-python3}"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"; kill "$PID" 2>/dev/null' EXIT
export CUDAPOOL_CONTROL_DIR="$DIR/ctl"

used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1; }

PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD="$SHIM" CUDAPOOL_HIGH_WATERMARK=64GiB \
  CUDAPOOL_IDLE_RELEASE_MS=0 "$PYTHON" - >"$DIR/py.log" 2>&1 <<'PY' &
import time, torch
blocks = [torch.empty(256 << 20, dtype=torch.uint8, device="cuda") for _ in range(16)]
keep = torch.full((64 << 20,), 7, dtype=torch.uint8, device="cuda")
del blocks
torch.cuda.synchronize()
print("READY", flush=True)
time.sleep(6)
print("KEPT", bool((keep == 7).all().item()), flush=True)
PY
PID=$!
for _ in $(seq 1 300); do grep -q READY "$DIR/py.log" && break; sleep 0.1; done
grep -q READY "$DIR/py.log" || { cat "$DIR/py.log"; echo "RESULT FAIL: the process never got ready"; exit 1; }
before=$(used_mib)
"$CTL" stats "$PID"
start=$(date +%s%N)
"$CTL" trim "$PID"
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 0.2
after=$(used_mib)
"$CTL" stats "$PID"
wait "$PID"
cat "$DIR/py.log"
echo "RESULT trim rc=$rc took=${ms}ms device_used_before=${before}MiB after=${after}MiB"
dropped=$((before - after))
if [ "$rc" -eq 0 ] && [ "$dropped" -ge 3500 ] && [ "$ms" -lt 1000 ] && grep -q "KEPT True" "$DIR/py.log"; then
  echo "RESULT PASS: trim returned ${dropped} MiB in ${ms} ms; the kept tensor is intact"
  exit 0
fi
echo "RESULT FAIL: dropped ${dropped} MiB in ${ms} ms (rc $rc)"
exit 1
