"""Runs moba-opt on damaged versions of MLIR files and reports crashes.

Each version goes through the whole --moba-to-loops pipeline (decompose,
canonicalize, fuse, tile, lower to loops), so the transformations see every
input the parser and verifiers accept.

Damage: every prefix at a stride of bytes (truncated text), and the whole
file with one whitespace-separated token removed. A run passes when it exits
0, or exits 1 having printed an `error:` diagnostic and no stack dump.
"""
import re
import subprocess
import sys


def variants(text):
    stride = max(1, len(text) // 120)
    for end in range(0, len(text), stride):
        yield text[:end]
    tokens = list(re.finditer(r"\S+", text))
    step = max(1, len(tokens) // 150)
    for m in tokens[::step]:
        yield text[: m.start()] + text[m.end():]


def main():
    tool, files = sys.argv[1], sys.argv[2:]
    total = accepted = rejected = 0
    crashes = []
    for path in files:
        with open(path) as f:
            text = f.read()
        for variant in variants(text):
            total += 1
            try:
                proc = subprocess.run(
                    [tool, "-", "--moba-to-loops", "-o", "/dev/null"],
                    input=variant.encode(), capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                crashes.append(("timeout", variant))
                continue
            err = proc.stderr.decode(errors="replace")
            if proc.returncode == 0:
                accepted += 1
            elif proc.returncode == 1 and "error:" in err and "Stack dump" not in err:
                rejected += 1
            else:
                crashes.append((f"exit {proc.returncode}: {err[-400:]}", variant))
    for why, variant in crashes[:5]:
        print(f"CRASH ({why})\n--- input ---\n{variant}\n-------------")
    print(f"fuzz: {total} inputs, {accepted} accepted, {rejected} rejected "
          f"with a diagnostic, {len(crashes)} crashed")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
