#!/usr/bin/env python3
"""Shrinks an input that crashes moba-opt to a few lines that crash it the
same way (same signature: how it ended, the fatal message, the innermost
frame), by delta debugging over lines, then over tokens; bytecode over
bytes.

    minimize.py --moba-opt build/bin/moba-opt CRASH.mlir [-- ARGS...]

With a `.json` record of ir_fuzz.py beside the input, ARGS and the
signature come from it. Writes CRASH.min.mlir (or .min.mlirbc) and prints
its path and text.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

# An MLIR token with the white space after it: dropping one keeps the
# text readable.
TOKEN = re.compile(r"^\s+|(?:%[\w.$#-]+|@[\w.$-]+|\^[\w.$-]+|#[\w.$-]+|"
                   r"\"(?:[^\"\\\n]|\\.)*\"|[\w.$]+|->|::|\S)\s*")


def _stage_of(sig):
    return sig.rsplit(" | ", 1)[-1] if " | " in sig else ""


def minimize_file(path, args, sig, moba_opt, timeout=20, memory_mb=4096,
                  seconds=120):
    """Writes and returns the shrunk input, or None when `path` does not
    crash with `sig` (any crash when `sig` is None)."""
    binary = path.endswith(".mlirbc")
    with open(path, "rb") as f:
        data = f.read()
    stage = _stage_of(sig) if sig else "parse"
    workdir = tempfile.mkdtemp(prefix="moba-minimize-")
    probe = os.path.join(workdir, "probe" + (".mlirbc" if binary else ".mlir"))
    runs = [0]
    seen = {}

    def crashes(candidate):
        if candidate in seen:
            return seen[candidate]
        seen[candidate] = _crashes(candidate)
        return seen[candidate]

    def _crashes(candidate):
        runs[0] += 1
        with open(probe, "wb") as f:
            f.write(candidate)
        result = fuzzlib.run_tool([moba_opt, probe] + args + ["-o", os.devnull],
                                  timeout, memory_mb)
        kind, why = fuzzlib.classify(result)
        if kind not in ("crash", "hang"):
            return False
        return sig is None or fuzzlib.signature(kind, why, result,
                                                stage) == sig

    try:
        if not crashes(data):
            print(f"minimize: {path} does not crash the same way with "
                  f"{' '.join(args)}", file=sys.stderr)
            return None
        deadline = time.monotonic() + seconds
        if binary:
            units = [bytes([b]) for b in data]
            units = fuzzlib.ddmin(units, lambda u: crashes(b"".join(u)),
                                  deadline)
            small = b"".join(units)
        else:
            text = data.decode(errors="replace")
            lines = text.splitlines(keepends=True)
            lines = fuzzlib.ddmin(
                lines, lambda u: crashes("".join(u).encode()), deadline)
            tokens = TOKEN.findall("".join(lines))
            tokens = fuzzlib.ddmin(
                tokens, lambda u: crashes("".join(u).encode()), deadline)
            small = "".join(tokens).encode()
        root, ext = os.path.splitext(path)
        out = root + ".min" + ext
        with open(out, "wb") as f:
            f.write(small)
        print(f"minimize: {len(data)} -> {len(small)} bytes in {runs[0]} runs",
              file=sys.stderr)
        return out
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moba-opt", required=True)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--timeout", type=float, default=20)
    parser.add_argument("--memory-mb", type=int, default=4096)
    parser.add_argument("--any-crash", action="store_true",
                        help="keep any crash, not only the same signature")
    parser.add_argument("input")
    parser.add_argument("args", nargs="*")
    ns = parser.parse_args()
    args, sig = ns.args, None
    record_path = ns.input + ".json"
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        args = args or record["argv"]
        sig = record["signature"]
    if ns.any_crash:
        sig = None
    out = minimize_file(ns.input, args, sig, ns.moba_opt, ns.timeout,
                        ns.memory_mb, ns.seconds)
    if not out:
        return 1
    print(out)
    if not out.endswith(".mlirbc"):
        with open(out) as f:
            print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
