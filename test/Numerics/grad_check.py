"""Checks moba.attention_grad, compiled by the CPU pipeline, against a
float64 reference written here in plain Python loops (no numpy: lit runs it
with the build's Python).

One packed batch of sequences of 9, 0, 4 and 1 tokens (an empty and a
one-token sequence), 4 query heads over 2 key/value heads (GQA), head_dim 8,
blocks of 3, and a caller's selection of 3 slots per query holding -1,
blocks past the sequence's end and duplicates (which attend nothing), and,
when causal, the own block first. The forward's out and lse come from the
reference; the gradients dq, dk, dv of the compiled function must match the
reference's to 1e-4. Prints one line per stage (and for the parallel form)
and gradient.

  grad_check.py MOBA_OPT MLIR_RUNNER RUNNER_LIB SEED causal|full
"""

import math
import random
import subprocess
import sys

moba_opt, mlir_runner, runner_lib, seed, mode = sys.argv[1:6]
rnd = random.Random(int(seed))
causal = mode == "causal"
lens = [9, 0, 4, 1]
T, HQ, HKV, D, BS, K = sum(lens), 4, 2, 8, 3, 3
SCALE = 0.3
cu = [0]
for n in lens:
    cu.append(cu[-1] + n)


def normal(*shape):
    if len(shape) == 1:
        return [rnd.gauss(0.0, 1.0) for _ in range(shape[0])]
    return [normal(*shape[1:]) for _ in range(shape[0])]


def f32(x):
    """x rounded to the f32 the compiled function reads."""
    import struct
    return struct.unpack("f", struct.pack("f", x))[0]


def rounded(a):
    return [rounded(x) for x in a] if isinstance(a, list) else f32(a)


q, k, v = rounded(normal(T, HQ, D)), rounded(normal(T, HKV, D)), \
    rounded(normal(T, HKV, D))
do, dlse = rounded(normal(T, HQ, D)), rounded(normal(T, HQ))
sel = [[[0] * K for _ in range(HQ)] for _ in range(T)]
seq_of = []
for b, n in enumerate(lens):
    blocks = -(-n // BS)
    for t in range(cu[b], cu[b + 1]):
        seq_of.append(b)
        for h in range(HQ):
            slots = [rnd.randint(-1, blocks) for _ in range(K)]
            if causal:
                slots[0] = (t - cu[b]) // BS
            sel[t][h] = slots


def keys(t, h):
    """The keys of query t, head h: the selection's blocks, each once."""
    b = seq_of[t]
    start, end = cu[b], cu[b + 1]
    blocks, seen, out = -(-(end - start) // BS), set(), []
    for j in sel[t][h]:
        if j < 0 or j >= blocks or j in seen:
            continue
        seen.add(j)
        for s in range(start + j * BS, min(start + (j + 1) * BS, end)):
            if not causal or s <= t:
                out.append(s)
    return out


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


G = HQ // HKV
out = [[[0.0] * D for _ in range(HQ)] for _ in range(T)]
lse = [[0.0] * HQ for _ in range(T)]
for t in range(T):
    for h in range(HQ):
        ks = keys(t, h)
        if not ks:
            continue
        x = [SCALE * dot(q[t][h], k[s][h // G]) for s in ks]
        m = max(x)
        lse[t][h] = m + math.log(sum(math.exp(xi - m) for xi in x))
        for s, xi in zip(ks, x):
            p = math.exp(xi - lse[t][h])
            for d in range(D):
                out[t][h][d] += p * v[s][h // G][d]
out, lse = rounded(out), rounded(lse)

dq = [[[0.0] * D for _ in range(HQ)] for _ in range(T)]
dk = [[[0.0] * D for _ in range(HKV)] for _ in range(T)]
dv = [[[0.0] * D for _ in range(HKV)] for _ in range(T)]
for t in range(T):
    for h in range(HQ):
        g = h // G
        delta = dot(do[t][h], out[t][h]) - dlse[t][h]
        for s in keys(t, h):
            p = math.exp(SCALE * dot(q[t][h], k[s][g]) - lse[t][h])
            ds = p * (dot(do[t][h], v[s][g]) - delta)
            for d in range(D):
                dq[t][h][d] += SCALE * ds * k[s][g][d]
                dk[s][g][d] += SCALE * ds * q[t][h][d]
                dv[s][g][d] += p * do[t][h][d]


def flat(a):
    return [y for x in a for y in flat(x)] if isinstance(a, list) else [a]


def dense(a, shape, element="f32"):
    def text(x):
        return repr(float(x)) if element == "f32" else str(x)

    def nest(a):
        if isinstance(a, list):
            return "[" + ", ".join(nest(x) for x in a) + "]"
        return text(a)
    dims = "x".join(map(str, shape))
    return f"dense<{nest(a)}> : tensor<{dims}x{element}>"


def ty(*shape):
    return "tensor<" + "x".join(map(str, shape)) + "xf32>"


def printed(name, value, shape):
    n = 1
    for s in shape:
        n *= s
    return f"""
  %flat_{name} = tensor.collapse_shape %{name} [[0, 1, 2]]
      : {ty(*shape)} into {ty(n)}
  %vec_{name} = vector.transfer_read %flat_{name}[%c0], %pad
      : {ty(n)}, vector<{n}xf32>
  vector.print %vec_{name} : vector<{n}xf32>"""


module = f"""
func.func @main() {{
  %q = arith.constant {dense(q, [T, HQ, D])}
  %k = arith.constant {dense(k, [T, HKV, D])}
  %v = arith.constant {dense(v, [T, HKV, D])}
  %cu = arith.constant {dense(cu, [len(cu)], "i32")}
  %o = arith.constant {dense(out, [T, HQ, D])}
  %lse = arith.constant {dense(lse, [T, HQ])}
  %do = arith.constant {dense(do, [T, HQ, D])}
  %dlse = arith.constant {dense(dlse, [T, HQ])}
  %sel = arith.constant {dense(sel, [T, HQ, K], "i32")}
  %dq, %dk, %dv = moba.attention_grad q(%q : {ty(T, HQ, D)})
      k(%k : {ty(T, HKV, D)}) v(%v : {ty(T, HKV, D)})
      cu_seqlens(%cu : tensor<{len(cu)}xi32>)
      out(%o : {ty(T, HQ, D)}) lse(%lse : {ty(T, HQ)})
      grad_out(%do : {ty(T, HQ, D)}) grad_lse(%dlse : {ty(T, HQ)})
      selected(%sel : tensor<{T}x{HQ}x{K}xi32>)
      {{block_size = {BS}, top_k = {K}, scale = {SCALE} : f32,
       causal = {str(causal).lower()}}}
      -> {ty(T, HQ, D)}, {ty(T, HKV, D)}, {ty(T, HKV, D)}
  %c0 = arith.constant 0 : index
  %pad = arith.constant 0.0 : f32
  {printed("dq", dq, [T, HQ, D])}
  {printed("dk", dk, [T, HKV, D])}
  {printed("dv", dv, [T, HKV, D])}
  return
}}
"""

failed = False
# Every stage, and the parallel form of the loops (scf.forall over rows and
# over (key/value head, block row)), which must agree like the serial ones.
for stage, options in [("fused", "stage=fused"),
                       ("decomposed", "stage=decomposed"),
                       ("tiled", "stage=tiled"),
                       ("parallel", "stage=fused parallel=true")]:
    llvm = subprocess.run(
        [moba_opt, "-", f"--moba-cpu-pipeline={options}"], input=module,
        capture_output=True, text=True, check=True).stdout
    result = subprocess.run(
        [mlir_runner, "-e", "main", "-entry-point-result=void",
         f"-shared-libs={runner_lib}"], input=llvm, capture_output=True,
        text=True, check=True).stdout
    rows = [[float(x) for x in line.strip()[1:-1].split(",")]
            for line in result.strip().splitlines()]
    for name, got, want in zip(["dq", "dk", "dv"], rows, [dq, dk, dv]):
        want = flat(want)
        # NaN fails the comparison, as it should.
        worst = max(abs(a - b) if not math.isnan(a) else math.inf
                    for a, b in zip(got, want))
        ok = len(got) == len(want) and worst <= 1e-4
        failed |= not ok
        print(f"{stage} {mode} {name}: {'ok' if ok else 'WRONG'} "
              f"(max abs error {worst:.1e})")
sys.exit(1 if failed else 0)
