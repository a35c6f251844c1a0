#!/usr/bin/env python3
"""PyTorch parts of the GPU benchmark (tests/gpu/run_gpu_bench.sh).

  torch_bench.py replay TRACE.csv   replay an allocation trace with torch.empty (PyTorch's caching
                                    allocator), report held bytes after each mark, at the end and
                                    after torch.cuda.empty_cache(), and the replay time
  torch_bench.py infer              a torchvision model (resnet50, random weights: no download),
                                    batches of 4 then batches of 1; images/s of the batches of 1
                                    and the device memory held after the burst and after a trim

Held bytes are device-wide (cuMemGetInfo: total - free, minus the value once the context exists).
The trim is torch.cuda.empty_cache() with PyTorch's cache, and the control pipe's `trim` when
cudapool is preloaded (CUDAPOOL_CONTROL_DIR must be set). Prints one line "RESULT key=value ...".
"""
import argparse
import ctypes
import os
import time

import torch


class DeviceMemory:
    def __init__(self):
        self.fn = ctypes.CDLL("libcuda.so.1").cuMemGetInfo_v2
        self.fn.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        self.baseline = self.used()

    def used(self):
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.fn(ctypes.byref(free), ctypes.byref(total))
        return total.value - free.value

    def held(self):
        return self.used() - self.baseline


def cudapool_active():
    return "libcudapool" in os.environ.get("LD_PRELOAD", "")


def trim():
    torch.cuda.synchronize()
    if cudapool_active():
        d = os.environ.get("CUDAPOOL_CONTROL_DIR", "")
        path = os.path.join(d, "%d.ctl" % os.getpid())
        with open(path, "w") as f:  # the pipe: one command per line, no answer needed
            f.write("trim\n")
        time.sleep(0.5)
        return "pipe"
    torch.cuda.empty_cache()
    return "empty_cache"


def replay(path, idle_ms):
    torch.zeros(1, device="cuda")
    mem = DeviceMemory()
    events = []
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#") or line.startswith("thread"):
                continue
            t, us, action, ident, size = line.strip().split(",")[:5]
            events.append((int(us), action, ident, int(size)))
    live, result, prev, busy = {}, {}, 0, 0.0
    peak = 0
    calls = 0
    start = time.perf_counter()
    for us, action, ident, size in events:
        if us - prev >= 1_000_000:
            time.sleep(min(us - prev, (idle_ms + 500) * 1000) / 1e6)
        prev = us
        if action == "alloc":
            t0 = time.perf_counter()
            live[ident] = torch.empty(size, dtype=torch.uint8, device="cuda")
            busy += time.perf_counter() - t0
            calls += 1
        elif action == "free":
            t0 = time.perf_counter()
            live.pop(ident, None)
            busy += time.perf_counter() - t0
            calls += 1
        else:
            torch.cuda.synchronize()
            time.sleep(0.25)
            result["mark_%s_held" % ident] = mem.held()
            result["mark_%s_reserved" % ident] = torch.cuda.memory_reserved()
    torch.cuda.synchronize()
    result["held_end"] = mem.held()
    result["peak_reserved"] = torch.cuda.max_memory_reserved()
    result["trim"] = trim()
    result["held_after_trim"] = mem.held()
    result["replay_ms"] = "%.1f" % (busy * 1e3)
    result["app_calls"] = calls
    print("RESULT mode=torch " + " ".join("%s=%s" % kv for kv in result.items()), flush=True)


def infer(burst, steady, image):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).cuda().eval()
    mem = DeviceMemory()
    with torch.no_grad():
        for _ in range(burst):
            model(torch.randn(4, 3, image, image, device="cuda"))
        torch.cuda.synchronize()
        time.sleep(0.3)
        after_burst = mem.held()
        model(torch.randn(1, 3, image, image, device="cuda"))  # warm-up of batch 1
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steady):
            model(torch.randn(1, 3, image, image, device="cuda"))
        torch.cuda.synchronize()
        took = time.perf_counter() - t0
    after_steady = mem.held()
    how = trim()
    print("RESULT mode=infer images_per_s=%.1f held_after_burst=%d held_after_steady=%d "
          "held_after_trim=%d trim=%s caching=%s cudapool=%s" % (
              steady / took, after_burst, after_steady, mem.held(), how,
              "off" if "PYTORCH_NO_CUDA_MEMORY_CACHING" in os.environ else "on",
              "on" if cudapool_active() else "off"), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay")
    r.add_argument("trace")
    r.add_argument("--idle-ms", type=int, default=2000)
    i = sub.add_parser("infer")
    i.add_argument("--burst", type=int, default=3)
    i.add_argument("--steady", type=int, default=100)
    i.add_argument("--image", type=int, default=224)
    a = ap.parse_args()
    if a.cmd == "replay":
        replay(a.trace, a.idle_ms)
    else:
        infer(a.burst, a.steady, a.image)


if __name__ == "__main__":
    main()
