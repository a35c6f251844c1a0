#!/usr/bin/env python3
"""Runs `cudapool-bench hotpath --quick --json` and checks the shape of its JSON (never a time).

usage: hotpath_json_check.py [--preload LIB[:LIB...]] -- cudapool-bench hotpath --quick --json

--preload is given to the benchmark only (a sanitizer runtime in the sanitized trees), not to
this interpreter. Prints "hotpath JSON ok" or "CHECK FAILED: ..." lines (exit 1).
"""
import json
import os
import subprocess
import sys

CLASSES = ["512B-64KiB", "64KiB-1MiB", "1-10MiB", "10-64MiB"]
THREADS = [1, 2, 4]


def main(argv):
    preload = ""
    if argv and argv[0] == "--preload":
        preload = argv[1]
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    run = subprocess.run(argv, env=env, stdout=subprocess.PIPE, check=False)
    failures = []
    if run.returncode != 0:
        failures.append(f"the benchmark exited with status {run.returncode}")
    try:
        doc = json.loads(run.stdout)
    except ValueError as e:
        print(run.stdout.decode(errors="replace"))
        print(f"CHECK FAILED: the output is not JSON: {e}")
        return 1
    if doc.get("benchmark") != "hotpath":
        failures.append("benchmark is not hotpath")
    if not isinstance(doc.get("cores"), int) or doc["cores"] < 0:
        failures.append(f"cores is not a count: {doc.get('cores')!r}")
    rows = {(r.get("class"), r.get("threads"), r.get("alloc")): r for r in doc.get("rows", [])}
    for cls in CLASSES:
        for t in THREADS:
            for alloc in ("cudapool", "pass-through"):
                r = rows.get((cls, t, alloc))
                if r is None:
                    failures.append(f"no {alloc} row for {cls} with {t} threads")
                    continue
                for field in ("median", "p99", "mpairs"):
                    if not isinstance(r.get(field), (int, float)) or r[field] <= 0:
                        failures.append(f"{alloc} {cls} {t} threads: {field} = {r.get(field)!r}")
            pool = rows.get((cls, t, "cudapool"))
            if pool is not None and "driver_calls" in pool and \
                    pool["driver_calls"] > pool.get("app_calls", 0):
                failures.append(f"{cls} {t} threads: more driver calls than the application's")
    for alloc, why in doc.get("missing", {}).items():
        if not why or "_" in why:
            failures.append(f"missing[{alloc}] = {why!r}")
    for f in failures:
        print(f"CHECK FAILED: {f}")
    if failures:
        return 1
    print(f"hotpath JSON ok: {len(rows)} rows, threads {THREADS}, {doc['cores']} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
