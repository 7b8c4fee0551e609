"""What the moba fuzzers share: running a tool under limits, telling a crash
from a diagnostic, naming a crash so that its repeats count once, saving it,
and shrinking its input (delta debugging).

Standard library only: the lit suite runs this with whatever python3 CMake
found, which need not have numpy.
"""
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time

# A crash, however the process reports it. An abort inside LLVM prints
# "LLVM ERROR" (fatal error) or an assertion and a stack dump; the C++
# runtime prints "terminate called"; glibc's heap checks print their own.
CRASH_MARKERS = (
    "Stack dump:", "LLVM ERROR", "PLEASE submit a bug report",
    "Assertion `", "UNREACHABLE executed", "terminate called",
    "double free", "free(): ", "malloc(): ", "corrupted size",
    "stack smashing", "AddressSanitizer", "runtime error:",
)

# Frames that say nothing about where a crash is: the signal handler, the
# C library, the process entry, the abort and error machinery itself.
_BORING_FRAME = re.compile(
    r"llvm::sys::|SignalHandler|PrintStackTrace|__restore_rt|libc\.so|"
    r"abort|raise|__pthread_kill|pthread_kill|gsignal|__libc_start|_start\b|"
    r"__libc_message|malloc_printerr|_int_free|_int_malloc|\bcfree\b|"
    r"\./malloc/|"
    r"llvm::report_fatal_error|llvm::llvm_unreachable_internal|"
    r"__assert_fail|__cxa_throw|std::__throw|__gnu_cxx::__verbose_terminate|"
    r"std::terminate|llvm::report_bad_alloc_error|operator new|"
    r"llvm::safe_malloc|llvm::safe_realloc|llvm::SmallVectorBase|"
    r"llvm::SmallVectorTemplate|0x[0-9a-f]+ \(/|^\s*#\d+ 0x[0-9a-f]+\s*$")

SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}


def limit_resources(memory_mb):
    """A preexec_fn: an address-space limit, so that a runaway allocation
    fails (LLVM reports "out of memory") instead of taking the shared
    machine's memory, and no core files."""
    def apply():
        if memory_mb:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()  # a timeout kills the whole group
    return apply


class Result:
    """One run of a tool: exit status (negative: killed by that signal),
    stderr text, seconds, and whether it ran out of time."""

    def __init__(self, returncode, stderr, seconds, timed_out, stdout=""):
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        self.seconds = seconds
        self.timed_out = timed_out


def run_tool(argv, timeout, memory_mb, stdin=None, env=None, stdout=False,
             cwd=None):
    """Runs argv in a session of its own under limit_resources, killing
    the session after `timeout` seconds; stdout is kept when asked."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else
                            subprocess.DEVNULL,
                            stdout=subprocess.PIPE if stdout else
                            subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, cwd=cwd,
                            preexec_fn=limit_resources(memory_mb))
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        timed_out = True
    return Result(proc.returncode, err.decode(errors="replace"),
                  time.monotonic() - start, timed_out,
                  (out or b"").decode(errors="replace"))


def classify(result):
    """("accepted" | "rejected" | "crash" | "hang", why).

    A run passes when the tool exits 0 without an error diagnostic, or exits
    1 having printed an `error:` diagnostic and none of the crash markers.
    Everything else is a finding: a signal, another exit code, a crash
    marker, exit 1 with no diagnostic (the user cannot tell what is wrong),
    exit 0 after an error (a pass that reported an error and went on), or
    running out of time.
    """
    if result.timed_out:
        return "hang", "no exit within the time limit"
    err = result.stderr
    code = result.returncode
    marker = next((m for m in CRASH_MARKERS if m in err), None)
    if code < 0:
        return "crash", f"killed by {SIGNAL_NAMES.get(-code, -code)}"
    if marker:
        return "crash", f"exit {code} after {marker!r}"
    if code == 0:
        if re.search(r"(^|\s)error:", err):
            return "crash", "exit 0 after an error diagnostic"
        return "accepted", ""
    if code == 1:
        # A diagnostic, or LLVM's command line parser refusing an option
        # ("moba-opt: for the --x option: ... invalid ...", "Unknown
        # command line argument '--x'").
        if "error:" in err or re.search(
                r"for the -+[\w-]+ option: |Unknown command line argument",
                err):
            return "rejected", ""
        return "crash", "exit 1 without an error diagnostic"
    return "crash", f"exit {code}"


# Frames of MLIR's pattern and pass machinery: a crash under them is
# named by the pattern or pass they run, further out.
_DRIVER_FRAME = re.compile(
    r"mlir::ConversionPattern::|mlir::PatternApplicator|mlir::Operation"
    r"Converter|mlir::applyPartialConversion|mlir::applyFullConversion|"
    r"mlir::detail::OpToOpPassAdaptor|mlir::PassManager|"
    r"mlir::detail::walk|GreedyPatternRewriteDriver|"
    r"mlir::applyPatternsGreedily|mlir::RewritePattern::|"
    r"mlir::OpConversionPattern|mlir::detail::OpOrInterfaceRewritePattern")


def _frames(err):
    for line in err.splitlines():
        line = line.strip()
        if re.match(r"#\d+ ", line) and not _BORING_FRAME.search(line):
            yield line


def _frame_name(line):
    """The function of a stack frame line, without parameters, templates,
    addresses or places; "" for a frame with no symbol."""
    m = re.match(r"#\d+ 0x[0-9a-f]+ (.*?)( \(/[^()]*\)| \([^()]*\+0x[0-9a-f]+\))?"
                 r"( \S+:\d+:\d+)?$", line)
    name = (m.group(1) if m else "").strip()
    name = name.replace("(anonymous namespace)::", "")
    if not name or name.startswith("("):
        return ""
    for _ in range(4):  # nested templates
        name = re.sub(r"<[^<>]*>", "", name)
    name = re.sub(r"\(.*$", "", name).strip()
    if " " in name and "operator" not in name:  # a return type before it
        name = name.rsplit(" ", 1)[1]
    return name[:120]


_OUTER_FRAME = re.compile(r"^(main|mlir::MlirOptMain|mlir::splitAndProcess"
                          r"Buffer|__libc|_start|call_init)\b")


def _top_frame(err):
    """The innermost interesting function of a stack dump: the first moba
    frame, else the first that is not MLIR's driver machinery, else the
    first named one; "" without a stack dump."""
    names = [n for n in (_frame_name(f) for f in _frames(err))
             if n and not _OUTER_FRAME.match(n)]
    for name in ([n for n in names if "moba" in n.lower()] +
                 [n for n in names if not _DRIVER_FRAME.search(n)] + names):
        return name
    return ""


def has_moba_frame(err):
    """Whether a stack dump names a function of moba's."""
    return any("moba" in _frame_name(f).lower() for f in _frames(err))


def _message(err):
    """The line that says what went wrong, with numbers and names of
    values blurred so that one bug gives one signature."""
    for pattern in (r"LLVM ERROR: .*", r"Assertion `.*", r"terminate called.*",
                    r"UNREACHABLE executed.*", r"(double free|free\(\)|"
                    r"malloc\(\)|corrupted size)[^\n]*", r"what\(\): .*",
                    r"error: .*"):
        m = re.search(pattern, err)
        if m:
            text = m.group(0)
            text = re.sub(r"0x[0-9a-fA-F]+", "N", text)
            text = re.sub(r"-?\d+", "N", text)
            text = re.sub(r"'[^']*'", "'X'", text)
            text = re.sub(r"(failed\.?)?$", "", text)
            return text.strip()[:160]
    return ""


def signature(kind, why, result, stage):
    """What two crashes of one bug share: the kind and how the process ended,
    the fatal message, the innermost moba or MLIR frame; plus the stage
    (pipeline) it ran, since one frame can fail under two passes for two
    reasons."""
    if kind == "hang":
        return f"hang | {stage}"
    return " | ".join(x for x in (why.split(" after ")[0] if "killed" in why
                                  else why, _message(result.stderr),
                                  _top_frame(result.stderr), stage) if x)


def signature_id(sig):
    return hashlib.sha1(sig.encode()).hexdigest()[:10]


class CrashStore:
    """Crashes under <root>/<signature id>/: `signature.txt`, and per
    crash (at most `keep` of each signature) the input and a JSON record of
    the command, seed, index and stderr."""

    def __init__(self, root, keep=3):
        self.root = root
        self.keep = keep
        self.counts = {}
        self.first = {}

    def add(self, sig, name, data, record):
        """Saves one crash; returns its directory."""
        sid = signature_id(sig)
        directory = os.path.join(self.root, sid)
        n = self.counts.get(sig, 0)
        self.counts[sig] = n + 1
        if n == 0:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "signature.txt"), "w") as f:
                f.write(sig + "\n")
            self.first[sig] = (directory, name, record)
        if n < self.keep:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
            with open(os.path.join(directory, name + ".json"), "w") as f:
                json.dump(record, f, indent=1)
        return directory


def ddmin(units, still_fails, deadline=None):
    """Delta debugging (Zeller's ddmin): a small sublist of `units` for which
    `still_fails(sublist)` holds, `units` itself failing. Stops shrinking at
    `deadline` (time.monotonic()) and returns the smallest found."""
    n = 2
    while len(units) >= 2:
        if deadline and time.monotonic() > deadline:
            break
        chunk = max(1, len(units) // n)
        subsets = [units[i:i + chunk] for i in range(0, len(units), chunk)]
        reduced = False
        for i in range(len(subsets)):
            complement = [u for j, s in enumerate(subsets) if j != i
                          for u in s]
            if complement and still_fails(complement):
                units = complement
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(units):
                break
            n = min(len(units), n * 2)
    return units


def which(tool, fallback_dirs=()):
    found = shutil.which(tool)
    if found:
        return found
    for d in fallback_dirs:
        path = os.path.join(d, tool)
        if os.access(path, os.X_OK):
            return path
    return None
