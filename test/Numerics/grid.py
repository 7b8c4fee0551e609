"""Runs moba-run over a grid of configurations and summarizes.

Each case compiles one configuration with the CPU backend, runs it on fresh
random inputs (outputs poisoned first) and compares output and log-sum-exp
with the float64 reference; near-tied rows are skipped and counted. Prints a
line per case and a summary; exits 1 if any case failed.

With `-- --grad` each case also runs the backward (moba-run --grad) and
compares dq, dk and dv with the float64 gradients; rows and keys whose
selection is near-tied are skipped and counted as "unsure".

  grid.py MOBA_RUN [--heads H:KV ...] [--head-dims ...] [--block-sizes ...]
          [--top-ks ...] [--causal true,false] [--dtypes f32,bf16]
          [--stages fused] [--seqlens 1,5,17,130,300] [-- extra moba-run args]
"""
import argparse
import itertools
import re
import subprocess
import sys


def csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("moba_run")
    p.add_argument("--heads", type=csv(str), default=["8:2"])
    p.add_argument("--head-dims", type=csv(int), default=[64])
    p.add_argument("--block-sizes", type=csv(int), default=[16])
    p.add_argument("--top-ks", type=csv(int), default=[3])
    p.add_argument("--causal", type=csv(str), default=["true"])
    p.add_argument("--dtypes", type=csv(str), default=["f32"])
    p.add_argument("--stages", type=csv(str), default=["fused"])
    p.add_argument("--seqlens", default="1,5,17,130,300")
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:  # what follows goes to moba-run as it is
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    a = p.parse_args(argv)

    cases = passed = skipped_rows = skipped_unsure = 0
    failures = []
    for heads, d, bs, k, causal, dtype, stage in itertools.product(
            a.heads, a.head_dims, a.block_sizes, a.top_ks, a.causal,
            a.dtypes, a.stages):
        hq, hkv = heads.split(":")
        args = [a.moba_run, f"--heads={hq}", f"--kv-heads={hkv}",
                f"--head-dim={d}", f"--block-size={bs}", f"--top-k={k}",
                f"--causal={causal}", f"--dtype={dtype}", f"--stage={stage}",
                f"--seqlens={a.seqlens}", "--repeat=1"] + extra
        proc = subprocess.run(args, capture_output=True, text=True)
        cases += 1
        name = (f"Hq={hq} Hkv={hkv} D={d} block={bs} top_k={k} "
                f"causal={causal} {dtype} {stage}")
        rows = re.search(r"rows: (\d+) compared, (\d+) skipped", proc.stdout)
        if rows:
            skipped_rows += int(rows.group(2))
        unsure = sum(int(n) for n in re.findall(
            r"compared, (\d+) skipped as unsure", proc.stdout))
        skipped_unsure += unsure
        if proc.returncode == 0 and "PASS" in proc.stdout and rows:
            passed += 1
            grads = (f", {unsure} unsure gradient rows/keys skipped"
                     if "--grad" in extra else "")
            print(f"ok   {name}: {rows.group(1)} rows, "
                  f"{rows.group(2)} near-ties skipped{grads}")
        else:
            failures.append(name)
            print(f"FAIL {name} (exit {proc.returncode})\n{proc.stdout}"
                  f"{proc.stderr}")
    grads = (f", {skipped_unsure} unsure gradient rows/keys skipped"
             if "--grad" in extra else "")
    print(f"grid: {cases} cases, {passed} passed, {len(failures)} failed, "
          f"{skipped_rows} near-tie rows skipped{grads}")
    return 1 if failures or cases == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
