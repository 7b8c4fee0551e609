"""The paged KV cache kernels on a CUDA machine (gpu_check.py decode and
decode-time call these); CI has no GPU and never runs this.

decode: for a small grid (MHA, GQA, MQA; pages of 8 and 16; blocks of one
and two pages; bf16 and f32; sequences of 0, 1, 37, 150 and 300 tokens
with 0, 1, 16, 5 and 9 queries), a KVCache on the GPU is filled in two
appends and decodes the last tokens; a second one takes the sequences as
chunked prefill in three chunks. Every row is compared with the float64
reference's row at its position (gpu_check.reference: the full causal
forward), near-tied rows skipped, and with the CPU KVCache's row on the same
inputs. Then the device's own checks: the functional forms on CUDA tensors
with a page id outside the pool, a length past the table and too many
queries give NaN rows for those sequences only, and an append of a
sequence whose pages are bad writes nothing.

decode-time: one decode step (32 query heads on 8 KV heads, head_dim 128,
block 4096, top-8, batch 8, 128K cached tokens a sequence, pages of 16)
against torch's SDPA over the same cache gathered into dense K and V.
"""

import numpy as np
import torch

from gpu_check import TORCH_DTYPE, compare, reference

SEQLENS = [0, 1, 37, 150, 300]
QUERIES = [0, 1, 16, 5, 9]


def decode_cases():
    for (hq, hkv) in ((4, 4), (8, 2), (8, 1)):
        for page in (8, 16):
            for pages_a_block in (1, 2):
                for dtype in ("bf16", "f32"):
                    yield hq, hkv, 64, page, page * pages_a_block, 3, dtype


def _pack(x, cu, take):
    """The rows of packed `x` that `take(b, start, end)` -> (first, last)
    picks per sequence, packed, and their offsets."""
    rows, counts = [], []
    for b, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        first, last = take(b, s, e)
        rows.extend(range(first, last))
        counts.append(last - first)
    index = torch.tensor(rows, dtype=torch.long, device=x.device)
    offsets = torch.tensor([0] + list(np.cumsum(counts)), dtype=torch.int32)
    return x[index], offsets, rows


def _cache(moba, device, hq, hkv, d, page, block, top_k, dtype):
    pages = sum(-(-n // page) for n in SEQLENS) + 2
    return moba.KVCache(pages, page, hkv, d, dtype, batch=len(SEQLENS),
                        num_heads=hq, block_size=block, top_k=top_k,
                        device=device)


def check_decode_case(moba, hq, hkv, d, page, block, top_k, dtype, seed):
    """Returns (ok, message)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    cu = [0] + list(np.cumsum(SEQLENS))
    make = lambda h: torch.randn((cu[-1], h, d), generator=g,
                                 device="cuda").to(TORCH_DTYPE[dtype])
    q, k, v = make(hq), make(hkv), make(hkv)
    ref_out, ref_lse, near, _ = reference(q, k, v, torch.tensor(cu), block,
                                          top_k, causal=True)
    messages, ok = [], True

    def check(label, out, lse, rows):
        nonlocal ok
        index = torch.tensor(rows, dtype=torch.long, device="cuda")
        good, message, compared, skipped = compare(
            out, lse, ref_out[index], ref_lse[index], near[index], dtype)
        ok &= good
        messages.append(f"{label}: {message} ({compared} rows, {skipped} "
                        "near-tied)")
        return index

    # Decode: the history in two appends, then the queries' own tokens.
    for device in ("cuda", "cpu"):
        cache = _cache(moba, device, hq, hkv, d, page, block, top_k, dtype)
        split = lambda b, s, e: (s, s + (e - s - QUERIES[b]) // 2)
        rest = lambda b, s, e: (s + (e - s - QUERIES[b]) // 2,
                                e - QUERIES[b])
        last = lambda b, s, e: (e - QUERIES[b], e)
        for take in (split, rest, last):
            kk, cu_k, _ = _pack(k, cu, take)
            vv, _, _ = _pack(v, cu, take)
            cache.append(kk.to(device), vv.to(device), cu_k)
        qq, cu_q, rows = _pack(q, cu, last)
        out, lse = cache.decode(qq.to(device), cu_q, return_lse=True)
        if device == "cuda":
            gpu_rows = check("decode", out, lse, rows)
            gpu_out = out
        else:
            # The CPU path on the same inputs: the same selection, so the
            # rows agree to rounding wherever the reference has no near tie.
            keep = ~near[gpu_rows].any(-1).cpu()
            diff = (gpu_out.cpu().double() - out.double()).abs()[keep]
            atol, rtol = (2e-5, 2e-4) if dtype == "f32" else (1e-2, 1e-2)
            bad = int((diff > atol + rtol * out.double().abs()[keep]).sum())
            ok &= bad == 0
            messages.append(f"gpu vs cpu decode: {bad} elements differ")

    # Chunked prefill in three chunks of the whole sequences.
    cache = _cache(moba, "cuda", hq, hkv, d, page, block, top_k, dtype)
    thirds = [lambda b, s, e, i=i: (s + (e - s) * i // 3,
                                    s + (e - s) * (i + 1) // 3)
              for i in range(3)]
    for i, take in enumerate(thirds):
        qq, cu_c, rows = _pack(q, cu, take)
        kk, _, _ = _pack(k, cu, take)
        vv, _, _ = _pack(v, cu, take)
        out, lse = cache.prefill(qq, kk, vv, cu_c, return_lse=True)
        check(f"prefill chunk {i}", out, lse, rows)
    return ok, "; ".join(messages)


def check_device_checks(moba):
    """The kernels' own checks, through the functional forms on CUDA
    tensors (the host reads none of these arrays). Returns failures."""
    failures = []
    hq, hkv, d, page, block, top_k = 4, 2, 64, 16, 32, 2
    lens = [40, 30, 20, 50]
    g = torch.Generator(device="cuda").manual_seed(7)
    pages = sum(-(-n // page) for n in lens) + 1
    table = torch.full((4, 4), pages - 1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(lens):
        need = -(-n // page)
        table[b, :need] = torch.arange(used, used + need)
        used += need
    k_cache = torch.zeros((pages, page, hkv, d), dtype=torch.bfloat16,
                          device="cuda")
    v_cache = torch.zeros_like(k_cache)
    sums = torch.zeros((4, 2, hkv, d), dtype=torch.float32, device="cuda")
    cu = torch.tensor([0] + list(np.cumsum(lens)), dtype=torch.int32)
    k = torch.randn((cu[-1], hkv, d), generator=g, device="cuda").bfloat16()
    v = torch.randn((cu[-1], hkv, d), generator=g, device="cuda").bfloat16()
    zero = torch.zeros(4, dtype=torch.int32, device="cuda")
    # Sequence 2's second page outside the pool: its append writes nothing.
    bad_table = table.clone()
    bad_table[2, 1] = pages + 100
    grown = moba.paged_kv_append(k, v, cu.cuda(), k_cache, v_cache, sums,
                                 bad_table.cuda(), zero, block_size=block)
    torch.cuda.synchronize()
    if grown.tolist() != lens:
        failures.append(f"append returned {grown.tolist()}")
    if k_cache[table[2, 0].item()].abs().sum() != 0:
        failures.append("the append wrote a sequence whose page is bad")
    if k_cache[table[0, 0].item()].abs().sum() == 0:
        failures.append("the append did not write a good sequence")
    # Write sequence 2 properly, then decode with bad lengths and pages.
    moba.paged_kv_append(k, v, cu.cuda(), k_cache, v_cache, sums,
                         table.cuda(), zero, block_size=block)
    q = torch.randn((8, hq, d), generator=g, device="cuda").bfloat16()
    cu_q = torch.tensor([0, 2, 4, 6, 8], dtype=torch.int32, device="cuda")
    bad_lens = torch.tensor(lens, dtype=torch.int32)
    bad_lens[1] = 4 * page + 1  # past its pages
    bad_lens[2] = 1             # fewer tokens than queries
    bad_table = table.clone()
    bad_table[3, 0] = -5        # a page id outside the pool
    out = moba.paged_decode(q, cu_q, k_cache, v_cache, sums,
                            bad_table.cuda(), bad_lens.cuda(),
                            block_size=block, top_k=top_k)
    torch.cuda.synchronize()
    nan = torch.isnan(out).all(-1).all(-1).tolist()
    if nan != [False, False, True, True, True, True, True, True]:
        failures.append(f"NaN rows {nan}, expected sequences 1-3")
    return failures


def decode_checks(moba):
    """Returns (ok, lines)."""
    ok, lines = True, []
    for i, case in enumerate(decode_cases()):
        good, message = check_decode_case(moba, *case, seed=i)
        ok &= good
        lines.append(f"{'ok  ' if good else 'FAIL'} {case}: {message}")
    failures = check_device_checks(moba)
    ok &= not failures
    lines.append(f"device checks: {failures or 'all passed'}")
    return ok, lines


def decode_time(moba, repeats=50):
    """One decode step against SDPA over the gathered cache; prints a
    markdown table row."""
    import torch.nn.functional as F
    hq, hkv, d, page, block, top_k, batch, length = \
        32, 8, 128, 16, 4096, 8, 8, 131072
    pages_a_seq = length // page
    g = torch.Generator(device="cuda").manual_seed(0)
    k_cache = torch.randn((batch * pages_a_seq, page, hkv, d), generator=g,
                          device="cuda").bfloat16()
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * pages_a_seq, generator=torch.Generator()
                           .manual_seed(0)).int().view(batch, pages_a_seq)
    table_d = table.cuda()
    lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    # The block sums of the cache, as the appends would have kept them.
    keys = k_cache[table_d.long()].view(batch, length, hkv, d).float()
    sums = keys.view(batch, length // block, block, hkv, d).sum(2)
    del keys
    q = torch.randn((batch, hq, d), generator=g, device="cuda").bfloat16()
    cu_q = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    step = lambda: moba.paged_decode(q, cu_q, k_cache, v_cache, sums,
                                     table_d, lens, block_size=block,
                                     top_k=top_k)
    # SDPA over the same cache, gathered once (not timed) into dense K, V.
    kd = k_cache[table_d.long()].view(batch, length, hkv, d)
    vd = v_cache[table_d.long()].view(batch, length, hkv, d)
    kd = kd.repeat_interleave(hq // hkv, 2).transpose(1, 2)
    vd = vd.repeat_interleave(hq // hkv, 2).transpose(1, 2)
    qd = q.view(batch, hq, 1, d)
    dense = lambda: F.scaled_dot_product_attention(qd, kd, vd)
    results = {}
    for name, fn in (("moba paged decode", step), ("torch SDPA (dense)",
                                                    dense)):
        fn()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        results[name] = start.elapsed_time(end) / repeats
    print("| step | batch | heads q/kv | D | cached | block | top_k | ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {batch} | {hq}/{hkv} | {d} | {length} | {block} "
              f"| {top_k} | {ms:.3f} |")
    return True
