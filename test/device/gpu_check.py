"""Checks and times the GPU kernels on a CUDA machine (the H200 of
docs/PERFORMANCE.md); CI has no GPU and never runs this.

It builds nothing: it runs the `moba` package and the libMobaC.so built on
the development machine (scripts/device-bundle.sh packs them), through the
same Python API users call, on torch CUDA tensors.

Each case draws fresh random inputs, fills the outputs with NaN, runs the
kernel, and compares output and log-sum-exp with a float64 reference of
docs/semantics.md computed by torch on the GPU. Rows whose top-k selection
is not unique (the k-th and (k+1)-th gate scores closer than rounding) are
skipped and counted; NaN never passes, skipped rows included.

  gpu_check.py grid [--workers N]  the CPU suite's grid on the GPU
  gpu_check.py long                8K and 32K tokens, bf16/fp16, MHA/GQA
  gpu_check.py time                time and TFLOP/s on attended pairs
  gpu_check.py small               a few cases (for compute-sanitizer)
  MOBA_GPU_ATTENTION=mma|simt picks the kernels checked (default mma).
  gpu_check.py api                 the torch-facing API: moba_attn_varlen,
                                   the batched form, MobaAttention, errors,
                                   cold compile, disk cache load and
                                   cached lookup times
  gpu_check.py torch-compile       moba's torch.library ops (torch >= 2.4)
                                   on CUDA and CPU tensors: opcheck, the
                                   gradients against the float64 reference,
                                   and a torch.compile(fullgraph=True)
                                   training step of a small attention
                                   module against eager
  gpu_check.py grad [--workers N]  the backward: MHA/GQA/MQA x head_dim
                                   64/128 x block 64/128/512 x top_k 1-4 x
                                   causal/full x f16/bf16 on varlen batches
                                   with empty and 1-token sequences
  gpu_check.py grad-small          a few backward cases (compute-sanitizer)
  gpu_check.py decode              the paged KV cache on the GPU: decode
                                   and chunked prefill against the
                                   reference and the CPU path, and the
                                   kernels' own checks (paged_check.py)
  gpu_check.py decode-time         one 128K decode step vs torch SDPA
  gpu_check.py memory              moba's scratch in torch's caching
                                   allocator: a 32K forward and backward
                                   seen by memory_allocated and
                                   max_memory_allocated, released by
                                   empty_cache, bounded by the memory
                                   fraction, outputs equal to the pool's

The backward cases compile with backward=True, run the forward, poison dq,
dk and dv with NaN, run Kernel.backward with a random grad_out (and
grad_lse in every other case), and compare each gradient with a float64
reference (grad_reference, docs/semantics.md "Gradients") by its relative
error ||got - want|| / ||want|| (docs/cpu-backend.md: f32 2e-5, f16 2e-3,
bf16 1e-2), skipping the near-tied rows and the keys such a row may or may
not attend; NaN fails; a second run must give the same bits.
MOBA_CHECK_DEVICE=cpu runs the cases on CPU tensors (the CPU target): the
script checked on a machine without a GPU.
Exit status 1 when any case fails.
"""
import argparse
import itertools
import math
import multiprocessing
import os
import sys
import time

import torch

TOLERANCE = {"f32": (2e-5, 2e-4), "f16": (2e-3, 2e-3), "bf16": (1e-2, 1e-2)}
TORCH_DTYPE = {"f32": torch.float32, "f16": torch.float16,
               "bf16": torch.bfloat16}
TIE_TOLERANCE = 4e-5


def select_blocks(qs, ks, block, top_k, causal):
    """The selection of docs/semantics.md for one sequence: qs [n, Hq, D]
    and ks [n, Hq, D] (each query head's keys) in float64. Returns
    (selected [n, Hq, nb] bool, near [n, Hq]: near-tied rows, unsure
    [n, Hq, nb]: for near-tied rows, the candidate blocks within the
    tolerance of the top_k-th score, chosen or not)."""
    n, hq, d = qs.shape
    device = qs.device
    nb = -(-n // block)
    pad = nb * block - n
    padded = torch.nn.functional.pad(ks, (0, 0, 0, 0, 0, pad))
    counts = torch.full((nb,), float(block), dtype=torch.float64,
                        device=device)
    counts[-1] = block - pad
    means = padded.view(nb, block, hq, d).sum(1) / counts[:, None, None]
    scores = torch.einsum("thd,bhd->thb", qs, means)
    magnitude = torch.einsum("thd,bhd->thb", qs.abs(), means.abs())
    t = torch.arange(n, device=device)
    own = t // block
    blocks = torch.arange(nb, device=device)
    if causal:
        candidate = blocks[None, :] < own[:, None]  # [n, nb]
        take = top_k - 1
    else:
        candidate = torch.ones(n, nb, dtype=torch.bool, device=device)
        take = top_k
    candidate = candidate[:, None, :].expand(n, hq, nb)
    masked = scores.masked_fill(~candidate, -math.inf)
    # Higher score first; among equal scores the higher block index.
    flipped = masked.flip(-1)
    order_scores, order = torch.sort(flipped, dim=-1, descending=True,
                                     stable=True)
    order = nb - 1 - order
    n_candidates = candidate.sum(-1)  # [n, Hq]
    selected = torch.zeros(n, hq, nb, dtype=torch.bool, device=device)
    near = torch.zeros(n, hq, dtype=torch.bool, device=device)
    unsure = torch.zeros(n, hq, nb, dtype=torch.bool, device=device)
    if take > 0:
        width = min(take, nb)
        chosen = order[..., :width]
        valid = torch.arange(width, device=device) < n_candidates[..., None]
        selected.scatter_(-1, chosen, valid)
        if take < nb:
            has_gap = (n_candidates > take)
            boundary = order_scores[..., take - 1]
            gap = boundary - order_scores[..., take]
            bound = TIE_TOLERANCE * magnitude.masked_fill(~candidate,
                                                          0).amax(-1)
            near = has_gap & (gap > 0) & (gap <= bound)
            unsure = near[..., None] & candidate & (
                (masked - boundary[..., None]).abs() <= bound[..., None])
    if causal:
        selected.scatter_(-1, own[:, None, None].expand(n, hq, 1), True)
    return selected, near, unsure


def reference(q, k, v, cu, block, top_k, causal, scale=None, rows=None):
    """float64 MoBA attention: (out, lse, near_tie [T, Hq], pairs) where
    pairs counts the attended (query, key) pairs. With `rows` (token
    indices, a tensor on q's device) only those rows' attention is computed,
    the others' out and lse are NaN: long sequences are checked on a sample
    (the selection is still computed for every row)."""
    q, k, v = q.double(), k.double(), v.double()
    tokens, hq, d = q.shape
    group = hq // k.shape[1]
    heads = torch.arange(hq, device=q.device) // group
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.full_like(q, math.nan)
    lse = torch.full((tokens, hq), math.nan, dtype=torch.float64,
                     device=q.device)
    near = torch.zeros(tokens, hq, dtype=torch.bool, device=q.device)
    pairs = 0
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        n = end - start
        if n == 0:
            continue
        qs = q[start:end]
        ks = k[start:end][:, heads]  # [n, Hq, D]
        vs = v[start:end][:, heads]
        selected, near[start:end], _ = select_blocks(qs, ks, block, top_k,
                                                     causal)
        t = torch.arange(n, device=q.device)
        # Attention over the selected blocks, a chunk of queries at a time.
        chunk = max(1, (1 << 27) // (n * hq))
        key_block = t // block
        local = t if rows is None else (
            rows[(rows >= start) & (rows < end)] - start)
        for a in range(0, len(local), chunk):
            at = local[a:a + chunk]
            allowed = selected[at][:, :, key_block]  # [c, Hq, n]
            if causal:
                allowed &= (t[None, None, :] <= at[:, None, None])
            pairs += int(allowed.sum())
            logits = scale * torch.einsum("thd,shd->ths", qs[at], ks)
            logits = logits.masked_fill(~allowed, -math.inf)
            row_lse = torch.logsumexp(logits, -1)
            weights = torch.exp(logits - row_lse[..., None])
            out[start + at] = torch.einsum("ths,shd->thd", weights, vs)
            lse[start + at] = row_lse
    return out, lse, near, pairs


def grad_reference(q, k, v, cu, block, top_k, causal, dout, dlse=None,
                   scale=None):
    """float64 gradients of docs/semantics.md ("Gradients"), the selection
    held fixed: (dq [T, Hq, D], dk, dv [T, Hkv, D], dq_unsure [T, Hq],
    dkv_unsure [T, Hkv]). dq_unsure marks the near-tied rows; dkv_unsure
    the keys whose dk, dv such a row may change by choosing the other way
    (every key it attends, and those of the candidates within the tolerance
    of the top_k-th score): python/tests/reference.py's moba_grad_reference,
    vectorized for the GPU."""
    q, k, v, dout = (x.double() for x in (q, k, v, dout))
    dlse = None if dlse is None else dlse.double()
    tokens, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    heads = torch.arange(hq, device=q.device) // group
    # The kernels' scale: 1/sqrt(head_dim) rounded to float32.
    scale = (float(torch.tensor(1.0 / math.sqrt(d), dtype=torch.float32))
             if scale is None else scale)
    dq = torch.zeros_like(q)
    # Per query head, summed over each KV head's group at the end.
    dk_heads = torch.zeros(tokens, hq, d, dtype=torch.float64,
                           device=q.device)
    dv_heads = torch.zeros_like(dk_heads)
    dq_unsure = torch.zeros(tokens, hq, dtype=torch.bool, device=q.device)
    unsure_heads = torch.zeros(tokens, hq, dtype=torch.bool, device=q.device)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        n = end - start
        if n == 0:
            continue
        qs, dos = q[start:end], dout[start:end]
        ks = k[start:end][:, heads]  # [n, Hq, D]
        vs = v[start:end][:, heads]
        selected, near, unsure = select_blocks(qs, ks, block, top_k, causal)
        dq_unsure[start:end] = near
        t = torch.arange(n, device=q.device)
        key_block = t // block
        chunk = max(1, (1 << 26) // (n * hq))
        for a in range(0, n, chunk):
            at = t[a:a + chunk]
            allowed = selected[at][:, :, key_block]  # [c, Hq, n]
            if causal:
                allowed &= (t[None, None, :] <= at[:, None, None])
            logits = scale * torch.einsum("thd,shd->ths", qs[at], ks)
            logits = logits.masked_fill(~allowed, -math.inf)
            row_lse = torch.logsumexp(logits, -1)
            p = torch.exp(logits - row_lse[..., None])
            out = torch.einsum("ths,shd->thd", p, vs)
            delta = (dos[at] * out).sum(-1)
            if dlse is not None:
                delta = delta - dlse[start + at]
            dp = torch.einsum("thd,shd->ths", dos[at], vs)
            ds = p * (dp - delta[..., None])
            dq[start + at] = scale * torch.einsum("ths,shd->thd", ds, ks)
            dk_heads[start:end] += scale * torch.einsum("ths,thd->shd", ds,
                                                        qs[at])
            dv_heads[start:end] += torch.einsum("ths,thd->shd", p, dos[at])
            tied = near[at][..., None]  # [c, Hq, 1]
            maybe = (allowed | unsure[at][:, :, key_block]) & tied
            unsure_heads[start:end] |= maybe.any(0).transpose(0, 1)
    dk = dk_heads.view(tokens, hkv, group, d).sum(2)
    dv = dv_heads.view(tokens, hkv, group, d).sum(2)
    dkv_unsure = unsure_heads.view(tokens, hkv, group).any(-1)
    return dq, dk, dv, dq_unsure, dkv_unsure


# Where the cases run: "cuda", or "cpu" to check this script without a GPU.
DEVICE = os.environ.get("MOBA_CHECK_DEVICE", "cuda")


def random_case(seqlens, hq, hkv, d, dtype, generator, device="cuda"):
    cu = torch.tensor([0] + list(itertools.accumulate(seqlens)),
                      dtype=torch.int32)
    tokens = int(cu[-1])
    shape = lambda h: (tokens, h, d)
    make = lambda h: torch.randn(shape(h), generator=generator,
                                 device=device).to(TORCH_DTYPE[dtype])
    return make(hq), make(hkv), make(hkv), cu


GPU_ATTENTION = os.environ.get("MOBA_GPU_ATTENTION", "mma")


def mma_options():
    """The tensor-core kernel's form from the environment, for checking one
    form on purpose: MOBA_MMA_INSTRUCTION (mma.sync or wgmma),
    MOBA_MMA_KEY_VALUE_LOADS (cp.async, tma or tma-multicast),
    MOBA_MMA_MERGE (fused or separate), MOBA_MMA_SCHEDULE (auto, in-order
    or overlapped), MOBA_MMA_WARPS, MOBA_MMA_KEY_CHUNK, MOBA_MMA_STAGES;
    unset: the tuning table's."""
    env = os.environ.get
    options = dict(mma_instruction=env("MOBA_MMA_INSTRUCTION") or None,
                   mma_key_value_loads=env("MOBA_MMA_KEY_VALUE_LOADS")
                   or None, mma_merge=env("MOBA_MMA_MERGE") or None,
                   mma_schedule=env("MOBA_MMA_SCHEDULE") or None)
    for name in ("warps", "key_chunk", "stages"):
        value = env("MOBA_MMA_" + name.upper())
        options["mma_" + name] = int(value) if value else None
    return options


def check_case(moba, hq, hkv, d, block, top_k, causal, dtype, seqlens, seed):
    """Runs one case; returns (ok, message, compared, skipped)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, cu = random_case(seqlens, hq, hkv, d, dtype, generator)
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype=dtype,
                          causal=causal, target="auto",
                          gpu_attention=GPU_ATTENTION, **mma_options())
    # Poisoned outputs: the kernel must write every element.
    out = torch.full_like(q, math.nan)
    lse = torch.full(q.shape[:-1], math.nan, device="cuda")
    kernel(q, k, v, cu.cuda(), out=out, lse=lse)
    torch.cuda.synchronize()
    ref_out, ref_lse, near, _ = reference(q, k, v, cu, block, top_k, causal)
    return compare(out, lse, ref_out, ref_lse, near, dtype)


def compare(out, lse, ref_out, ref_lse, near, dtype):
    """The kernel's (out, lse) against the float64 reference, on the rows the
    reference computed (all, or a sample) that are not near-ties; any NaN in
    the kernel's results fails. Returns (ok, message, compared, skipped)."""
    out64, lse64 = out.double(), lse.double()
    if torch.isnan(out64).any() or torch.isnan(lse64).any():
        return False, "NaN in the output (unwritten or computed)", 0, 0
    computed = ~torch.isnan(ref_lse)
    rows = ~near & computed
    atol, rtol = TOLERANCE[dtype]
    diff = (out64 - ref_out).abs()
    bad = (diff > atol + rtol * ref_out.abs()).any(-1) & rows
    lse_bad = ((lse64 - ref_lse).abs() > 2e-4 + 2e-5 * ref_lse.abs()) & rows
    compared, skipped = int(rows.sum()), int((near & computed).sum())
    rel = float((out64 - ref_out)[rows].norm() / ref_out[rows].norm())
    if bad.any() or lse_bad.any():
        return (False, f"{int(bad.sum())} rows wrong (output), "
                f"{int(lse_bad.sum())} (lse); max |diff| "
                f"{float(diff[rows].max()):.3g}; rel {rel:.3g}", compared,
                skipped)
    return True, f"rel {rel:.2e}", compared, skipped


# Relative error ||got - want|| / ||want|| of each gradient
# (docs/cpu-backend.md, "The backward").
GRAD_TOLERANCE = {"f32": 2e-5, "f16": 2e-3, "bf16": 1e-2}


def poisoned_like(x):
    return torch.full_like(x, math.nan)


def same_bits(a, b):
    """Bit-identical tensors (NaN included)."""
    return torch.equal(a.contiguous().view(torch.int8),
                       b.contiguous().view(torch.int8))


def check_grad_case(moba, hq, hkv, d, block, top_k, causal, dtype, seqlens,
                    seed):
    """Runs one backward case; returns (ok, message, compared, skipped):
    rows of dq and keys of dk, dv compared, near-tie rows and keys
    skipped."""
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k, v, cu = random_case(seqlens, hq, hkv, d, dtype, generator, DEVICE)
    dout = torch.randn(q.shape, generator=generator,
                       device=DEVICE).to(q.dtype)
    dlse = (torch.randn(q.shape[:-1], generator=generator, device=DEVICE)
            if seed % 2 == 0 else None)
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype=dtype,
                          causal=causal, target="auto", backward=True,
                          gpu_attention=GPU_ATTENTION, **mma_options())
    cu_dev = cu.to(DEVICE)
    out = poisoned_like(q)
    lse = torch.full(q.shape[:-1], math.nan, device=DEVICE)
    kernel(q, k, v, cu_dev, out=out, lse=lse)
    runs = []
    for _ in range(2):  # the second must give the same bits
        grads = tuple(poisoned_like(x) for x in (q, k, v))
        kernel.backward(q, k, v, cu_dev, out, lse, dout, dlse, *grads)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        runs.append(grads)
    for name, first, second in zip(("dq", "dk", "dv"), *runs):
        if torch.isnan(first.double()).any():
            return False, f"NaN in {name} (unwritten or computed)", 0, 0
        if not same_bits(first, second):
            return False, f"{name} differs between two runs", 0, 0
    want = grad_reference(q, k, v, cu, block, top_k, causal, dout, dlse)
    dq_keep, dkv_keep = ~want[3], ~want[4]
    errors = []
    for name, got, reference_grad, keep in zip(
            ("dq", "dk", "dv"), runs[0], want[:3],
            (dq_keep, dkv_keep, dkv_keep)):
        diff = float((got.double() - reference_grad)[keep].norm())
        norm = max(float(reference_grad[keep].norm()), 1e-30)
        errors.append((name, diff / norm))
    compared = int(dq_keep.sum()) + int(dkv_keep.sum())
    skipped = int(want[3].sum()) + int(want[4].sum())
    message = ", ".join(f"{name} rel {e:.2e}" for name, e in errors)
    ok = all(e <= GRAD_TOLERANCE[dtype] for _, e in errors)
    return ok, message, compared, skipped


def grad_cases():
    """The backward's grid: MHA, GQA, MQA x head_dim 64, 128 x block 64,
    128, 512 x top_k 1-4 x causal/full x f16/bf16, on batches with empty
    and 1-token sequences and sequences shorter than, equal to and not a
    multiple of a block."""
    seqlens = [0, 1, 700, 0, 1300, 64, 1]
    return [(hq, hkv, d, block, top_k, causal, dtype, seqlens)
            for (hq, hkv), d, block, top_k, causal, dtype in
            itertools.product([(8, 8), (8, 2), (8, 1)], [64, 128],
                              [64, 128, 512], [1, 2, 3, 4], [True, False],
                              ["f16", "bf16"])]


def grad_small_cases():
    return [(8, 2, 64, 64, 3, True, "bf16", [0, 1, 130, 300]),
            (4, 4, 128, 128, 2, False, "f16", [5, 0, 300]),
            (8, 1, 64, 512, 4, True, "bf16", [1, 700])]


def grid_cases():
    cases = []
    for (hq, hkv), d, block, top_k, causal, dtype in itertools.product(
            [(1, 1), (4, 4), (8, 2), (8, 1)], [16, 64, 128], [16, 64, 128],
            [1, 2, 3, 8, 64], [True, False], ["f32", "bf16", "f16"]):
        cases.append((hq, hkv, d, block, top_k, causal, dtype,
                      [1, 5, 17, 130, 300, 777]))
    return cases


def long_cases():
    return [(32, hkv, 128, 512, 3, True, dtype, [n])
            for n in (8192, 32768) for hkv in (32, 8)
            for dtype in ("bf16", "f16")]


def small_cases():
    return [(8, 2, 64, 16, 3, True, "bf16", [1, 17, 130]),
            (4, 4, 128, 64, 2, False, "f16", [5, 300]),
            (8, 1, 16, 16, 8, True, "f32", [77, 33])]


def run_cases(cases, worker=0, workers=1, quiet=False, grad=False):
    """Runs the cases this worker owns (the backward's with `grad`).
    `cases` holds (index, case) pairs; the index seeds the inputs, so a
    case is the same in any slice."""
    import moba
    check = check_grad_case if grad else check_case
    failures, results = [], []
    for n, (i, case) in enumerate(cases):
        if n % workers != worker:
            continue
        hq, hkv, d, block, top_k, causal, dtype, seqlens = case
        name = (f"Hq={hq} Hkv={hkv} D={d} block={block} top_k={top_k} "
                f"causal={causal} {dtype} seqlens={seqlens}")
        try:
            ok, message, compared, skipped = check(
                moba, hq, hkv, d, block, top_k, causal, dtype, seqlens,
                seed=1000 + i)
        except Exception as e:  # reported as a failure, never hidden
            ok, message, compared, skipped = False, f"{type(e).__name__}: {e}", 0, 0
        results.append((ok, compared, skipped))
        if not ok:
            failures.append(f"FAIL {name}: {message}")
        if not quiet or not ok:
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {compared} rows, "
                  f"{skipped} near-ties skipped; {message}", flush=True)
    return failures, results


def _worker(args):
    worker, workers, cases, grad = args
    return run_cases(cases, worker, workers, quiet=True, grad=grad)


def summarize(label, failures, results, seconds):
    cases = len(results)
    passed = sum(ok for ok, _, _ in results)
    compared = sum(c for _, c, _ in results)
    skipped = sum(s for _, _, s in results)
    print(f"{label}: {passed}/{cases} cases passed, {compared} rows "
          f"compared, {skipped} near-tie rows skipped, {seconds:.0f} s")
    for f in failures[:20]:
        print(f)
    return not failures


def time_case(moba, n, hq, hkv, d, block, top_k, dtype, repeats,
              gpu_attention):
    generator = torch.Generator(device="cuda").manual_seed(7)
    q, k, v, cu = random_case([n], hq, hkv, d, dtype, generator)
    cu_dev = cu.cuda()
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype=dtype,
                          target="auto", gpu_attention=gpu_attention,
                          **mma_options())
    kernel(q, k, v, cu_dev)  # loads the kernels
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        kernel(q, k, v, cu_dev)
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def device_times(fn):
    """The device time (ms) of each kernel one call of `fn` launches, in
    launch order (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    # Every outlined kernel is named moba_attention_kernel (one per GPU
    # module): list them in launch order.
    kernels = [e for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA and
               "kernel" in e.name]
    kernels.sort(key=lambda e: e.time_range.start)
    return [e.device_time / 1e3 for e in kernels]


def print_device_times(times):
    total = sum(times)
    print(f"{len(times)} kernels, {total:.2f} ms of device time:")
    for i, ms in enumerate(times):
        print(f"  #{i}: {ms:8.3f} ms ({100 * ms / total:4.1f}%)")


def profile_kernels(moba, configs):
    """Device time of each kernel of one call per config (N, query heads,
    KV heads, head_dim, block, top_k; bf16). With gpu_attention="mma" the
    launch order is: block pooling, the gate's hi/lo split, gate + top-k,
    the grouping's launches (counts per chunk, per row, starts, each
    chunk's entries sorted by row, entries cleared, the chunks' parts
    copied), partials cleared, the attention's tile list, attention,
    merged log-sum-exp, merged output."""
    for n, hq, hkv, d, block, top_k in configs:
        generator = torch.Generator(device="cuda").manual_seed(7)
        q, k, v, cu = random_case([n], hq, hkv, d, "bf16", generator)
        cu_dev = cu.cuda()
        kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                              block_size=block, top_k=top_k, dtype="bf16",
                              **mma_options())
        print(f"N={n} heads {hq}/{hkv} head_dim {d} block {block} "
              f"top_k {top_k}:")
        print_device_times(device_times(lambda: kernel(q, k, v, cu_dev)))


def attended_pairs(n, block, top_k, hq):
    """Attended (query, key) pairs of causal MoBA on one sequence when every
    query has top_k - 1 earlier blocks to choose (all full): the own block's
    causal part plus (top_k - 1) whole blocks, fewer early on."""
    total = 0
    for t in range(n):
        own = t // block
        total += (t - own * block + 1) + min(top_k - 1, own) * block
    return total * hq


def api_checks():
    """The Python API on torch CUDA tensors; returns the failures."""
    import moba
    failures = []

    def expect(name, condition, detail=""):
        print(f"{'ok  ' if condition else 'FAIL'} {name} {detail}", flush=True)
        if not condition:
            failures.append(name)

    def raises(name, kind, text, call):
        try:
            call()
        except kind as e:
            expect(name, text in str(e), f"({type(e).__name__}: {e})")
            return
        except Exception as e:  # the wrong kind of error
            expect(name, False, f"raised {type(e).__name__}: {e}")
            return
        expect(name, False, "raised nothing")

    g = torch.Generator(device="cuda").manual_seed(3)
    seqlens, hq, hkv, d, block, top_k = [700, 1, 300], 8, 2, 64, 64, 3
    q, k, v, cu = random_case(seqlens, hq, hkv, d, "bf16", g)
    ref_out, _, near, _ = reference(q, k, v, cu, block, top_k, True)
    rows = ~near

    # MoBA's reference signature, on the current stream of a side stream.
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = moba.moba_attn_varlen(q, k, v, cu.cuda(), max(seqlens), block,
                                    top_k)
    side.synchronize()
    err = float((out.double() - ref_out)[rows].abs().max())
    expect("moba_attn_varlen (side stream)", out.is_cuda and
           out.dtype == torch.bfloat16 and err < 2e-2, f"max |diff| {err:.3g}")

    # The batched form: [B, S, H, D] against the varlen reference per row.
    qb, kb, vb = (x.view(3, 256, x.shape[1], d) for x in
                  random_case([768], hq, hkv, d, "f16", g)[:3])
    outb = moba.moba_attn_batched(qb, kb, vb, block, top_k)
    cub = torch.tensor([0, 256, 512, 768], dtype=torch.int32)
    refb, _, nearb, _ = reference(qb.reshape(768, hq, d),
                                  kb.reshape(768, hkv, d),
                                  vb.reshape(768, hkv, d), cub, block, top_k,
                                  True)
    errb = float((outb.reshape(768, hq, d).double() - refb)[~nearb]
                 .abs().max())
    expect("moba_attn_batched", outb.shape == qb.shape and errb < 4e-3,
           f"max |diff| {errb:.3g}")

    # The autograd wrapper: forward and backward on the GPU, against the
    # float64 gradients.
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    outg = moba.MobaAttention.apply(*leaves, cu.cuda(), max(seqlens), block,
                                    top_k)
    dout = torch.randn(q.shape, generator=g, device="cuda").to(q.dtype)
    try:
        outg.backward(dout)
        want = grad_reference(q, k, v, cu, block, top_k, True, dout)
        keeps = (~want[3], ~want[4], ~want[4])
        errors = [float((x.grad.double() - w)[keep].norm() / w[keep].norm())
                  for x, w, keep in zip(leaves, want[:3], keeps)]
        expect("MobaAttention backward", all(x.grad.is_cuda for x in leaves)
               and max(errors) < GRAD_TOLERANCE["bf16"],
               "relative errors " + ", ".join(f"{e:.2e}" for e in errors))
    except Exception as e:  # reported, never hidden
        expect("MobaAttention backward", False, f"{type(e).__name__}: {e}")
    grad_kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                               block_size=block, top_k=top_k, dtype="bf16",
                               backward=True)
    expect("target auto picks the GPU for the backward",
           grad_kernel.targets == (moba._gpu_target_for(
               torch.cuda.get_device_capability()[0] * 10 +
               torch.cuda.get_device_capability()[1]),),
           str(grad_kernel.targets))
    cu_dev = cu.cuda()
    out_, lse_ = grad_kernel(q, k, v, cu_dev, return_lse=True)
    raises("backward: grad_out of the wrong dtype", TypeError,
           "grad_out has dtype torch.float16",
           lambda: grad_kernel.backward(q, k, v, cu_dev, out_, lse_,
                                        dout.half()))
    raises("backward: lse of the wrong shape", ValueError, "lse has shape",
           lambda: grad_kernel.backward(q, k, v, cu_dev, out_, lse_[:, :1],
                                        dout))
    raises("backward: lse on the host", ValueError, "lse is in host memory",
           lambda: grad_kernel.backward(q, k, v, cu_dev, out_, lse_.cpu(),
                                        dout))
    raises("backward: dq on grad_out", ValueError, "dq overlaps grad_out",
           lambda: grad_kernel.backward(q, k, v, cu_dev, out_, lse_, dout,
                                        dq=dout))

    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16")
    expect("target auto picks the GPU", kernel.targets == ("sm_90a",),
           str(kernel.targets))
    cu_dev = cu.cuda()
    raises("cu_seqlens on the host", ValueError,
           "cu_seqlens is in host memory", lambda: kernel(q, k, v, cu))
    bad = cu_dev.clone()
    bad[1] = bad[2] + 1
    raises("cu_seqlens not monotonic", ValueError, "not monotonic",
           lambda: kernel(q, k, v, bad))
    raises("cu_seqlens not ending at T", ValueError, "end at the token count",
           lambda: kernel(q, k, v, cu_dev[:-1]))
    raises("wrong dtype", TypeError, "has dtype torch.float16",
           lambda: kernel(q.half(), k, v, cu_dev))
    raises("not contiguous", ValueError, "not contiguous",
           lambda: kernel(q.transpose(0, 1).contiguous().transpose(0, 1),
                          k, v, cu_dev))
    raises("k on the host", ValueError, "k is on cpu",
           lambda: kernel(q, k.cpu(), v, cu_dev))
    raises("heads mismatch", ValueError, "expected 2 heads",
           lambda: kernel(q, q, q, cu_dev))
    raises("sm_80 kernel on a CPU array", ValueError, "in host memory",
           lambda: moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                                block_size=block, top_k=top_k, dtype="bf16",
                                target="sm_80")(q.cpu(), k.cpu(), v.cpu(),
                                                cu))
    # sm_80 PTX runs on Hopper too.
    out80 = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                         block_size=block, top_k=top_k, dtype="bf16",
                         target="sm_80")(q, k, v, cu_dev)
    err80 = float((out80.double() - ref_out)[rows].abs().max())
    expect("sm_80 kernel on this sm_90 GPU", err80 < 2e-2, f"max |diff| {err80:.3g}")

    # Cold compile (a configuration not compiled before in this process,
    # cache=False: not read from the disk cache either), the load of the
    # same configuration from the disk cache (stored by a first compile
    # whose Kernel is then dropped), and the in-memory lookup.
    shape = dict(head_dim=128, num_heads=32, num_kv_heads=8, block_size=512,
                 top_k=3, dtype="bf16")
    start = time.perf_counter()
    fresh = moba.compile(**shape, cache=False)
    cold = time.perf_counter() - start
    qf, kf, vf, cuf = random_case([4096], 32, 8, 128, "bf16", g)
    start = time.perf_counter()
    fresh(qf, kf, vf, cuf.cuda())
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    stored = moba.compile(**shape)  # into the disk cache, if not there yet
    del stored
    start = time.perf_counter()
    loaded = moba.compile(**shape)
    disk = time.perf_counter() - start
    expect("a GPU kernel from the disk cache", loaded.from_cache,
           loaded.cache_warning or "")
    out_disk = loaded(qf, kf, vf, cuf.cuda())
    out_fresh = fresh(qf, kf, vf, cuf.cuda())
    err_disk = float((out_disk.double() - out_fresh.double()).abs().max())
    expect("the cached kernel computes what the fresh one does",
           err_disk < 2e-2, f"max |diff| {err_disk:.3g}")
    start = time.perf_counter()
    for _ in range(100):
        moba.compile(**shape)
    cached = (time.perf_counter() - start) / 100
    print(f"cold compile {cold * 1e3:.0f} ms; first call (driver loads the "
          f"PTX) {first * 1e3:.0f} ms; from the disk cache "
          f"{disk * 1e3:.1f} ms; cached moba.compile {cached * 1e6:.1f} us")
    return failures


class Checks:
    """Named checks that print as they go and collect their failures."""

    def __init__(self):
        self.failures = []

    def expect(self, name, condition, detail=""):
        print(f"{'ok  ' if condition else 'FAIL'} {name} {detail}",
              flush=True)
        if not condition:
            self.failures.append(name)

    def runs(self, name, call):
        """Runs `call`; any exception fails `name`. Returns its result or
        None."""
        try:
            return call()
        except Exception as e:  # reported as a failure, never hidden
            self.expect(name, False, f"raised {type(e).__name__}: {e}")
            return None


def _relative(got, want, keep):
    """||got - want|| / ||want|| over the rows `keep` (numpy)."""
    import numpy as np
    diff = np.linalg.norm((got - want)[keep])
    return diff / max(np.linalg.norm(want[keep]), 1e-30)


class TinyAttention(torch.nn.Module):
    """projection -> moba_attn_varlen -> projection, as a transformer layer
    calls attention."""

    def __init__(self, attend, embed, hq, hkv, d, block, top_k):
        super().__init__()
        self.attend = attend  # moba.moba_attn_varlen
        self.hq, self.hkv, self.d = hq, hkv, d
        self.block, self.top_k = block, top_k
        self.qkv = torch.nn.Linear(embed, (hq + 2 * hkv) * d)
        self.proj = torch.nn.Linear(hq * d, embed)

    def forward(self, x, cu_seqlens, max_seqlen):
        q, k, v = self.qkv(x).split(
            [self.hq * self.d, self.hkv * self.d, self.hkv * self.d], dim=-1)
        out = self.attend(
            q.reshape(-1, self.hq, self.d), k.reshape(-1, self.hkv, self.d),
            v.reshape(-1, self.hkv, self.d), cu_seqlens, max_seqlen,
            self.block, self.top_k)
        return self.proj(out.reshape(-1, self.hq * self.d))


def training_step(model, x, cu, max_seqlen, weight, backward):
    """One SGD step of `model` on the loss sum(model(x) * weight): returns
    the output and the parameters after the step (their gradients applied)
    when `backward`, else the output alone."""
    y = model(x, cu, max_seqlen)
    if not backward:
        return [y.detach()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    (y.float() * weight).sum().backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    optimizer.step()
    return [y.detach()] + grads


def torch_compile_checks():
    """moba's torch.library ops on CUDA and CPU tensors; returns the
    failures."""
    import copy
    import shutil
    import numpy as np
    import moba
    from moba import torch_ops
    from reference import moba_grad_reference, moba_reference
    checks = Checks()
    print(f"torch {torch.__version__}")
    if not torch_ops.OPS_AVAILABLE:
        checks.expect("torch ops available", False,
                      torch_ops.UNAVAILABLE_REASON)
        return checks.failures
    hq, hkv, d, block, top_k = 4, 2, 64, 16, 3
    seqlens = [0, 1, 40, 100, 17]
    cu = torch.tensor([0] + list(itertools.accumulate(seqlens)),
                      dtype=torch.int32)
    tokens = int(cu[-1])
    g = torch.Generator().manual_seed(11)
    base = [torch.randn(tokens, h, d, generator=g) for h in (hq, hkv, hkv)]
    dout = torch.randn(tokens, hq, d, generator=g)
    dlse = torch.randn(tokens, hq, generator=g)
    for device in ("cuda", "cpu"):
        cu_dev = cu.to(device)
        for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            # The GPU backward runs on tensor cores (f16, bf16); f32 on a
            # GPU has none.
            has_backward = torch_ops._backward_compiles_for(
                base[0].to(device), base[1].to(device), block, top_k, True,
                None, name)
            print(f"--- {device} {name}: backward "
                  f"{'available' if has_backward else 'not in this library'}")
            atol, rtol = TOLERANCE[name]
            # Fresh leaves (x.to with an unchanged device and dtype would
            # return `base`'s own tensors, which the next dtype then copies).
            q, k, v = (x.detach().to(device, dtype).clone().requires_grad_()
                       for x in base)
            label = f"{device} {name}"
            # opcheck: schema, fake (shapes without running), autograd
            # registration, AOTAutograd with dynamic shapes (gradients too
            # where the backward runs).
            checks.runs(f"opcheck attention_varlen {label}", lambda: (
                torch.library.opcheck(
                    torch.ops.moba.attention_varlen.default,
                    tuple(x.detach().requires_grad_(has_backward)
                          for x in (q, k, v)) +
                    (cu_dev, None, block, top_k, True, None)),
                checks.expect(f"opcheck attention_varlen {label}", True)))
            # The op under torch.compile(fullgraph=True) against the float64
            # reference, forward and gradients (of out and lse).
            torch._dynamo.reset()
            attend = torch.compile(
                lambda q, k, v, cu: moba.moba_attn_varlen(
                    q, k, v, cu, max(seqlens), block, top_k,
                    return_lse=True), fullgraph=True)
            result = checks.runs(f"compiled moba_attn_varlen {label}",
                                 lambda: attend(q, k, v, cu_dev))
            if result is None:
                continue
            out, lse = result
            seen = [x.detach().double().cpu().numpy() for x in (q, k, v)]
            ref, ref_lse, near = moba_reference(*seen, cu.numpy(), block,
                                                top_k)
            got = out.detach().double().cpu().numpy()
            bad = (np.abs(got - ref) > atol + rtol * np.abs(ref)).any(-1)
            lse_err = np.abs(lse.detach().double().cpu().numpy() - ref_lse)
            checks.expect(f"compiled forward vs reference {label}",
                          not (bad & ~near).any() and
                          (lse_err[~near] <= 2e-4 + 2e-5 *
                           np.abs(ref_lse[~near])).all(),
                          f"{int((bad & ~near).sum())} rows off, "
                          f"{int(near.sum())} near-ties skipped")
            loss = lambda: ((out.float() * dout.to(device)).sum() +
                            (lse * dlse.to(device)).sum())
            if not has_backward:
                try:
                    loss().backward()
                    checks.expect(f"backward refused {label}", False,
                                  "ran, but the library has no backward "
                                  "for this target")
                except (ValueError, NotImplementedError, RuntimeError) as e:
                    # The kernel was compiled without the backward (f32 on a
                    # GPU): the error says so.
                    checks.expect(f"backward refused {label}",
                                  "backward" in str(e),
                                  f"({type(e).__name__}: {e})")
                continue
            checks.runs(f"opcheck attention_varlen_backward {label}",
                        lambda: (torch.library.opcheck(
                            torch.ops.moba.attention_varlen_backward.default,
                            (dout.to(device, dtype), dlse.to(device),
                             q.detach(), k.detach(), v.detach(),
                             out.detach(), lse.detach(), cu_dev, None, block,
                             top_k, True, None)),
                            checks.expect(
                                f"opcheck attention_varlen_backward {label}",
                                True)))
            if checks.runs(f"compiled backward {label}",
                           lambda: loss().backward() or True) is None:
                continue
            grads = moba_grad_reference(
                *seen, cu.numpy(), block, top_k,
                dout.to(dtype).double().numpy(), dlse.double().numpy())
            dq_keep, dkv_keep = ~grads[3], ~grads[4]
            tolerance = {"f32": 2e-5, "bf16": 1e-2}[name]
            for n, x, want, keep in (("dq", q, grads[0], dq_keep),
                                     ("dk", k, grads[1], dkv_keep),
                                     ("dv", v, grads[2], dkv_keep)):
                if x.grad is None:
                    checks.expect(f"{n} vs reference {label}", False,
                                  "no gradient reached the input")
                    continue
                err = _relative(x.grad.double().cpu().numpy(), want, keep)
                checks.expect(f"{n} vs reference {label}",
                              err <= tolerance, f"relative error {err:.2e}")

        # A training step of a small attention module, compiled with
        # fullgraph=True, against the same step in eager.
        backends = ["aot_eager", "inductor"]
        if device == "cpu" and not (shutil.which("g++") or
                                    shutil.which("c++")):
            print("skip inductor on cpu: no C++ compiler here")
            backends = ["aot_eager"]
        for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            # A training step needs the backward: none for f32 on a GPU.
            if not torch_ops._backward_compiles_for(
                    base[0].to(device), base[1].to(device), block, top_k,
                    True, None, name):
                print(f"skip the training step on {device} {name}: no "
                      "backward for it in this library")
                continue
            for backend in backends:
                label = f"{device} {name} {backend}"
                torch._dynamo.reset()  # a fresh cache for each model
                torch.manual_seed(0)
                eager = TinyAttention(moba.moba_attn_varlen, 64, hq, hkv, d,
                                      block, top_k).to(
                    device, dtype)
                model = copy.deepcopy(eager)
                x = torch.randn(tokens, 64, generator=g).to(device, dtype)
                weight = torch.randn(tokens, 64, generator=g).to(device)
                want = checks.runs(f"eager step {label}", lambda: (
                    training_step(eager, x, cu_dev, max(seqlens), weight,
                                  has_backward)))
                compiled = torch.compile(model, backend=backend,
                                         fullgraph=True)
                got = checks.runs(f"compiled step {label}", lambda: (
                    training_step(compiled, x, cu_dev, max(seqlens), weight,
                                  has_backward)))
                if want is None or got is None:
                    continue
                tol = dict(atol=1e-4, rtol=1e-3) if name == "f32" else \
                    dict(atol=3e-2, rtol=3e-2)
                worst = max(float((a.float() - b.float()).abs().max())
                            for a, b in zip(got, want))
                close = all(torch.allclose(a.float(), b.float(), **tol)
                            for a, b in zip(got, want))
                after = all(torch.allclose(a.float(), b.float(), **tol)
                            for a, b in zip(model.parameters(),
                                            eager.parameters()))
                checks.expect(
                    f"compiled {'training step' if has_backward else 'forward'}"
                    f" vs eager {label}", close and after,
                    f"max |diff| {worst:.2e} over output"
                    f"{', gradients, parameters' if has_backward else ''}")
    return checks.failures


MIB = 1 << 20


def memory_checks(tokens=32768):
    """moba's scratch from torch's caching allocator (moba/torch_scratch.py)
    on a `tokens`-token call, forward and backward (32 query heads on 8,
    head_dim 128, block 512, top-3, bf16, causal):

    * max_memory_allocated during the call exceeds what the call's own
      outputs take by the scratch (at least 64 MiB), and memory_allocated
      after it is back to the outputs alone, within 1 MiB (the scratch went
      back to torch's cache);
    * empty_cache gives the scratch back to the driver: the device's free
      memory (mem_get_info) returns to within 64 MiB of what it was before
      the call, less the outputs; with moba's pool it would stay in use;
    * a memory fraction too small for the scratch makes the call fail with
      an error (torch's OutOfMemoryError as its cause), leaking nothing,
      and the next call works;
    * the outputs are bit for bit those of the same call on moba's pool.
    """
    import moba
    from moba import torch_scratch
    checks = Checks()
    hq, hkv, d, block, top_k = 32, 8, 128, 512, 3
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, cu = random_case([tokens], hq, hkv, d, "bf16", generator)
    cu = cu.cuda()
    dout = torch.randn(q.shape, generator=generator,
                       device="cuda").to(q.dtype)
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16",
                          causal=True, target="auto", backward=True)

    def forward():
        return kernel(q, k, v, cu, return_lse=True)

    def backward(out, lse):
        return kernel.backward(q, k, v, cu, out, lse, dout)

    def measured(call):
        """(the call's results, its peak allocation above what was
        allocated before, its outputs' bytes, allocated after less
        before)."""
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        results = call()
        torch.cuda.synchronize()
        outputs = sum(x.numel() * x.element_size() for x in results)
        return (results, torch.cuda.max_memory_allocated() - before,
                outputs, torch.cuda.memory_allocated() - before)

    out, lse = forward()  # compiles and loads the kernels
    backward(out, lse)
    calls = {"forward": forward, "backward": lambda: backward(out, lse)}
    for name, call in calls.items():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free_before = torch.cuda.mem_get_info()[0]
        results, peak, outputs, kept = measured(call)
        scratch = peak - outputs
        checks.expect(f"{name}: max_memory_allocated sees the scratch",
                      scratch >= 64 * MIB,
                      f"(peak {peak / MIB:.0f} MiB above the inputs, outputs "
                      f"{outputs / MIB:.0f} MiB, scratch "
                      f"{scratch / MIB:.0f} MiB)")
        # Within 1 MiB: what torch itself keeps around a call (the
        # checked cu_seqlens) is small; the scratch is not.
        checks.expect(f"{name}: memory_allocated after the call is the "
                      "outputs", abs(kept - outputs) <= MIB,
                      f"({kept / MIB:.1f} MiB kept, outputs "
                      f"{outputs / MIB:.1f} MiB)")
        reserved = torch.cuda.memory_reserved()
        torch.cuda.empty_cache()
        released = reserved - torch.cuda.memory_reserved()
        free_after = torch.cuda.mem_get_info()[0]
        checks.expect(f"{name}: empty_cache releases the scratch",
                      free_after >= free_before - outputs - 64 * MIB,
                      f"(released {released / MIB:.0f} MiB; free "
                      f"{free_before / MIB:.0f} MiB before the call, "
                      f"{free_after / MIB:.0f} MiB after, outputs "
                      f"{outputs / MIB:.0f} MiB)")
        # The same call on moba's pool: the same bits.
        original = torch_scratch.scratch_allocator
        torch_scratch.scratch_allocator = lambda device: None
        try:
            pooled = call()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            free_pooled = torch.cuda.mem_get_info()[0]
        finally:
            torch_scratch.scratch_allocator = original
        checks.expect(f"{name}: outputs equal the pool's",
                      all(same_bits(a, b) for a, b in zip(results, pooled)))
        print(f"     {name} on moba's pool: free memory after empty_cache "
              f"{free_pooled / MIB:.0f} MiB (the pool keeps its scratch)",
              flush=True)
        del results, pooled

    # A memory fraction that leaves no room for the scratch.
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    allocated = torch.cuda.memory_allocated()
    # Room for the call's outputs (out as q, lse in f32) and a margin.
    room = q.numel() * q.element_size() + lse.numel() * 4 + 64 * MIB
    torch.cuda.set_per_process_memory_fraction(
        (torch.cuda.memory_reserved() + room) / total)
    try:
        forward()
        checks.expect("a memory fraction too small for the scratch fails "
                      "the call", False, "(it ran)")
    except RuntimeError as e:
        cause = type(e.__cause__).__name__ if e.__cause__ else None
        checks.expect("a memory fraction too small for the scratch fails "
                      "the call with torch's error",
                      "scratch allocator could not allocate" in str(e) and
                      cause == "OutOfMemoryError",
                      f"({cause}: {str(e)[:200]})")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.synchronize()
    checks.expect("nothing of the failed call stays allocated",
                  torch.cuda.memory_allocated() == allocated,
                  f"({(torch.cuda.memory_allocated() - allocated) / MIB:.1f}"
                  " MiB more)")
    checks.runs("the call after the failed one", forward)
    return checks.failures


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["grid", "long", "time", "small", "api",
                                    "torch-compile", "grad", "grad-small",
                                    "decode", "decode-time",
                                    "memory"])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--profile", action="store_true",
                   help="with `time`: each kernel's share of a call")
    p.add_argument("--profile-configs", default="32768:32:32:128:512:3",
                   help="the calls --profile lists, as "
                        "N:HQ:HKV:D:BLOCK:TOPK,...")
    p.add_argument("--time-kernels", default="mma,simt",
                   help="the gpu_attention variants `time` measures")
    p.add_argument("--limit", type=int, default=0,
                   help="run only the first N cases of the grid")
    p.add_argument("--slice", default="::",
                   help="run the grid cases of this Python slice, "
                        "START:STOP:STEP (e.g. ::7 for every seventh; "
                        "how the sanitizers cover the grid in parts)")
    a = p.parse_args()
    start = time.time()
    if a.mode in ("grid", "grad"):
        grad = a.mode == "grad"
        parts = (a.slice.split(":") + ["", ""])[:3]
        start_, stop_, step_ = (int(x) if x else None for x in parts)
        cases = list(enumerate(grad_cases() if grad else grid_cases()))
        cases = cases[:a.limit or None][start_:stop_:step_]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(a.workers) as pool:
            parts = pool.map(_worker, [(w, a.workers, cases, grad)
                                       for w in range(a.workers)])
        failures = [f for fs, _ in parts for f in fs]
        results = [r for _, rs in parts for r in rs]
        ok = summarize(a.mode, failures, results, time.time() - start)
    elif a.mode == "api":
        failures = api_checks()
        print(f"api: {'all passed' if not failures else failures}")
        ok = not failures
    elif a.mode == "torch-compile":
        failures = torch_compile_checks()
        print(f"torch-compile: {'all passed' if not failures else failures}")
        ok = not failures
    elif a.mode in ("decode", "decode-time"):
        import moba
        import paged_check
        if a.mode == "decode":
            ok, lines = paged_check.decode_checks(moba)
            print("\n".join(lines))
            print(f"decode: {'all passed' if ok else 'FAILED'} in "
                  f"{time.time() - start:.0f} s")
        else:
            ok = paged_check.decode_time(moba)
    elif a.mode == "memory":
        failures = memory_checks()
        print(f"memory: {'all passed' if not failures else failures}")
        ok = not failures
    elif a.mode == "grad-small":
        failures, results = run_cases(list(enumerate(grad_small_cases())),
                                      grad=True)
        ok = summarize(a.mode, failures, results, time.time() - start)
    elif a.mode in ("long", "small"):
        cases = long_cases() if a.mode == "long" else small_cases()
        failures, results = run_cases(list(enumerate(cases)))
        ok = summarize(a.mode, failures, results, time.time() - start)
    else:
        import moba
        ok = True
        print("| kernels | N | heads q/kv | block | top_k | time (ms) | "
              "attended pairs | TFLOP/s on attended pairs |")
        print("|---|---|---|---|---|---|---|---|")
        for attention in a.time_kernels.split(","):
            for n in (8192, 32768):
                for hkv in (32, 8):
                    ms = time_case(moba, n, 32, hkv, 128, 512, 3, "bf16",
                                   repeats=5 if attention == "simt" else 20,
                                   gpu_attention=attention)
                    pairs = attended_pairs(n, 512, 3, 32)
                    tflops = 4 * 128 * pairs / (ms * 1e-3) / 1e12
                    print(f"| {attention} | {n} | 32/{hkv} | 512 | 3 | "
                          f"{ms:.2f} | {pairs} | {tflops:.2f} |", flush=True)
        if a.profile:
            profile_kernels(moba, [
                tuple(int(x) for x in c.split(":"))
                for c in a.profile_configs.split(",")])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
