#!/usr/bin/env python3
"""Mutation fuzzer for moba-opt: damaged and odd versions of the repository's
MLIR files through the parser, the verifier and every pipeline.

Corpus: every .mlir under test/ and examples/ that uses a moba op, split at
`// -----` into its cases, each also as bytecode (moba-opt --emit-bytecode)
when it verifies. A case's own RUN lines name the passes its file is tested
with (the per-pass conversions of test/Conversion, for instance); the
mutants of that case go through those too.

Each fuzz case is a pure function of (seed, index): a corpus entry, one to
four mutations, and the pipelines with their options are drawn from a
random.Random seeded with both, so `--only INDEX` rebuilds any case alone.
The mutant is first parsed and verified (with --verify-roundtrip: printed
and read back, as text and bytecode); when it is accepted and differs from
its source it runs through each pipeline. A run passes when moba-opt exits 0
with no error, or 1 with an `error:` diagnostic and no sign of a crash (see
fuzzlib.classify); timeouts are hangs (confirmed by a second run with thrice
the time).

Crashes are saved under <out>/crashes/<signature id>/ (input, command,
stderr, seed and index); --minimize shrinks the first of each signature.

A crash while a damaged bytecode file is being read, with no moba frame on
the stack, is MLIR's bytecode reader failing on input it does not promise
to survive (docs/fuzzing.md, "Bytecode"): it is counted and saved apart,
under <out>/upstream-bytecode/, and does not fail the run. A crash with a
moba frame (a verifier, say) counts as ever.

    ir_fuzz.py --moba-opt build/bin/moba-opt --seed 1 --cases 500
    ir_fuzz.py --moba-opt build/bin/moba-opt --seed 7 --minutes 30 --minimize
    ir_fuzz.py --moba-opt build/bin/moba-opt --seed 7 --only 1234

docs/fuzzing.md describes the mutations and the triage of what it finds.
"""
import argparse
import json
import multiprocessing
import os
import random
import re
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Integers at and around the limits of the types sizes pass through: int32,
# uint32, int64, uint64, and beyond any of them.
INTERESTING_INTS = [
    0, -1, 1, 2, 3, 7, 16, 31, 64, 255, 1023, 1024, 1025, 4096, 65536,
    2**31 - 1, 2**31, 2**32, 2**32 + 5, 2**33, 2**53 + 1, 2**62, 2**63 - 1,
    2**63, 2**64 - 1, 2**64 + 16, -2**31, -2**63, -2**63 - 1, 10**30,
]
# Static dimensions: empty, unit, dynamic, odd, past int32, near int64.
INTERESTING_DIMS = ["0", "1", "2", "?", "3", "17", "1025", str(2**31),
                    str(2**33), str(2**40), str(2**62), str(2**63 - 1),
                    str(2**63)]
# f32 attribute values: NaN, infinities, the smallest denormal, zeros, a
# value past f32's range, negative.
INTERESTING_FLOATS = ["0x7FC00000", "0x7F800000", "0xFF800000", "1.0e-45",
                      "1.0e-40", "0.0", "-0.0", "1.0e+39", "-1.0", "1.0e+30",
                      "nan", "inf"]
ELEMENT_TYPES = ["f16", "bf16", "f32", "f64", "i1", "i8", "i32", "i64",
                 "index", "f8E5M2", "tf32", "complex<f32>", "none"]

TOKEN = re.compile(r"%[\w.$#-]+|@[\w.$-]+|\^[\w.$-]+|#[\w.$-]+|"
                   r"\"(?:[^\"\\\n]|\\.)*\"|[\w.$]+|->|::|\S")
WORD = re.compile(r"\S+")
INT_LITERAL = re.compile(r"(?<![\w.%@#^$-])-?\d+(?![\w.])")
FLOAT_LITERAL = re.compile(r"(?<![\w.])-?\d+\.\d*(?:[eE][+-]?\d+)?(?![\w.])")
SHAPED = re.compile(r"\b(tensor|memref|vector)<([^<>]*)>")
DIM = re.compile(r"(?<=[<x])(\d+|\?)(?=x)")
ATTR_INT = re.compile(r"\b([a-z_]+)\s*=\s*(-?\d+)(?=\s*[,}:\]])")
BOOL = re.compile(r"\b(true|false)\b")
ELEMENT = re.compile(r"(?<=x)(bf16|f16|f32|f64|i1|i8|i16|i32|i64|index)\b|"
                     r"\b(bf16|f16|f32|f64|i32|i64|index)\b")


class Entry:
    """One corpus case: its file, its place in the file, its text, its
    bytecode (None when it does not verify) and the extra moba-opt argument
    lists its file's RUN lines use."""

    def __init__(self, path, chunk, text, passes):
        self.path = path
        self.chunk = chunk
        self.text = text
        self.passes = passes
        self.bytecode = None

    @property
    def name(self):
        return f"{self.path}#{self.chunk}"


def run_line_passes(text):
    """The moba-opt arguments of a file's RUN lines that expect success,
    without the input, the test harness flags and printing; GPU binaries as
    PTX text (no ptxas)."""
    found = []
    for line in re.findall(r"RUN:(.*)", text):
        command = line.split("|")[0]
        if re.match(r"\s*not\b", command) or "moba-opt" not in command:
            continue
        try:
            argv = shlex.split(command.split("moba-opt", 1)[1])
        except ValueError:
            continue
        if any(("%" in a and a != "%s") for a in argv):
            continue  # reads or writes test temporaries
        args, skip = [], False
        for a in argv:
            if skip:
                skip = False
            elif a == "-o":
                skip = True
            elif a in ("%s", "2>&1", "--split-input-file", "-split-input-file",
                       "--verify-diagnostics", "-verify-diagnostics") or \
                    a.startswith(("--mlir-print", "-mlir-print", ">")):
                continue
            else:
                args.append(a.replace("format=bin", "format=isa")
                            .replace("format=fatbin", "format=isa"))
        if args and args not in found:
            found.append(args)
    return found


def load_corpus(root):
    entries = []
    for top in ("test", "examples"):
        for directory, _, files in sorted(os.walk(os.path.join(root, top))):
            for name in sorted(files):
                if not name.endswith(".mlir"):
                    continue
                path = os.path.join(directory, name)
                with open(path, errors="replace") as f:
                    text = f.read()
                if not re.search(r"\bmoba\.[a-z_]+", text):
                    continue
                passes = run_line_passes(text)
                # Expected diagnostics are for --verify-diagnostics: without
                # it MLIR prints an error for each one no pass produced, and
                # still exits 0.
                text = re.sub(r"//\s*expected-(error|warning|remark|note)"
                              r".*", "//", text)
                rel = os.path.relpath(path, root)
                chunks = re.split(r"^// -----.*$", text, flags=re.M)
                for i, chunk in enumerate(chunks):
                    if re.search(r"\bmoba\.[a-z_]+", chunk):
                        entries.append(Entry(rel, i, chunk, passes))
    return entries


def add_bytecode(entries, moba_opt, workdir):
    """Bytecode of each entry that verifies, from moba-opt itself."""
    for i, e in enumerate(entries):
        src = os.path.join(workdir, f"corpus-{i}.mlir")
        dst = os.path.join(workdir, f"corpus-{i}.mlirbc")
        with open(src, "w") as f:
            f.write(e.text)
        r = fuzzlib.run_tool([moba_opt, src, "--emit-bytecode", "-o", dst],
                             timeout=60, memory_mb=0)
        if r.returncode == 0 and os.path.exists(dst):
            with open(dst, "rb") as f:
                e.bytecode = f.read()


# --- Mutations of text -------------------------------------------------------
# Each takes (rng, text, corpus) and returns (text, description) or None when
# it does not apply to this text.

def _pick(rng, matches):
    return rng.choice(matches) if matches else None


def _splice_at(text, m, new, group=0):
    return text[:m.start(group)] + new + text[m.end(group):]


def token_drop(rng, text, _):
    m = _pick(rng, list((TOKEN if rng.random() < 0.7 else WORD)
                        .finditer(text)))
    return m and (_splice_at(text, m, ""), f"drop token {m.group(0)!r}")


def token_duplicate(rng, text, _):
    m = _pick(rng, list(TOKEN.finditer(text)))
    return m and (_splice_at(text, m, m.group(0) + " " + m.group(0)),
                  f"duplicate token {m.group(0)!r}")


def token_swap(rng, text, _):
    tokens = list(TOKEN.finditer(text))
    if len(tokens) < 2:
        return None
    i = rng.randrange(len(tokens) - 1)
    j = i + 1 if rng.random() < 0.6 else rng.randrange(i + 1, len(tokens))
    a, b = tokens[i], tokens[j]
    return (text[:a.start()] + b.group(0) + text[a.end():b.start()] +
            a.group(0) + text[b.end():],
            f"swap tokens {a.group(0)!r} and {b.group(0)!r}")


def token_replace(rng, text, corpus):
    """A token replaced by a token from anywhere in the corpus."""
    m = _pick(rng, list(TOKEN.finditer(text)))
    other = rng.choice(corpus).text
    donor = _pick(rng, list(TOKEN.finditer(other)))
    return m and donor and (_splice_at(text, m, donor.group(0)),
                            f"token {m.group(0)!r} -> {donor.group(0)!r}")


def integer_literal(rng, text, _):
    matches = list(INT_LITERAL.finditer(text))
    m = _pick(rng, matches)
    if not m:
        return None
    new = str(rng.choice(INTERESTING_INTS))
    if rng.random() < 0.3:  # every literal with this value
        old = m.group(0)
        out = INT_LITERAL.sub(lambda x: new if x.group(0) == old else
                              x.group(0), text)
        return out, f"every integer {old} -> {new}"
    return _splice_at(text, m, new), f"integer {m.group(0)} -> {new}"


def shape_dim(rng, text, _):
    shapes = list(SHAPED.finditer(text))
    m = _pick(rng, shapes)
    if not m:
        return None
    dims = list(DIM.finditer(m.group(2)))
    d = _pick(rng, dims)
    if not d:
        return None
    # Empty and unit sizes, which the verifiers must take or refuse and the
    # lowerings must not divide by, come up most often.
    new = rng.choices(INTERESTING_DIMS, weights=[
        30 if d == "0" else 10 if d in ("1", "?") else 3
        for d in INTERESTING_DIMS])[0]
    body = m.group(2)
    new_body = body[:d.start()] + new + body[d.end():]
    mode = rng.random()
    if mode < 0.3:
        return (_splice_at(text, m, new_body, 2),
                f"dim {d.group(0)} -> {new} in one {m.group(1)}")
    if mode < 0.55:  # the same type everywhere
        old_type = m.group(0)
        new_type = f"{m.group(1)}<{new_body}>"
        return (text.replace(old_type, new_type),
                f"{old_type} -> {new_type} everywhere")
    old = d.group(0)  # this size in every shape
    out = SHAPED.sub(lambda s: f"{s.group(1)}<" + DIM.sub(
        lambda x: new if x.group(0) == old else x.group(0), s.group(2)) + ">",
        text)
    return out, f"every dim {old} -> {new}"


def attribute_value(rng, text, _):
    """An integer attribute (block_size, top_k, max_seqlen, ...) set to an
    interesting value, or a boolean flipped."""
    if rng.random() < 0.25:
        m = _pick(rng, list(BOOL.finditer(text)))
        if not m:
            return None
        new = "false" if m.group(0) == "true" else "true"
        return _splice_at(text, m, new), f"{m.group(0)} -> {new}"
    m = _pick(rng, list(ATTR_INT.finditer(text)))
    if not m:
        return None
    new = str(rng.choice(INTERESTING_INTS))
    if rng.random() < 0.4:  # this attribute everywhere
        name = m.group(1)
        out = ATTR_INT.sub(lambda x: f"{x.group(1)} = {new}"
                           if x.group(1) == name else x.group(0), text)
        return out, f"every {name} -> {new}"
    return (_splice_at(text, m, new, 2),
            f"{m.group(1)} = {m.group(2)} -> {new}")


def float_literal(rng, text, _):
    m = _pick(rng, list(FLOAT_LITERAL.finditer(text)))
    if not m:
        # An attribute the ops take as a float, added where an int is.
        m = _pick(rng, list(ATTR_INT.finditer(text)))
        if not m:
            return None
        new = rng.choice(INTERESTING_FLOATS)
        return (_splice_at(text, m, new + " : f32", 2),
                f"{m.group(1)} = {new} : f32")
    new = rng.choice(INTERESTING_FLOATS)
    return _splice_at(text, m, new), f"float {m.group(0)} -> {new}"


def add_scale(rng, text, _):
    """A `scale` added to an attribute dictionary that has block_size."""
    m = _pick(rng, list(re.finditer(r"\{\s*block_size", text)))
    if not m:
        return None
    value = rng.choice(INTERESTING_FLOATS)
    return (text[:m.start()] + f"{{scale = {value} : f32, " +
            text[m.start() + 1:], f"scale = {value}")


def element_type(rng, text, _):
    m = _pick(rng, list(ELEMENT.finditer(text)))
    if not m:
        return None
    old = m.group(0)
    new = rng.choice([t for t in ELEMENT_TYPES if t != old])
    if rng.random() < 0.5:  # every shaped element of this type
        out = re.sub(r"(?<=x)" + re.escape(old) + r"\b", new, text)
        return out, f"every x{old} -> x{new}"
    return _splice_at(text, m, new), f"type {old} -> {new}"


def _lines(text):
    return text.splitlines(keepends=True)


def line_edit(rng, text, _):
    lines = _lines(text)
    if not lines:
        return None
    i = rng.randrange(len(lines))
    what = rng.choice(("drop", "duplicate", "swap"))
    if what == "drop":
        del lines[i]
    elif what == "duplicate":
        lines.insert(i, lines[i])
    else:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines), f"{what} line {i + 1}"


def splice(rng, text, corpus):
    """Lines from another corpus case inserted, or replacing some lines."""
    donor = rng.choice(corpus)
    other = _lines(donor.text)
    lines = _lines(text)
    if not other or not lines:
        return None
    a = rng.randrange(len(other))
    b = min(len(other), a + rng.randint(1, 8))
    i = rng.randrange(len(lines) + 1)
    drop = rng.choice((0, 0, 1, 2, 4))
    lines[i:i + drop] = other[a:b]
    return "".join(lines), f"splice {donor.name} lines {a + 1}-{b} at {i + 1}"


def truncate(rng, text, _):
    end = rng.randrange(len(text) + 1)
    return text[:end], f"truncate at byte {end}"


def garbage(rng, text, _):
    """Bytes no MLIR has: control characters, invalid UTF-8 (kept as the
    replacement character's bytes by the writer), NUL, deep nesting."""
    i = rng.randrange(len(text) + 1)
    insert = rng.choice(["\x00", "\xff", "\u2028", "\\", "\"", "{" * 200,
                         "<" * 300, "(" * 500, "#", "^", "!", "%", "@",
                         "0x", "1e999", "\t\r", "//", "/*"])
    return text[:i] + insert + text[i:], f"insert {insert[:8]!r} at {i}"


TEXT_MUTATIONS = [
    (token_drop, 1.0), (token_duplicate, 0.7), (token_swap, 0.7),
    (token_replace, 0.7), (integer_literal, 3.0), (shape_dim, 5.0),
    (attribute_value, 4.0), (float_literal, 0.8), (add_scale, 0.5),
    (element_type, 2.0), (line_edit, 1.0), (splice, 1.5), (truncate, 0.5),
    (garbage, 0.4),
]


# --- Mutations of bytecode ---------------------------------------------------

def mutate_bytecode(rng, data):
    data = bytearray(data)
    if not data:
        return bytes(data), "empty"
    what = rng.choice(("flip", "byte", "insert", "delete", "truncate",
                       "duplicate", "int"))
    i = rng.randrange(len(data))
    if what == "flip":
        bit = rng.randrange(8)
        data[i] ^= 1 << bit
        desc = f"flip bit {bit} of byte {i}"
    elif what == "byte":
        value = rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF, rng.randrange(256)))
        data[i] = value
        desc = f"byte {i} = {value:#x}"
    elif what == "insert":
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        data[i:i] = chunk
        desc = f"insert {chunk.hex()} at {i}"
    elif what == "delete":
        n = rng.randint(1, 16)
        del data[i:i + n]
        desc = f"delete {n} bytes at {i}"
    elif what == "truncate":
        del data[i:]
        desc = f"truncate at {i}"
    elif what == "duplicate":
        n = rng.randint(1, 32)
        data[i:i] = data[i:i + n]
        desc = f"duplicate {n} bytes at {i}"
    else:
        value = rng.choice(INTERESTING_INTS) & (2**64 - 1)
        width = rng.choice((1, 2, 4, 8))
        data[i:i + width] = (value & (2**(8 * width) - 1)).to_bytes(
            width, "little")
        desc = f"{width}-byte {value:#x} at {i}"
    return bytes(data), desc


# --- Pipelines ---------------------------------------------------------------

def _hostile(rng, value):
    """Most of the time `value`; sometimes an interesting integer instead."""
    return rng.choice(INTERESTING_INTS) if rng.random() < 0.05 else value


def cpu_options(rng):
    options = [f"stage={rng.choice(('fused', 'tiled', 'decomposed'))}"]
    if rng.random() < 0.5:
        options.append(f"tile-q={_hostile(rng, rng.choice((1, 2, 3, 8, 16, 32, 64)))}")
    if rng.random() < 0.5:
        options.append(f"tile-k={_hostile(rng, rng.choice((1, 2, 4, 16, 33)))}")
    if rng.random() < 0.3:
        options.append("parallel=true")
    if rng.random() < 0.3:
        options.append("densify=true")
    return " ".join(options)


def gpu_options(rng, variant):
    chip = "sm_90a" if variant == "wgmma" else rng.choice(("sm_80", "sm_90a"))
    options = [f"chip={chip}", "format=isa"]
    if rng.random() < 0.2:
        options.append(f"threads-per-block={_hostile(rng, rng.choice((32, 64, 128, 256)))}")
    if rng.random() < 0.2:
        options.append(f"tile-k={_hostile(rng, rng.choice((1, 8, 16, 32)))}")
    if variant in ("densify", "mma", "wgmma"):
        options.append("densify=true")
    if variant in ("mma", "wgmma"):
        options.append("mma=true")
        if rng.random() < 0.3:
            options.append("mma-gate=false")
        if rng.random() < 0.3:
            options.append("mma-fused-merge=true")
    if variant == "mma":
        if rng.random() < 0.3:
            options.append(f"mma-warps={_hostile(rng, rng.choice((1, 2, 4, 8)))}")
        if rng.random() < 0.3:
            options.append(f"mma-key-chunk={_hostile(rng, rng.choice((16, 32, 64, 128)))}")
    if variant == "wgmma":
        options.append("mma-instruction=wgmma")
        options.append("mma-key-value-loads=" + rng.choice(
            ("cp.async", "tma", "tma-multicast")))
        if rng.random() < 0.3:
            options.append(f"mma-warps={rng.choice((4, 8, 12))}")
        if rng.random() < 0.3:
            options.append(f"mma-stages={rng.choice((2, 3, 4))}")
        if rng.random() < 0.3:
            options.append("mma-schedule=" + rng.choice(
                ("auto", "in-order", "overlapped")))
    return " ".join(options)


# Each moba pass alone (one of them per case), and the canonicalizer and CSE
# (the moba ops' folders and canonicalization patterns).
SINGLE_PASSES = [
    "canonicalize", "cse", "moba-decompose", "moba-densify-attention",
    "moba-fuse-gate-topk", "moba-fuse-lse-merge", "moba-tile-attention",
    "moba-lower-to-loops", "moba-convert-gate-topk-to-nvvm",
    "moba-convert-group-queries-to-nvvm",
    "moba-convert-grouped-attention-to-nvvm", "moba-align-row-accesses",
    "moba-gpu-kernel-outlining", "moba-map-forall-to-gpu",
    "one-shot-bufferize=bufferize-function-boundaries",
]


def pipelines(rng, entry):
    """(stage name, moba-opt arguments) after the parse: the named pipelines
    with drawn options, then the passes of the entry's RUN lines."""
    chosen = [
        ("decompose", ["--moba-decompose"]),
        ("to-loops", [f"--moba-to-loops={cpu_options(rng)}"]),
        ("cpu", [f"--moba-cpu-pipeline={cpu_options(rng)}"]),
        ("gpu", [f"--moba-gpu-pipeline={gpu_options(rng, 'simt')}"]),
        ("gpu-densify", [f"--moba-gpu-pipeline={gpu_options(rng, 'densify')}"]),
        ("gpu-mma", [f"--moba-gpu-pipeline={gpu_options(rng, 'mma')}"]),
        ("gpu-wgmma", [f"--moba-gpu-pipeline={gpu_options(rng, 'wgmma')}"]),
    ]
    single = rng.choice(SINGLE_PASSES)
    chosen.append(("pass:" + single, [f"--{single}"]))
    for args in entry.passes:
        name = "run:" + " ".join(re.sub(r"=.*", "", a) for a in args)
        args = list(args)
        if rng.random() < 0.1:  # a pass option at an odd value
            i = rng.randrange(len(args))
            numbers = list(re.finditer(r"(?<==)\d+", args[i]))
            if numbers:
                m = rng.choice(numbers)
                args[i] = _splice_at(args[i], m, str(rng.choice(
                    INTERESTING_INTS)))
        chosen.append((name, args))
    return chosen


# --- Cases -------------------------------------------------------------------

def make_case(seed, index, corpus):
    """(entry, data bytes, is bytecode, mutations, pipelines) of one case."""
    rng = random.Random(f"{seed}:{index}")
    # Cases that verify are drawn four times as often as those that do not
    # (the invalid-IR tests): their mutants reach the passes.
    entry = rng.choices(corpus, weights=[4 if e.bytecode is not None else 1
                                         for e in corpus])[0]
    count = rng.choices((1, 2, 3, 4), weights=(60, 25, 10, 5))[0]
    descriptions = []
    if entry.bytecode is not None and rng.random() < 0.2:
        data = entry.bytecode
        for _ in range(count):
            data, desc = mutate_bytecode(rng, data)
            descriptions.append(desc)
        binary = True
    else:
        text = entry.text
        functions = [f for f, _ in TEXT_MUTATIONS]
        weights = [w for _, w in TEXT_MUTATIONS]
        while len(descriptions) < count:
            mutation = rng.choices(functions, weights=weights)[0]
            out = mutation(rng, text, corpus)
            if out:
                text, desc = out
                descriptions.append(f"{mutation.__name__}: {desc}")
        data = text.encode(errors="replace")
        binary = False
    original = entry.bytecode if binary else entry.text.encode()
    return entry, data, binary, descriptions, pipelines(rng, entry), \
        data == original


# --- Running -----------------------------------------------------------------

class Settings:
    moba_opt = None
    corpus = None
    seed = 0
    timeout = 20
    memory_mb = 4096
    workdir = None
    roundtrip = True


def _run_stage(path, args):
    argv = [Settings.moba_opt, path] + args + ["-o", os.devnull]
    result = fuzzlib.run_tool(argv, Settings.timeout, Settings.memory_mb)
    if result.timed_out:  # a loaded machine, or a real hang
        result = fuzzlib.run_tool(argv, 3 * Settings.timeout,
                                  Settings.memory_mb)
    kind, why = fuzzlib.classify(result)
    return argv, result, kind, why


def _clip(text, head=5000, tail=1500):
    """The start of stderr (the fatal message, the innermost frames) and
    its end."""
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n[...]\n" + text[-tail:]


def failing_pass(path, args, workdir):
    """(pass name, its local reproducer text) of a crash in a pass
    pipeline: MLIR's crash recovery runs the pipeline again and writes the
    IR just before the pass that crashed, with that pass alone as its
    pipeline (`moba-opt FILE --run-reproducer` replays it). ("", "") when
    the crash was not in a pass."""
    reproducer = os.path.join(workdir, f"reproducer-{os.getpid()}.mlir")
    argv = [Settings.moba_opt, path] + args + [
        "-o", os.devnull, "--mlir-disable-threading",
        f"--mlir-pass-pipeline-crash-reproducer={reproducer}",
        "--mlir-pass-pipeline-local-reproducer"]
    result = fuzzlib.run_tool(argv, Settings.timeout, Settings.memory_mb)
    m = re.search(r"Pipeline failed while executing `([^`]+)`", result.stderr)
    text = ""
    if m and os.path.exists(reproducer):
        with open(reproducer, errors="replace") as f:
            text = f.read()
    if os.path.exists(reproducer):
        os.unlink(reproducer)
    return (m.group(1) if m else ""), text


def run_case(index):
    entry, data, binary, mutations, chosen, unchanged = make_case(
        Settings.seed, index, Settings.corpus)
    path = os.path.join(Settings.workdir,
                        f"case-{os.getpid()}" + (".mlirbc" if binary
                                                 else ".mlir"))
    with open(path, "wb") as f:
        f.write(data)
    parse_args = ["--verify-roundtrip"] if Settings.roundtrip else []
    stages = [("parse", parse_args)]
    outcomes = []
    for n, (stage, args) in enumerate(stages):
        argv, result, kind, why = _run_stage(path, args)
        record = dict(stage=stage, kind=kind, seconds=result.seconds)
        if kind in ("crash", "hang"):
            where, local = "", ""
            if kind == "crash" and stage != "parse":
                where, local = failing_pass(path, args, Settings.workdir)
            record.update(why=why, argv=argv, returncode=result.returncode,
                          stderr=_clip(result.stderr), failing_pass=where,
                          local_reproducer=local,
                          signature=fuzzlib.signature(
                              kind, why, result,
                              f"in {where}" if where else stage))
        outcomes.append(record)
        if n == 0:
            if kind != "accepted" or unchanged:
                break
            stages.extend(chosen)
    os.unlink(path)
    if binary and outcomes[0]["kind"] == "crash" and \
            not fuzzlib.has_moba_frame(outcomes[0]["stderr"]):
        outcomes[0]["kind"] = "upstream"
    crashed = any(o["kind"] in ("crash", "hang", "upstream")
                  for o in outcomes)
    return dict(index=index, entry=entry.name, binary=binary,
                mutations=mutations, unchanged=unchanged, outcomes=outcomes,
                data=data if crashed else None)


def _init_worker(settings):
    for key, value in settings.items():
        setattr(Settings, key, value)


class Stats:
    def __init__(self):
        self.cases = 0
        self.binary = 0
        self.unchanged = 0
        self.per_stage = {}
        self.crashes = 0
        self.hangs = 0
        self.upstream = 0

    def add(self, case):
        self.cases += 1
        self.binary += case["binary"]
        self.unchanged += case["unchanged"]
        for o in case["outcomes"]:
            family = o["stage"].split(":")[0]
            counts = self.per_stage.setdefault(
                family, dict(runs=0, accepted=0, rejected=0, crash=0,
                             hang=0, upstream=0))
            counts["runs"] += 1
            counts[o["kind"]] += 1
            self.crashes += o["kind"] == "crash"
            self.hangs += o["kind"] == "hang"
            self.upstream += o["kind"] == "upstream"


def save_crashes(case, store, upstream, seed, moba_opt):
    for o in case["outcomes"]:
        if o["kind"] not in ("crash", "hang", "upstream"):
            continue
        ext = ".mlirbc" if case["binary"] else ".mlir"
        name = f"seed{seed}-case{case['index']}-{o['stage'].replace(':', '_').replace(' ', '_')}{ext}"
        name = re.sub(r"[^\w.+-]", "_", name)[:150]
        argv = [moba_opt, name] + o["argv"][2:]
        record = dict(signature=o["signature"], why=o["why"], seed=seed,
                      failing_pass=o["failing_pass"],
                      index=case["index"], entry=case["entry"],
                      mutations=case["mutations"], stage=o["stage"],
                      command=" ".join(shlex.quote(a) for a in argv),
                      argv=o["argv"][2:], returncode=o["returncode"],
                      stderr=o["stderr"])
        directory = (upstream if o["kind"] == "upstream" else store).add(
            o["signature"], name, case["data"], record)
        if o["local_reproducer"] and store.counts[o["signature"]] <= store.keep:
            local = os.path.join(directory, name + ".local.mlir")
            with open(local, "w") as f:
                f.write(o["local_reproducer"])


def minimize_all(store, moba_opt, settings, seconds_each):
    import minimize
    for sig, (directory, name, record) in sorted(store.first.items()):
        path = os.path.join(directory, name)
        out = minimize.minimize_file(
            path, record["argv"], sig, moba_opt, settings["timeout"],
            settings["memory_mb"], seconds_each)
        if out:
            print(f"ir-fuzz: minimized {path} -> {out}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moba-opt", required=True)
    parser.add_argument("--root", default=ROOT,
                        help="repository whose test/ and examples/ seed it")
    parser.add_argument("--seed", type=int, default=None,
                        help="default: drawn from the clock, and printed")
    parser.add_argument("--cases", type=int, default=None,
                        help="run cases 0..N-1 (deterministic)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="run cases until this much time has passed")
    parser.add_argument("--first", type=int, default=0,
                        help="index of the first case")
    parser.add_argument("--only", type=int, default=None,
                        help="run this one case and print all it did")
    parser.add_argument("--dump", metavar="INDEX", type=int, default=None,
                        help="write case INDEX's input to --out and stop")
    parser.add_argument("--jobs", type=int, default=2,
                        help="moba-opt processes at a time (at most 2 on "
                        "the shared machines)")
    parser.add_argument("--timeout", type=float, default=20,
                        help="seconds per moba-opt run before it counts as "
                        "a hang (confirmed with thrice as long)")
    parser.add_argument("--memory-mb", type=int, default=4096,
                        help="address-space limit of each moba-opt run")
    parser.add_argument("--no-roundtrip", action="store_true",
                        help="parse without --verify-roundtrip")
    parser.add_argument("--out", default=None,
                        help="where crashes are saved (default: a new "
                        "temporary directory)")
    parser.add_argument("--minimize", type=float, default=0, metavar="SECONDS",
                        help="shrink the first input of each crash "
                        "signature, for at most this long each")
    args = parser.parse_args()

    if args.seed is None:
        args.seed = int(time.time()) % 100000
    out = args.out or tempfile.mkdtemp(prefix="moba-ir-fuzz-")
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="work-", dir=out)
    corpus = load_corpus(args.root)
    add_bytecode(corpus, args.moba_opt, workdir)
    settings = dict(moba_opt=args.moba_opt, corpus=corpus, seed=args.seed,
                    timeout=args.timeout, memory_mb=args.memory_mb,
                    workdir=workdir, roundtrip=not args.no_roundtrip)
    with_bytecode = sum(e.bytecode is not None for e in corpus)

    if args.dump is not None:
        _, data, binary, mutations, _, _ = make_case(args.seed, args.dump,
                                                     corpus)
        path = os.path.join(out, f"seed{args.seed}-case{args.dump}" +
                            (".mlirbc" if binary else ".mlir"))
        with open(path, "wb") as f:
            f.write(data)
        print(path)
        print("\n".join(mutations))
        return 0
    if args.only is not None:
        _init_worker(settings)
        case = run_case(args.only)
        print(json.dumps({k: v for k, v in case.items() if k != "data"},
                         indent=1))
        return 1 if case["data"] is not None else 0

    print(f"ir-fuzz: seed {args.seed}, corpus {len(corpus)} cases from "
          f"{len({e.path for e in corpus})} files ({with_bytecode} also as "
          f"bytecode), {args.jobs} jobs, crashes to {out}", flush=True)
    store = fuzzlib.CrashStore(os.path.join(out, "crashes"))
    upstream = fuzzlib.CrashStore(os.path.join(out, "upstream-bytecode"))
    stats = Stats()
    start = time.monotonic()
    deadline = start + 60 * args.minutes if args.minutes else None
    last_report = start
    next_index = args.first
    end_index = args.first + args.cases if args.cases is not None else None
    context = multiprocessing.get_context("fork")
    with context.Pool(max(1, args.jobs), _init_worker, (settings,)) as pool:
        while True:
            if end_index is not None and next_index >= end_index:
                break
            if deadline and time.monotonic() >= deadline:
                break
            batch = 8 * max(1, args.jobs)
            if end_index is not None:
                batch = min(batch, end_index - next_index)
            indices = range(next_index, next_index + batch)
            next_index += batch
            for case in pool.imap_unordered(run_case, indices):
                stats.add(case)
                if case["data"] is not None:
                    save_crashes(case, store, upstream, args.seed,
                                 args.moba_opt)
            now = time.monotonic()
            if now - last_report > 60:
                last_report = now
                print(f"ir-fuzz: {stats.cases} cases, {stats.crashes} "
                      f"crashes, {stats.hangs} hangs, {(now - start) / 60:.1f}"
                      " min", file=sys.stderr, flush=True)
    minutes = (time.monotonic() - start) / 60

    print(f"ir-fuzz: seed {args.seed}, cases {args.first}.."
          f"{next_index - 1}: {stats.cases} mutants ({stats.binary} "
          f"bytecode, {stats.unchanged} unchanged) in {minutes:.1f} minutes")
    for family in sorted(stats.per_stage):
        c = stats.per_stage[family]
        print(f"ir-fuzz: {family:12} {c['runs']:6} runs {c['accepted']:6} "
              f"accepted {c['rejected']:6} rejected {c['crash']:4} crashed "
              f"{c['hang']:3} hung"
              + (f" {c['upstream']:4} in the bytecode reader"
                 if c["upstream"] else ""))
    for sig, count in sorted(upstream.counts.items(), key=lambda x: -x[1]):
        directory, name, _ = upstream.first[sig]
        print(f"UPSTREAM x{count} (bytecode reader): {sig}\n"
              f"  saved: {directory}/{name}")
    for sig, count in sorted(store.counts.items(), key=lambda x: -x[1]):
        directory, name, record = store.first[sig]
        print(f"CRASH x{count}: {sig}\n  saved: {directory}/{name}\n"
              f"  command: {record['command']}\n  mutations: "
              f"{'; '.join(record['mutations'])}\n  stderr: "
              + "\n  | ".join(record["stderr"].strip().splitlines()[:12]))
    print(f"ir-fuzz: {stats.crashes} crashes, {stats.hangs} hangs, "
          f"{len(store.counts)} distinct")
    print(f"ir-fuzz: {stats.upstream} bytecode-reader crashes, "
          f"{len(upstream.counts)} distinct (upstream; not counted)")
    if args.minimize and store.counts:
        minimize_all(store, args.moba_opt, settings, args.minimize)
    if not args.out and not store.counts and not upstream.counts:
        import shutil
        shutil.rmtree(out, ignore_errors=True)
    else:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if store.counts else 0


if __name__ == "__main__":
    sys.exit(main())
