"""Decode and chunked prefill against a paged KV cache on the CPU
(docs/semantics.md, "Decode and chunked prefill"): the main test is the
equivalence, decode of token p == row p of the full causal forward.

For random inputs the full forward runs through moba.compile(...,
target='cpu') over whole sequences; the same keys and values are appended
to a paged cache (pages in random order, every unwritten slot and block sum
NaN so that a stray read shows) by moba.paged_kv_append, in one or several
appends, and moba.paged_decode_attention computes the last 1 to 16 tokens of
every sequence (decode, speculative decoding) or a longer last chunk
(chunked prefill). Its rows must match the forward's rows, within the
numerics tests' f32 tolerance, except rows near-tied in their selection
(docs/semantics.md, "Selection"), which are skipped and counted.
"""
import numpy as np
import pytest

import moba
from paged_decode_runner import run_decode_step
from reference import (moba_paged_decode_reference, moba_reference,
                       random_inputs)

# moba-run's f32 tolerance (tools/moba-run): |got - want| <= atol + rtol |want|.
ATOL, RTOL = 2e-5, 2e-4


def random_table(rng, lens, page_size, spare=2):
    """A block table with the pages of all sequences in random order, and
    the number of pages in the pool (a few spare, never named)."""
    need = [-(-n // page_size) for n in lens]
    pages = sum(need) + spare
    order = rng.permutation(pages)
    table = np.full((len(lens), max(need + [1])), pages - 1, dtype=np.int32)
    used = 0
    for b, n in enumerate(need):
        table[b, :n] = order[used:used + n]
        used += n
    # Entries past a sequence's pages name a spare page (never read).
    for b, n in enumerate(need):
        table[b, n:] = order[-1]
    return table, pages


def chunk_counts(rng, lens, last, appends):
    """Per-append token counts: `last[b]` tokens in the final append, the
    rest split at random over appends - 1 earlier ones."""
    earlier = [n - l for n, l in zip(lens, last)]
    chunks = []
    for _ in range(appends - 1):
        take = [int(rng.integers(0, e + 1)) for e in earlier]
        chunks.append(take)
        earlier = [e - t for e, t in zip(earlier, take)]
    if chunks:
        chunks[-1] = [c + e for c, e in zip(chunks[-1], earlier)]
    else:
        last = [l + e for l, e in zip(last, earlier)]
    return chunks + [last]


def check_rows(name, got_out, got_lse, want_out, want_lse, skip):
    keep = ~skip
    assert keep.any()
    np.testing.assert_allclose(got_out[keep], want_out[keep], rtol=RTOL,
                               atol=ATOL, err_msg=f"{name}: output")
    np.testing.assert_allclose(got_lse[keep], want_lse[keep], rtol=RTOL,
                               atol=ATOL, err_msg=f"{name}: lse")


# (Hq, Hkv, D, page_size, pages per block, top_k, seqlens, queries per
# sequence in the last append, appends)
CASES = {
    "decode-1-page16-gqa": (4, 2, 16, 16, 1, 3, [150, 40, 1, 97],
                            [1, 1, 1, 1], 2),
    "spec-16-page16-block32": (4, 2, 16, 16, 2, 3, [200, 17, 64, 130],
                               [16, 7, 16, 3], 2),
    "spec-page64-mha": (2, 2, 16, 64, 1, 2, [300, 65, 129], [5, 16, 9], 2),
    "decode-page64-block128-mqa": (4, 1, 16, 64, 2, 3, [390, 128, 257],
                                   [1, 2, 16], 2),
    "chunked-prefill-page16": (4, 2, 16, 16, 2, 4, [180, 70, 33],
                               [45, 70, 20], 3),
    "chunked-appends-page16-top1": (2, 1, 16, 16, 1, 1, [90, 50],
                                    [10, 3], 4),
}


# Every test runs both lowerings: the serial loops (the CPU's) and the
# scf.forall forms the GPU pipeline maps onto threads, run here serially.
FORMS = pytest.mark.parametrize("parallel", [False, True],
                                ids=["serial", "forall"])


@FORMS
@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_rows_equal_the_full_forward(name, parallel):
    hq, hkv, d, page, per_block, top_k, seqlens, last, appends = CASES[name]
    block = page * per_block
    rng = np.random.default_rng(sum(map(ord, name)))
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="f32",
                          target="cpu")
    full_out, full_lse = kernel(q, k, v, cu, return_lse=True)
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)

    table, pages = random_table(rng, seqlens, page)
    poison = np.full((pages, page, hkv, d), np.nan, dtype=np.float32)
    max_blocks = max(-(-n // block) for n in seqlens) + 1
    chunks = chunk_counts(rng, seqlens, last, appends)
    out, lse, rows = run_decode_step(q, chunks, k, v, cu, poison, table,
                                     block, top_k, max_blocks,
                                     parallel=parallel)
    assert len(rows) == sum(chunks[-1])
    check_rows(name, out, lse, full_out[rows], full_lse[rows], near_tie[rows])
    print(f"{name}: {len(rows)} rows x {hq} heads, "
          f"{int(near_tie[rows].sum())} near-tied rows skipped")


@FORMS
def test_kv_head_selection_matches_its_float64_reference(parallel):
    """selection = "kv_head" has no full forward; it is checked against the
    paged float64 reference, and it must differ from per-head selection
    (4 query heads a group choose differently)."""
    hq, hkv, d, page, block, top_k = 8, 2, 16, 16, 16, 2
    seqlens, last = [160, 96], [4, 16]
    rng = np.random.default_rng(11)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    table, pages = random_table(rng, seqlens, page)
    poison = np.full((pages, page, hkv, d), np.nan, dtype=np.float32)
    chunks = chunk_counts(rng, seqlens, last, 2)
    results = {}
    for selection in ("kv_head", "query_head"):
        out, lse, rows = run_decode_step(q, chunks, k, v, cu, poison, table,
                                         block, top_k, 11, selection,
                                         parallel=parallel)
        cu_q = np.concatenate([[0], np.cumsum(last)]).astype(np.int32)
        k_cache = np.zeros((pages, page, hkv, d))
        v_cache = np.zeros((pages, page, hkv, d))
        for b, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
            for p in range(e - s):
                k_cache[table[b, p // page], p % page] = k[s + p]
                v_cache[table[b, p // page], p % page] = v[s + p]
        want_out, want_lse, tie = moba_paged_decode_reference(
            q[rows], cu_q, k_cache, v_cache, table, seqlens, block, top_k,
            selection=selection)
        check_rows(selection, out, lse, want_out, want_lse, tie)
        results[selection] = out
    assert not np.allclose(results["kv_head"], results["query_head"])


@FORMS
def test_bad_lengths_and_pages_give_nan_rows_and_no_stray_access(parallel):
    """A sequence whose length exceeds its pages, whose queries outnumber
    its cache, or whose block table names a page outside the pool gets NaN
    rows; the other sequences are untouched."""
    hq, hkv, d, page, block, top_k = 2, 1, 16, 16, 16, 2
    seqlens, last = [40, 30, 20, 50], [2, 2, 2, 2]
    rng = np.random.default_rng(2)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="f32",
                          target="cpu")
    full_out, full_lse = kernel(q, k, v, cu, return_lse=True)
    table, pages = random_table(rng, seqlens, page)
    poison = np.full((pages, page, hkv, d), np.nan, dtype=np.float32)
    chunks = chunk_counts(rng, seqlens, last, 2)
    bad_table = table.copy()
    bad_table[3, 1] = pages + 1000  # sequence 3: a page outside the pool
    lens = list(seqlens)
    lens[1] = table.shape[1] * page + 1  # sequence 1: more than its pages
    lens[2] = 1  # sequence 2: 2 queries, 1 cached token
    # The appends see the good table; decode the bad one and bad lengths.
    out, lse, rows = run_decode_step(q, chunks, k, v, cu, poison, table,
                                     block, top_k, 5, decode_lens=lens,
                                     parallel=parallel)
    good = np.asarray([0, 1, 6, 7])  # sequences 0 and 3
    _, _, tie = moba_reference(q, k, v, cu, block, top_k)
    check_rows("good", out[good], lse[good], full_out[rows[good]],
               full_lse[rows[good]], tie[rows[good]])
    assert np.isnan(out[2:6]).all() and np.isnan(lse[2:6]).all()
    out, lse, rows = run_decode_step(q, chunks, k, v, cu, poison, bad_table,
                                     block, top_k, 5, parallel=parallel)
    assert np.isnan(out[6:]).all() and np.isnan(lse[6:]).all()
    assert not np.isnan(out[:6]).any()


@FORMS
@pytest.mark.parametrize("page", [16, 64])
def test_bf16_decode_rows_equal_the_full_forward(page, parallel):
    """The same equivalence with a bf16 cache, queries and output (the
    block sums, scores and lse f32): decode's rows against the bf16 full
    forward's, at the numerics tests' bf16 tolerance."""
    hq, hkv, d, top_k = 4, 2, 16, 3
    block = 2 * page
    seqlens, last = [300, 90, 140], [16, 1, 5]
    rng = np.random.default_rng(page)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    q, k, v = (moba.from_bf16(moba.to_bf16(x)) for x in (q, k, v))
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16",
                          target="cpu")
    full_out, full_lse = kernel(*(moba.to_bf16(x) for x in (q, k, v)), cu,
                                return_lse=True)
    full_out = moba.from_bf16(full_out)
    _, _, near_tie = moba_reference(q, k, v, cu, block, top_k)
    table, pages = random_table(rng, seqlens, page)
    poison = np.full((pages, page, hkv, d), np.nan, dtype=np.float32)
    chunks = chunk_counts(rng, seqlens, last, 3)
    max_blocks = max(-(-n // block) for n in seqlens)
    out, lse, rows = run_decode_step(q, chunks, k, v, cu, poison, table,
                                     block, top_k, max_blocks, dtype="bf16",
                                     parallel=parallel)
    keep = ~near_tie[rows]
    np.testing.assert_allclose(out[keep], full_out[rows][keep], rtol=1e-2,
                               atol=1e-2)
    np.testing.assert_allclose(lse[keep], full_lse[rows][keep], rtol=1e-2,
                               atol=1e-2)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_forall_forms_match_the_serial_loops_bit_for_bit(dtype):
    """The parallel forms add every block sum's keys and every row's scores
    in the serial loops' order: the same bits, over several appends (blocks
    that start in one append and end in another), GQA, and a sequence with
    no cached tokens before its only append."""
    hq, hkv, d, page, block, top_k = 4, 2, 16, 8, 16, 3
    seqlens, last = [75, 1, 40, 33], [3, 1, 16, 9]
    rng = np.random.default_rng(5)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    table, pages = random_table(rng, seqlens, page)
    poison = np.full((pages, page, hkv, d), np.nan, dtype=np.float32)
    chunks = chunk_counts(rng, seqlens, last, 3)
    got = [run_decode_step(q, chunks, k, v, cu, poison, table, block, top_k,
                           6, dtype=dtype, parallel=parallel)
           for parallel in (False, True)]
    assert not np.isnan(got[0][0]).any()
    for serial, forall in zip(got[0][:2], got[1][:2]):
        np.testing.assert_array_equal(serial.view(np.uint32),
                                      forall.view(np.uint32))
