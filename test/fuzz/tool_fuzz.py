#!/usr/bin/env python3
"""Fuzzer of moba-run's command line: a small valid run with one to three
options replaced by odd values (integers at the type limits, negative, zero,
NaN and denormal scales, sequence lengths past int32, unknown names, odd
paths).

Each case is a pure function of (seed, index). A run passes when moba-run
exits 0 having printed PASS (the kernel agreed with the float64 reference),
or refuses the options with a message that names one of them: an exit 1 of
the command line parser, or moba-run's own exit 2. A value it must refuse
(see problems()) that it runs anyway is a finding, like a crash, a hang, or
a FAIL on valid options.

    tool_fuzz.py --moba-run build/bin/moba-run --seed 1 --cases 100
    tool_fuzz.py --moba-run build/bin/moba-run --seed 1 --only 17
"""
import argparse
import json
import math
import multiprocessing
import os
import random
import re
import shlex
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

INTS = ["0", "-1", "1", "2", "3", "1024", "1025", "2147483647", "2147483648",
        "4294967301", "9223372036854775807", "9223372036854775808",
        "-9223372036854775808", "abc", "", "1.5", "0x10", "1e3"]
BASE = {"head-dim": "8", "heads": "2", "kv-heads": "1", "block-size": "4",
        "top-k": "2", "seqlens": "5,9", "repeat": "1", "seed": "1"}
CHOICES = {
    "head-dim": INTS + ["16", "64", "128"],
    "heads": INTS + ["4", "8"],
    "kv-heads": INTS + ["2", "4"],
    "block-size": INTS + ["16", "64", "100000"],
    "top-k": INTS + ["4", "64"],
    "causal": ["true", "false", "maybe", "1", "0", ""],
    "scale": ["0", "-1", "nan", "inf", "-inf", "1e-46", "1e-40", "1e39",
              "0.125", "abc", ""],
    "dtype": ["f32", "f16", "bf16", "float32", "f64", "int8", ""],
    "seqlens": ["0", "0,0", "1", "-1", "2147483647,1", "4294967301",
                "2147483648", "1,2,3", "10000", "9223372036854775807",
                "5,,6", "1e3", "64,64,64", "1,0,7", "3000"],
    "seed": ["0", "18446744073709551615", "-1", "7"],
    "stage": ["fused", "tiled", "decomposed", "vectorized", ""],
    "tile-q": INTS + ["4", "5"],
    "tile-k": INTS + ["4", "5"],
    "parallel": ["true", "false"],
    "densify": ["true", "false"],
    "duplicate-key-blocks": ["true", "false"],
    "repeat": ["0", "-1", "1", "2", "abc"],
    "no-check": ["true"],
    "mutate-reference": ["none", "bogus", "future-block", "wrong-kv-head"],
    "cache-dir": ["/nonexistent/dir", "/dev/null", "/proc/self", "rel/dir",
                  "/etc/passwd"],
    "dump-ir": ["moba", "loops", "llvm", "bogus"],
    "no-such-option": ["1"],
}
INT64_MAX = 2**63 - 1


def make_case(seed, index):
    rng = random.Random(f"tool:{seed}:{index}")
    options = dict(BASE)
    mutated = []
    for _ in range(rng.choices((1, 2, 3), weights=(60, 30, 10))[0]):
        name = rng.choice(list(CHOICES))
        options[name] = rng.choice(CHOICES[name])
        mutated.append(name)
    return options, mutated


def argv_of(tool, options):
    return [tool] + [f"--{k}={v}" for k, v in options.items()]


def _int(text):
    """The integer LLVM's parser reads from `text` (decimal or 0x hex), or
    None."""
    try:
        return int(text, 0)
    except ValueError:
        return None


def problems(options):
    """Why moba-run must refuse these options ([]: it must run them).
    Values its parser cannot read are refused by the parser itself."""
    out = []
    for name in ("head-dim", "heads", "kv-heads", "block-size", "top-k",
                 "tile-q", "tile-k"):
        if name not in options:
            continue
        v = _int(options[name])
        if v is None or not 1 <= v <= INT64_MAX:
            out.append(f"--{name}={options[name]}")
        elif name in ("head-dim", "top-k") and v > 1024:
            out.append(f"--{name}={v} is past 1024")
    heads, kv = _int(options["heads"]), _int(options["kv-heads"])
    if heads and kv and heads > 0 and kv > 0 and heads % kv:
        out.append("heads not a multiple of kv-heads")
    if options.get("scale"):  # an empty value reads as 0: the default
        try:
            value = float(options["scale"])
            f32 = struct.unpack("f", struct.pack("f", value))[0] \
                if math.isfinite(value) and abs(value) < 3.4e38 else value
            if value != 0 and not (math.isfinite(value) and value > 0
                                   and f32 > 0 and math.isfinite(f32)):
                out.append(f"--scale={options['scale']}")
        except ValueError:
            out.append(f"--scale={options['scale']}")
    lengths = [_int(x) for x in options["seqlens"].split(",")]
    if any(x is None for x in lengths):
        out.append(f"--seqlens={options['seqlens']}")
    elif any(x < 0 for x in lengths) or sum(lengths) > 2**31 - 1:
        out.append(f"--seqlens={options['seqlens']} past int32 tokens")
    if options.get("dtype", "f32") not in ("f32", "f16", "bf16", "float32",
                                           "float16", "bfloat16"):
        out.append(f"--dtype={options['dtype']}")
    if options.get("stage", "fused") not in ("fused", "tiled", "decomposed"):
        out.append(f"--stage={options['stage']}")
    if options.get("causal", "true") not in ("true", "false", "1", "0", ""):
        out.append(f"--causal={options['causal']}")
    repeat = _int(options.get("repeat", "1"))
    if repeat is None or repeat < 1:
        out.append(f"--repeat={options.get('repeat')}")
    if options.get("mutate-reference", "none") not in (
            "none", "future-block", "own-block-not-forced", "wrong-kv-head"):
        out.append(f"--mutate-reference={options['mutate-reference']}")
    if options.get("dump-ir", "moba") not in ("moba", "loops", "llvm"):
        out.append(f"--dump-ir={options['dump-ir']}")
    seed = _int(options.get("seed", "1"))
    if seed is None or not 0 <= seed < 2**64:
        out.append(f"--seed={options['seed']}")
    if "no-such-option" in options:
        out.append("--no-such-option")
    return out


class Settings:
    workdir = None  # moba-run's working directory: relative --cache-dir
    tool = None
    seed = 0
    timeout = 60
    memory_mb = 4096


def run_case(index):
    options, mutated = make_case(Settings.seed, index)
    argv = argv_of(Settings.tool, options)
    r = fuzzlib.run_tool(argv, Settings.timeout, Settings.memory_mb,
                         stdout=True, cwd=Settings.workdir)
    if r.timed_out:
        r = fuzzlib.run_tool(argv, 3 * Settings.timeout, Settings.memory_mb,
                             stdout=True, cwd=Settings.workdir)
    kind, why = fuzzlib.classify(r)
    bad = problems(options)
    marked = any(m in r.stderr for m in fuzzlib.CRASH_MARKERS)
    checked = options.get("mutate-reference", "none") == "none"
    if not marked and r.returncode == 2 and "moba-run: " in r.stderr:
        kind, why = "rejected", ""  # moba-run's own refusal
    elif not marked and r.returncode == 1 and "FAIL" in r.stdout:
        # The check disagreed: expected of a broken reference.
        kind, why = ("accepted", "") if not checked else \
            ("wrong", "FAIL on valid options" if not bad else
             "ran invalid options, and FAIL")
    if kind == "rejected":
        names = {m.replace("-", "_") for m in mutated}
        flat = r.stderr.lower().replace("-", "_")
        if not any(n in flat for n in names) and not any(
                options[m] and options[m] in r.stderr for m in mutated):
            kind, why = "vague", "refused naming none of the options " \
                "changed"
    elif kind == "accepted":
        quiet = options.get("no-check") == "true" or "dump-ir" in options
        if bad:
            names = sorted({m for b in bad for m in re.findall(r"--([\w-]+)", b)}
                           or {"heads"})
            kind, why = "accepted-invalid", "ran invalid " + ", ".join(
                f"--{n}" for n in names)
        elif checked and not quiet and "PASS" not in r.stdout:
            kind, why = "wrong", "exit 0 without PASS"
    signature = ""
    if kind not in ("accepted", "rejected"):
        signature = fuzzlib.signature(kind, why, r, "moba-run")
    return dict(index=index, kind=kind, why=why, mutated=mutated,
                problems=bad,
                command=" ".join(shlex.quote(a) for a in argv),
                returncode=r.returncode, stderr=r.stderr[:4000],
                stdout=r.stdout[-1500:], signature=signature)


def _init(settings):
    for k, v in settings.items():
        setattr(Settings, k, v)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moba-run", required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--only", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--memory-mb", type=int, default=4096)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    args.moba_run = os.path.abspath(args.moba_run)  # runs in `workdir`
    workdir = tempfile.mkdtemp(prefix="moba-tool-fuzz-")
    settings = dict(tool=args.moba_run, seed=args.seed, timeout=args.timeout,
                    memory_mb=args.memory_mb, workdir=workdir)
    if args.only is not None:
        _init(settings)
        case = run_case(args.only)
        print(json.dumps(case, indent=1))
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
        return 0 if case["kind"] in ("accepted", "rejected") else 1

    print(f"tool-fuzz: seed {args.seed}, {args.jobs} jobs", flush=True)
    start = time.monotonic()
    deadline = start + 60 * args.minutes if args.minutes else None
    end = args.first + args.cases if args.cases is not None else None
    counts, findings = {}, {}
    index = args.first
    context = multiprocessing.get_context("fork")
    with context.Pool(max(1, args.jobs), _init, (settings,)) as pool:
        while (end is None or index < end) and \
                (deadline is None or time.monotonic() < deadline):
            batch = 4 * max(1, args.jobs)
            if end is not None:
                batch = min(batch, end - index)
            for case in pool.imap_unordered(run_case,
                                            range(index, index + batch)):
                counts[case["kind"]] = counts.get(case["kind"], 0) + 1
                if case["signature"]:
                    findings.setdefault(case["signature"], []).append(case)
            index += batch
    minutes = (time.monotonic() - start) / 60
    total = sum(counts.values())
    print(f"tool-fuzz: seed {args.seed}, cases {args.first}..{index - 1}: "
          f"{total} moba-run option sets in {minutes:.1f} minutes")
    print("tool-fuzz: " + ", ".join(f"{counts[k]} {k}"
                                    for k in sorted(counts)))
    out = args.out
    for sig, cases in sorted(findings.items(), key=lambda x: -len(x[1])):
        first = min(cases, key=lambda c: c["index"])
        print(f"FINDING x{len(cases)}: {sig}\n  case: {first['index']}\n"
              f"  command: {first['command']}\n  stderr: " + "\n  | ".join(
                  first["stderr"].strip().splitlines()[:8]))
        if out:
            directory = os.path.join(out, "findings",
                                     fuzzlib.signature_id(sig))
            os.makedirs(directory, exist_ok=True)
            for c in sorted(cases, key=lambda c: c["index"])[:3]:
                with open(os.path.join(directory, f"seed{args.seed}-case"
                                       f"{c['index']}.json"), "w") as f:
                    json.dump(c, f, indent=1)
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)
    bad = sum(len(c) for c in findings.values())
    print(f"tool-fuzz: {bad} findings, {len(findings)} distinct")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
