"""The CPU kernels through the Python API, against the numpy reference."""
import numpy as np
import pytest

import moba
from reference import moba_reference, random_inputs

SEQLENS = [1, 5, 17, 70, 130]
TOLERANCE = {"f32": (2e-5, 2e-4), "f16": (2e-3, 2e-3), "bf16": (1e-2, 1e-2)}


def to_kernel_dtype(x, dtype):
    if dtype == "bf16":
        bits = moba.to_bf16(x)
        return bits, moba.from_bf16(bits)
    x = x.astype(np.float32 if dtype == "f32" else np.float16)
    return x, x.astype(np.float64)


def check(out, lse, ref_out, ref_lse, near_tie, dtype):
    atol, rtol = TOLERANCE[dtype]
    rows = ~near_tie
    assert rows.any()
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(out[rows], ref_out[rows], atol=atol, rtol=rtol)
    np.testing.assert_allclose(lse[rows], ref_lse[rows], atol=2e-4, rtol=2e-5)


@pytest.mark.parametrize("hq,hkv", [(1, 1), (4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen(hq, hkv, dtype, causal):
    rng = np.random.default_rng(hq * 100 + hkv * 10 + causal)
    d, block, top_k = 32, 16, 3
    q, k, v, cu = random_inputs(rng, SEQLENS, hq, hkv, d)
    (qk, qr), (kk, kr), (vk, vr) = (to_kernel_dtype(x, dtype)
                                    for x in (q, k, v))
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype=dtype,
                          causal=causal)
    out, lse = kernel(qk, kk, vk, cu, return_lse=True)
    if dtype == "bf16":
        out = moba.from_bf16(out)
    ref_out, ref_lse, near_tie = moba_reference(qr, kr, vr, cu, block, top_k,
                                                causal)
    check(out.astype(np.float64), lse, ref_out, ref_lse, near_tie, dtype)


@pytest.mark.parametrize("top_k", [1, 2, 64])
def test_top_k_edges(top_k):
    rng = np.random.default_rng(top_k)
    q, k, v, cu = random_inputs(rng, SEQLENS, 4, 2, 16)
    kernel = moba.compile(head_dim=16, num_heads=4, num_kv_heads=2,
                          block_size=16, top_k=top_k, dtype="f32")
    out, lse = kernel(q, k, v, cu, return_lse=True)
    ref_out, ref_lse, near_tie = moba_reference(q, k, v, cu, 16, top_k)
    check(out, lse, ref_out, ref_lse, near_tie, "f32")


def test_batched_layout_matches_varlen():
    rng = np.random.default_rng(7)
    b, s, hq, hkv, d = 3, 50, 4, 2, 16
    q = rng.standard_normal((b, s, hq, d), dtype=np.float32)
    k = rng.standard_normal((b, s, hkv, d), dtype=np.float32)
    v = rng.standard_normal((b, s, hkv, d), dtype=np.float32)
    batched = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                           block_size=16, top_k=2, dtype="f32",
                           layout="batched")
    out, lse = batched(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == (b, s, hq)
    cu = np.arange(b + 1, dtype=np.int32) * s
    ref_out, ref_lse, near_tie = moba_reference(
        q.reshape(b * s, hq, d), k.reshape(b * s, hkv, d),
        v.reshape(b * s, hkv, d), cu, 16, 2)
    check(out.reshape(b * s, hq, d), lse.reshape(b * s, hq), ref_out, ref_lse,
          near_tie, "f32")
    assert np.array_equal(out, moba.moba_attn_batched(q, k, v, 16, 2))


def test_moba_attn_varlen_signature():
    rng = np.random.default_rng(3)
    q, k, v, cu = random_inputs(rng, [33, 64], 4, 4, 32)
    out = moba.moba_attn_varlen(q, k, v, cu, max_seqlen=64,
                                moba_chunk_size=16, moba_topk=2)
    ref_out, _, near_tie = moba_reference(q, k, v, cu, 16, 2)
    np.testing.assert_allclose(out[~near_tie], ref_out[~near_tie], atol=2e-5,
                               rtol=2e-4)


@pytest.mark.parametrize("stage", ["decomposed", "tiled", "fused"])
def test_every_stage(stage):
    rng = np.random.default_rng(11)
    q, k, v, cu = random_inputs(rng, SEQLENS, 8, 2, 32)
    kernel = moba.compile(head_dim=32, num_heads=8, num_kv_heads=2,
                          block_size=16, top_k=3, dtype="f32", stage=stage,
                          tile_q=7, tile_k=5)
    out, lse = kernel(q, k, v, cu, return_lse=True)
    ref_out, ref_lse, near_tie = moba_reference(q, k, v, cu, 16, 3)
    check(out, lse, ref_out, ref_lse, near_tie, "f32")


def test_output_is_fresh_each_call():
    """Outputs are new arrays, never aliases of earlier results."""
    rng = np.random.default_rng(5)
    q, k, v, cu = random_inputs(rng, [40], 2, 2, 16)
    kernel = moba.compile(head_dim=16, num_heads=2, num_kv_heads=2,
                          block_size=16, top_k=2, dtype="f32")
    first = kernel(q, k, v, cu)
    second = kernel(q * 2, k, v, cu)
    assert first is not second and not np.shares_memory(first, second)
    assert not np.allclose(first, second)
