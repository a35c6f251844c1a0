#!/usr/bin/env python3
"""PyTorch under cudapool: same results, memory given back.

Usage (the GPU script runs all three):
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD=build/shim/libcudapool.so python3 torch_check.py
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 python3 torch_check.py      # no cache, no cudapool
  python3 torch_check.py                                         # PyTorch's own cache

Runs a small conv net plus a matmul branch on a side (non-blocking) stream: one burst of batches
of 4, then batches of 1, then a quiet period. It compares every output with a reference computed
by the same code in a subprocess WITHOUT cudapool and with PyTorch's default allocator (saved to
--reference, so several runs can share it), and prints PyTorch's memory counters and the device
memory held by this process (cuMemGetInfo: total - free, minus its value once the CUDA context
exists; device-wide, so other processes on the GPU change it) after the burst, after the batches
of 1 and after the quiet period, and the throughput of the batches of 1.

Exit status: 0 results match, 1 mismatch, 2 setup error (no GPU, reference failed, ...).
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn

GiB = 1 << 30
MiB = 1 << 20


def human(n):
    if n is None:
        return "?"
    if abs(n) >= GiB:
        return "%.2f GiB" % (n / GiB)
    return "%.0f MiB" % (n / MiB)


class DeviceMemory:
    """Bytes in use on the current device, from the driver (cuMemGetInfo_v2)."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.fn = self.lib.cuMemGetInfo_v2
        self.fn.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        self.baseline = self.used()

    def used(self):
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        rc = self.fn(ctypes.byref(free), ctypes.byref(total))
        if rc != 0:
            return None
        return total.value - free.value

    def held(self):
        u = self.used()
        return None if u is None or self.baseline is None else u - self.baseline


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 512, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, 1000)
        self.proj = nn.Linear(512, 2048)

    def forward(self, x, side_stream):
        f = self.features(x)
        logits = self.head(f)
        # A matmul branch on a side stream, as frameworks do with non-blocking streams.
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            p = self.proj(f)                        # [B, 2048]
            m = p.unsqueeze(2) * p.unsqueeze(1)     # [B, 2048, 2048]: 16 MiB per image
            m = m @ m.transpose(1, 2) / 2048.0
            branch = m.mean(dim=(1, 2)) + m[:, :8, :8].flatten(1).sum(1)
            del p, m
        torch.cuda.current_stream().wait_stream(side_stream)
        branch.record_stream(torch.cuda.current_stream())
        return logits, branch


def make_inputs(seed, batch, size):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


def run_workload(args, mem=None, report=None):
    """Returns the outputs (CPU tensors) and, when mem is given, fills report."""
    torch.manual_seed(0)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    net = Net().eval().to(dev)
    side = torch.cuda.Stream()  # PyTorch creates its streams non-blocking
    outputs = []

    def step(seed, batch):
        x = make_inputs(seed, batch, args.image_size).to(dev, non_blocking=False)
        with torch.no_grad():
            logits, branch = net(x, side)
        outputs.append((logits.float().cpu(), branch.float().cpu()))

    def settle():
        torch.cuda.synchronize()
        time.sleep(args.settle)

    def snapshot(name):
        if report is None:
            return
        report[name] = {
            "held": mem.held() if mem else None,
            "torch_allocated": torch.cuda.memory_allocated(),
            "torch_reserved": torch.cuda.memory_reserved(),
        }

    for i in range(args.burst_batches):
        step(1000 + i, 4)
    settle()
    snapshot("after_burst")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steady_batches):
        step(2000 + i, 1)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if report is not None:
        report["steady_images_per_s"] = args.steady_batches / elapsed if elapsed > 0 else None
    settle()
    snapshot("after_steady")
    if report is not None:
        time.sleep(args.quiet)
        snapshot("after_quiet")
    return outputs


def compare(outputs, reference):
    worst = 0.0
    bitwise = True
    if len(outputs) != len(reference):
        return False, float("inf"), False
    for got, want in zip(outputs, reference):
        for g, w in zip(got, want):
            if g.shape != w.shape or not torch.isfinite(g).all():
                return False, float("inf"), False
            if not torch.equal(g, w):
                bitwise = False
            scale = max(w.abs().max().item(), 1e-6)
            worst = max(worst, (g - w).abs().max().item() / scale)
    return worst <= 1e-3, worst, bitwise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", default="torch_reference.pt",
                    help="reference outputs: read if the file exists, else computed in a "
                         "subprocess without cudapool and written there")
    ap.add_argument("--make-reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--burst-batches", type=int, default=3)
    ap.add_argument("--steady-batches", type=int, default=40)
    ap.add_argument("--quiet", type=float, default=3.0, help="seconds without traffic")
    ap.add_argument("--settle", type=float, default=0.3)
    ap.add_argument("--json", help="write the report here too")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("torch_check: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2

    if args.make_reference:
        outputs = run_workload(args)
        torch.save(outputs, args.reference)
        return 0

    preload = os.environ.get("LD_PRELOAD", "")
    with open("/proc/self/maps") as f:
        shim_loaded = "libcudapool" in f.read()
    # PyTorch turns its cache off when the variable is set (older versions: to anything).
    caching = "PYTORCH_NO_CUDA_MEMORY_CACHING" not in os.environ

    if not os.path.exists(args.reference):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env.pop("PYTORCH_NO_CUDA_MEMORY_CACHING", None)
        cmd = [sys.executable, os.path.abspath(__file__), "--make-reference",
               "--reference", args.reference, "--image-size", str(args.image_size),
               "--burst-batches", str(args.burst_batches),
               "--steady-batches", str(args.steady_batches)]
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        if rc != 0 or not os.path.exists(args.reference):
            print("torch_check: the reference run failed (rc %d)" % rc, file=sys.stderr)
            return 2
        print("reference computed without cudapool in %.1f s" % (time.perf_counter() - t0))
    reference = torch.load(args.reference)

    torch.zeros(1, device="cuda")  # context
    torch.cuda.synchronize()
    try:
        mem = DeviceMemory()
    except OSError as e:
        print("torch_check: libcuda.so.1: %s (held bytes not shown)" % e)
        mem = None
    report = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "cudapool_loaded": shim_loaded,
        "ld_preload": preload,
        "pytorch_cache": caching,
    }
    t0 = time.perf_counter()
    outputs = run_workload(args, mem, report)
    report["wall_s"] = time.perf_counter() - t0
    ok, worst, bitwise = compare(outputs, reference)
    report["match"] = ok
    report["max_rel_diff"] = worst
    report["bitwise_equal"] = bitwise

    print("torch %s on %s; cudapool %s; PyTorch cache %s" % (
        report["torch"], report["device"], "loaded" if shim_loaded else "not loaded",
        "on" if caching else "off (PYTORCH_NO_CUDA_MEMORY_CACHING=1)"))
    for name in ("after_burst", "after_steady", "after_quiet"):
        r = report[name]
        print("%-13s held %-10s torch allocated %-10s reserved %s" % (
            name, human(r["held"]), human(r["torch_allocated"]), human(r["torch_reserved"])))
    if not caching:
        print("(PyTorch counts no allocated/reserved bytes while its cache is off)")
    print("batches of 1: %.1f images/s" % (report["steady_images_per_s"] or 0))
    print("outputs vs reference (no cudapool, PyTorch cache): %s, max relative difference %.3g, "
          "bitwise %s" % ("MATCH" if ok else "MISMATCH", worst, "equal" if bitwise else "different"))
    print("SUMMARY match=%s held_after_burst=%s held_after_quiet=%s images_per_s=%.1f "
          "cudapool=%s" % ("yes" if ok else "NO", human(report["after_burst"]["held"]),
                           human(report["after_quiet"]["held"]),
                           report["steady_images_per_s"] or 0, "yes" if shim_loaded else "no"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
