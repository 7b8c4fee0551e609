"""test/device/gpu_check.py, the GPU machine's checks, checked here where
there is no GPU: its torch float64 references against reference.py's numpy
ones (two oracles written apart), and its backward cases run end to end on
CPU tensors (MOBA_CHECK_DEVICE=cpu, the CPU target)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from reference import moba_grad_reference, moba_reference, random_inputs

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "test", "device", "gpu_check.py")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [  # seqlens, Hq, Hkv, D, block, top_k, causal
    ([0, 1, 37, 70], 4, 2, 16, 8, 3, True),
    ([50, 0, 33], 4, 4, 8, 16, 2, False),
    ([90], 4, 1, 16, 8, 4, True),
    ([64, 1], 2, 2, 8, 32, 1, True),
]


def float32_scale(d):
    """The softmax scale the kernels (and reference.py) use: 1/sqrt(d)
    rounded to float32; gpu_check.py's default is the float64 one."""
    return float(np.float32(1.0 / np.sqrt(d)))


def numpy_case(seed, seqlens, hq, hkv, d):
    rng = np.random.default_rng(seed)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, d)
    dout = rng.standard_normal(q.shape, dtype=np.float32)
    dlse = rng.standard_normal(q.shape[:2], dtype=np.float32)
    return q, k, v, cu, dout, dlse


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_forward_reference_agrees_with_numpys(gpu_check, case):
    seqlens, hq, hkv, d, block, top_k, causal = CASES[case]
    q, k, v, cu, _, _ = numpy_case(case, seqlens, hq, hkv, d)
    want_out, want_lse, want_near = moba_reference(q, k, v, cu, block, top_k,
                                                   causal)
    out, lse, near, _ = gpu_check.reference(
        *(torch.from_numpy(x) for x in (q, k, v, cu)), block, top_k, causal,
        scale=float32_scale(d))
    np.testing.assert_allclose(out.numpy(), want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), want_lse, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(near.numpy(), want_near)


@pytest.mark.parametrize("with_dlse", [True, False])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_grad_reference_agrees_with_numpys(gpu_check, case, with_dlse):
    seqlens, hq, hkv, d, block, top_k, causal = CASES[case]
    q, k, v, cu, dout, dlse = numpy_case(case, seqlens, hq, hkv, d)
    dlse = dlse if with_dlse else None
    want = moba_grad_reference(q, k, v, cu, block, top_k, dout, dlse,
                               causal=causal)
    got = gpu_check.grad_reference(
        *(torch.from_numpy(x) for x in (q, k, v, cu)), block, top_k, causal,
        torch.from_numpy(dout),
        None if dlse is None else torch.from_numpy(dlse),
        scale=float32_scale(d))
    for name, g, w in zip(("dq", "dk", "dv"), got[:3], want[:3]):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-11,
                                   err_msg=name)
    for name, g, w in zip(("dq_unsure", "dkv_unsure"), got[3:], want[3:]):
        np.testing.assert_array_equal(g.numpy(), w, err_msg=name)


def test_near_ties_are_marked_alike(gpu_check):
    """Rows whose k-th and (k+1)-th gate scores nearly tie: both references
    mark them and the keys they may attend."""
    rng = np.random.default_rng(11)
    q, k, v, cu = random_inputs(rng, [64], 2, 1, 8)
    k[16:24] = k[8:16] + 1e-7  # blocks 1 and 2 score almost alike
    dout = rng.standard_normal(q.shape, dtype=np.float32)
    want = moba_grad_reference(q, k, v, cu, 8, 2, dout)
    got = gpu_check.grad_reference(
        *(torch.from_numpy(x) for x in (q, k, v, cu)), 8, 2, True,
        torch.from_numpy(dout))
    assert want[3].any(), "the case has no near-tie"
    np.testing.assert_array_equal(got[3].numpy(), want[3])
    np.testing.assert_array_equal(got[4].numpy(), want[4])


def test_the_backward_cases_run_on_the_cpu():
    """`gpu_check.py grad-small` end to end on CPU tensors: compile with the
    backward, poison, two runs, compare."""
    environment = dict(os.environ, MOBA_CHECK_DEVICE="cpu")
    result = subprocess.run([sys.executable, SCRIPT, "grad-small"],
                            capture_output=True, text=True, timeout=600,
                            env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "grad-small: 3/3 cases passed" in result.stdout, result.stdout
