"""NaN and infinity in q, k and v reach the rows that use them
(docs/semantics.md, "NaN and infinity"), on every CPU stage, against the
numpy reference: the same rows and columns are NaN, the rest match."""
import numpy as np
import pytest

import moba
from reference import moba_reference, random_inputs

SEQLENS = [40, 25]
HQ, HKV, D, BLOCK, TOP_K = 4, 2, 16, 8, 3


def poison(rng, q, k, v, where, value):
    """A copy of (q, k, v) with `value` at one random element of `where`,
    the element's token in the first block of the first sequence, so that
    later queries have it as a past-block candidate."""
    arrays = {"q": q.copy(), "k": k.copy(), "v": v.copy()}
    target = arrays[where]
    token = int(rng.integers(0, BLOCK))
    head = int(rng.integers(0, target.shape[1]))
    dim = int(rng.integers(0, D))
    target[token, head, dim] = value
    return arrays["q"], arrays["k"], arrays["v"]


def run(kernel, dtype, q, k, v, cu):
    if dtype == "bf16":
        q, k, v = (moba.to_bf16(x) for x in (q, k, v))
    out, lse = kernel(q, k, v, cu, return_lse=True)
    if dtype == "bf16":
        out = moba.from_bf16(out)
    return out.astype(np.float64), lse


def rounded(x, dtype):
    return moba.from_bf16(moba.to_bf16(x)) if dtype == "bf16" else x


@pytest.mark.parametrize("stage,dtype", [("fused", "f32"), ("tiled", "f32"),
                                         ("decomposed", "f32"),
                                         ("fused", "bf16")])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("where,value", [("q", np.nan), ("k", np.nan),
                                         ("v", np.nan), ("q", np.inf),
                                         ("k", -np.inf)])
def test_non_finite_inputs_propagate(stage, dtype, causal, where, value):
    rng = np.random.default_rng(abs(hash((stage, dtype, causal, where))) % 2**32)
    q, k, v, cu = random_inputs(rng, SEQLENS, HQ, HKV, D)
    q, k, v = poison(rng, q, k, v, where, value)
    kernel = moba.compile(head_dim=D, num_heads=HQ, num_kv_heads=HKV,
                          block_size=BLOCK, top_k=TOP_K, dtype=dtype,
                          causal=causal, stage=stage, target="cpu")
    out, lse = run(kernel, dtype, q, k, v, cu)
    ref_out, ref_lse, near_tie = moba_reference(
        *(rounded(x, dtype) for x in (q, k, v)), cu, BLOCK, TOP_K, causal)

    # The poison reaches somebody: the test cannot pass by seeing no NaN.
    assert np.isnan(ref_out).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref_out))
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(ref_lse))
    finite = ~np.isnan(ref_out) & ~near_tie[..., None]
    atol = 2e-5 if dtype == "f32" else 1e-2
    np.testing.assert_allclose(out[finite], ref_out[finite], atol=atol,
                               rtol=atol)


def test_nan_block_is_selected_by_every_later_query():
    """A NaN in a past block's keys ranks that block first: every query with
    it as a candidate attends it, so their rows are NaN (none skip it)."""
    rng = np.random.default_rng(7)
    q, k, v, cu = random_inputs(rng, [64], 1, 1, D)
    k[3, 0, 5] = np.nan  # block 0
    kernel = moba.compile(head_dim=D, num_heads=1, num_kv_heads=1,
                          block_size=BLOCK, top_k=2, dtype="f32",
                          target="cpu")
    out, lse = kernel(q, k, v, cu, return_lse=True)
    # Block 0's own queries (positions 0..2) do not see key 3; from 3 on,
    # every query attends block 0 (its own, or the NaN-ranked candidate).
    assert not np.isnan(lse[:3]).any()
    assert np.isnan(lse[3:]).all()
    assert np.isnan(out[3:]).all()
