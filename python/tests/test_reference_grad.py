"""The Python gradient reference (moba_grad_reference) against central
differences of moba_reference, and its GQA sum against an independent
float32 evaluation of the formulas of docs/semantics.md, "Gradients".

A problem is used only if no row is near-tied at a tolerance of 1e-3 (of
the row's magnitude): a perturbation of 1e-6 moves a gate score by a few
1e-6 at most, so the selection stays that of the unperturbed problem.
"""
import numpy as np
import pytest

from reference import (moba_grad_reference, moba_reference, random_inputs,
                       _select)

EPS = 1e-6
MARGIN = 1e-3

# (heads, kv heads, head dim, block size, top_k, causal, with dlse, seqlens):
# each varlen batch holds an empty and a one-token sequence.
CASES = {
    "mha-causal-dlse": (2, 2, 3, 3, 2, True, True, [7, 0, 1, 5]),
    "mha-noncausal": (2, 2, 3, 3, 2, False, False, [6, 1, 0, 4]),
    "gqa-causal": (4, 2, 2, 2, 3, True, False, [0, 8, 1, 3]),
    "gqa-noncausal-dlse": (4, 2, 3, 3, 2, False, True, [7, 1, 0, 3]),
    "mqa-causal-dlse": (3, 1, 3, 2, 2, True, True, [1, 7, 0, 4]),
    "mqa-noncausal": (3, 1, 2, 3, 3, False, False, [6, 0, 1, 4]),
}


def stable_problem(hq, hkv, d, block_size, top_k, causal, seqlens):
    """The first seed whose selection has no near-tie at MARGIN."""
    for seed in range(100):
        rng = np.random.default_rng(seed)
        q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
        _, _, tie = moba_reference(q, k, v, cu, block_size, top_k, causal,
                                   tie_tolerance=MARGIN)
        if not tie.any():
            return rng, q.astype(np.float64), k.astype(np.float64), \
                v.astype(np.float64), cu
    raise AssertionError("no seed without near-ties")


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_central_differences(name):
    hq, hkv, d, block_size, top_k, causal, with_dlse, seqlens = CASES[name]
    rng, q, k, v, cu = stable_problem(hq, hkv, d, block_size, top_k, causal,
                                      seqlens)
    dout = rng.standard_normal(q.shape)
    dlse = rng.standard_normal(q.shape[:2]) if with_dlse else None

    def loss():
        out, lse, _ = moba_reference(q, k, v, cu, block_size, top_k, causal)
        total = np.sum(dout * out)
        return total + np.sum(dlse * lse) if with_dlse else total

    grads = moba_grad_reference(q, k, v, cu, block_size, top_k, dout,
                                dlse=dlse, causal=causal)
    dq, dk, dv, dq_unsure, dkv_unsure = grads
    assert not dq_unsure.any() and not dkv_unsure.any()
    for x, analytic in ((q, dq), (k, dk), (v, dv)):
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            saved = x[i]
            x[i] = saved + EPS
            up = loss()
            x[i] = saved - EPS
            down = loss()
            x[i] = saved
            numeric[i] = (up - down) / (2 * EPS)
        err = np.abs(numeric - analytic) / np.maximum(1, np.abs(analytic))
        assert err.max() <= 1e-6, (name, err.max())


def float32_grads(q, k, v, cu, block_size, top_k, dout, causal):
    """The formulas of "Gradients" in float32 with dense per-row masks (dK
    and dV as one contraction over every (t, h) of the group), the
    selection taken from the reference's."""
    q, k, v, dout = (x.astype(np.float32) for x in (q, k, v, dout))
    tokens, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = np.float32(1 / np.sqrt(d))
    mask = np.zeros((tokens, hq, tokens), dtype=bool)
    for t, h, _, keys, _, _ in _select(q.astype(np.float64),
                                       k.astype(np.float64), list(cu),
                                       block_size, top_k, causal, 4e-5):
        mask[t, h, keys] = True
    kh = np.repeat(k, group, axis=1)  # [T, Hq, D]: head h reads g(h)
    vh = np.repeat(v, group, axis=1)
    x = scale * np.einsum("thd,shd->ths", q, kh)
    x = np.where(mask, x, -np.inf)
    p = np.exp(x - x.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    out = np.einsum("ths,shd->thd", p, vh)
    delta = np.sum(dout * out, axis=2)
    dp = np.einsum("thd,shd->ths", dout, vh)
    ds = p * (dp - delta[:, :, None])
    dq = scale * np.einsum("ths,shd->thd", ds, kh)
    dk = scale * np.einsum("ths,thd->shd", ds, q)
    dv = np.einsum("ths,thd->shd", p, dout)
    # Sum the query heads of each KV head.
    dk = dk.reshape(tokens, hkv, group, d).sum(axis=2)
    dv = dv.reshape(tokens, hkv, group, d).sum(axis=2)
    return dq, dk, dv, mask


def test_gqa_key_gradient_sums_query_heads():
    hq, hkv, block_size, top_k = 4, 2, 4, 2
    rng, q, k, v, cu = stable_problem(hq, hkv, 8, block_size, top_k, True,
                                      [13, 1, 9])
    dout = rng.standard_normal(q.shape)
    dq, dk, dv, _, _ = moba_grad_reference(q, k, v, cu, block_size, top_k,
                                           dout)
    dq32, dk32, dv32, mask = float32_grads(q, k, v, cu, block_size, top_k,
                                           dout, True)
    # The case is one: some key of some KV head is attended by query
    # heads of that KV head other than its first.
    per_head = mask.any(axis=0).reshape(hkv, hq // hkv, -1)
    assert (per_head.sum(axis=1) > 1).any()
    for got, want in ((dq, dq32), (dk, dk32), (dv, dv32)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_nan_query_reaches_its_gradients():
    rng = np.random.default_rng(3)
    q, k, v, cu = random_inputs(rng, [5], 2, 1, 3)
    q = q.astype(np.float64)
    q[4, 1, 0] = np.nan
    dq, dk, dv, _, _ = moba_grad_reference(q, k, v, cu, 2, 2,
                                           np.ones(q.shape))
    assert np.isnan(dq[4, 1]).all() and not np.isnan(dq[4, 0]).any()
    # Token 4 alone in its own block attends itself: its dk, dv are NaN.
    assert np.isnan(dk[4, 0]).all() and np.isnan(dv[4, 0]).all()


def test_unsure_masks_of_a_near_tie():
    """Two sequences of 6 tokens, blocks of 2, top_k 2, D 1, q = 1. In the
    first, head 0's blocks 0 and 1 have means 1 and 1 + 1e-6: rows 4 and 5
    (own block 2) are near-tied and attend tokens 0..5 under either
    choice. Every other mean gap is 2."""
    block_means = np.array([1.0, 3.0, 0.0])
    k = np.repeat(block_means, 2)[None, :].repeat(2, axis=0).reshape(12)
    k = np.stack([k, k], axis=1)[:, :, None]  # [12, 2, 1]
    k[2:4, 0] = 1 + 1e-6
    q = np.ones((12, 2, 1))
    v = np.ones((12, 2, 1))
    cu = np.array([0, 6, 12])
    _, _, near_tie = moba_reference(q, k, v, cu, 2, 2)
    _, _, _, dq_unsure, dkv_unsure = moba_grad_reference(
        q, k, v, cu, 2, 2, np.ones(q.shape))
    want_rows = np.zeros((12, 2), dtype=bool)
    want_rows[4:6, 0] = True
    want_keys = np.zeros((12, 2), dtype=bool)
    want_keys[0:6, 0] = True
    np.testing.assert_array_equal(dq_unsure, want_rows)
    np.testing.assert_array_equal(near_tie, want_rows)
    np.testing.assert_array_equal(dkv_unsure, want_keys)
