#!/usr/bin/env python3
"""Framework caches with and without cudapool's adapters, on the stand-in runtime.

    python3 tools/bench/framework_bench.py [--build build] [--rounds 5] [--seconds 2]

A serving-like Python process on the stand-in `torch` (tests/frameworks): a burst of 16 x 64 MiB,
then batches of 4 x 8 MiB tensors with some pure-Python work each, then a quiet second. Four
set-ups run interleaved, round after round, in fresh processes:

  cache on, no cudapool             the framework's cache alone
  cache on, cudapool, adapters off  CUDAPOOL_FRAMEWORK=off
  cache on, cudapool, adapters on   CUDAPOOL_FRAMEWORK=auto: the rules reach the cache
  cache off, cudapool               STANDIN_FRAMEWORK_NO_CACHE=1 (PYTORCH_NO_CUDA_MEMORY_CACHING=1)

Prints steady-phase batches per second (median and range over the rounds, and the ratio of the
medians to the first set-up) and the bytes the driver holds after the quiet second. Watermarks
256 MiB / 64 MiB, idle timer 1 s. The stand-in's device calls cost nothing like a GPU's: the
throughput column shows the host-side cost of each set-up, the memory column what each keeps.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20

CHILD = r"""
import os, sys, time
sys.path.insert(0, os.environ["FRAMEWORK_PY"])
import torch, _standin_cache as cache
seconds = float(sys.argv[1])
burst = [torch.empty(64 << 20, device="cuda:0") for _ in range(16)]
del burst
batches, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    batch = [torch.empty(8 << 20, device="cuda:0") for _ in range(4)]
    sum(i * i for i in range(3000))
    del batch
    batches += 1
time.sleep(1.5)
print(batches / seconds, cache.lib.fc_driver_held(0))
"""

SETUPS = [
    ("cache on, no cudapool", {}, False),
    ("cache on, cudapool, adapters off", {"CUDAPOOL_FRAMEWORK": "off"}, True),
    ("cache on, cudapool, adapters on", {"CUDAPOOL_FRAMEWORK": "auto"}, True),
    ("cache off, cudapool", {"STANDIN_FRAMEWORK_NO_CACHE": "1"}, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    shim = os.path.join(args.build, "shim", "libcudapool.so")
    cache_lib = os.path.join(args.build, "tests", "frameworks", "libstandin_framework_cache.so")
    for path in (shim, cache_lib):
        if not os.path.exists(path):
            sys.exit("framework_bench: %s not found (build the plain tree first)" % path)
    control = tempfile.mkdtemp(prefix="cudapool-fwbench-")
    base = dict(os.environ, FRAMEWORK_PY=os.path.join(ROOT, "tests", "frameworks", "python"),
                STANDIN_FRAMEWORK_CACHE=cache_lib, CUDAPOOL_CONTROL_DIR=control,
                CUDAPOOL_HIGH_WATERMARK="256MiB", CUDAPOOL_LOW_WATERMARK="64MiB",
                CUDAPOOL_IDLE_RELEASE_MS="1000", CUDAPOOL_LOG_LEVEL="warn")
    rates = {name: [] for name, _, _ in SETUPS}
    held = {name: [] for name, _, _ in SETUPS}
    for _ in range(args.rounds):
        for name, extra, preload in SETUPS:
            env = dict(base, **extra)
            env.pop("LD_PRELOAD", None)
            if preload:
                env["LD_PRELOAD"] = shim
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.seconds)], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            rates[name].append(float(out[0]))
            held[name].append(int(out[1]))
    first = statistics.median(rates[SETUPS[0][0]])
    print("%-34s %22s %8s %16s" % ("set-up", "batches/s med [range]", "ratio", "held after, MiB"))
    for name, _, _ in SETUPS:
        r = rates[name]
        med = statistics.median(r)
        print("%-34s %8.0f [%5.0f-%5.0f] %8.3f %16.0f" %
              (name, med, min(r), max(r), med / first, statistics.median(held[name]) / MiB))
    print("(%d rounds of %.1f s, interleaved; working set of a batch: 32 MiB)" %
          (args.rounds, args.seconds))


if __name__ == "__main__":
    main()
