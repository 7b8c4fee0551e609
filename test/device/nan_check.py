"""NaN and infinity through the GPU kernels (docs/semantics.md, "NaN and
infinity"), on a CUDA machine; CI has no GPU and runs the CPU half of this
check (python/tests/test_nan_propagation.py) instead.

For each kernel form (the tuning table's, mma.sync, wgmma with cp.async or
TMA loads, the fused merge, the SIMT kernels), head_dim, dtype and
causality, one element of q, k or v is set to NaN or an infinity (its token
in the first key block, so later queries have it as a past-block
candidate). The output is filled with a sentinel first; the check then
wants the float64 reference's NaN rows and columns NaN, and every other
element within the usual tolerance (rows whose selection is a near-tie
skipped). The reference is python/tests/reference.py (numpy), which the
bundle carries.

  nan_check.py            every case; exit status 1 when any fails
"""
import itertools
import sys
import time

import numpy as np
import torch

import moba
from reference import moba_reference

FORMS = {
    "table": {},
    "mma.sync": dict(mma_instruction="mma.sync"),
    "wgmma-cp.async": dict(mma_instruction="wgmma", mma_warps=4,
                           mma_key_chunk=64, mma_key_value_loads="cp.async"),
    "wgmma-tma": dict(mma_instruction="wgmma", mma_warps=4, mma_key_chunk=64,
                      mma_key_value_loads="tma"),
    "fused-merge": dict(mma_merge="fused"),
    "simt": dict(gpu_attention="simt"),
}
POISONS = [("q", np.nan), ("k", np.nan), ("v", np.nan), ("q", np.inf)]
SEQLENS = [300, 129]
HQ, HKV, BLOCK, TOP_K = 4, 2, 64, 3
TORCH_DTYPE = {"f16": torch.float16, "bf16": torch.bfloat16}
ATOL = {"f16": 2e-3, "bf16": 1e-2}


def inputs(seed, d, dtype, where, value):
    """(q, k, v) as float64 numpy arrays rounded to `dtype`, poisoned, and
    cu_seqlens, and the poisoned element's (token, head, dim)."""
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(SEQLENS)]).astype(np.int32)
    tokens = int(cu[-1])
    arrays = {name: torch.from_numpy(
        rng.standard_normal((tokens, h, d))).to(TORCH_DTYPE[dtype]).double()
        .numpy() for name, h in (("q", HQ), ("k", HKV), ("v", HKV))}
    target = arrays[where]
    at = (int(rng.integers(0, BLOCK)), int(rng.integers(0, target.shape[1])),
          int(rng.integers(0, d)))
    target[at] = value
    return arrays["q"], arrays["k"], arrays["v"], cu, at


def may_be_nan(shape, where, at, causal):
    """The elements docs/semantics.md lets a kernel make NaN beyond the
    reference's: with a NaN in v[s, g, d], causal, column d of the queries
    t < s of s's own block (the first block of the first sequence here)."""
    allowed = np.zeros(shape, dtype=bool)
    if where == "v" and causal:
        s, g, d = at
        heads = [h for h in range(HQ) if h // (HQ // HKV) == g]
        for h in heads:
            allowed[:s, h, d] = True
    return allowed


def main():
    failures = cases = 0
    start = time.time()
    for d, dtype, causal, (where, value) in itertools.product(
            (64, 128), ("bf16", "f16"), (True, False), POISONS):
        q, k, v, cu, at = inputs(d * 7 + len(where), d, dtype, where, value)
        ref_out, ref_lse, near = moba_reference(q, k, v, cu, BLOCK, TOP_K,
                                                causal)
        expect_nan = np.isnan(ref_out)
        assert expect_nan.any(), "the poison must reach some row"
        allowed = may_be_nan(ref_out.shape, where, at, causal)
        finite = ~expect_nan & ~allowed & ~near[..., None]
        tq, tk, tv = (torch.from_numpy(x).to(TORCH_DTYPE[dtype]).cuda()
                      for x in (q, k, v))
        tcu = torch.from_numpy(cu).cuda()
        for form, options in FORMS.items():
            cases += 1
            kernel = moba.compile(head_dim=d, num_heads=HQ, num_kv_heads=HKV,
                                  block_size=BLOCK, top_k=TOP_K, dtype=dtype,
                                  causal=causal, **options)
            out = torch.full_like(tq, 12345.0)
            lse = torch.full(tq.shape[:-1], 12345.0, dtype=torch.float32,
                             device="cuda")
            kernel(tq, tk, tv, tcu, out=out, lse=lse)
            torch.cuda.synchronize()
            got = out.double().cpu().numpy()
            got_lse = lse.double().cpu().numpy()
            problems = []
            got_nan = np.isnan(got)
            if (got_nan < expect_nan).any() or (got_nan & ~expect_nan
                                                & ~allowed).any():
                problems.append(
                    f"NaN pattern: {int(np.isnan(got).sum())} NaN elements, "
                    f"the reference has {int(expect_nan.sum())}")
            if not np.array_equal(np.isnan(got_lse), np.isnan(ref_lse)):
                problems.append("lse NaN pattern differs")
            err = np.abs(got[finite] - ref_out[finite])
            bound = ATOL[dtype] * (1 + np.abs(ref_out[finite]))
            if not (err <= bound).all():
                problems.append(f"max error {float(err.max()):.3g}")
            name = (f"{form} d{d} {dtype} {'causal' if causal else 'full'} "
                    f"{where}={value}")
            if problems:
                failures += 1
                print(f"FAIL {name}: {'; '.join(problems)}")
            else:
                print(f"ok   {name} ({int(expect_nan.sum())} NaN elements, "
                      f"{int(near.sum())} near-tie rows skipped)")
    print(f"nan_check: {cases - failures}/{cases} passed in "
          f"{time.time() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
