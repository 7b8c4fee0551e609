"""MoBA forward on one GPU: moba-mlir beside its peers, in one run.

For the configurations of the Hopper-speed issue (bf16, head_dim 128, 32
query heads, batch 1, causal) it times, with the same timer
(triton.testing.do_bench, median):

  * moba: the compiled kernel, everything included (block pooling, gate,
    top-k, grouping, attention, merge);
  * SDPA with the cuDNN and the flash backends: dense causal attention;
  * MoBA's official algorithm (two flash-attn calls and torch ops, its own
    gating included), from ../shared/bench/moba_official.py;
  * FlexAttention with a MoBA block mask (gate and mask built outside the
    timing, as ../shared/bench/peers.py does).

and prints the time, the TFLOP/s on the (query, key) pairs each one computes
(attended pairs for the MoBA ones, the causal triangle for dense) and
moba's speedup over each peer. Before timing a size, moba's output there is
checked against the float64 reference of test/device/gpu_check.py on a
sample of rows (with the block edges and the last token), its outputs
poisoned with NaN first; a failure stops the run.

A sweep over sequence lengths (8K to 128K) gives the plot
docs/moba-vs-peers.png (time against length for moba, dense cuDNN, MoBA's
official algorithm and FlexAttention).

With --backward it times the backward instead (BACKWARD_TABLE): moba's
Kernel.backward (compiled with backward=True; dq, dk, dv into preallocated
tensors, grad_lse None) against the dense causal backward of SDPA (cuDNN
and flash backends) and of flash-attn (flash_attn_func, where it is
installed), and FlexAttention's backward with the MoBA block mask (the
peers' gate, built outside the timing), each timed as
torch.autograd.grad of out against a random grad_out, and prints each
peer's time over moba's. TFLOP/s count 2.5 times the forward's pairs (the
usual convention for attention backwards). moba's gradients are checked
for NaN here; their values are checked by test/device/gpu_check.py grad.

On the device, after `bash scripts/device-bundle.sh`:
    bash .device/bench.sh [--quick] [--no-sweep]
    bash .device/bench.sh --backward [--quick]
Results go to stdout and, as JSON and PNG, to $OUT (or the current folder).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HERE = os.path.dirname(os.path.abspath(__file__))

TABLE = [  # (N, Hq, Hkv, block, top_k, target ms on the H200: issue 19)
    (8192, 32, 32, 512, 3, 0.45),
    (32768, 32, 32, 512, 3, 1.5),
    (32768, 32, 8, 512, 3, 1.5),
    (32768, 32, 32, 128, 8, 1.4),
    (131072, 32, 8, 4096, 8, 100.0),
]
SWEEP = [8192, 16384, 32768, 65536, 131072]  # with 32/8 heads, 512, top 3
BACKWARD_TABLE = [  # (N, Hq, Hkv, block, top_k); the first is the quick one
    (4096, 32, 8, 512, 3),
    (32768, 32, 32, 512, 3),
    (131072, 32, 8, 4096, 8),
]
BACKWARD_PEERS = ["sdpa_cudnn", "sdpa_flash", "flash_attn", "flex_moba"]
D = 128


def import_peers(folder):
    sys.path.insert(0, folder)
    import peers  # noqa: E402  (torch.compile of flex_attention on import)
    return peers


def sample_rows(n, block, count, generator):
    picks = torch.randint(0, n, (count,), generator=generator, device="cuda")
    edges = torch.arange(0, n, block, device="cuda")
    edges = torch.cat([edges, (edges + block - 1).clamp(max=n - 1)])
    edges = edges[torch.randperm(len(edges), generator=generator,
                                 device="cuda")[:64]]
    last = torch.tensor([n - 1], device="cuda")
    return torch.unique(torch.cat([picks, edges, last]))


def check(moba, gpu_check, kernel, q, k, v, cu, block, top_k, seed):
    """moba's result against the float64 reference on sampled rows."""
    out = torch.full_like(q, math.nan)
    lse = torch.full(q.shape[:-1], math.nan, device="cuda")
    kernel(q, k, v, cu, out=out, lse=lse)
    torch.cuda.synchronize()
    generator = torch.Generator(device="cuda").manual_seed(seed)
    rows = sample_rows(q.shape[0], block, 384, generator)
    ref_out, ref_lse, near, _ = gpu_check.reference(
        q, k, v, cu.cpu(), block, top_k, True, rows=rows)
    ok, message, compared, skipped = gpu_check.compare(
        out, lse, ref_out, ref_lse, near, "bf16")
    return ok, f"{message}; {compared} rows compared, {skipped} near-ties"


def run_config(moba, gpu_check, peers, n, hq, hkv, block, top_k, which,
               seed):
    """Times moba and the peers in `which` on one configuration; returns a
    dict of results (ms and TFLOP/s per implementation)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h: torch.randn((n, h, D), generator=generator,
                                 device="cuda").to(torch.bfloat16)
    q, k, v = make(hq), make(hkv), make(hkv)
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    result = dict(N=n, Hq=hq, Hkv=hkv, block=block, top_k=top_k)

    kernel = moba.compile(head_dim=D, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16",
                          **gpu_check.mma_options())
    ok, message = check(moba, gpu_check, kernel, q, k, v, cu, block, top_k,
                        seed)
    result["check"] = message
    print(f"  check N={n} {hq}/{hkv} block {block} top {top_k}: "
          f"{'ok' if ok else 'FAIL'} ({message})", flush=True)
    if not ok:
        raise SystemExit(f"moba is wrong at N={n}: {message}")

    # The attended pairs, from the peers' gate (the same selection rule).
    qb, kb, vb = (x.transpose(0, 1)[None].contiguous() for x in (q, k, v))
    with torch.no_grad():
        sel = peers.moba_gate(qb, kb, block, top_k)
        pairs = peers.pairs_moba(sel, block, n)
    dense_flops = 4 * D * hq * n * (n + 1) / 2
    moba_flops = 4 * D * pairs
    result["density"] = pairs / (hq * n * (n + 1) / 2)

    def record(name, fn, flops, rep=200):
        try:
            fn()
            torch.cuda.synchronize()
            ms = peers.bench(fn, rep=rep)
            result[name] = dict(ms=ms, tflops=flops / ms / 1e9)
        except Exception as error:  # a peer that cannot run this size
            result[name] = dict(error=repr(error)[:200])
        torch.cuda.synchronize()

    record("moba", lambda: kernel(q, k, v, cu), moba_flops)
    # Where moba's time goes: each kernel's device time, in launch order.
    result["moba_kernels_ms"] = [
        round(ms, 3) for ms in gpu_check.device_times(
            lambda: kernel(q, k, v, cu))]
    gqa = hq != hkv
    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        if name not in which:
            continue
        def dense(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    qb, kb, vb, is_causal=True, enable_gqa=gqa)
        record(name, dense, dense_flops)
    if "moba_official" in which:
        group = hq // hkv
        qs = q.contiguous()
        ks = k.repeat_interleave(group, 1).contiguous()
        vs = v.repeat_interleave(group, 1).contiguous()
        record("moba_official",
               lambda: peers.moba_official_fwd(qs, ks, vs, cu, n, block,
                                               top_k),
               moba_flops, rep=100)
        del ks, vs
    if "flex_moba" in which:
        with torch.no_grad():
            mask = peers.moba_block_mask(sel, block, n)
        record("flex_moba",
               lambda: peers.flex(qb, kb, vb, block_mask=mask,
                                  enable_gqa=gqa),
               moba_flops)
        del mask
    del sel, q, k, v, qb, kb, vb
    torch.cuda.empty_cache()
    return result


def run_backward_config(moba, gpu_check, peers, n, hq, hkv, block, top_k,
                        seed):
    """Times moba's backward and the peers' on one configuration; returns
    a dict of results (ms and TFLOP/s per implementation)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h: torch.randn((n, h, D), generator=generator,
                                 device="cuda").to(torch.bfloat16)
    q, k, v = make(hq), make(hkv), make(hkv)
    dout = make(hq)
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    result = dict(N=n, Hq=hq, Hkv=hkv, block=block, top_k=top_k)
    qb, kb, vb, dob = (x.transpose(0, 1)[None].contiguous()
                       for x in (q, k, v, dout))
    with torch.no_grad():
        sel = peers.moba_gate(qb, kb, block, top_k)
        pairs = peers.pairs_moba(sel, block, n)
    dense_flops = 2.5 * 4 * D * hq * n * (n + 1) / 2
    moba_flops = 2.5 * 4 * D * pairs
    result["density"] = pairs / (hq * n * (n + 1) / 2)

    def record(name, fn, flops, rep=100):
        try:
            fn()
            torch.cuda.synchronize()
            ms = peers.bench(fn, rep=rep)
            result[name] = dict(ms=ms, tflops=flops / ms / 1e9)
        except Exception as error:  # one that cannot run this size
            result[name] = dict(error=repr(error)[:300])
        torch.cuda.synchronize()

    try:
        kernel = moba.compile(head_dim=D, num_heads=hq, num_kv_heads=hkv,
                              block_size=block, top_k=top_k, dtype="bf16",
                              backward=True, **gpu_check.mma_options())
        out, lse = kernel(q, k, v, cu, return_lse=True)
        grads = [torch.full_like(x, math.nan) for x in (q, k, v)]
        kernel.backward(q, k, v, cu, out, lse, dout, None, *grads)
        torch.cuda.synchronize()
        bad = [name for name, g in zip(("dq", "dk", "dv"), grads)
               if torch.isnan(g).any()]
        if bad:
            raise SystemExit(f"moba's backward left NaN in {bad} at N={n}")
        record("moba", lambda: kernel.backward(q, k, v, cu, out, lse, dout,
                                               None, *grads), moba_flops)
        result["moba_kernels_ms"] = [
            round(ms, 3) for ms in gpu_check.device_times(
                lambda: kernel.backward(q, k, v, cu, out, lse, dout, None,
                                        *grads))]
        del out, lse, grads
    except (moba.CompileError, RuntimeError, ValueError) as error:
        result["moba"] = dict(error=repr(error)[:300])
    print(f"  moba backward N={n} {hq}/{hkv} block {block} top {top_k}: "
          f"{describe(result, 'moba')}", flush=True)

    gqa = hq != hkv
    leaves = [x.detach().requires_grad_() for x in (qb, kb, vb)]

    def backward_of(forward):
        """The backward of `forward` alone: the graph is built once."""
        o = forward()
        return lambda: torch.autograd.grad(o, leaves, dob, retain_graph=True)

    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        def dense(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    *leaves, is_causal=True, enable_gqa=gqa)
        try:
            record(name, backward_of(dense), dense_flops)
        except Exception as error:  # the forward itself failed
            result[name] = dict(error=repr(error)[:300])
        torch.cuda.empty_cache()
    try:
        from flash_attn import flash_attn_func
        # flash-attn's layout is [B, N, H, D]; GQA by its own head count.
        flash_leaves = [x[None].detach().requires_grad_() for x in (q, k, v)]
        o = flash_attn_func(*flash_leaves, causal=True)
        record("flash_attn",
               lambda: torch.autograd.grad(o, flash_leaves, dout[None],
                                           retain_graph=True), dense_flops)
        del o, flash_leaves
    except ImportError as error:
        result["flash_attn"] = dict(error=f"not installed: {error}")
    except Exception as error:
        result["flash_attn"] = dict(error=repr(error)[:300])
    torch.cuda.empty_cache()
    try:
        with torch.no_grad():
            mask = peers.moba_block_mask(sel, block, n)
        record("flex_moba", backward_of(
            lambda: peers.flex(*leaves, block_mask=mask, enable_gqa=gqa)),
            moba_flops)
        del mask
    except Exception as error:
        result["flex_moba"] = dict(error=repr(error)[:300])
    del sel, q, k, v, dout, qb, kb, vb, dob, leaves
    torch.cuda.empty_cache()
    return result


def print_backward_table(results):
    print("\n| N | heads q/kv | block | top_k | moba bwd ms (TFLOP/s) | "
          + " | ".join(f"{p} bwd ms (TFLOP/s)" for p in BACKWARD_PEERS)
          + " | " + " | ".join(f"{p} / moba" for p in BACKWARD_PEERS)
          + " |")
    print("|---" * (5 + 2 * len(BACKWARD_PEERS)) + "|")
    for r in results:
        print(f"| {r['N']} | {r['Hq']}/{r['Hkv']} | {r['block']} | "
              f"{r['top_k']} | {describe(r, 'moba')} | "
              + " | ".join(describe(r, p) for p in BACKWARD_PEERS) + " | "
              + " | ".join(speedup(r, p) for p in BACKWARD_PEERS) + " |")
    for r in results:
        for name in ["moba"] + BACKWARD_PEERS:
            if "error" in r.get(name, {}):
                print(f"N={r['N']} {name}: {r[name]['error']}")


def describe(r, name):
    entry = r.get(name)
    if not entry:
        return "-"
    if "error" in entry:
        return "error"
    return f"{entry['ms']:.2f} ms ({entry['tflops']:.0f})"


def speedup(r, name):
    a, b = r.get("moba", {}), r.get(name, {})
    if "ms" not in a or "ms" not in b:
        return "-"
    return f"{b['ms'] / a['ms']:.2f}x"


PEERS = ["sdpa_cudnn", "sdpa_flash", "moba_official", "flex_moba"]


def print_table(results):
    print("\n| N | heads q/kv | block | top_k | moba ms (TFLOP/s) | target | "
          + " | ".join(f"{p} ms (TFLOP/s)" for p in PEERS)
          + " | moba vs " + " | vs ".join(PEERS) + " |")
    print("|---" * (6 + 2 * len(PEERS)) + "|")
    for r in results:
        print(f"| {r['N']} | {r['Hq']}/{r['Hkv']} | {r['block']} | "
              f"{r['top_k']} | {describe(r, 'moba')} | "
              f"{r.get('target', '-')} | "
              + " | ".join(describe(r, p) for p in PEERS) + " | "
              + " | ".join(speedup(r, p) for p in PEERS) + " |")


def plot(sweep, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = {"moba": "moba-mlir", "sdpa_cudnn": "SDPA cuDNN (dense)",
             "moba_official": "MoBA official", "flex_moba": "FlexAttention"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, label in names.items():
        points = [(r["N"], r[name]["ms"]) for r in sweep
                  if "ms" in r.get(name, {})]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("forward time (ms)")
    ax.set_title("MoBA forward, H200, bf16, 32/8 heads, D 128, block 512, "
                 "top-3", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peers", default=os.environ.get(
        "MOBA_PEERS", os.path.join(HERE, "..", "..", "shared", "bench")),
        help="folder with peers.py and moba_official.py")
    p.add_argument("--quick", action="store_true",
                   help="the first table row only, no sweep")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--backward", action="store_true",
                   help="time the backward (BACKWARD_TABLE; with --quick "
                        "its first row)")
    a = p.parse_args()
    import moba
    import gpu_check
    peers = import_peers(os.path.abspath(a.peers))
    out_dir = os.environ.get("OUT", ".")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"moba {moba.version()}", flush=True)
    start = time.time()
    if a.backward:
        table = BACKWARD_TABLE[:1] if a.quick else BACKWARD_TABLE
        results = []
        for seed, (n, hq, hkv, block, top_k) in enumerate(table):
            r = run_backward_config(moba, gpu_check, peers, n, hq, hkv,
                                    block, top_k, 200 + seed)
            results.append(r)
            print(json.dumps(r), flush=True)
        print_backward_table(results)
        with open(os.path.join(out_dir, "bench-backward.json"), "w") as f:
            json.dump(dict(backward=results), f, indent=1)
        print(f"\n{time.time() - start:.0f} s")
        return
    table = TABLE[:1] if a.quick else TABLE
    results = []
    for seed, (n, hq, hkv, block, top_k, target) in enumerate(table):
        r = run_config(moba, gpu_check, peers, n, hq, hkv, block, top_k,
                       PEERS, seed)
        r["target"] = target
        results.append(r)
        print(json.dumps(r), flush=True)
    print_table(results)
    sweep = []
    if not (a.quick or a.no_sweep):
        for seed, n in enumerate(SWEEP):
            known = next((r for r in results if (r["N"], r["Hkv"],
                          r["block"], r["top_k"]) == (n, 8, 512, 3)), None)
            r = known or run_config(
                moba, gpu_check, peers, n, 32, 8, 512, 3,
                ["sdpa_cudnn", "moba_official", "flex_moba"], 100 + seed)
            sweep.append(r)
            print(json.dumps(r), flush=True)
        print("\nsweep (32/8 heads, block 512, top-3):")
        print_table(sweep)
        try:
            plot(sweep, os.path.join(out_dir, "moba-vs-peers.png"))
        except ImportError as error:
            print(f"no plot: {error}")
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(dict(table=results, sweep=sweep), f, indent=1)
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
