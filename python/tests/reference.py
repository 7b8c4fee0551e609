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
    scale = 1.0 / np.sqrt(d) if scale is None else float(np.float32(scale))
    if scale is not None:
        scale = float(np.float32(scale))
    out = np.zeros_like(q)
    lse = np.zeros((tokens, hq))
    near_tie = np.zeros((tokens, hq), dtype=bool)
    cu = [int(x) for x in cu_seqlens]
    with np.errstate(invalid="ignore"):  # NaN and inf propagate on purpose
        _attend(q, k, v, cu, block_size, top_k, causal, scale,
                tie_tolerance, out, lse, near_tie)
    return out, lse, near_tie


def _attend(q, k, v, cu, block_size, top_k, causal, scale, tie_tolerance,
            out, lse, near_tie):
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
                if 1 <= take < len(scored):
                    magnitude = max(m for _, _, m in scored)
                    gap = scored[take - 1][0] - scored[take][0]
                    near_tie[t, h] = 0 < gap <= tie_tolerance * magnitude
                keys = np.concatenate([
                    np.arange(bounds[j][0],
                              min(bounds[j][1], t + 1) if causal
                              else bounds[j][1]) for j in chosen])
                x = scale * (k[keys, g] @ q[t, h])
                m = x.max()
                w = np.exp(x - m)
                out[t, h] = (w @ v[keys, g]) / w.sum()
                lse[t, h] = m + np.log(w.sum())


def random_inputs(rng, seqlens, hq, hkv, d):
    cu = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    tokens = int(cu[-1])
    q = rng.standard_normal((tokens, hq, d), dtype=np.float32)
    k = rng.standard_normal((tokens, hkv, d), dtype=np.float32)
    v = rng.standard_normal((tokens, hkv, d), dtype=np.float32)
    return q, k, v, cu
