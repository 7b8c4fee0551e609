#!/usr/bin/env python3
"""Fuzzer of moba's Python API and of the C API under it, on the CPU.

Each case is a short Python program, a pure function of (seed, index), run
in a worker process: moba.compile with a mutated argument, a kernel called
with mutated arrays or options, NaN and Inf in the data, or libMobaC.so
called through ctypes with raw field values and pointers. The program is
also the reproducer: `--show INDEX` prints it, runnable as it is.

A case passes when the call returns the right result (against the float64
reference of python/tests/reference.py, inputs left unchanged) or raises
TypeError, ValueError, moba.CompileError or RuntimeError whose message names
the argument; and a value that must be refused (a wrong type, an integer
past what the C API holds, an f32 scale that rounds to 0 or inf, an `out`
that aliases an input or is read-only, ...) is refused. A worker that dies
(signal, abort) or stops answering is a finding too, and the next worker
goes on after that case.

    api_fuzz.py --seed 1 --cases 300            # PYTHONPATH=build/python
    api_fuzz.py --seed 7 --minutes 15
    api_fuzz.py --seed 7 --show 123

Needs numpy (run it with /usr/bin/python3). docs/fuzzing.md has more.
"""
import argparse
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "python", "tests"))
import fuzzlib  # noqa: E402

# --- Values ------------------------------------------------------------------
# Python expressions (the reproducers print them as they are).

INTS = ["0", "-1", "1", "2", "3", "1024", "1025", "2**31 - 1", "2**31",
        "2**32 + 5", "2**63 - 1", "2**63", "2**64 + 16", "-2**63", "10**30",
        "np.int64(2)", "np.uint64(2**64 - 1)", "np.int32(-1)", "np.int8(4)"]
FLOATS = ["float('nan')", "float('inf')", "float('-inf')", "5e-324",
          "1e-46", "1e-40", "-0.0", "0.0", "1e39", "-1.0", "0.125",
          "np.float32('nan')", "np.float16(0.5)"]
WRONG_TYPES = ["None", "True", "False", "'3'", "'no'", "''", "3.0", "3.5",
               "[3]", "(3,)", "b'3'", "object()", "{}", "1j", "np.array(3)",
               "np.array([3, 4])"]
C_INT64 = ["0", "-1", "1", "2", "1025", "2**31 - 1", "2**31", "2**32 + 5",
           "2**62", "2**63 - 1", "-2**63"]
C_INT32 = ["0", "-1", "1", "2", "3", "4", "2**31 - 1", "-2**31"]
C_FLOATS = ["float('nan')", "float('inf')", "float('-inf')", "1e-45",
            "1e-40", "-0.0", "-1.0", "0.125", "3.0e38"]

# Small configurations: compiles stay fast and a few kernels serve most
# cases (the disk cache keeps them between workers).
BASES = [
    dict(head_dim=8, num_heads=2, num_kv_heads=1, block_size=4, top_k=2,
         dtype="f32"),
    dict(head_dim=16, num_heads=4, num_kv_heads=2, block_size=8, top_k=3,
         dtype="f16", causal=False),
    dict(head_dim=8, num_heads=2, num_kv_heads=2, block_size=2, top_k=1,
         dtype="bf16", layout="batched"),
    dict(head_dim=4, num_heads=3, num_kv_heads=1, block_size=16, top_k=2,
         dtype="f32", stage="decomposed"),
    dict(head_dim=16, num_heads=2, num_kv_heads=1, block_size=4, top_k=2,
         dtype="f32", stage="tiled", tile_q=3, tile_k=2),
]
INT_PARAMS = ["head_dim", "num_heads", "num_kv_heads", "block_size", "top_k"]
OPTIONAL_INT_PARAMS = ["tile_q", "tile_k", "mma_warps", "mma_key_chunk",
                       "mma_stages"]
CHOICE_PARAMS = {
    "dtype": ["'f32'", "'F32'", "'float64'", "'int8'", "''", "np.float32",
              "np.dtype('float16')", "'torch.bfloat16'"],
    "layout": ["'varlen'", "'batched'", "'Varlen'", "'paged'", "None"],
    "target": ["'cpu'", "'auto'", "'cuda'", "'sm_70'", "'sm_80'", "None"],
    "stage": ["'fused'", "'tiled'", "'decomposed'", "'vectorized'", "None"],
    "gpu_attention": ["'mma'", "'simt'", "'tensor'", "None"],
    "mma_instruction": ["'wgmma'", "'mma.sync'", "'tcgen05'", "''"],
    "mma_key_value_loads": ["'tma'", "'cp.async'", "'ldg'"],
    "mma_merge": ["'fused'", "'separate'", "'both'"],
    "mma_schedule": ["'auto'", "'in-order'", "'overlapped'", "'ping-pong'",
                     "'persistent'"],
}


def _render(kwargs):
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _base_kwargs(base):
    out = {k: repr(v) for k, v in base.items()}
    out["target"] = "'cpu'"
    return out


def _seqlens(rng, block):
    n = rng.choice((1, 1, 2, 3))
    return [rng.choice((1, 2, block, block + 1, 3 * block + 1,
                        rng.randint(1, 40))) for _ in range(n)]


def compile_case(rng):
    """moba.compile with one or two arguments replaced."""
    base = rng.choice(BASES)
    kwargs = _base_kwargs(base)
    mutated = []
    for _ in range(rng.choice((1, 1, 1, 2))):
        name = rng.choice(INT_PARAMS * 3 + OPTIONAL_INT_PARAMS * 2 +
                          ["causal", "causal", "scale", "scale", "scale"] +
                          list(CHOICE_PARAMS))
        if name in INT_PARAMS or name in OPTIONAL_INT_PARAMS:
            pool = INTS * 3 + WRONG_TYPES + ["4", "8", "16", "64", "33"]
        elif name == "causal":
            pool = ["True", "False", "0", "1", "2", "'no'", "'False'",
                    "None", "np.bool_(False)", "[]", "0.5"]
        elif name == "scale":
            pool = FLOATS * 2 + WRONG_TYPES + ["2", "1e-3"]
        else:
            pool = CHOICE_PARAMS[name] + WRONG_TYPES[:8]
        kwargs[name] = rng.choice(pool)
        mutated.append(name)
    seqlens = _seqlens(rng, base["block_size"])
    return (f"compile {', '.join(f'{m}={kwargs[m]}' for m in mutated)}",
            f"kernel = expect_compile({mutated!r}, {_render(kwargs)})\n"
            f"if kernel is not None:\n"
            f"    check_call(kernel, {seqlens!r}, seed={rng.randrange(1000)})\n")


def _array_mutations(name):
    """Expressions over `x` (the valid array) standing for a bad `name`."""
    return [
        "x.astype(np.float64)", "x.astype(np.int32)", "x.astype(np.bool_)",
        "x.astype(np.complex64)", "x.astype(np.uint16)", "x.astype(np.float16)",
        "x.astype(np.float32)", "x.astype(x.dtype.newbyteorder('>'))",
        "x.astype(object)", "x[..., :-1].copy()", "x[..., :1, :].copy()",
        "x[None].copy()", "x[0].copy()", "x.reshape(-1)", "np.asfortranarray(x)",
        "x.swapaxes(-1, -2).copy().swapaxes(-1, -2)", "np.repeat(x, 2, -1)[..., ::2]",
        "readonly(x)", "misaligned(x)", "x.tolist()", "None", "3", "'q'",
        "np.empty((0,) + x.shape[1:], x.dtype)", "x[:-1].copy()",
        "np.concatenate([x, x]).copy()", "np.array(5.0, x.dtype)",
    ]


def call_case(rng):
    """A valid kernel called with one argument replaced."""
    base = rng.choice(BASES)
    batched = base.get("layout") == "batched"
    kwargs = _base_kwargs(base)
    seqlens = _seqlens(rng, base["block_size"])
    if batched:
        seqlens = [seqlens[0]] * len(seqlens)
    target = rng.choice(["q", "k", "v", "q", "k", "v", "cu_seqlens",
                         "cu_seqlens", "cu_seqlens", "max_seqlen",
                         "max_seqlen", "return_lse", "out", "out", "out",
                         "lse", "lse", "lse"])
    lines = [f"kernel = moba.compile({_render(kwargs)})",
             f"args = valid_args(kernel, {seqlens!r}, seed="
             f"{rng.randrange(1000)})"]
    if target in ("q", "k", "v"):
        expr = rng.choice(_array_mutations(target))
        lines.append(f"x = args[{target!r}]")
        lines.append(f"args[{target!r}] = {expr}")
    elif target == "cu_seqlens":
        expr = rng.choice([
            "x.astype(np.int64)", "x.astype(np.uint32)", "x.astype(np.int8)",
            "x.astype(np.int16)", "x.astype(np.uint64)", "x.astype(np.float32)",
            "x.astype(np.bool_)", "x[:1]", "x[:0]", "x[::-1].copy()",
            "x + 1", "x - 1", "x * 2", "x.tolist()", "None", "x[None]",
            "np.concatenate([x[:1], x])", "np.concatenate([x, x[-1:]])",
            "np.insert(x, 1, -5)", "np.insert(x, 1, 2**31 - 1)",
            "np.append(x.astype(np.int64)[:-1], x[-1] + 2**32)",
            "x.astype(np.int64) + np.array([0] * (len(x) - 1) + [2**32])",
            "np.zeros(len(x) + 5, np.int32) + x[-1] * (np.arange(len(x) + 5) > 0)",
            "np.array([0, 2**31 - 1], np.int32)", "readonly(x)",
            "np.repeat(x, 2)[::2]", "misaligned(x)",
        ])
        if batched and rng.random() < 0.7:
            expr = "x"  # batched kernels take none: any is wrong
        lines.append("x = args['cu_seqlens'] if args['cu_seqlens'] is not "
                     "None else np.array([0, 4], np.int32)")
        lines.append(f"args['cu_seqlens'] = {expr}")
    elif target == "max_seqlen":
        expr = rng.choice(FLOATS + INTS + ["'5'", "None", "True", "[5]",
                                           "longest(args)", "longest(args) - 1",
                                           "longest(args) + 0.5"])
        lines.append(f"args['max_seqlen'] = {expr}")
    elif target == "return_lse":
        expr = rng.choice(["True", "False", "1", "0", "2", "'no'", "None",
                           "np.bool_(True)", "[]"])
        lines.append(f"args['return_lse'] = {expr}")
    else:
        name = target
        expr = rng.choice([
            "same()", "same().astype(np.float64)", "same()[..., :-1].copy()",
            "np.asfortranarray(same())", "readonly(same())",
            "immutable_bytes(same())", "same().tolist()", "3",
            "args['q']", "args['k']", "args['v']", "overlapping(args['q'], same())",
            "overlapping(args['k'], same())", "misaligned(same())",
            "np.repeat(same(), 2, -1)[..., ::2]",
        ])
        lines.append(f"same = lambda: fresh(kernel, args, {name!r})")
        lines.append(f"args[{name!r}] = {expr}")
        if rng.random() < 0.5:
            lines.append("args['return_lse'] = True")
    lines.append(f"expect_call(kernel, args, {target!r})")
    return f"call {target}={expr}", "\n".join(lines) + "\n"


def nonfinite_case(rng):
    """NaN, infinities, denormals or f16-overflowing values in q, k or v."""
    base = rng.choice(BASES)
    kwargs = _base_kwargs(base)
    seqlens = _seqlens(rng, base["block_size"])
    if base.get("layout") == "batched":
        seqlens = [seqlens[0]] * len(seqlens)
    which = rng.choice(["q", "k", "v"])
    value = rng.choice(["np.nan", "np.nan", "np.inf", "-np.inf", "1e-42",
                        "70000.0", "-3e38"])
    count = rng.choice((1, 1, 2, 5))
    return (f"{which} gets {count} x {value}",
            f"kernel = moba.compile({_render(kwargs)})\n"
            f"args = valid_args(kernel, {seqlens!r}, seed={rng.randrange(1000)})\n"
            f"places = poke(args[{which!r}], {value}, {count}, seed="
            f"{rng.randrange(1000)})\n"
            f"expect_nonfinite(kernel, args, {which!r}, places, {value})\n")


def capi_compile_case(rng):
    """mobaCompile with raw field values."""
    base = rng.choice(BASES[:2] + BASES[3:])
    fields = {}
    mutated = []
    for _ in range(rng.choice((1, 1, 2))):
        name = rng.choice(["head_dim", "num_heads", "num_kv_heads",
                           "block_size", "top_k", "tile_q", "tile_k",
                           "tile_q", "tile_k", "causal", "scale", "scale",
                           "dtype", "target", "stage", "gpu_attention",
                           "mma_warps", "mma_key_chunk", "mma_instruction",
                           "mma_key_value_loads", "mma_merge", "mma_stages",
                           "mma_schedule", "cache_dir",
                           "dump_dir"])
        if name == "scale":
            value = rng.choice(C_FLOATS)
        elif name in ("cache_dir", "dump_dir"):
            value = rng.choice(["b''", "b'/nonexistent/dir'", "b'/dev/null'",
                                "b'/proc/self/mem'", "b'x' * 5000",
                                "b'\\xff\\xfe'", "b'relative/dir'",
                                "b'/etc/passwd'"])
        elif name in ("causal", "dtype", "target", "stage", "gpu_attention",
                      "mma_instruction", "mma_key_value_loads", "mma_merge",
                      "mma_schedule"):
            value = rng.choice(C_INT32)
        else:
            value = rng.choice(C_INT64)
        fields[name] = value
        mutated.append(name)
    gpu = fields.get("target") in ("1", "2")
    fields_source = "{" + ", ".join(f"{k!r}: {v}" for k, v in fields.items()) \
        + "}"
    return (f"capi compile {', '.join(f'{m}={fields[m]}' for m in mutated)}",
            f"capi_compile_and_check({base!r}, {fields_source}, "
            f"{_seqlens(rng, base['block_size'])!r}, gpu={gpu})\n")


def capi_run_case(rng):
    """mobaRun (and the other entry points) with raw arguments."""
    base = rng.choice(BASES[:2] + BASES[3:])
    what = rng.choice(["null", "null", "num_sequences", "tokens", "tokens",
                       "cu", "cu", "cu", "entry"])
    if what == "null":
        arg = repr(rng.choice(["kernel", "q", "k", "v", "cu", "out", "lse",
                               "error"]))
    elif what == "num_sequences":
        arg = rng.choice(["-1", "0", "-2**63", "1", "'all'"])
    elif what == "tokens":
        arg = rng.choice(["-1", "0", "1", "'all-1'", "'all+1'", "2**31 - 1",
                          "2**31", "2**63 - 1", "-2**63"])
    elif what == "cu":
        arg = rng.choice(["[1]", "[-1]", "[-5, 0]", "[2**31 - 1]",
                          "[-2**31]", "'reversed'", "'zeros'", "'last+1'",
                          "'first=last'"])
    else:
        arg = repr(rng.choice(["run_device", "run_grad_device",
                               "destroy_null", "free_null",
                               "config_init_null", "compile_null",
                               "compile_no_outputs", "target_null",
                               "capability"]))
    seqlens = _seqlens(rng, base["block_size"])
    return (f"capi run {what}={arg}",
            f"capi_run_check({base!r}, {seqlens!r}, {what!r}, {arg})\n")


def wrapper_case(rng):
    """moba.moba_attn_varlen / moba_attn_batched (MoBA's reference
    signatures) with a chunk size, top-k or max_seqlen replaced."""
    batched = rng.random() < 0.3
    name = rng.choice(["moba_chunk_size", "moba_topk"] +
                      ([] if batched else ["max_seqlen"]))
    value = rng.choice(INTS + WRONG_TYPES[:8] + ["4", "8", "16", "64"] +
                       (FLOATS[:5] if name == "max_seqlen" else []))
    dtype = rng.choice(["f32", "f16", "bf16"])
    heads = rng.choice([(2, 1), (4, 2), (2, 2)])
    seqlens = _seqlens(rng, 8)
    return (f"{'batched' if batched else 'varlen'} {name}={value}",
            f"expect_wrapper({batched}, {name!r}, {value}, {dtype!r}, "
            f"{heads!r}, {seqlens!r}, seed={rng.randrange(1000)})\n")


KINDS = [(compile_case, 4), (call_case, 5), (nonfinite_case, 1.5),
         (capi_compile_case, 2), (capi_run_case, 2), (wrapper_case, 1)]


def make_case(seed, index):
    rng = random.Random(f"api:{seed}:{index}")
    make = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    title, source = make(rng)
    return make.__name__.replace("_case", ""), title, source


PREAMBLE = f"""\
import sys
sys.path[:0] = [{HERE!r}, {os.path.join(ROOT, 'python', 'tests')!r}]
from api_fuzz_support import *
"""


def reproducer(seed, index):
    kind, title, source = make_case(seed, index)
    return (f"# api_fuzz.py --seed {seed} --show {index}: {kind}: {title}\n"
            f"# Run with PYTHONPATH=<build>/python /usr/bin/python3\n"
            + PREAMBLE + source)


# --- Workers -----------------------------------------------------------------

STDERR_MARK = "@@ api-fuzz case "


def worker(seed, first, count, step):
    """Runs cases first, first+step, ... (count of them), printing
    "START i" before and "END i <json>" after each: the parent learns which
    case a dead worker was running."""
    import api_fuzz_support as support
    for n in range(count):
        index = first + n * step
        _, title, source = make_case(seed, index)
        # A dying worker's stderr is read back from the last mark: what
        # earlier cases printed is not this case's.
        print(f"\n{STDERR_MARK}{index}", file=sys.stderr, flush=True)
        print(f"START {index}", flush=True)
        outcome = support.run_source(source)
        print(f"END {index} {json.dumps(outcome)}", flush=True)
    return 0


class Finding:
    def __init__(self, kind, detail, index, seed):
        self.kind = kind
        self.detail = detail
        self.index = index
        self.seed = seed


def _blur(text):
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)", "(...)", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "N", text)
    text = re.sub(r"\d+(\.\d*)?(e[+-]?\d+)?", "N", text)
    text = re.sub(r"'[^']*'", "'X'", text)
    return text[:140]


class Runner:
    """Keeps one chain of workers going over indices first, first+step, ...;
    a dead or stuck worker becomes a finding, and a new one starts after
    its case."""

    def __init__(self, args, env, first, step, end, deadline, results,
                 workdir):
        self.args, self.env, self.workdir = args, env, workdir
        self.first, self.step, self.end = first, step, end
        self.deadline = deadline
        self.results = results  # list of (index, status, detail)

    def run(self):
        index = self.first
        while (self.end is None or index < self.end) and \
                (self.deadline is None or time.monotonic() < self.deadline):
            count = self.args.batch
            if self.end is not None:
                count = min(count, (self.end - index + self.step - 1)
                            // self.step)
            index = self._batch(index, count)

    def _batch(self, first, count):
        argv = [sys.executable, os.path.abspath(__file__), "--worker",
                "--seed", str(self.args.seed), "--first", str(first),
                "--count", str(count), "--step", str(self.step)]
        # In a directory of their own: cases pass relative cache and dump
        # paths, which must not land in the caller's directory.
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            cwd=self.workdir,
            preexec_fn=fuzzlib.limit_resources(self.args.memory_mb))
        stderr_chunks = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(
            proc.stderr.read()))
        reader.start()
        current = None
        next_index = first + count * self.step
        buffer = b""
        last = time.monotonic()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    last = time.monotonic()
                    text = line.decode(errors="replace")
                    if text.startswith("START "):
                        current = int(text.split()[1])
                    elif text.startswith("END "):
                        _, i, payload = text.split(" ", 2)
                        outcome = json.loads(payload)
                        self.results.append((int(i), outcome["status"],
                                             outcome.get("detail", "")))
                        current = None
                if self.deadline and time.monotonic() > self.deadline + 120:
                    break
            elif time.monotonic() - last > self.args.timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                reader.join()
                self.results.append((current, "hang", f"no answer in "
                                     f"{self.args.timeout} s"))
                return current + self.step if current is not None else \
                    next_index
        proc.wait()
        reader.join()
        err = b"".join(c for c in stderr_chunks if c).decode(errors="replace")
        err = err.rsplit(STDERR_MARK, 1)[-1].split("\n", 1)[-1]
        if current is not None:  # died inside a case
            result = fuzzlib.Result(proc.returncode, err, 0, False)
            kind, why = fuzzlib.classify(result)
            detail = why + ": " + "\n".join(err.strip().splitlines()[-25:])
            self.results.append((current, "crash", detail))
            return current + self.step
        if proc.returncode != 0:
            self.results.append((first, "crash", f"worker exit "
                                 f"{proc.returncode}: {err[-2000:]}"))
        return next_index


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=40,
                        help="cases per worker process")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds a case may take before it is a hang")
    parser.add_argument("--memory-mb", type=int, default=6144,
                        help="address-space limit of each worker")
    parser.add_argument("--out", default=None,
                        help="where reproducers of findings are written")
    parser.add_argument("--show", type=int, default=None, metavar="INDEX",
                        help="print case INDEX as a runnable program")
    parser.add_argument("--worker", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1,
                        help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, default=1,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    if args.worker:
        return worker(args.seed, args.first, args.count, args.step)
    if args.show is not None:
        print(reproducer(args.seed, args.show), end="")
        return 0

    out = args.out or tempfile.mkdtemp(prefix="moba-api-fuzz-")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    # Workers run elsewhere (Runner): relative entries would stop resolving.
    env["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p)
    cache = tempfile.mkdtemp(prefix="cache-", dir=out)
    env["MOBA_CACHE_DIR"] = cache
    env.pop("MOBA_DUMP_IR", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a dying worker prints its stack
    print(f"api-fuzz: seed {args.seed}, {args.jobs} jobs, findings to {out}",
          flush=True)
    start = time.monotonic()
    deadline = start + 60 * args.minutes if args.minutes else None
    end = args.first + args.cases if args.cases is not None else None
    results = []
    jobs = max(1, args.jobs)
    workdir = tempfile.mkdtemp(prefix="work-", dir=out)
    runners = [Runner(args, env, args.first + j, jobs, end, deadline, results,
                      workdir) for j in range(jobs)]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    last = start
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=5)
        if time.monotonic() - last > 60:
            last = time.monotonic()
            bad = sum(s not in ("ok", "refused") for _, s, _ in results)
            print(f"api-fuzz: {len(results)} cases, {bad} findings, "
                  f"{(last - start) / 60:.1f} min", file=sys.stderr,
                  flush=True)
    minutes = (time.monotonic() - start) / 60

    counts = {}
    per_kind = {}
    findings = {}
    for index, status, detail in sorted(results, key=lambda r: r[0] or 0):
        kind, title, _ = make_case(args.seed, index)
        counts[status] = counts.get(status, 0) + 1
        k = per_kind.setdefault(kind, {})
        k[status] = k.get(status, 0) + 1
        if status in ("ok", "refused"):
            continue
        first_line = detail.strip().splitlines()[0] if detail.strip() else ""
        if status == "accepted-invalid":  # the detail names the argument
            sig = f"{status} | {kind} | " + _blur(first_line)
        else:
            sig = f"{status} | {kind} | " + _blur(title.split("=")[0]) + \
                " | " + _blur(first_line)
        findings.setdefault(sig, []).append((index, title, detail))
    total = len(results)
    print(f"api-fuzz: seed {args.seed}, cases {args.first}.."
          f"{args.first + total - 1}: {total} cases in {minutes:.1f} minutes")
    for kind in sorted(per_kind):
        c = per_kind[kind]
        print(f"api-fuzz: {kind:14} " + ", ".join(
            f"{c[s]} {s}" for s in sorted(c)))
    for sig, cases in sorted(findings.items(), key=lambda x: -len(x[1])):
        index, title, detail = cases[0]
        sid = fuzzlib.signature_id(sig)
        directory = os.path.join(out, "findings", sid)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "signature.txt"), "w") as f:
            f.write(sig + "\n")
        for i, t, d in cases[:3]:
            with open(os.path.join(directory, f"seed{args.seed}-case{i}.py"),
                      "w") as f:
                f.write(reproducer(args.seed, i))
                f.write("\n# Found:\n" + textwrap.indent(d.strip(), "# ")
                        + "\n")
        print(f"FINDING x{len(cases)}: {sig}\n  case: {index} ({title})\n"
              f"  saved: {directory}\n  detail: "
              + "\n  | ".join(detail.strip().splitlines()[:10]))
    bad = total - counts.get("ok", 0) - counts.get("refused", 0)
    print(f"api-fuzz: {counts.get('ok', 0)} ok, {counts.get('refused', 0)} "
          f"refused, {bad} findings, {len(findings)} distinct")
    import shutil
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    if not args.out and not findings:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
