#!/usr/bin/env python3
"""Other frameworks under cudapool: CuPy and ONNX Runtime give the same results with it.

Usage (tests/gpu/run_gpu_tests.sh runs them with libcudapool.so preloaded):
  LD_PRELOAD=build/shim/libcudapool.so python3 frameworks_check.py cupy --no-cupy-pool
  LD_PRELOAD=build/shim/libcudapool.so python3 frameworks_check.py cupy
  LD_PRELOAD=build/shim/libcudapool.so python3 frameworks_check.py onnxruntime

cupy: arrays of many sizes (some above 10 MiB, pooled as whole segments) on the legacy default
stream, a blocking and a non-blocking stream, with some kept alive across iterations; an
elementwise kernel and a reduction on each, and a cuBLAS matmul; every result is compared with
NumPy. --no-cupy-pool turns CuPy's own memory pool off, so that every array is a cudaMalloc.

onnxruntime: a MatMul + Add + Relu model on the CUDA execution provider, batches of 4 then of 1,
compared with NumPy.

Prints one line "RESULT PASS|FAIL|SKIP ..."; exit status 0 pass, 1 mismatch or error, 3 skipped
(the framework, its GPU support or a way to build the model is not installed).
"""
import argparse
import io
import sys

try:
    import numpy as np
except ImportError as missing:
    print("RESULT SKIP numpy cannot be imported: %s" % missing, flush=True)
    sys.exit(3)

MiB = 1 << 20


def finish(status, text):
    print("RESULT %s %s" % (status, text), flush=True)
    sys.exit({"PASS": 0, "FAIL": 1, "SKIP": 3}[status])


def close(got, want, rtol):
    return abs(got - want) <= rtol * max(1.0, abs(want))


def run_cupy(no_pool):
    try:
        import cupy as cp
    except Exception as e:  # noqa: BLE001 - any import failure means: not usable here
        finish("SKIP", "cupy cannot be imported: %s" % e)
    if no_pool:
        cp.cuda.set_allocator(None)
    rng = np.random.default_rng(1)
    streams = [
        cp.cuda.Stream.null,
        cp.cuda.Stream(non_blocking=False),
        cp.cuda.Stream(non_blocking=True),
    ]
    mismatches, arrays, largest = 0, 0, 0
    kept = []
    for i in range(300):
        n = int(rng.integers(1, 1 << 18))
        if i % 10 == 0:
            n *= 64  # up to 64 MiB: the large class
        a = rng.standard_normal(n, dtype=np.float32)
        stream = streams[i % len(streams)]
        with stream:
            d = cp.asarray(a)
            e = cp.sqrt(d * d + 1.0)
            total = e.sum(dtype=cp.float64)
            got = float(total.get(stream=stream))
        want = float(np.sqrt(a.astype(np.float64) ** 2 + 1.0).sum())
        if not close(got, want, 1e-4):
            mismatches += 1
            print("mismatch at %d (n=%d): %r vs %r" % (i, n, got, want))
        arrays += 2
        largest = max(largest, 4 * n)
        if i % 7 == 0:
            kept.append((e, want))  # live across later frees and reallocations
            if len(kept) > 20:
                kept.pop(0)
        del d, e, total
    for e, want in kept:  # the kept arrays must not have been overwritten
        got = float(e.sum(dtype=cp.float64).get())
        if not close(got, want, 1e-4):
            mismatches += 1
            print("kept array changed: %r vs %r" % (got, want))
    m = rng.standard_normal((512, 512), dtype=np.float32)
    prod = (cp.asarray(m) @ cp.asarray(m)).get()
    if not np.allclose(prod, m @ m, rtol=1e-3, atol=1e-2):
        mismatches += 1
        print("matmul differs from NumPy")
    cp.cuda.Device().synchronize()
    free, total_mem = cp.cuda.runtime.memGetInfo()
    text = "cupy %s, %s pool: %d arrays up to %d MiB on 3 streams, %d mismatches; memGetInfo %d/%d MiB" % (
        cp.__version__, "no CuPy" if no_pool else "CuPy's", arrays, largest // MiB, mismatches,
        free // MiB, total_mem // MiB)
    finish("PASS" if mismatches == 0 else "FAIL", text)


def onnx_model(w, b):
    """Serialized MatMul + Add + Relu with a dynamic batch, built with onnx or else with torch."""
    try:
        from onnx import TensorProto, helper, numpy_helper

        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "W"], ["h"]),
                helper.make_node("Add", ["h", "B"], ["z"]),
                helper.make_node("Relu", ["z"], ["y"]),
            ],
            "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
            [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString(), "onnx.helper"
    except ImportError:
        pass
    try:
        import torch

        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        buf = io.BytesIO()
        torch.onnx.export(torch.nn.Sequential(lin, torch.nn.ReLU()), torch.zeros(1, w.shape[0]),
                          buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}}, dynamo=False)
        return buf.getvalue(), "torch.onnx.export"
    except Exception as e:  # noqa: BLE001
        finish("SKIP", "no way to build an ONNX model here (no onnx package; torch export: %s)" % e)


def run_onnxruntime():
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        finish("SKIP", "onnxruntime cannot be imported: %s" % e)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        finish("SKIP", "onnxruntime %s has no CUDAExecutionProvider (providers: %s)" % (
            ort.__version__, ", ".join(ort.get_available_providers())))
    rng = np.random.default_rng(2)
    w = rng.standard_normal((256, 1024), dtype=np.float32) / 16
    b = rng.standard_normal(1024, dtype=np.float32)
    model, how = onnx_model(w, b)
    sess = ort.InferenceSession(model, providers=["CUDAExecutionProvider"])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        finish("FAIL", "the session did not get the CUDA provider: %s" % sess.get_providers())
    mismatches, runs = 0, 0
    for batch in [4] * 3 + [1] * 50 + [64] * 3:
        x = rng.standard_normal((batch, 256), dtype=np.float32)
        y = sess.run(None, {"x": x})[0]
        runs += 1
        if not np.allclose(y, np.maximum(x @ w + b, 0), rtol=1e-3, atol=1e-3):
            mismatches += 1
    text = "onnxruntime %s, CUDA provider, model from %s: %d runs, %d mismatches" % (
        ort.__version__, how, runs, mismatches)
    finish("PASS" if mismatches == 0 else "FAIL", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=["cupy", "onnxruntime"])
    parser.add_argument("--no-cupy-pool", action="store_true",
                        help="turn CuPy's own memory pool off (every array is a cudaMalloc)")
    args = parser.parse_args()
    try:
        if args.framework == "cupy":
            run_cupy(args.no_cupy_pool)
        else:
            run_onnxruntime()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - report any failure as one result line
        finish("FAIL", "%s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
