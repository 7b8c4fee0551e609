"""Decode steps against a paged KV cache, moba beside dense decode.

Run on the device (`bash .device/python.sh .device/decode_bench.py
[--quick]`, after `bash scripts/device-bundle.sh` here):
prints one markdown table of the issue's decode rows (moba's
`paged_decode`, per query head and with `selection="kv_head"`, beside
SDPA's cuDNN and flash backends over the same cache contents gathered
into dense K and V, and a device-to-device copy as the bandwidth
ceiling), then the decode latency from 4K to 512K cached tokens (batch 1),
and writes both as JSON (and a plot where matplotlib is there) to $OUT.

Why each number: the step's time is the CUDA-event time of many steps in
a row on one stream (no host synchronisation between them), after a
warm-up that compiles the kernel; "GB/s" divides the bytes the method
must read at least by its time: dense decode reads every cached key and
value once; moba the chosen blocks' keys and values once per KV head (the
union of the choices of the group's query heads, computed here from the
same block sums with the op's rule, ties to the later block), plus the
block sums and q. Ratios compare methods of the same run only.
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

D = 128
PAGE = 16
# (batch, cached tokens, query heads, KV heads, block, top_k, selection)
TABLE = [
    (8, 131072, 32, 8, 4096, 8, "query_head"),
    (8, 131072, 32, 8, 4096, 8, "kv_head"),
    (64, 32768, 32, 8, 512, 3, "query_head"),
]
SWEEP = [4096, 16384, 65536, 131072, 262144, 524288]


def elapsed_ms(fn, repeats):
    fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def make_cache(batch, length, hkv, block, seed):
    """A filled paged cache: pages in a random order, the f32 block sums
    as moba.paged_kv_append keeps them, each sequence `length` long."""
    pages = length // PAGE
    g = torch.Generator(device="cuda").manual_seed(seed)
    k_cache = torch.randn((batch * pages, PAGE, hkv, D), generator=g,
                          device="cuda").bfloat16()
    v_cache = torch.randn_like(k_cache)
    order = torch.randperm(batch * pages,
                           generator=torch.Generator().manual_seed(seed))
    table = order.int().view(batch, pages).cuda()
    sums = torch.empty((batch, length // block, hkv, D), dtype=torch.float32,
                       device="cuda")
    for b in range(batch):  # one sequence at a time: bounded f32 copies
        keys = k_cache[table[b].long()].view(length, hkv, D).float()
        sums[b] = keys.view(length // block, block, hkv, D).sum(1)
        del keys
    return k_cache, v_cache, table, sums


def chosen_blocks(q, sums, block, top_k, selection, length):
    """[batch, hkv, blocks] bool: the blocks some query head of each KV head
    chose (the own block and the top_k - 1 best finished ones; ties to the
    later block), from the same f32 sums the op reads."""
    batch, blocks, hkv, _ = sums.shape
    hq = q.shape[1]
    own = (length - 1) // block
    means = sums / block
    gate = torch.einsum("bhd,bjgd->bhgj", q.view(batch, hq, D).float(),
                        means)  # [b, hq, hkv, blocks]
    group = hq // hkv
    head_of = torch.arange(hq, device="cuda") // group
    gate = gate[:, torch.arange(hq, device="cuda"), head_of]  # [b, hq, j]
    if selection == "kv_head":
        gate = gate.view(batch, hkv, group, blocks).sum(2)
    finished = torch.arange(blocks, device="cuda") < own
    ranked = torch.where(finished, gate, torch.full_like(gate, -math.inf))
    # Later blocks win ties: a stable sort of the blocks in reverse order.
    reverse = torch.arange(blocks - 1, -1, -1, device="cuda")
    _, order = torch.sort(ranked[..., reverse], dim=-1, descending=True,
                          stable=True)
    top = reverse[order[..., :max(top_k - 1, 0)]]
    picked = torch.zeros_like(gate, dtype=torch.bool)
    picked.scatter_(-1, top, True)
    picked &= finished
    picked[..., own] = True
    if selection != "kv_head":
        picked = picked.view(batch, hkv, group, blocks).any(2)
    return picked


def decode_row(moba, batch, length, hq, hkv, block, top_k, selection,
               repeats, seed=0):
    k_cache, v_cache, table, sums = make_cache(batch, length, hkv, block,
                                               seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    q = torch.randn((batch, hq, D), generator=g, device="cuda").bfloat16()
    cu_q = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    row = dict(batch=batch, cached=length, heads=f"{hq}/{hkv}", block=block,
               top_k=top_k, selection=selection)
    step = lambda: moba.paged_decode(q, cu_q, k_cache, v_cache, sums, table,
                                     lens, block_size=block, top_k=top_k,
                                     selection=selection)
    ms = elapsed_ms(step, repeats)
    chosen = chosen_blocks(q, sums, block, top_k, selection, length)
    own_keys = length - (length - 1) // block * block
    keys = (chosen.sum().item() - chosen[..., (length - 1) // block].sum()
            .item()) * block + chosen.shape[0] * chosen.shape[1] * own_keys
    moba_bytes = keys * D * 2 * 2 + sums.numel() * 4 + q.numel() * 2
    row["moba"] = dict(ms=ms, GBps=moba_bytes / ms / 1e6,
                       read_fraction=keys / (batch * hkv * length))
    # Dense decode over the same contents, gathered once (not timed).
    kd = k_cache[table.long()].view(batch, length, hkv, D).transpose(1, 2)
    vd = v_cache[table.long()].view(batch, length, hkv, D).transpose(1, 2)
    kd, vd = kd.contiguous(), vd.contiguous()
    del k_cache, v_cache
    qd = q.view(batch, hq, 1, D)
    dense_bytes = 2 * kd.numel() * 2
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                dense = lambda: F.scaled_dot_product_attention(
                    qd, kd, vd, enable_gqa=hq != hkv)
                dms = elapsed_ms(dense, repeats)
            row[name] = dict(ms=dms, GBps=dense_bytes / dms / 1e6)
        except Exception as e:  # a backend that refuses this shape
            row[name] = dict(error=f"{type(e).__name__}: {str(e)[:120]}")
    del kd, vd, sums
    torch.cuda.empty_cache()
    return row


def copy_ceiling():
    x = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = elapsed_ms(lambda: y.copy_(x), 20)
    gbps = 2 * x.numel() * 2 / ms / 1e6
    del x, y
    torch.cuda.empty_cache()
    return gbps


def cell(row, name):
    r = row.get(name, {})
    if "ms" not in r:
        return r.get("error", "-")
    return f"{r['ms']:.3f} ms ({r['GBps']:.0f} GB/s)"


def ratio(row, name):
    a, b = row.get("moba", {}), row.get(name, {})
    if "ms" not in a or "ms" not in b:
        return "-"
    return f"{b['ms'] / a['ms']:.2f}x"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true",
                   help="the first row and a short sweep")
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args()
    import moba
    out_dir = os.environ.get("OUT", ".")
    started = time.time()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"moba {moba.version()}", flush=True)
    ceiling = copy_ceiling()
    print(f"copy ceiling: {ceiling:.0f} GB/s", flush=True)
    rows = []
    for config in (TABLE[:1] if a.quick else TABLE):
        row = decode_row(moba, *config, repeats=a.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| batch | cached | heads | block | top_k | selection | moba "
          "| read | SDPA cuDNN | SDPA flash | vs cuDNN | vs flash |")
    print("|---" * 12 + "|")
    for r in rows:
        print(f"| {r['batch']} | {r['cached']} | {r['heads']} | {r['block']} "
              f"| {r['top_k']} | {r['selection']} | {cell(r, 'moba')} | "
              f"{r['moba']['read_fraction']:.2f} | {cell(r, 'sdpa_cudnn')} | "
              f"{cell(r, 'sdpa_flash')} | {ratio(r, 'sdpa_cudnn')} | "
              f"{ratio(r, 'sdpa_flash')} |", flush=True)
    sweep = []
    for length in (SWEEP[:3] if a.quick else SWEEP):
        row = decode_row(moba, 1, length, 32, 8, 4096 if length >= 65536
                         else 512, 8 if length >= 65536 else 3,
                         "query_head", repeats=a.repeats)
        sweep.append(row)
        print(f"sweep {length}: moba {cell(row, 'moba')}, cuDNN "
              f"{cell(row, 'sdpa_cudnn')}", flush=True)
    with open(os.path.join(out_dir, "decode-bench.json"), "w") as f:
        json.dump(dict(copy_GBps=ceiling, table=rows, sweep=sweep), f,
                  indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, label in (("moba", "moba paged decode"),
                            ("sdpa_cudnn", "SDPA cuDNN (dense)"),
                            ("sdpa_flash", "SDPA flash (dense)")):
            points = [(r["cached"], r[name]["ms"]) for r in sweep
                      if "ms" in r.get(name, {})]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("cached tokens (batch 1, 32/8 heads, head_dim 128)")
        ax.set_ylabel("decode step (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "decode-latency.png"), dpi=120)
    except ImportError as e:
        print(f"no plot: {e}")
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
