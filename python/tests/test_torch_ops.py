"""moba's torch.library ops (moba.torch_ops) and moba_attn_varlen on torch
tensors: the version gate and the Python checks everywhere; with torch 2.4
or newer, torch.library.opcheck, gradients against the float64 reference,
and torch.compile(fullgraph=True) of a module matching eager, on CPU
tensors. With an older torch, the fallback through MobaAttention.
(test/device/gpu_check.py torch-compile runs the same on CUDA tensors.)"""
import shutil

import numpy as np
import pytest

import moba
from moba import torch_ops
from reference import moba_reference, random_inputs

torch = pytest.importorskip("torch")

from test_grad import BLOCK, TOP_K, check_gradients, problem  # noqa: E402

needs_ops = pytest.mark.skipif(
    not torch_ops.OPS_AVAILABLE,
    reason=f"needs torch >= 2.4 for torch.library custom ops; "
           f"torch {torch.__version__} is installed")
needs_old_torch = pytest.mark.skipif(
    torch_ops.OPS_AVAILABLE,
    reason=f"the fallback of torch < 2.4; torch {torch.__version__} has "
           "the custom ops")


# --- the version gate (pure Python) -----------------------------------------

@pytest.mark.parametrize("version,parsed", [
    ("2.11.0+cu128", (2, 11)), ("1.13.0a0", (1, 13)),
    ("2.4.0.dev20240601", (2, 4)), ("10.0", (10, 0)), ("nightly", None)])
def test_torch_version_tuple(version, parsed):
    assert torch_ops.torch_version_tuple(version) == parsed


@pytest.mark.parametrize("version", ["2.4.0", "2.11.0+cu128", "3.0"])
def test_new_torch_has_the_ops(version):
    assert torch_ops.unavailable_reason(version) is None


@pytest.mark.parametrize("version", ["1.13.0a0", "2.3.1", "nightly"])
def test_old_torch_is_named(version):
    reason = torch_ops.unavailable_reason(version)
    assert f"torch {version} is installed" in reason and "2.4" in reason


def test_no_torch_is_named():
    assert "torch is not installed" in torch_ops.unavailable_reason(None)


def test_the_installed_torch_decides():
    old = torch_ops.torch_version_tuple(torch.__version__) < (2, 4)
    assert torch_ops.OPS_AVAILABLE is not old
    assert (torch_ops.UNAVAILABLE_REASON is None) is not old
    assert hasattr(torch_ops, "attention_varlen") is not old


# --- the checks the fake implementation makes --------------------------------

def tensors(tokens=10, hq=4, hkv=2, d=8, dtype=torch.float32):
    return (torch.zeros(tokens, hq, d, dtype=dtype),
            torch.zeros(tokens, hkv, d, dtype=dtype),
            torch.zeros(tokens, hkv, d, dtype=dtype),
            torch.tensor([0, 4, tokens], dtype=torch.int32))


def test_check_shapes_accepts_good_inputs():
    torch_ops.check_shapes(*tensors())
    torch_ops.check_shapes(*tensors(dtype=torch.bfloat16))
    q, k, v, cu = tensors()
    torch_ops.check_shapes(q, k, v, cu.long())


@pytest.mark.parametrize("change,kind,text", [
    (lambda q, k, v, cu: (q[0], k, v, cu), ValueError,
     "q must have rank 3"),
    (lambda q, k, v, cu: (q, k, v[:, :1], cu), ValueError,
     "k has shape (10, 2, 8) but v has (10, 1, 8)"),
    (lambda q, k, v, cu: (q, k[:5], v[:5], cu), ValueError,
     "tokens and head_dim must agree"),
    (lambda q, k, v, cu: (q[:, :3], k, v, cu), ValueError,
     "q has 3 heads and k 2"),
    (lambda q, k, v, cu: (q.double(), k, v, cu), TypeError,
     "q has dtype torch.float64"),
    (lambda q, k, v, cu: (q, k.half(), v.half(), cu), TypeError,
     "k has dtype torch.float16 but q has torch.float32"),
    (lambda q, k, v, cu: (q, k, v, cu.float()), TypeError,
     "cu_seqlens must be a 1-D int32 or int64 tensor"),
    (lambda q, k, v, cu: (q, k, v, cu[None]), TypeError,
     "shape (1, 3)"),
    (lambda q, k, v, cu: (q, k.numpy(), v, cu), TypeError,
     "k must be a torch tensor like q, got ndarray"),
])
def test_check_shapes_names_the_problem(change, kind, text):
    with pytest.raises(kind) as e:
        torch_ops.check_shapes(*change(*tensors()))
    assert text in str(e.value)


@pytest.mark.parametrize("args,kind,text", [
    ((None, 1.5, 2, True, None), TypeError, "block_size must be an int"),
    ((None, 8, "2", True, None), TypeError, "top_k must be an int"),
    ((-1, 8, 2, True, None), ValueError, "max_seqlen must not be negative"),
    ((2 ** 64, 8, 2, True, None), ValueError, "max_seqlen must fit"),
    ((None, 8, 2, "yes", None), TypeError, "causal must be a bool"),
    ((None, 8, 2, True, "0.5"), TypeError, "softmax_scale must be a float"),
    ((None, 8, 2, True, True), TypeError, "softmax_scale must be a float"),
])
def test_check_sizes_names_the_argument(args, kind, text):
    with pytest.raises(kind) as e:
        torch_ops.check_sizes(*args)
    assert text in str(e.value)


def test_check_sizes_takes_numpy_scalars():
    """numpy scalars become the Python types of the op's schema, which the
    dispatcher takes."""
    sizes = torch_ops.check_sizes(np.int64(30), np.int32(8), 2, np.bool_(0),
                                  np.float32(0.5))
    assert sizes == (30, 8, 2, False, 0.5)
    assert [type(x) for x in sizes] == [int, int, int, bool, float]


# --- moba_attn_varlen's keywords on numpy (any torch) ------------------------

@pytest.mark.parametrize("causal,scale", [(True, None), (False, 0.3)])
def test_numpy_keywords(causal, scale):
    q, k, v, cu = random_inputs(np.random.default_rng(1), [9, 40], 4, 2, 16)
    out, lse = moba.moba_attn_varlen(q, k, v, cu, 40, 8, 2, causal=causal,
                                     softmax_scale=scale, return_lse=True)
    ref, ref_lse, near = moba_reference(q, k, v, cu, 8, 2, causal=causal,
                                        scale=scale)
    np.testing.assert_allclose(out[~near], ref[~near], atol=2e-5, rtol=2e-4)
    np.testing.assert_allclose(lse[~near], ref_lse[~near], atol=2e-5,
                               rtol=2e-5)


# --- torch < 2.4: the fallback -----------------------------------------------

def leaves(q, k, v, dtype=torch.float32):
    return [torch.from_numpy(x).to(dtype).requires_grad_() for x in (q, k, v)]


@needs_old_torch
def test_old_torch_gradients_go_through_moba_attention():
    q, k, v, cu, dout, dlse = problem(11, seqlens=[0, 3, 30, 17])
    tq, tk, tv = leaves(q, k, v)
    out, lse = moba.moba_attn_varlen(tq, tk, tv, torch.from_numpy(cu), 30,
                                     BLOCK, TOP_K, return_lse=True)
    assert type(out.grad_fn).__name__ == "MobaAttentionBackward"
    ((out * torch.from_numpy(dout)).sum()
     + (lse * torch.from_numpy(dlse)).sum()).backward()
    check_gradients([x.grad.numpy() for x in (tq, tk, tv)], q, k, v, cu, dout,
                    dlse, "f32")


@needs_old_torch
@pytest.mark.parametrize("options", [dict(causal=False),
                                     dict(softmax_scale=0.25)])
def test_old_torch_refuses_gradients_it_cannot_give(options):
    q, k, v, cu = random_inputs(np.random.default_rng(2), [20], 4, 2, 16)
    with pytest.raises(RuntimeError) as e:
        moba.moba_attn_varlen(*leaves(q, k, v), torch.from_numpy(cu), 20, 8,
                              2, **options)
    assert f"torch {torch.__version__} is installed" in str(e.value)
    assert "2.4 or newer" in str(e.value)


@needs_old_torch
def test_old_torch_without_gradients_runs_any_options():
    q, k, v, cu = random_inputs(np.random.default_rng(3), [20, 7], 4, 2, 16)
    with torch.no_grad():
        out = moba.moba_attn_varlen(*leaves(q, k, v), torch.from_numpy(cu),
                                    20, 8, 2, causal=False,
                                    softmax_scale=0.25)
    ref, _, near = moba_reference(q, k, v, cu, 8, 2, causal=False,
                                  scale=0.25)
    assert isinstance(out, torch.Tensor) and out.grad_fn is None
    np.testing.assert_allclose(out.numpy()[~near], ref[~near], atol=2e-5,
                               rtol=2e-4)


# --- torch >= 2.4: the custom ops ----------------------------------------------

def op_inputs(seed=5, seqlens=(0, 3, 30, 17), dtype=torch.float32,
              requires_grad=True):
    q, k, v, cu, dout, dlse = problem(seed, seqlens=list(seqlens))
    tq, tk, tv = (torch.from_numpy(x).to(dtype).requires_grad_(requires_grad)
                  for x in (q, k, v))
    return (tq, tk, tv, torch.from_numpy(cu)), (q, k, v, cu, dout, dlse)


@needs_ops
@pytest.mark.parametrize("dtype,causal,scale", [
    (torch.float32, True, None), (torch.bfloat16, False, 0.3)])
def test_opcheck_forward(dtype, causal, scale):
    (tq, tk, tv, cu), _ = op_inputs(dtype=dtype)
    torch.library.opcheck(torch.ops.moba.attention_varlen.default,
                          (tq, tk, tv, cu, 30, BLOCK, TOP_K, causal, scale))


@needs_ops
@pytest.mark.parametrize("with_grad_lse", [True, False])
def test_opcheck_backward(with_grad_lse):
    (tq, tk, tv, cu), (_, _, _, _, dout, dlse) = op_inputs(
        requires_grad=False)
    out, lse = torch.ops.moba.attention_varlen(tq, tk, tv, cu, None, BLOCK,
                                               TOP_K, True, None)
    torch.library.opcheck(
        torch.ops.moba.attention_varlen_backward.default,
        (torch.from_numpy(dout), torch.from_numpy(dlse) if with_grad_lse
         else None, tq, tk, tv, out, lse, cu, None, BLOCK, TOP_K, True,
         None))


@needs_ops
@pytest.mark.parametrize("dtype,name,causal", [
    (torch.float32, "f32", True), (torch.float32, "f32", False),
    (torch.bfloat16, "bf16", True)])
def test_op_gradients_match_the_reference(dtype, name, causal):
    (tq, tk, tv, cu), (q, k, v, _, dout, dlse) = op_inputs(seed=6,
                                                           dtype=dtype)
    out, lse = moba.moba_attn_varlen(tq, tk, tv, cu, 30, BLOCK, TOP_K,
                                     causal=causal, return_lse=True)
    assert out.grad_fn is not None
    ((out.float() * torch.from_numpy(dout)).sum()
     + (lse * torch.from_numpy(dlse)).sum()).backward()
    check_gradients([x.grad.float().numpy() for x in (tq, tk, tv)], q, k, v,
                    cu.numpy(), dout, dlse, name, causal=causal)


@needs_ops
def test_op_gradient_through_out_alone():
    (tq, tk, tv, cu), (q, k, v, _, dout, _) = op_inputs(seed=7)
    out = moba.moba_attn_varlen(tq, tk, tv, cu, None, BLOCK, TOP_K)
    (out * torch.from_numpy(dout)).sum().backward()
    check_gradients([x.grad.numpy() for x in (tq, tk, tv)], q, k, v,
                    cu.numpy(), dout, None, "f32")


@needs_ops
def test_eager_checks_name_the_argument():
    (tq, tk, tv, cu), _ = op_inputs()
    with pytest.raises(TypeError, match="block_size must be an int"):
        moba.moba_attn_varlen(tq, tk, tv, cu, None, 8.0, TOP_K)
    with pytest.raises(ValueError, match="max_seqlen is 5 but the longest "
                                         "sequence has 30 tokens"):
        moba.moba_attn_varlen(tq, tk, tv, cu, 5, BLOCK, TOP_K)
    with pytest.raises(ValueError, match="q has 4 heads and k 3"):
        moba.moba_attn_varlen(tq, tk.repeat(1, 2, 1)[:, :3],
                              tv.repeat(1, 2, 1)[:, :3], cu, None, BLOCK,
                              TOP_K)


class TinyAttention(torch.nn.Module):
    """projection -> moba_attn_varlen -> projection, as a transformer layer
    would call it."""

    def __init__(self, embed=32, hq=4, hkv=2, d=16):
        super().__init__()
        self.hq, self.hkv, self.d = hq, hkv, d
        self.qkv = torch.nn.Linear(embed, (hq + 2 * hkv) * d)
        self.proj = torch.nn.Linear(hq * d, embed)

    def forward(self, x, cu_seqlens, max_seqlen):
        q, k, v = self.qkv(x).split(
            [self.hq * self.d, self.hkv * self.d, self.hkv * self.d], dim=-1)
        out = moba.moba_attn_varlen(
            q.reshape(-1, self.hq, self.d), k.reshape(-1, self.hkv, self.d),
            v.reshape(-1, self.hkv, self.d), cu_seqlens, max_seqlen, 8, 3)
        return self.proj(out.reshape(-1, self.hq * self.d))


def compile_backends():
    backends = ["aot_eager"]
    # Inductor compiles C++ for CPU tensors.
    if shutil.which("g++") or shutil.which("c++"):
        backends.append("inductor")
    return backends


@needs_ops
@pytest.mark.parametrize("backend", compile_backends())
def test_torch_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = TinyAttention()
    cu = torch.tensor([0, 40, 41, 77], dtype=torch.int32)
    x = torch.randn(77, 32)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    results = []
    for run in (model, compiled):
        model.zero_grad()
        y = run(x, cu, 40)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y.detach()] + [p.grad.clone()
                                       for p in model.parameters()])
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager, atol=1e-4, rtol=1e-3)


# --- which kernel the ops compile ------------------------------------------------

def test_cpu_tensors_compile_the_backward_with_the_forward():
    """One kernel for both ops: the backward recomputes the forward's
    selection only within one compilation."""
    q, k, _, _ = tensors(d=16)
    kernel = torch_ops.kernel_for(q, k, 8, 2, True, None)
    assert kernel.config["backward"] is True
    assert kernel is torch_ops.kernel_for(q, k, 8, 2, True, None)


@pytest.mark.parametrize("chip", ["sm_80", "sm_90a"])
def test_gpu_tensors_carry_the_backward_where_the_library_has_it(
        monkeypatch, chip):
    """GPU kernels carry the backward exactly when the library compiles it
    for that chip (today it says the CPU only: then the forward runs and
    the backward raises NotImplementedError)."""
    from moba import _capi
    monkeypatch.setattr(torch_ops, "_is_gpu_array", lambda x: True)
    monkeypatch.setattr(torch_ops, "_available_gpu_target",
                        lambda: (chip, None))
    monkeypatch.setattr(torch_ops, "_gpu_backward", {})
    q, k, _, _ = tensors(d=16, dtype=torch.bfloat16)
    library = _capi.check_config(16, 4, 2, 8, 2, True, None, "bf16", chip,
                                 "fused", None, None, backward=True)
    assert torch_ops._backward_compiles_for(q, k, 8, 2, True, None,
                                            "bf16") is (library is None)
    monkeypatch.setattr(torch_ops, "_available_gpu_target",
                        lambda: (None, "no GPU"))
    monkeypatch.setattr(torch_ops, "_gpu_backward", {})
    assert torch_ops._backward_compiles_for(q, k, 8, 2, True, None,
                                            "bf16") is False
