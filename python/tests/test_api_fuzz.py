"""A bounded, deterministic run of the API fuzzer (test/fuzz/api_fuzz.py,
docs/fuzzing.md): 600 cases of seed 24 through moba.compile, Kernel calls
and the C API under them. Each case must give the reference's answer or a
TypeError, ValueError, CompileError or RuntimeError naming the argument; a
worker that dies or hangs fails the test too. The fuzzer's report (with
`api_fuzz.py --seed 24 --show INDEX` to print a case) is the failure
message."""
import os
import subprocess
import sys

FUZZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                      "test", "fuzz", "api_fuzz.py")


def test_api_fuzz_finds_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, FUZZER, "--seed", "24", "--cases", "600", "--jobs",
         "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200)
    report = proc.stdout + proc.stderr[-4000:]
    assert "api-fuzz: seed 24, cases 0..599: 600 cases" in proc.stdout, report
    assert proc.returncode == 0 and ", 0 findings, 0 distinct" in \
        proc.stdout, report
