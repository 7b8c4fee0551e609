"""The paged KV cache kernels on a CUDA machine (gpu_check.py decode and
decode-time call these); CI has no GPU and never runs this.

The GPU decode is the split-K kernels of moba-convert-paged-decode-to-nvvm
(docs/gpu-backend.md, "The paged KV cache"): they sum in another order than
the CPU's loops, so rows are compared with the float64 reference within the
numerics tolerance (gpu_check.TOLERANCE, docs/semantics.md "Tolerance and
near-ties"), not bit for bit; the kernels are deterministic, so two runs of
one call give the same bits.

decode: for a small grid (MHA, GQA, MQA; pages of 8 and 16; blocks of one
and two pages; bf16 and f32; sequences of 0, 1, 37, 150 and 300 tokens
with 0, 1, 16, 5 and 9 queries), a KVCache on the GPU is filled in two
appends and decodes the last tokens (twice: the same bits); a second one
takes the sequences as chunked prefill in three chunks (more than one slab
of query tokens a launch). Every row is compared with the float64
reference's row at its position (gpu_check.reference: the full causal
forward), near-tied rows skipped, and with the CPU KVCache's row on the same
inputs (within the same tolerance). Long cases (32/8 heads, head_dim 128,
blocks of 1024 and 4096 keys: several chunks a block, several warps and
CTAs a block; up to 9000 cached tokens) check the split-K path at the
shapes it is built for, selection "kv_head" against the CPU path. Then the
device's own checks: the functional forms on CUDA tensors with a page id
outside the pool, a length past the table and too many queries give NaN
rows for those sequences only, and an append of a sequence whose pages are
bad writes nothing.

decode-time: decode steps (32 query heads on 8 KV heads, head_dim 128,
block 4096, top-8, batch 8, pages of 16) with 128K cached tokens a sequence
and one query, four (speculative) queries, and 32K with one query, against
torch's SDPA over the same cache gathered into dense K and V (the heads
repeated per group, and with enable_gqa where torch has it).
"""

import numpy as np
import torch

from gpu_check import TOLERANCE, TORCH_DTYPE, compare, reference, same_bits

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
            # The same call again: the merge's fixed order gives the same
            # bits.
            again, again_lse = cache.decode(qq, cu_q, return_lse=True)
            same = same_bits(out, again) and same_bits(lse, again_lse)
            ok &= same
            messages.append("deterministic" if same else
                            "two runs of one decode differ")
        else:
            # The CPU path on the same inputs: the same selection, so the
            # rows agree within the tolerance wherever the reference has no
            # near tie (the GPU sums in another order).
            keep = ~near[gpu_rows].any(-1).cpu()
            diff = (gpu_out.cpu().double() - out.double()).abs()[keep]
            atol, rtol = TOLERANCE[dtype]
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


LONG_SEQLENS = [0, 1, 4500, 9000, 2100]
LONG_QUERIES = [0, 1, 16, 4, 1]


def long_cases():
    """(block, selection, dtype): several chunks of 512 keys a block."""
    yield 1024, "query_head", "bf16"
    yield 4096, "query_head", "bf16"
    yield 4096, "query_head", "f16"
    yield 1024, "kv_head", "bf16"


def check_long_case(moba, block, selection, dtype, seed):
    """The split-K decode at its shapes: 32/8 heads, head_dim 128, top-4.
    Returns (ok, message)."""
    hq, hkv, d, page, top_k = 32, 8, 128, 16, 4
    g = torch.Generator(device="cuda").manual_seed(seed)
    cu = [0] + list(np.cumsum(LONG_SEQLENS))
    make = lambda h: torch.randn((cu[-1], h, d), generator=g,
                                 device="cuda").to(TORCH_DTYPE[dtype])
    q, k, v = make(hq), make(hkv), make(hkv)
    history = lambda b, s, e: (s, e - LONG_QUERIES[b])
    last = lambda b, s, e: (e - LONG_QUERIES[b], e)
    results = {}
    for device in ("cuda", "cpu"):
        pages = sum(-(-n // page) for n in LONG_SEQLENS) + 2
        cache = moba.KVCache(pages, page, hkv, d, dtype,
                             batch=len(LONG_SEQLENS), num_heads=hq,
                             block_size=block, top_k=top_k,
                             selection=selection, device=device)
        for take in (history, last):
            kk, cu_k, _ = _pack(k, cu, take)
            vv, _, _ = _pack(v, cu, take)
            cache.append(kk.to(device), vv.to(device), cu_k)
        qq, cu_q, rows = _pack(q, cu, last)
        results[device] = cache.decode(qq.to(device), cu_q, return_lse=True)
        if device == "cuda":
            again = cache.decode(qq, cu_q, return_lse=True)
            same = (same_bits(results[device][0], again[0]) and
                    same_bits(results[device][1], again[1]))
    messages, ok = [], same
    messages.append("deterministic" if same else "two runs differ")
    index = torch.tensor(rows, dtype=torch.long, device="cuda")
    out, lse = results["cuda"]
    # Rows whose selection is near-tied may choose differently on the two
    # devices (known for query_head only: the reference has no kv_head).
    keep = torch.ones(out.shape[:2], dtype=torch.bool)
    if selection == "query_head":
        ref_out, ref_lse, near, _ = reference(q, k, v, torch.tensor(cu), block,
                                              top_k, causal=True, rows=index)
        good, message, compared, skipped = compare(
            out, lse, ref_out[index], ref_lse[index], near[index], dtype)
        ok &= good
        messages.append(f"decode: {message} ({compared} rows, {skipped} "
                        "near-tied)")
        keep = ~near[index].cpu()
    # The CPU path on the same inputs (the only check of kv_head here).
    cpu_out, cpu_lse = results["cpu"]
    atol, rtol = TOLERANCE[dtype]
    diff = (out.cpu().double() - cpu_out.double()).abs()
    bad = int((diff > atol + rtol * cpu_out.double().abs())[keep].sum())
    lse_bad = int(((lse.cpu().double() - cpu_lse.double()).abs() >
                   2e-4 + 2e-5 * cpu_lse.double().abs())[keep].sum())
    nan = bool(torch.isnan(out).any() or torch.isnan(lse).any())
    ok &= bad == 0 and lse_bad == 0 and not nan
    messages.append(f"gpu vs cpu: {bad} elements, {lse_bad} lse differ"
                    + (", NaN in the GPU rows" if nan else ""))
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
    for i, case in enumerate(long_cases()):
        try:
            good, message = check_long_case(moba, *case, seed=100 + i)
        except Exception as e:  # reported, and the other cases still run
            good, message = False, f"raised {type(e).__name__}: {e}"
        ok &= good
        lines.append(f"{'ok  ' if good else 'FAIL'} long {case}: {message}")
    failures = check_device_checks(moba)
    ok &= not failures
    lines.append(f"device checks: {failures or 'all passed'}")
    return ok, lines


def _elapsed_ms(fn, repeats):
    """Mean milliseconds of fn() over `repeats` calls, after a warm-up."""
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


def time_decode_step(moba, batch, length, queries, repeats=50):
    """One decode step of `queries` query tokens a sequence (1: decode; more:
    speculative decoding, each query at its own position) against SDPA over
    the same cache gathered into dense K and V. Returns [(name, ms)]."""
    import torch.nn.functional as F
    hq, hkv, d, page, block, top_k = 32, 8, 128, 16, 4096, 8
    pages_a_seq = length // page
    g = torch.Generator(device="cuda").manual_seed(0)
    k_cache = torch.randn((batch * pages_a_seq, page, hkv, d), generator=g,
                          device="cuda").bfloat16()
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * pages_a_seq, generator=torch.Generator()
                           .manual_seed(0)).int().view(batch, pages_a_seq)
    table_d = table.cuda()
    lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    # The block sums of the cache, as the appends would have kept them (a
    # sequence at a time: the f32 copy of one is 512 MB at 128K).
    sums = torch.empty((batch, length // block, hkv, d), dtype=torch.float32,
                       device="cuda")
    for b in range(batch):
        keys = k_cache[table_d[b].long()].view(length, hkv, d).float()
        sums[b] = keys.view(length // block, block, hkv, d).sum(1)
        del keys
    q = torch.randn((batch * queries, hq, d), generator=g,
                    device="cuda").bfloat16()
    cu_q = torch.arange(0, batch * queries + 1, queries, dtype=torch.int32,
                        device="cuda")
    step = lambda: moba.paged_decode(q, cu_q, k_cache, v_cache, sums,
                                     table_d, lens, block_size=block,
                                     top_k=top_k)
    results = [("moba paged decode", _elapsed_ms(step, repeats))]
    # SDPA over the same cache, gathered once (not timed) into dense K, V.
    kd = k_cache[table_d.long()].view(batch, length, hkv, d).transpose(1, 2)
    vd = v_cache[table_d.long()].view(batch, length, hkv, d).transpose(1, 2)
    qd = q.view(batch, queries, hq, d).transpose(1, 2)
    # Query i sits at position length - queries + i.
    mask = None
    if queries > 1:
        position = torch.arange(length, device="cuda")
        mask = position[None, :] <= (length - queries +
                                     torch.arange(queries, device="cuda")
                                     )[:, None]
    try:
        gqa = lambda: F.scaled_dot_product_attention(qd, kd, vd,
                                                     attn_mask=mask,
                                                     enable_gqa=True)
        results.append(("torch SDPA (dense, enable_gqa)",
                         _elapsed_ms(gqa, repeats)))
    except Exception as e:  # an older torch: no enable_gqa
        print(f"(SDPA with enable_gqa unavailable: {e})")
    kr = kd.repeat_interleave(hq // hkv, 1)
    vr = vd.repeat_interleave(hq // hkv, 1)
    del kd, vd
    dense = lambda: F.scaled_dot_product_attention(qd, kr, vr,
                                                   attn_mask=mask)
    results.append(("torch SDPA (dense, heads repeated)",
                    _elapsed_ms(dense, repeats)))
    del kr, vr, k_cache, v_cache, sums
    torch.cuda.empty_cache()
    return results


def decode_time(moba, repeats=50):
    """Decode steps against SDPA over the gathered cache; prints a markdown
    table (one row per step and method)."""
    print("| step | batch | heads q/kv | D | cached | queries a seq | block "
          "| top_k | ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for batch, length, queries in ((8, 131072, 1), (8, 131072, 4),
                                   (8, 32768, 1)):
        try:
            results = time_decode_step(moba, batch, length, queries, repeats)
        except Exception as e:  # reported, and the other steps still run
            print(f"| step of {queries} queries at {length} raised "
                  f"{type(e).__name__}: {e} |", flush=True)
            ok = False
            continue
        for name, ms in results:
            print(f"| {name} | {batch} | 32/8 | 128 | {length} | {queries} "
                  f"| 4096 | 8 | {ms:.3f} |", flush=True)
    return ok
