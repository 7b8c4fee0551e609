"""The float64 reference of paged decode (moba_paged_decode_reference)
against the forward's reference (moba_reference): docs/semantics.md,
"Decode and chunked prefill", says decode of token p is row p of the full
causal forward, for any page assignment and any split of the sequence into
cached prefix and query chunk.
"""
import numpy as np
import pytest

from reference import (moba_paged_decode_reference, moba_reference,
                       paged_cache_from_sequences, random_inputs)


def last_rows(cu, n_queries):
    """Packed indices of the last n_queries[b] tokens of every sequence, and
    the cu_seqlens_q of those queries."""
    rows, cu_q = [], [0]
    for b, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        n = min(n_queries[b], e - s)
        rows.extend(range(e - n, e))
        cu_q.append(cu_q[-1] + n)
    return np.asarray(rows, dtype=np.int64), np.asarray(cu_q, dtype=np.int32)


# (Hq, Hkv, D, page_size, pages per block, top_k, seqlens, queries per seq)
CASES = {
    "gqa-decode-1": (4, 2, 8, 4, 2, 3, [37, 9, 1, 24], [1, 1, 1, 1]),
    "mha-spec-16": (2, 2, 8, 4, 1, 2, [40, 17, 30], [16, 3, 16]),
    "mqa-chunk": (3, 1, 4, 2, 3, 4, [50, 6, 33], [20, 6, 7]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_paged_decode_reference_is_a_row_of_the_forward(name):
    hq, hkv, d, page, per_block, top_k, seqlens, n_q = CASES[name]
    block = page * per_block
    rng = np.random.default_rng(len(name))
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    full_out, full_lse, tie = moba_reference(q, k, v, cu, block, top_k)
    k_cache, v_cache, table, lens = paged_cache_from_sequences(
        rng, k, v, cu, page)
    rows, cu_q = last_rows([int(x) for x in cu], n_q)
    out, lse, dtie = moba_paged_decode_reference(
        q[rows], cu_q, k_cache, v_cache, table, lens, block, top_k)
    assert np.array_equal(dtie, tie[rows])
    np.testing.assert_allclose(out, full_out[rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, full_lse[rows], rtol=1e-12, atol=1e-12)


def test_kv_head_selection_is_per_head_selection_without_groups():
    rng = np.random.default_rng(3)
    q, k, v, cu = random_inputs(rng, [45, 20], 2, 2, 8)
    k_cache, v_cache, table, lens = paged_cache_from_sequences(rng, k, v, cu, 4)
    rows, cu_q = last_rows([int(x) for x in cu], [5, 5])
    per_head = moba_paged_decode_reference(q[rows], cu_q, k_cache, v_cache,
                                           table, lens, 8, 2)
    per_group = moba_paged_decode_reference(q[rows], cu_q, k_cache, v_cache,
                                            table, lens, 8, 2,
                                            selection="kv_head")
    np.testing.assert_array_equal(per_head[0], per_group[0])


def test_kv_head_selection_shares_one_choice_per_group():
    """With 4 query heads a group and top-2 of many blocks, per-head choices
    differ somewhere; kv_head makes the heads of a group agree, each
    matching the forward over its group's summed-score choice."""
    rng = np.random.default_rng(5)
    q, k, v, cu = random_inputs(rng, [96], 4, 1, 8)
    k_cache, v_cache, table, lens = paged_cache_from_sequences(rng, k, v, cu, 4)
    rows, cu_q = last_rows([int(x) for x in cu], [8])
    per_head, _, _ = moba_paged_decode_reference(q[rows], cu_q, k_cache,
                                                 v_cache, table, lens, 8, 2)
    shared, _, _ = moba_paged_decode_reference(q[rows], cu_q, k_cache, v_cache,
                                               table, lens, 8, 2,
                                               selection="kv_head")
    assert not np.allclose(per_head, shared)
    # Every head of the group attends the block its group's summed score
    # ranks first: recompute that block and attend it directly.
    qf, kf, vf = (x.astype(np.float64) for x in (q, k, v))
    for i, t in enumerate(rows):
        own = t // 8
        if own == 0:
            continue
        means = [kf[j * 8:(j + 1) * 8, 0].mean(0) for j in range(own)]
        summed = [sum(qf[t, h] @ means[j] for h in range(4))
                  for j in range(own)]
        best = max(range(own), key=lambda j: (summed[j], j))
        keys = np.concatenate([np.arange(best * 8, best * 8 + 8),
                               np.arange(own * 8, t + 1)])
        for h in range(4):
            x = (kf[keys, 0] @ qf[t, h]) * float(np.float32(1 / np.sqrt(8)))
            w = np.exp(x - x.max())
            np.testing.assert_allclose(shared[i, h],
                                       (w / w.sum()) @ vf[keys, 0],
                                       rtol=1e-10, atol=1e-12)


def test_paged_reference_rejects_blocks_that_split_pages():
    rng = np.random.default_rng(0)
    q, k, v, cu = random_inputs(rng, [8], 1, 1, 4)
    k_cache, v_cache, table, lens = paged_cache_from_sequences(rng, k, v, cu, 4)
    with pytest.raises(ValueError, match="not a multiple of page_size"):
        moba_paged_decode_reference(q[:1], [0, 1], k_cache, v_cache, table,
                                    lens, 6, 2)
