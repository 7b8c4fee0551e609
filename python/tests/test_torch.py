"""The torch wrapper on CPU tensors (skipped where torch is absent)."""
import numpy as np
import pytest

import moba
from reference import moba_reference, random_inputs

torch = pytest.importorskip("torch")


def test_cpu_tensors_and_autograd():
    rng = np.random.default_rng(0)
    q, k, v, cu = random_inputs(rng, [30, 50], 4, 2, 16)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    out = moba.MobaAttention.apply(tq, tk, tv, torch.from_numpy(cu), 50, 16,
                                   2)
    ref, _, near_tie = moba_reference(q, k, v, cu, 16, 2)
    np.testing.assert_allclose(out.detach().numpy()[~near_tie],
                               ref[~near_tie], atol=2e-5, rtol=2e-4)
    # The backward against the reference: test_grad.py.
    out.sum().backward()
    assert all(x.grad is not None and x.grad.shape == x.shape
               for x in (tq, tk, tv))
