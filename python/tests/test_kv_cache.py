"""moba.KVCache and the functional paged forms (moba.paged_kv_append,
moba.paged_decode) on the CPU, through the C API's paged kernels
(docs/python.md, "KV cache").

The main test is the equivalence of docs/semantics.md, "Decode and chunked
prefill": for random inputs, the rows that decode and chunked prefill compute
against the cache equal the rows of the full causal forward
(moba.compile(..., target="cpu")) at the same positions, within the
numerics tests' f32 tolerance, except rows near-tied in their selection
(skipped, as in test_paged_decode.py).
"""
import numpy as np
import pytest

import moba
from moba import _capi
from reference import (moba_paged_decode_reference, moba_reference,
                       random_inputs)

ATOL, RTOL = 2e-5, 2e-4


def full_forward(q, k, v, cu, block, top_k):
    kernel = moba.compile(head_dim=q.shape[2], num_heads=q.shape[1],
                          num_kv_heads=k.shape[1], block_size=block,
                          top_k=top_k, dtype="f32", target="cpu")
    return kernel(q, k, v, cu, return_lse=True)


def packed_rows(cu, starts, counts):
    """The packed indices of tokens starts[b] .. starts[b] + counts[b] of
    every sequence, and their cu_seqlens."""
    rows = np.concatenate(
        [np.arange(cu[b] + s, cu[b] + s + n) for b, (s, n) in
         enumerate(zip(starts, counts))] + [np.zeros(0)]).astype(np.int64)
    return rows, np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def check_rows(name, got_out, got_lse, want_out, want_lse, skip):
    keep = ~skip
    assert keep.any(), name
    np.testing.assert_allclose(got_out[keep], want_out[keep], rtol=RTOL,
                               atol=ATOL, err_msg=f"{name}: output")
    np.testing.assert_allclose(got_lse[keep], want_lse[keep], rtol=RTOL,
                               atol=ATOL, err_msg=f"{name}: lse")


# (Hq, Hkv, D, page_size, pages per block, top_k, sequence lengths, queries
# per sequence of the last (decode) step, prefill chunks before it)
CASES = {
    "mha-block1x-decode-1": (2, 2, 16, 16, 1, 2, [70, 0, 1, 33],
                             [1, 0, 1, 1], 2),
    "gqa-block2x-spec-16": (4, 2, 16, 16, 2, 3, [150, 17, 64, 3],
                            [16, 7, 16, 3], 2),
    "mqa-block2x-page8": (4, 1, 16, 8, 2, 3, [90, 1, 0, 45], [1, 1, 0, 2], 3),
    "gqa-block1x-top1": (4, 2, 8, 16, 1, 1, [60, 40], [4, 1], 1),
    "gqa-block2x-top4-prefill": (4, 2, 16, 16, 2, 4, [130, 70, 1, 0],
                                 [5, 2, 1, 0], 3),
}


def chunk_split(rng, counts, chunks):
    """`counts` per sequence split at random over `chunks` chunks."""
    parts = []
    left = list(counts)
    for i in range(chunks - 1):
        take = [int(rng.integers(0, n + 1)) for n in left]
        parts.append(take)
        left = [n - t for n, t in zip(left, take)]
    return parts + [left]


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_and_prefill_rows_equal_the_full_forward(name):
    """Chunked prefill of every sequence but its last few tokens, in
    `chunks` prefill() calls, then one append and decode() of the last
    tokens (1 to 16 a sequence, 0 for an idle one): every row computed
    equals the full forward's row at its position."""
    hq, hkv, d, page, per_block, top_k, seqlens, last, chunks = CASES[name]
    block = page * per_block
    rng = np.random.default_rng(sum(map(ord, name)))
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    full_out, full_lse = full_forward(q, k, v, cu, block, top_k)
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)
    pages = sum(-(-n // page) for n in seqlens) + 3
    cache = moba.KVCache(pages, page, hkv, d, "f32", batch=len(seqlens),
                         num_heads=hq, block_size=block, top_k=top_k)
    done = [0] * len(seqlens)
    for counts in chunk_split(rng, [n - l for n, l in zip(seqlens, last)],
                              chunks):
        rows, cu_chunk = packed_rows(cu, done, counts)
        out, lse = cache.prefill(q[rows], k[rows], v[rows], cu_chunk,
                                 return_lse=True)
        check_rows(f"{name} prefill", out, lse, full_out[rows],
                   full_lse[rows], near_tie[rows]) if len(rows) else None
        done = [a + n for a, n in zip(done, counts)]
    rows, cu_last = packed_rows(cu, done, last)
    cache.append(k[rows], v[rows], cu_last)
    assert cache.lengths.tolist() == seqlens
    out, lse = cache.decode(q[rows], cu_last, return_lse=True)
    check_rows(f"{name} decode", out, lse, full_out[rows], full_lse[rows],
               near_tie[rows])


def test_decode_loop_on_torch_tensors():
    """The serving loop: a prompt prefilled, then one token a step per
    sequence appended and decoded, on CPU torch tensors (results come back
    as torch tensors); every step's rows equal the full forward's."""
    torch = pytest.importorskip("torch")
    hq, hkv, d, page, block, top_k = 4, 2, 16, 8, 16, 2
    prompt, steps = [40, 1, 75], 12
    seqlens = [n + steps for n in prompt]
    rng = np.random.default_rng(5)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    full_out, _ = full_forward(q, k, v, cu, block, top_k)
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)
    cache = moba.KVCache(32, page, hkv, d, torch.float32, batch=3,
                         num_heads=hq, block_size=block, top_k=top_k)
    t = torch.from_numpy
    rows, cu_prompt = packed_rows(cu, [0, 0, 0], prompt)
    out = cache.prefill(t(q[rows]), t(k[rows]), t(v[rows]), t(cu_prompt))
    assert isinstance(out, torch.Tensor)
    for step in range(steps):
        rows, _ = packed_rows(cu, [n + step for n in prompt], [1, 1, 1])
        cache.append(t(k[rows]), t(v[rows]))
        out = cache.decode(t(q[rows]))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        keep = ~near_tie[rows]
        np.testing.assert_allclose(out.numpy()[keep], full_out[rows][keep],
                                   rtol=RTOL, atol=ATOL,
                                   err_msg=f"step {step}")


def random_table(rng, lens, page_size, spare=2):
    """A caller's block table: the pages of all sequences in random order
    (a few spare pages never named), and the pool's page count."""
    need = [-(-n // page_size) for n in lens]
    pages = sum(need) + spare
    order = rng.permutation(pages)
    table = np.full((len(lens), max(need + [1])), -1, dtype=np.int32)
    used = 0
    for b, n in enumerate(need):
        table[b, :n] = order[used:used + n]
        used += n
    return table, pages


@pytest.mark.parametrize("array", ["numpy", "torch"])
def test_functional_forms_with_a_callers_block_table(array):
    """moba.paged_kv_append and moba.paged_decode on raw arrays and a
    caller's block table (pages in random order, unwritten slots NaN so a
    stray read shows), in two appends; the decode's rows (speculative, up
    to 16 a sequence) equal the full forward's."""
    hq, hkv, d, page, block, top_k = 4, 2, 16, 16, 32, 3
    seqlens, last = [120, 33, 64], [16, 2, 1]
    rng = np.random.default_rng(9)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    full_out, full_lse = full_forward(q, k, v, cu, block, top_k)
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)
    table, pages = random_table(rng, seqlens, page)
    k_cache = np.full((pages, page, hkv, d), np.nan, np.float32)
    v_cache = np.full((pages, page, hkv, d), np.nan, np.float32)
    sums = np.full((3, 4, hkv, d), np.nan, np.float32)
    lens = np.zeros(3, np.int32)
    wrap = (lambda x: x) if array == "numpy" else __import__("torch").from_numpy
    k_cache_w, v_cache_w, sums_w = wrap(k_cache), wrap(v_cache), wrap(sums)
    first = [n - l for n, l in zip(seqlens, last)]
    for starts, counts in (([0, 0, 0], first), (first, last)):
        rows, cu_rows = packed_rows(cu, starts, counts)
        lens = moba.paged_kv_append(
            wrap(k[rows]), wrap(v[rows]), wrap(cu_rows), k_cache_w,
            v_cache_w, sums_w, wrap(table), wrap(lens), block_size=block)
        lens = np.asarray(lens)
    assert lens.tolist() == seqlens
    out, lse = moba.paged_decode(wrap(q[rows]), wrap(cu_rows), k_cache_w,
                                 v_cache_w, sums_w, wrap(table), wrap(lens),
                                 block_size=block, top_k=top_k,
                                 return_lse=True)
    out, lse = np.asarray(out), np.asarray(lse)
    check_rows(array, out, lse, full_out[rows], full_lse[rows],
               near_tie[rows])
    # A caller's block table in a KVCache: the same rows.
    cache = moba.KVCache(pages, page, hkv, d, "f32", batch=3, num_heads=hq,
                         block_size=block, top_k=top_k, block_table=table)
    rows_all, cu_all = packed_rows(cu, [0, 0, 0], seqlens)
    cache.append(k[rows_all], v[rows_all], cu_all)
    np.testing.assert_array_equal(cache.block_table, table)
    np.testing.assert_array_equal(cache.decode(q[rows], cu_rows), out)


def test_kv_head_selection_matches_its_float64_reference():
    """selection="kv_head" (one top-k per GQA group) through KVCache,
    against the float64 paged reference on the cache's own pages; it must
    differ from per-head selection with 4 query heads a group."""
    hq, hkv, d, page, block, top_k = 8, 2, 16, 16, 16, 2
    seqlens, last = [160, 96, 1], [4, 16, 1]
    rng = np.random.default_rng(11)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    rows_first, cu_first = packed_rows(cu, [0, 0, 0],
                                       [n - l for n, l in zip(seqlens, last)])
    rows, cu_last = packed_rows(cu, [n - l for n, l in zip(seqlens, last)],
                                last)
    results = {}
    for selection in ("kv_head", "query_head"):
        cache = moba.KVCache(24, page, hkv, d, "f32", batch=3, num_heads=hq,
                             block_size=block, top_k=top_k,
                             selection=selection)
        cache.append(k[rows_first], v[rows_first], cu_first)
        cache.append(k[rows], v[rows], cu_last)
        out, lse = cache.decode(q[rows], cu_last, return_lse=True)
        want_out, want_lse, tie = moba_paged_decode_reference(
            q[rows], cu_last, cache.k_cache, cache.v_cache,
            cache.block_table, cache.lengths, block, top_k,
            selection=selection)
        check_rows(selection, out, lse, want_out, want_lse, tie)
        results[selection] = out
    assert not np.allclose(results["kv_head"], results["query_head"])


def test_bf16_cache_matches_the_bf16_forward():
    """A bf16 cache, queries and output (block sums and lse f32): decode's
    rows against the bf16 full forward's, at the numerics tests' bf16
    tolerance."""
    hq, hkv, d, page, block, top_k = 4, 2, 16, 16, 32, 3
    seqlens, last = [140, 50], [3, 1]
    rng = np.random.default_rng(3)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    q16, k16, v16 = (moba.to_bf16(x) for x in (q, k, v))
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16",
                          target="cpu")
    full_out = moba.from_bf16(kernel(q16, k16, v16, cu))
    q, k, v = (moba.from_bf16(x) for x in (q16, k16, v16))
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)
    cache = moba.KVCache(16, page, hkv, d, "bf16", batch=2, num_heads=hq,
                         block_size=block, top_k=top_k)
    first = [n - l for n, l in zip(seqlens, last)]
    rows, cu_rows = packed_rows(cu, [0, 0], first)
    cache.append(k16[rows], v16[rows], cu_rows)
    rows, cu_rows = packed_rows(cu, first, last)
    out = cache.prefill(q16[rows], k16[rows], v16[rows], cu_rows)
    assert out.dtype == np.uint16
    keep = ~near_tie[rows]
    np.testing.assert_allclose(moba.from_bf16(out)[keep],
                               full_out[rows][keep], rtol=1e-2, atol=1e-2)


def test_nan_in_a_key_propagates_as_in_the_forward():
    """A NaN key: its block's sum is NaN, which ranks first, so every later
    row of its sequence attends it and is NaN, exactly where the full
    forward's rows are NaN; the other sequence is untouched."""
    hq, hkv, d, page, block, top_k = 2, 1, 16, 16, 16, 2
    seqlens = [70, 50]
    rng = np.random.default_rng(4)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    k[5, 0, 3] = np.nan
    full_out, _ = full_forward(q, k, v, cu, block, top_k)
    cache = moba.KVCache(16, page, hkv, d, "f32", batch=2, num_heads=hq,
                         block_size=block, top_k=top_k)
    out = cache.prefill(q, k, v, cu)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(full_out))
    assert np.isnan(out[5:70]).all() and not np.isnan(out[:5]).any()
    assert not np.isnan(out[70:]).any()


def small_cache(**kwargs):
    args = dict(num_pages=4, page_size=16, num_kv_heads=2, head_dim=8,
                dtype="f32", batch=2, num_heads=4, block_size=32, top_k=2)
    args.update(kwargs)
    return moba.KVCache(**args)


def kv(tokens, heads=2, d=8, dtype=np.float32):
    return (np.ones((tokens, heads, d), dtype),
            np.ones((tokens, heads, d), dtype))


@pytest.mark.parametrize("kwargs,message", [
    (dict(block_size=24), r"block_size \(24\) must be a multiple of "
                          r"page_size \(16\)"),
    (dict(dtype="f64"), "dtype must be one of f32, f16, bf16, got 'f64'"),
    (dict(selection="group"), "selection must be 'query_head' or 'kv_head'"),
    (dict(num_heads=3), r"num_heads \(3\) must be a multiple of "
                        r"num_kv_heads \(2\)"),
    (dict(head_dim=2000), "head_dim must be at most 1024, got 2000"),
    (dict(batch=0), "batch must be at least 1, got 0"),
    (dict(max_pages=5), r"max_pages must be in 1..4 \(num_pages\), got 5"),
    (dict(block_table=np.zeros((3, 2), np.int32)),
     r"block_table has shape \(3, 2\), expected \(2, max_pages\)"),
])
def test_bad_cache_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_cache(**kwargs)


def test_bad_calls_name_the_value_and_change_nothing():
    cache = small_cache()
    k, v = kv(3)
    with pytest.raises(ValueError, match="k has dtype float64, expected f32"):
        cache.append(*kv(2, dtype=np.float64))
    with pytest.raises(ValueError, match=r"k has shape \(2, 3, 8\)"):
        cache.append(*kv(2, heads=3))
    with pytest.raises(ValueError, match="one token a sequence.*pass "
                                         "cu_seqlens"):
        cache.append(k, v)
    with pytest.raises(ValueError, match=r"cu_seqlens must not decrease: "
                                         r"cu_seqlens\[2\]=1 < "
                                         r"cu_seqlens\[1\]=2"):
        cache.append(k, v, [0, 2, 1])
    with pytest.raises(ValueError, match="cu_seqlens must end at the token "
                                         "count 3, got 4"):
        cache.append(k, v, [0, 2, 4])
    # The pool: 4 pages of 16; 40 and 30 tokens need 3 and 2.
    with pytest.raises(ValueError, match="needs 5 more pages but only 4 of "
                                         "4 are free"):
        cache.append(*kv(70), [0, 40, 70])
    with pytest.raises(ValueError, match="sequence 1 would hold 70 tokens, "
                                         "more than its max_pages = 4"):
        cache.append(*kv(70), [0, 0, 70])
    assert cache.lengths.tolist() == [0, 0]
    assert (cache.block_table == -1).all()
    cache.append(k, v, [0, 2, 3])
    q = np.ones((17, 4, 8), np.float32)
    with pytest.raises(ValueError, match="sequence 0 has 17 queries; decode "
                                         "takes at most 16"):
        cache.decode(q, [0, 17, 17])
    with pytest.raises(ValueError, match=r"sequence 0: cache_lens\[0\] = 2, "
                                         r"fewer than its 3 queries"):
        cache.decode(q[:3], [0, 3, 3])
    with pytest.raises(ValueError, match=r"q has shape \(2, 2, 8\), "
                                         r"expected \(\*, 4, 8\)"):
        cache.decode(np.ones((2, 2, 8), np.float32))
    with pytest.raises(ValueError, match="q has dtype float16, expected f32"):
        cache.decode(np.ones((2, 4, 8), np.float16))
    out = cache.decode(np.ones((2, 4, 8), np.float32))
    assert out.shape == (2, 4, 8) and np.isfinite(out).all()
    cache.reset(0)
    assert cache.lengths.tolist() == [0, 1]
    assert (cache.block_table[0] == -1).all()


def test_callers_pages_and_lengths_are_checked_on_the_host():
    """A caller's table naming a page outside the pool, and lengths past
    the table's pages: ValueError naming the sequence and value, nothing
    written."""
    table = np.asarray([[0, 1], [2, 9]], np.int32)
    cache = small_cache(block_table=table)
    k, v = kv(20)
    with pytest.raises(ValueError, match=r"sequence 1: block_table\[1, 1\] = "
                                         r"9 is not a page of the pool "
                                         r"\(0..3\)"):
        cache.append(k, v, [0, 2, 20])
    assert cache.lengths.tolist() == [0, 0] and not cache.k_cache.any()
    k_cache = np.zeros((4, 16, 2, 8), np.float32)
    sums = np.zeros((2, 1, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"sequence 0: cache_lens\[0\] \+ 20 "
                                         r"new = 40 tokens exceed the 32 "
                                         r"positions of its max_pages = 2"):
        moba.paged_kv_append(k, v, [0, 20, 20], k_cache, k_cache.copy(), sums,
                             table, [20, 0], block_size=32)
    with pytest.raises(ValueError, match=r"cache_lens\[1\] must not be "
                                         "negative, got -1"):
        moba.paged_kv_append(k, v, [0, 20, 20], k_cache, k_cache.copy(), sums,
                             table, [0, -1], block_size=32)
    with pytest.raises(ValueError, match=r"cache_lens\[0\] = 33 tokens exceed "
                                         "the 16 positions of the "
                                         "max_blocks = 1 blocks"):
        moba.paged_decode(np.ones((1, 4, 8), np.float32), [0, 1, 1], k_cache,
                          k_cache.copy(), sums, [[0, 1, 3], [2, 3, 3]],
                          [33, 0], block_size=16, top_k=2)
    with pytest.raises(ValueError, match="k_cache overlaps v_cache"):
        moba.paged_kv_append(k, v, [0, 20, 20], k_cache, k_cache, sums,
                             table, [0, 0], block_size=32)
    assert not k_cache.any() and not sums.any()


def test_a_written_page_cannot_be_shared():
    """Two sequences whose rows name the same page, or one row naming a page
    twice, where this append writes it: ValueError naming both positions,
    nothing written. A page only read (a shared finished prefix) may
    repeat."""
    k_cache = np.zeros((4, 16, 2, 8), np.float32)
    v_cache = np.zeros_like(k_cache)
    sums = np.zeros((2, 2, 2, 8), np.float32)
    k, v = kv(2)
    with pytest.raises(ValueError, match=r"block_table\[0, 0\] = 0 is written "
                                         r"by this append, and "
                                         r"block_table\[1, 0\] names the "
                                         r"same page"):
        moba.paged_kv_append(k, v, [0, 1, 2], k_cache, v_cache, sums,
                             [[0, 1], [0, 2]], [0, 0], block_size=16)
    with pytest.raises(ValueError, match=r"block_table\[0, 0\] = 3 is written "
                                         r"by this append, and "
                                         r"block_table\[0, 1\] names"):
        moba.paged_kv_append(k, v, [0, 2, 2], k_cache, v_cache, sums,
                             [[3, 3], [1, 2]], [15, 0], block_size=16)
    assert not k_cache.any() and not v_cache.any() and not sums.any()
    # Page 0 full and shared by both sequences, each writing its own page.
    lens = moba.paged_kv_append(k, v, [0, 1, 2], k_cache, v_cache, sums,
                                [[0, 1], [0, 2]], [16, 16], block_size=16)
    assert lens.tolist() == [17, 17]
    assert k_cache[1, 0].any() and k_cache[2, 0].any()


def test_compile_paged_limits_and_kernel_kinds():
    with pytest.raises(ValueError, match="max_query_tokens must be 1..16 "
                                         r"\(decode\) or 0"):
        moba.compile_paged(8, 4, 2, 16, 32, 2, "f32", max_query_tokens=17)
    with pytest.raises(ValueError, match="page_size must be in"):
        moba.compile_paged(8, 4, 2, 0, 32, 2, "f32")
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        moba.compile_paged(8, 4, 2, 16, 32, 0, "f32")
    paged = moba.compile_paged(8, 4, 2, 16, 32, 2, "f32")
    assert moba.compile_paged(8, 4, 2, 16, 32, 2, "f32") is paged
    attention = moba.compile(head_dim=8, num_heads=4, num_kv_heads=2,
                             block_size=32, top_k=2, dtype="f32",
                             target="cpu")
    # The attention entry points refuse a paged kernel, and the paged ones
    # an attention kernel.
    with pytest.raises(RuntimeError, match="paged KV cache kernel"):
        _capi.run_kernel(paged._handle, None, None, None, None, 1, 0, None,
                         None)
    cache = _capi.paged_cache(None, None, None, None, None, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="attention kernel"):
        _capi.run_paged_append(attention._handles["cpu"], cache, None, None,
                               None, 0)
    with pytest.raises(ValueError, match="k_cache is null"):
        _capi.run_paged_append(paged._handle, cache, None, None, None, 0)


def test_gpu_tensors_are_refused_by_name():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    cache = small_cache()
    k, v = (torch.ones((2, 2, 8), device="cuda") for _ in range(2))
    with pytest.raises(ValueError, match="k is on cuda.*CPU only"):
        cache.append(k, v)


@pytest.mark.parametrize("counts,message", [
    (dict(num_pages=2**31), r"num_pages must be in 1..2147483647, got "
                            r"2147483648"),
    (dict(num_pages=0), "num_pages must be in 1..2147483647, got 0"),
    (dict(max_pages=-1), "max_pages must be in 1..2147483647, got -1"),
    (dict(max_blocks=2**31 - 1, num_sequences=2**31 - 1),
     "block_key_sums would need more than 2\\^62 bytes"),
    (dict(num_sequences=2**31), "num_sequences must be in 1..2147483647"),
])
def test_c_api_counts_are_checked_in_64_bits(counts, message):
    """Counts a caller claims through the C API: each within its limit and
    every buffer's bytes in checked 64-bit arithmetic, refused before
    anything is read (the pointers are of a small cache)."""
    paged = moba.compile_paged(8, 4, 4, 16, 32, 2, "f32")
    k_cache = np.zeros((1, 16, 4, 8), np.float32)
    sums = np.zeros((1, 1, 4, 8), np.float32)
    table, lens = np.zeros((1, 1), np.int32), np.zeros(1, np.int32)
    args = dict(num_pages=1, max_pages=1, max_blocks=1, num_sequences=1)
    args.update(counts)
    cache = _capi.paged_cache(k_cache.ctypes.data, k_cache.ctypes.data + 4,
                              sums.ctypes.data, table.ctypes.data,
                              lens.ctypes.data, **args)
    cu = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match=message):
        _capi.run_paged_append(paged._handle, cache, None, None,
                               cu.ctypes.data, 0)
    with pytest.raises(ValueError, match=message):
        _capi.run_paged_decode(paged._handle, cache, None, cu.ctypes.data, 0,
                               None, None)


def test_c_api_token_counts_are_checked():
    paged = moba.compile_paged(8, 4, 2, 16, 32, 2, "f32")
    k_cache = np.zeros((1, 16, 2, 8), np.float32)
    v_cache = np.zeros_like(k_cache)
    sums = np.zeros((1, 1, 2, 8), np.float32)
    table, lens = np.zeros((1, 1), np.int32), np.zeros(1, np.int32)
    cache = _capi.paged_cache(k_cache.ctypes.data, v_cache.ctypes.data,
                              sums.ctypes.data, table.ctypes.data,
                              lens.ctypes.data, 1, 1, 1, 1)
    cu = np.asarray([0, 2], np.int32)
    with pytest.raises(ValueError, match="tokens must be in 0..2147483647, "
                                         "got 2147483648"):
        _capi.run_paged_decode(paged._handle, cache, None, cu.ctypes.data,
                               2**31, None, None)
    with pytest.raises(ValueError, match="k is null but there are 2 tokens"):
        _capi.run_paged_append(paged._handle, cache, None, None,
                               cu.ctypes.data, 2)
    with pytest.raises(ValueError, match="cu_seqlens_q must end at the token "
                                         "count 1, got 2"):
        q = np.zeros((1, 4, 8), np.float32)
        _capi.run_paged_decode(paged._handle, cache, q.ctypes.data,
                               cu.ctypes.data, 1, q.copy().ctypes.data,
                               np.zeros((1, 4), np.float32).ctypes.data)


def test_c_api_takes_gpu_targets_and_refuses_unknown_enums():
    config = _capi._paged_config(64, 4, 2, 16, 32, 2, 16, None, "f32",
                                 "query_head", None, None)
    error = __import__("ctypes").c_void_p()
    for target in (1, 2):  # sm_80, sm_90a
        config.target = target
        assert _capi._lib.mobaCheckPagedConfig(config, error) == 0
    config.target = 3
    assert _capi._lib.mobaCheckPagedConfig(config, error) != 0
    assert "unknown target 3" in _capi._take_error(error.value)
    config.target, config.selection = 0, 7
    assert _capi._lib.mobaCheckPagedConfig(config, error) != 0
    assert "unknown selection 7" in _capi._take_error(error.value)


def test_a_cache_over_the_callers_torch_tensors():
    """KVCache.from_arrays: the caller's torch tensors (caches, sums, a
    live block table, lengths) written in place, the table's pages placed
    by the caller; prefill then decode equal the full forward, and the
    caller's lengths tensor advances."""
    torch = pytest.importorskip("torch")
    hq, hkv, d, page, block, top_k = 2, 1, 8, 8, 16, 2
    seqlens = [50, 21]
    rng = np.random.default_rng(12)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    full_out, _ = full_forward(q, k, v, cu, block, top_k)
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)
    table, pages = random_table(rng, seqlens, page)
    k_cache = torch.zeros((pages, page, hkv, d))
    v_cache = torch.zeros((pages, page, hkv, d))
    sums = torch.zeros((2, 4, hkv, d))
    lengths = torch.zeros(2, dtype=torch.int32)
    cache = moba.KVCache.from_arrays(k_cache, v_cache, sums,
                                     torch.from_numpy(table), lengths,
                                     num_heads=hq, block_size=block,
                                     top_k=top_k)
    first = [n - 1 for n in seqlens]
    rows, cu_rows = packed_rows(cu, [0, 0], first)
    t = torch.from_numpy
    out = cache.prefill(t(q[rows]), t(k[rows]), t(v[rows]), t(cu_rows))
    assert lengths.tolist() == first
    rows_last, _ = packed_rows(cu, first, [1, 1])
    cache.append(t(k[rows_last]), t(v[rows_last]))
    assert lengths.tolist() == seqlens
    assert k_cache[table[1, 2], 4].equal(t(k[cu[1] + 20]))
    out_last = cache.decode(t(q[rows_last]))
    got = np.concatenate([out.numpy(), out_last.numpy()])
    want_rows = np.concatenate([rows, rows_last])
    keep = ~near_tie[want_rows]
    np.testing.assert_allclose(got[keep], full_out[want_rows][keep],
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="lengths has dtype int64, expected "
                                         "int32"):
        moba.KVCache.from_arrays(k_cache, v_cache, sums, table,
                                 torch.zeros(2, dtype=torch.int64),
                                 num_heads=hq, block_size=block, top_k=top_k)


def test_disk_cache_is_shared_across_max_query_tokens_and_dumps(
        monkeypatch, tmp_path):
    """The code does not depend on max_query_tokens, so its disk cache key
    leaves it out: the prefill kernel (0) loads the decode kernel's (16)
    object. MOBA_DUMP_IR writes every stage, named with the full key."""
    if moba.cache_dir() is None:
        pytest.skip("no disk cache (MOBA_CACHE_DIR is empty)")
    decode = moba.compile_paged(24, 2, 1, 8, 8, 2, "f32")
    prefill = moba.compile_paged(24, 2, 1, 8, 8, 2, "f32",
                                 max_query_tokens=0)
    assert not decode.from_cache and prefill.from_cache
    monkeypatch.setenv("MOBA_DUMP_IR", str(tmp_path))
    moba.compile_paged(24, 2, 1, 8, 8, 2, "f32", max_query_tokens=3)
    name = "cpu-paged_d24_h2_kv1_p8_b8_k2_query_head_f32_q3-O3"
    for stage in ("moba", "loops", "llvm"):
        assert (tmp_path / f"{name}.{stage}.mlir").is_file(), stage
    moba_ir = (tmp_path / f"{name}.moba.mlir").read_text()
    assert "moba.paged_kv_append" in moba_ir
    assert "moba.paged_decode_attention" in moba_ir


def test_prefill_with_a_bad_query_writes_nothing():
    """prefill checks q before it appends: a q of the wrong dtype or head
    count raises and leaves the lengths and the cache as they were, so
    that the corrected call can follow."""
    cache = small_cache()
    k, v = kv(3)
    good = np.ones((3, 4, 8), np.float32)
    for bad, message in ((good.astype(np.float64), "q"),
                         (np.ones((3, 2, 8), np.float32), "q")):
        with pytest.raises(ValueError, match=message):
            cache.prefill(bad, k, v, [0, 3, 3])
        assert cache.lengths.tolist() == [0, 0] and not cache.k_cache.any()
    out = cache.prefill(good, k, v, [0, 3, 3])
    assert out.shape == (3, 4, 8) and cache.lengths.tolist() == [3, 0]


def test_unsigned_lengths_are_named_before_they_wrap():
    """A uint64 length past int32 is named as given, not as the -1 a cast
    to int64 would make of 2^64 - 1."""
    k_cache = np.zeros((4, 16, 2, 8), np.float32)
    sums = np.zeros((2, 2, 2, 8), np.float32)
    k, v = kv(1)
    with pytest.raises(ValueError, match=r"cache_lens holds "
                                         r"18446744073709551615, which does "
                                         r"not fit int32"):
        moba.paged_kv_append(k, v, [0, 1, 1], k_cache, k_cache.copy(), sums,
                             [[0, 1], [2, 3]],
                             np.array([2**64 - 1, 0], np.uint64),
                             block_size=16)


def test_gpu_paged_kernels_compile_here_and_refuse_host_arrays():
    """A GPU paged kernel compiles without a GPU (PTX); its calls take CUDA
    torch tensors only, and say so before anything reaches the library."""
    torch = pytest.importorskip("torch")
    kernel = moba.compile_paged(64, 4, 2, 16, 32, 2, "bf16",
                                target="sm_90a")
    assert isinstance(kernel, moba.GpuPagedKernel)
    assert "moba.GpuPagedKernel(head_dim=64" in repr(kernel)
    k_cache = torch.zeros((4, 16, 2, 64), dtype=torch.bfloat16)
    sums = torch.zeros((1, 2, 2, 64))
    table = torch.zeros((1, 2), dtype=torch.int32)
    lens = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="k_cache must be a CUDA torch "
                                         "tensor .* on cpu"):
        kernel.decode(torch.zeros((1, 4, 64), dtype=torch.bfloat16),
                      torch.tensor([0, 1], dtype=torch.int32), k_cache,
                      k_cache.clone(), sums, table, lens)
    with pytest.raises(ValueError, match="target must be 'cpu', 'sm_80' or "
                                         "'sm_90a', got 'sm_70'"):
        moba.compile_paged(64, 4, 2, 16, 32, 2, "bf16", target="sm_70")
    with pytest.raises(ValueError, match="device must be 'cpu' or a CUDA "
                                         "device, got 'meta'"):
        moba.KVCache(4, 16, 2, 64, "bf16", batch=1, num_heads=4,
                     block_size=32, top_k=2, device="meta")


def test_a_refused_append_gives_its_pages_back(monkeypatch):
    """The managed table hands out pages before the library checks the
    append; when the library refuses it, the pages go back to the pool and
    the table is as it was."""
    cache = small_cache()
    k, v = kv(20)
    table, free = cache.block_table.copy(), list(cache._free)

    class Refusing:
        def append(self, *args):
            raise ValueError("refused by the library")

    real = cache._kernel
    monkeypatch.setattr(cache, "_kernel", lambda *args: Refusing())
    with pytest.raises(ValueError, match="refused by the library"):
        cache.append(k, v, [0, 2, 20])
    assert (cache.block_table == table).all() and cache._free == free
    assert cache.lengths.tolist() == [0, 0]
    monkeypatch.setattr(cache, "_kernel", real)
    cache.append(k, v, [0, 2, 20])
    assert cache.lengths.tolist() == [2, 18]
