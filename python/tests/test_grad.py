"""The backward (Kernel.backward, MobaAttention's autograd) against the
float64 gradients of docs/semantics.md ("Gradients"), on the CPU: numpy and
torch, poisoned outputs, NaN propagation, argument checks."""
import numpy as np
import pytest

import moba
from reference import moba_grad_reference, moba_reference, random_inputs

SEQLENS = [0, 1, 5, 17, 40]
HQ, HKV, D, BLOCK, TOP_K = 4, 2, 16, 8, 3
# Relative error per tensor, ||got - want|| / ||want||: the gradients come
# from the kernel's own out (rounded to the element type) and are rounded
# once more.
TOLERANCE = {"f32": 2e-5, "f16": 2e-3, "bf16": 1e-2}


def compile_grad(dtype="f32", **overrides):
    args = dict(head_dim=D, num_heads=HQ, num_kv_heads=HKV, block_size=BLOCK,
                top_k=TOP_K, dtype=dtype, target="cpu", backward=True)
    args.update(overrides)
    return moba.compile(**args)


def store(x, dtype):
    """`x` in the kernel's numpy form of `dtype`."""
    if dtype == "bf16":
        return moba.to_bf16(x)
    return x.astype(np.float16 if dtype == "f16" else np.float32)


def load(x, dtype):
    return (moba.from_bf16(x) if dtype == "bf16" else x).astype(np.float64)


def relative_error(got, want, keep):
    """||got - want|| / ||want|| over the rows `keep` ([T, H] bool)."""
    diff = np.linalg.norm((got - want)[keep])
    return diff / max(np.linalg.norm(want[keep]), 1e-30)


def problem(seed, seqlens=SEQLENS, hq=HQ, hkv=HKV):
    rng = np.random.default_rng(seed)
    q, k, v, cu = random_inputs(rng, seqlens, hq, hkv, D)
    dout = rng.standard_normal(q.shape, dtype=np.float32)
    dlse = rng.standard_normal(q.shape[:2], dtype=np.float32)
    return q, k, v, cu, dout, dlse


def check_gradients(got, q, k, v, cu, dout, dlse, dtype, causal=True,
                    block=BLOCK, top_k=TOP_K):
    """Compares (dq, dk, dv) as float64 with the reference on the inputs as
    the kernel saw them (rounded to `dtype`)."""
    seen = [load(store(x, dtype), dtype) for x in (q, k, v, dout)]
    dq, dk, dv, dq_unsure, dkv_unsure = moba_grad_reference(
        *seen[:3], cu, block, top_k, seen[3], dlse, causal=causal)
    assert (~dq_unsure).any() and (~dkv_unsure).any()
    for name, g, want, keep in (("dq", got[0], dq, ~dq_unsure),
                                ("dk", got[1], dk, ~dkv_unsure),
                                ("dv", got[2], dv, ~dkv_unsure)):
        assert not np.isnan(g).any(), f"{name} has NaN"
        error = relative_error(g, want, keep)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error}"


@pytest.mark.parametrize("dtype,causal,heads,with_dlse", [
    ("f32", True, (4, 2), True),
    ("f32", False, (4, 4), False),
    ("bf16", True, (4, 1), True),
    ("f16", False, (4, 2), True),
])
def test_numpy_matches_reference(dtype, causal, heads, with_dlse):
    hq, hkv = heads
    q, k, v, cu, dout, dlse = problem(1, hq=hq, hkv=hkv)
    dlse = dlse if with_dlse else None
    kernel = compile_grad(dtype, causal=causal, num_heads=hq,
                          num_kv_heads=hkv)
    q_, k_, v_, dout_ = (store(x, dtype) for x in (q, k, v, dout))
    out, lse = kernel(q_, k_, v_, cu, return_lse=True)
    dq, dk, dv = kernel.backward(q_, k_, v_, cu, out, lse, dout_, dlse)
    assert dq.dtype == q_.dtype and dk.shape == k.shape
    check_gradients([load(x, dtype) for x in (dq, dk, dv)], q, k, v, cu,
                    dout, dlse, dtype, causal)


def test_given_outputs_are_written_over_poison():
    q, k, v, cu, dout, dlse = problem(2)
    kernel = compile_grad()
    out, lse = kernel(q, k, v, cu, return_lse=True)
    dq, dk, dv = (np.full_like(x, np.nan) for x in (q, k, v))
    result = kernel.backward(q, k, v, cu, out, lse, dout, dlse, dq=dq, dk=dk,
                             dv=dv)
    assert all(r is g for r, g in zip(result, (dq, dk, dv)))
    check_gradients((dq, dk, dv), q, k, v, cu, dout, dlse, "f32")


def test_batched_layout():
    rng = np.random.default_rng(3)
    q, k, v, _ = random_inputs(rng, [24, 24], HQ, HKV, D)
    dout = rng.standard_normal(q.shape, dtype=np.float32)
    shape = lambda x: x.reshape(2, 24, *x.shape[1:])
    kernel = compile_grad(layout="batched")
    out, lse = kernel(shape(q), shape(k), shape(v), return_lse=True)
    dq, dk, dv = kernel.backward(shape(q), shape(k), shape(v), None, out, lse,
                                 shape(dout))
    assert dq.shape == (2, 24, HQ, D) and dk.shape == (2, 24, HKV, D)
    check_gradients([x.reshape(48, *x.shape[2:]) for x in (dq, dk, dv)], q,
                    k, v, np.array([0, 24, 48], np.int32), dout, None, "f32")


@pytest.mark.parametrize("stage", ["fused", "decomposed"])
def test_nan_in_a_key_reaches_the_rows_that_attend_it(stage):
    """docs/semantics.md: a NaN key makes the rows attending it NaN, hence
    their dq and the dk, dv of every key those rows attend; the rest stays
    finite and right."""
    q, k, v, cu, dout, dlse = problem(4, seqlens=[40])
    k[2, 1, 5] = np.nan  # block 0 of KV head 1
    kernel = compile_grad(stage=stage)
    out, lse = kernel(q, k, v, cu, return_lse=True)
    dq, dk, dv = kernel.backward(q, k, v, cu, out, lse, dout, dlse)
    want_dq, want_dk, want_dv, dq_unsure, dkv_unsure = moba_grad_reference(
        q, k, v, cu, BLOCK, TOP_K, dout, dlse)
    assert np.isnan(dk[2, 1]).all() and np.isnan(dv[2, 1]).all()
    assert np.isnan(dq[:, 2:]).any() and not np.isnan(dq[:, :2]).any()
    for got, want in ((dq, want_dq), (dk, want_dk), (dv, want_dv)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want_dq) & ~dq_unsure[..., None]
    np.testing.assert_allclose(dq[finite], want_dq[finite], atol=1e-4,
                               rtol=1e-3)


class FakeCudaArray:
    """Anything that says it lives on a GPU."""
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<i4",
                                "data": (0, False), "version": 3}


@pytest.fixture(scope="module")
def prepared():
    q, k, v, cu, dout, dlse = problem(5, seqlens=[20, 12])
    kernel = compile_grad()
    out, lse = kernel(q, k, v, cu, return_lse=True)
    return kernel, dict(q=q, k=k, v=v, cu_seqlens=cu, out=out, lse=lse,
                        grad_out=dout, grad_lse=dlse)


def call(prepared, **changes):
    kernel, args = prepared
    args = dict(args)
    args.update(changes)
    return kernel.backward(**args)


def test_error_grad_out_dtype(prepared):
    g = prepared[1]["grad_out"].astype(np.float64)
    with pytest.raises(TypeError, match="grad_out has dtype float64"):
        call(prepared, grad_out=g)


def test_error_out_shape(prepared):
    with pytest.raises(ValueError, match="out has shape"):
        call(prepared, out=prepared[1]["out"][:-1])


def test_error_lse_dtype(prepared):
    with pytest.raises(ValueError, match="grad_lse has shape .* dtype "
                       "float64"):
        call(prepared, grad_lse=prepared[1]["grad_lse"].astype(np.float64))


def test_error_lse_missing(prepared):
    with pytest.raises(ValueError, match="lse is required"):
        call(prepared, lse=None)


def test_error_cu_seqlens(prepared):
    with pytest.raises(ValueError, match="cu_seqlens must end at the token "
                       "count 32"):
        call(prepared, cu_seqlens=np.array([0, 20, 31], np.int32))


def test_error_dq_aliases_an_input(prepared):
    with pytest.raises(ValueError, match="dq overlaps grad_out"):
        call(prepared, dq=prepared[1]["grad_out"])


def test_error_dk_aliases_dv(prepared):
    dk = np.empty_like(prepared[1]["k"])
    with pytest.raises(ValueError, match="dv overlaps dk"):
        call(prepared, dk=dk, dv=dk)


def test_error_read_only_output(prepared):
    dv = np.empty_like(prepared[1]["v"])
    dv.flags.writeable = False
    with pytest.raises(ValueError, match="dv is read-only"):
        call(prepared, dv=dv)


def test_error_dq_wrong_shape(prepared):
    with pytest.raises(ValueError, match="dq has shape"):
        call(prepared, dq=np.empty_like(prepared[1]["k"]))


@pytest.mark.parametrize("name", ["k", "out", "lse", "grad_out", "grad_lse",
                                  "dq", "dv"])
def test_error_a_gpu_array_among_host_ones(prepared, name):
    with pytest.raises(ValueError, match=f"{name} is on a GPU but q is in "
                       "host memory"):
        call(prepared, **{name: FakeCudaArray()})


def test_error_kernel_without_backward(prepared):
    kernel = compile_grad(backward=False)
    args = dict(prepared[1])
    with pytest.raises(ValueError, match="compiled without the backward"):
        kernel.backward(**args)


def test_a_gpu_target_takes_the_backward():
    """The runner takes the backward for the GPU targets too: whether it
    compiles is the GPU pipeline's to say (test_stand_in_driver.py runs
    it)."""
    from moba import _capi
    for target in ("sm_80", "sm_90a"):
        assert _capi.check_config(D, HQ, HKV, BLOCK, TOP_K, True, None,
                                  "bf16", target, "fused", None, None,
                                  backward=True) is None


def test_error_backward_not_a_bool():
    with pytest.raises(TypeError, match="backward must be a bool"):
        compile_grad(backward="yes")


torch = pytest.importorskip("torch")


def test_torch_tensors():
    q, k, v, cu, dout, dlse = problem(6)
    kernel = compile_grad()
    t = [torch.from_numpy(x) for x in (q, k, v, dout, dlse)]
    out, lse = kernel(*t[:3], torch.from_numpy(cu), return_lse=True)
    out, lse = torch.from_numpy(out), torch.from_numpy(lse)
    dq, dk, dv = kernel.backward(*t[:3], torch.from_numpy(cu), out, lse, t[3],
                                 t[4])
    assert all(isinstance(x, torch.Tensor) for x in (dq, dk, dv))
    check_gradients([x.numpy() for x in (dq, dk, dv)], q, k, v, cu, dout,
                    dlse, "f32")


@pytest.mark.parametrize("dtype,return_lse", [(torch.float32, True),
                                              (torch.bfloat16, False)])
def test_autograd_end_to_end(dtype, return_lse):
    """loss.backward() through MobaAttention fills q.grad, k.grad, v.grad
    with the reference's gradients of the same loss."""
    q, k, v, cu, dout, dlse = problem(7, seqlens=[0, 1, 30, 17])
    leaves = [torch.from_numpy(x).to(dtype).requires_grad_()
              for x in (q, k, v)]
    result = moba.MobaAttention.apply(*leaves, torch.from_numpy(cu), 30,
                                      BLOCK, TOP_K, return_lse)
    out, lse = result if return_lse else (result, None)
    # A loss whose gradient with respect to out is dout, and to lse dlse.
    loss = (out.float() * torch.from_numpy(dout)).sum()
    if return_lse:
        loss = loss + (lse * torch.from_numpy(dlse)).sum()
    loss.backward()
    name = "f32" if dtype == torch.float32 else "bf16"
    grads = [x.grad.float().numpy() for x in leaves]
    check_gradients(grads, q, k, v, cu, dout, dlse if return_lse else None,
                    name)


def test_autograd_through_lse_alone():
    q, k, v, cu, _, dlse = problem(8)
    leaves = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
    _, lse = moba.MobaAttention.apply(*leaves, torch.from_numpy(cu), None,
                                      BLOCK, TOP_K, True)
    (lse * torch.from_numpy(dlse)).sum().backward()
    check_gradients([x.grad.numpy() for x in leaves], q, k, v, cu,
                    np.zeros_like(q), dlse, "f32")


def test_library_checks_the_buffers_itself(prepared):
    """mobaRunGrad checks what a C caller passes: the Python checks above
    never let these through."""
    from moba import _capi
    kernel, a = prepared
    handle = kernel._handles["cpu"]
    dq, dk, dv = (np.empty_like(a[n]) for n in ("q", "k", "v"))
    pointers = {n: a[n].ctypes.data for n in ("q", "k", "v", "cu_seqlens",
                                              "out", "lse", "grad_out")}

    def run(**changes):
        p = dict(pointers, dq=dq.ctypes.data, dk=dk.ctypes.data,
                 dv=dv.ctypes.data, grad_lse=None)
        p.update(changes)
        _capi.run_grad_kernel(handle, p["q"], p["k"], p["v"],
                              p["cu_seqlens"], 2, 32, p["out"], p["lse"],
                              p["grad_out"], p["grad_lse"], p["dq"],
                              p["dk"], p["dv"])
    run()  # as given, it runs
    with pytest.raises(RuntimeError, match="dq overlaps dout"):
        run(dq=pointers["grad_out"])
    with pytest.raises(RuntimeError, match="dk overlaps dv"):
        run(dv=dk.ctypes.data + 4)
    with pytest.raises(RuntimeError, match="dout is null"):
        run(grad_out=None)
    with pytest.raises(RuntimeError, match="cu_seqlens must end at the "
                       "token count 32"):
        _capi.run_grad_kernel(handle, pointers["q"], pointers["k"],
                              pointers["v"], pointers["cu_seqlens"], 1, 32,
                              pointers["out"], pointers["lse"],
                              pointers["grad_out"], None, dq.ctypes.data,
                              dk.ctypes.data, dv.ctypes.data)
    forward_only = compile_grad(backward=False)
    with pytest.raises(RuntimeError, match="compiled without the backward"):
        _capi.run_grad_kernel(forward_only._handles["cpu"], *[None] * 4, 1,
                              0, *[None] * 7)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_autograd_compiles_the_backward_only_for_a_gradient(requires_grad):
    """MobaAttention's forward compiles the backward with it when q, k or v
    requires a gradient, and only then (inference pays no backward
    compile)."""
    q, k, v, cu, _, _ = problem(9, seqlens=[19])
    tensors = [torch.from_numpy(x) for x in (q, k, v)]
    tensors[1].requires_grad_(requires_grad)
    moba.MobaAttention.apply(*tensors, torch.from_numpy(cu), None, BLOCK,
                             TOP_K)
    used = list(moba._recent)[-1]
    assert used.config["backward"] is requires_grad


def test_a_gpu_backward_needs_the_tensor_core_types():
    """The C API's check says which GPU backward cannot compile (f32, a
    head_dim the tensor cores do not take) before any compile, and target
    "auto" then settles on the CPU, which carries every backward."""
    from moba import _capi

    def check(head_dim, dtype, target):
        return _capi.check_config(head_dim, 4, 2, 64, 2, True, None, dtype,
                                  target, "fused", None, None,
                                  backward=True)

    assert check(64, "bf16", "sm_90a") is None
    assert check(64, "f16", "sm_80") is None
    assert "f16 or bf16" in check(64, "f32", "sm_90a")
    assert "multiple of 16 up to 128" in check(24, "bf16", "sm_80")
    assert check(64, "f32", "cpu") is None
