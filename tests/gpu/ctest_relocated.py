#!/usr/bin/env python3
"""Runs the ctest tests of one label from a build folder that may have been moved.

Usage: ctest_relocated.py BUILD_DIR LABEL [SOURCE_DIR]

ctest records absolute paths. When the build folder was made on another machine (or at another
path) and carried here, this lists the tests (ctest --show-only=json-v1), rewrites the old build
and source paths (from CMakeCache.txt) to the new ones and runs each test itself, honouring
ENVIRONMENT, ENVIRONMENT_MODIFICATION, WORKING_DIRECTORY, TIMEOUT and WILL_FAIL. When nothing
moved it simply runs ctest. Exit status: 0 when every test passed (or none has the label).
"""
import json
import os
import re
import subprocess
import sys
import time


def cache_value(build, key):
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def apply_modification(env, spec):
    name, _, rest = spec.partition("=")
    op, _, value = rest.partition(":")
    cur = env.get(name)
    if op == "reset":
        env.pop(name, None)  # no record of the original here; unset is the closest
    elif op == "unset":
        env.pop(name, None)
    elif op == "set":
        env[name] = value
    elif op == "string_append":
        env[name] = (cur or "") + value
    elif op == "string_prepend":
        env[name] = value + (cur or "")
    elif op in ("path_list_append", "cmake_list_append"):
        sep = ":" if op.startswith("path") else ";"
        env[name] = (cur + sep + value) if cur else value
    elif op in ("path_list_prepend", "cmake_list_prepend"):
        sep = ":" if op.startswith("path") else ";"
        env[name] = (value + sep + cur) if cur else value


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    build = os.path.realpath(sys.argv[1])
    label = sys.argv[2]
    source = os.path.realpath(sys.argv[3]) if len(sys.argv) > 3 else None
    # The folder with CMakeCache.txt: BUILD or one above it (BUILD may be a subproject's folder).
    root = build
    while not os.path.exists(os.path.join(root, "CMakeCache.txt")) and root != "/":
        root = os.path.dirname(root)
    old_root = cache_value(root, "CMAKE_CACHEFILE_DIR")
    old_source = cache_value(root, "cudapool_SOURCE_DIR") or cache_value(root,
                                                                        "CMAKE_HOME_DIRECTORY")
    if old_root is None:
        print("ctest_relocated: no CMakeCache.txt in or above %s" % build, file=sys.stderr)
        return 2
    if old_root == root and (source is None or old_source == source):
        return subprocess.call(["ctest", "-L", label, "--output-on-failure"], cwd=build)

    listing = subprocess.run(["ctest", "-L", label, "--show-only=json-v1"], cwd=build,
                             capture_output=True, text=True)
    if listing.returncode != 0:
        print(listing.stderr, file=sys.stderr)
        return 2
    tests = json.loads(listing.stdout).get("tests", [])
    mapping = {old_root: root}
    if source and old_source:
        mapping[old_source] = source
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))

    def fix(s):
        return pattern.sub(lambda m: mapping[m.group(0)], s) if isinstance(s, str) else s

    print("build folder moved: %s -> %s; running %d test(s) labelled %s with the paths "
          "rewritten" % (old_root, root, len(tests), label))
    failed = []
    for t in tests:
        props = {p["name"]: p["value"] for p in t.get("properties", [])}
        env = dict(os.environ)
        for item in props.get("ENVIRONMENT", []):
            name, _, value = fix(item).partition("=")
            env[name] = value
        for item in props.get("ENVIRONMENT_MODIFICATION", []):
            apply_modification(env, fix(item))
        cwd = fix(props.get("WORKING_DIRECTORY", build))
        if not os.path.isdir(cwd):
            cwd = build
        timeout = props.get("TIMEOUT") or 1500
        cmd = [fix(c) for c in t.get("command", [])]
        start = time.time()
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True,
                                  text=True)
            rc = proc.returncode
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "")
        except OSError as e:
            rc = "cannot run: %s" % e
            out = ""
        passed = (rc == 0) != bool(props.get("WILL_FAIL", False)) if isinstance(rc, int) else False
        print("%-40s %s (%s, %.1f s)" % (t["name"], "Passed" if passed else "***Failed", rc,
                                        time.time() - start))
        if not passed:
            failed.append(t["name"])
            print(out)
    print("%d of %d tests passed" % (len(tests) - len(failed), len(tests)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
