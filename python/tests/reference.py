"""float64 reference of docs/semantics.md for the Python tests, in numpy.

Independent of the C++ reference on purpose: two oracles written apart agree
only if both read the semantics the same way.
"""
import numpy as np


def moba_reference(q, k, v, cu_seqlens, block_size, top_k, causal=True,
                   scale=None, tie_tolerance=4e-5):
    """Returns (out [T, Hq, D], lse [T, Hq], near_tie [T, Hq] bool)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    tokens, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = _scale(scale, d)
    out = np.zeros_like(q)
    lse = np.zeros((tokens, hq))
    near_tie = np.zeros((tokens, hq), dtype=bool)
    cu = [int(x) for x in cu_seqlens]
    with np.errstate(invalid="ignore"):  # NaN and inf propagate on purpose
        _attend(q, k, v, cu, block_size, top_k, causal, scale,
                tie_tolerance, out, lse, near_tie)
    return out, lse, near_tie


def moba_grad_reference(q, k, v, cu_seqlens, block_size, top_k, dout,
                        dlse=None, causal=True, scale=None,
                        tie_tolerance=4e-5):
    """Gradients of out and lse (docs/semantics.md, "Gradients") against the
    upstream dout [T, Hq, D] and dlse [T, Hq] (None: zero), the selection
    held fixed.

    Returns (dq [T, Hq, D], dk, dv [T, Hkv, D], dq_unsure [T, Hq] bool,
    dkv_unsure [T, Hkv] bool). dq_unsure marks near-tied rows; dkv_unsure
    the keys whose dk, dv such a row may change by choosing the other way:
    those of the candidates within the tolerance of the boundary and every
    key the row attends (a swap renormalizes its weights).
    """
    q, k, v, dout = (np.asarray(x, dtype=np.float64)
                     for x in (q, k, v, dout))
    dlse = None if dlse is None else np.asarray(dlse, dtype=np.float64)
    scale = _scale(scale, q.shape[2])
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    dq_unsure = np.zeros(q.shape[:2], dtype=bool)
    dkv_unsure = np.zeros(k.shape[:2], dtype=bool)
    cu = [int(x) for x in cu_seqlens]
    with np.errstate(invalid="ignore"):  # NaN and inf propagate on purpose
        for t, h, g, keys, near_tie, unsure_keys in _select(
                q, k, cu, block_size, top_k, causal, tie_tolerance):
            if near_tie:
                dq_unsure[t, h] = True
                dkv_unsure[keys, g] = True
                dkv_unsure[unsure_keys, g] = True
            p, _ = _softmax(q[t, h], k[keys, g], scale)
            out = p @ v[keys, g]
            delta = dout[t, h] @ out
            if dlse is not None:
                delta -= dlse[t, h]
            ds = p * (v[keys, g] @ dout[t, h] - delta)
            dq[t, h] = scale * (ds @ k[keys, g])
            # dK and dV sum over every query head of the KV head (GQA, MQA).
            dk[keys, g] += scale * np.outer(ds, q[t, h])
            dv[keys, g] += np.outer(p, dout[t, h])
    return dq, dk, dv, dq_unsure, dkv_unsure


def _scale(scale, d):
    return float(np.float32(1.0 / np.sqrt(d) if scale is None else scale))


def _softmax(q_row, keys, scale):
    """(weights P over the keys, lse) of one row."""
    x = scale * (keys @ q_row)
    m = x.max()  # NaN propagates
    w = np.exp(x - m)
    return w / w.sum(), m + np.log(w.sum())


def _attend(q, k, v, cu, block_size, top_k, causal, scale, tie_tolerance,
            out, lse, near_tie):
    for t, h, g, keys, tie, _ in _select(q, k, cu, block_size, top_k,
                                         causal, tie_tolerance):
        near_tie[t, h] = tie
        p, lse[t, h] = _softmax(q[t, h], k[keys, g], scale)
        out[t, h] = p @ v[keys, g]


def _select(q, k, cu, block_size, top_k, causal, tie_tolerance):
    """The selection of docs/semantics.md: yields, per row, (t, h, g, keys
    K(t, h), near_tie, unsure_keys). unsure_keys (near-ties only): the keys
    of the candidates within the tolerance of the top_k-th, chosen or not.
    """
    hq, hkv = q.shape[1], k.shape[1]
    d = q.shape[2]
    group = hq // hkv
    for start, end in zip(cu[:-1], cu[1:]):
        n_blocks = -(-(end - start) // block_size)
        bounds = [(start + j * block_size,
                   min(start + (j + 1) * block_size, end))
                  for j in range(n_blocks)]
        means = np.stack([k[a:b].mean(axis=0) for a, b in bounds]) \
            if n_blocks else np.zeros((0, hkv, d))
        for t in range(start, end):
            own = (t - start) // block_size
            for h in range(hq):
                g = h // group
                candidates = range(own) if causal else range(n_blocks)
                products = [q[t, h] * means[j, g] for j in candidates]
                # Best first, ties to the later block; NaN ranks as +inf.
                scored = sorted(((np.inf if np.isnan(p.sum()) else p.sum(), j,
                                  np.abs(p).sum())
                                 for p, j in zip(products, candidates)),
                                key=lambda s: (-s[0], -s[1]))
                take = top_k - 1 if causal else top_k
                chosen = [j for _, j, _ in scored[:take]]
                if causal:
                    chosen.append(own)
                tie = False
                unsure = []
                if 1 <= take < len(scored):
                    bound = tie_tolerance * max(m for _, _, m in scored)
                    gap = scored[take - 1][0] - scored[take][0]
                    tie = bool(0 < gap <= bound)
                    if tie:
                        unsure = [j for s, j, _ in scored
                                  if abs(s - scored[take - 1][0]) <= bound]
                keys = np.concatenate([
                    np.arange(bounds[j][0],
                              min(bounds[j][1], t + 1) if causal
                              else bounds[j][1]) for j in chosen])
                unsure_keys = np.array(
                    [s for j in unsure for s in range(*bounds[j])],
                    dtype=np.int64)
                yield t, h, g, keys, tie, unsure_keys


def random_inputs(rng, seqlens, hq, hkv, d):
    cu = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    tokens = int(cu[-1])
    q = rng.standard_normal((tokens, hq, d), dtype=np.float32)
    k = rng.standard_normal((tokens, hkv, d), dtype=np.float32)
    v = rng.standard_normal((tokens, hkv, d), dtype=np.float32)
    return q, k, v, cu


def moba_paged_decode_reference(q, cu_seqlens_q, k_cache, v_cache,
                                block_table, cache_lens, block_size, top_k,
                                scale=None, selection="query_head",
                                tie_tolerance=4e-5):
    """Decode and chunked prefill against a paged KV cache
    (docs/semantics.md, "Decode and chunked prefill"): query i of sequence
    b's n_b queries sits at position cache_lens[b] - n_b + i and attends
    causally to the sequence's cached keys, read through block_table. The
    block means are computed here from the cached keys (in float64), not
    taken from the kernel's running sums.

    selection: "query_head" (MoBA's) or "kv_head" (the heads of a key/value
    group share one top-k, ranked by the sum of their gate scores).

    Returns (out [Tq, Hq, D], lse [Tq, Hq], near_tie [Tq, Hq] bool).
    """
    q, k_cache, v_cache = (np.asarray(x, dtype=np.float64)
                           for x in (q, k_cache, v_cache))
    if selection not in ("query_head", "kv_head"):
        raise ValueError(f"selection must be query_head or kv_head, "
                         f"got {selection!r}")
    page_size = k_cache.shape[1]
    if block_size % page_size:
        raise ValueError(f"block_size {block_size} is not a multiple of "
                         f"page_size {page_size}")
    tokens, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    scale = _scale(scale, d)
    out = np.zeros_like(q)
    lse = np.zeros((tokens, hq))
    near_tie = np.zeros((tokens, hq), dtype=bool)
    cu = [int(x) for x in cu_seqlens_q]
    with np.errstate(invalid="ignore"):
        for b, (start, end) in enumerate(zip(cu[:-1], cu[1:])):
            length = int(cache_lens[b])
            positions = np.arange(length)
            pages = np.asarray(block_table[b])[positions // page_size]
            keys = k_cache[pages, positions % page_size]    # [len, Hkv, D]
            values = v_cache[pages, positions % page_size]
            for i, t in enumerate(range(start, end)):
                p = length - (end - start) + i
                own = p // block_size
                means = [keys[j * block_size:(j + 1) * block_size].mean(0)
                         for j in range(own)]               # finished blocks
                for h in range(hq):
                    g = h // group
                    heads = (range(g * group, (g + 1) * group)
                             if selection == "kv_head" else [h])
                    scored = []
                    for j in range(own):
                        s = sum(float(q[t, hh] @ means[j][g]) for hh in heads)
                        m = sum(float(np.abs(q[t, hh]) @ np.abs(means[j][g]))
                                for hh in heads)
                        scored.append((np.inf if np.isnan(s) else s, j, m))
                    scored.sort(key=lambda x: (-x[0], -x[1]))
                    take = top_k - 1
                    chosen = [j for _, j, _ in scored[:take]] + [own]
                    if 1 <= take < len(scored):
                        bound = tie_tolerance * max(m for _, _, m in scored)
                        gap = scored[take - 1][0] - scored[take][0]
                        near_tie[t, h] = bool(0 < gap <= bound)
                    attended = np.concatenate([
                        np.arange(j * block_size,
                                  min((j + 1) * block_size, p + 1))
                        for j in chosen])
                    w, lse[t, h] = _softmax(q[t, h], keys[attended, g], scale)
                    out[t, h] = w @ values[attended, g]
    return out, lse, near_tie


def paged_cache_from_sequences(rng, k, v, cu_seqlens, page_size,
                               extra_pages=3):
    """Scatters the packed k, v [T, Hkv, D] of each sequence into the pages
    of a fresh paged cache, pages assigned in random order across the batch
    (plus a few unused pages filled with NaN, which no read may touch).

    Returns (k_cache, v_cache [pages, page_size, Hkv, D], block_table
    [B, max_pages] int32, cache_lens [B] int32).
    """
    cu = [int(x) for x in cu_seqlens]
    lens = [e - s for s, e in zip(cu[:-1], cu[1:])]
    need = [-(-n // page_size) for n in lens]
    max_pages = max(need + [1])
    pages = sum(need) + extra_pages
    order = rng.permutation(pages).astype(np.int32)
    shape = (pages, page_size) + k.shape[1:]
    k_cache = np.full(shape, np.nan, dtype=k.dtype)
    v_cache = np.full(shape, np.nan, dtype=v.dtype)
    # Unused table entries name a real page: a kernel must not read them.
    block_table = np.full((len(lens), max_pages), order[-1], dtype=np.int32)
    used = 0
    for b, (s, n) in enumerate(zip(cu[:-1], lens)):
        for i in range(need[b]):
            page = order[used]
            used += 1
            block_table[b, i] = page
            rows = slice(s + i * page_size, min(s + (i + 1) * page_size, s + n))
            count = rows.stop - rows.start
            k_cache[page, :count] = k[rows]
            v_cache[page, :count] = v[rows]
    return k_cache, v_cache, block_table, np.asarray(lens, dtype=np.int32)
