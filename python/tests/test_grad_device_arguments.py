"""Kernel.backward's checks of GPU arguments, without a GPU.

The backward on device tensors checks every argument before it takes the
GPU handle (which compiles the GPU target on first use) and before it
queues anything. Here the tensors are CPU tensors that say they live on
cuda:0 (FakeCudaTensor), and the kernel is compiled for the CPU: a call
whose arguments pass every check then stops at the handle, with the error
that the kernel has no GPU target -- never earlier, never on another
machine's GPU.
"""
import numpy as np
import pytest

import moba

torch = pytest.importorskip("torch")

T, HQ, HKV, D, BLOCK, TOP_K = 32, 4, 2, 16, 8, 2
PASSED_EVERY_CHECK = "q is on a GPU but the kernel was compiled for " \
                     "target='cpu'"


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that reports device cuda:<index> (index 0 unless the
    tensor was made with on_device)."""

    index = 0

    @property
    def device(self):
        return torch.device("cuda", self.index)


class FakeOtherCudaTensor(FakeCudaTensor):
    index = 1


def on_gpu(x, kind=FakeCudaTensor):
    return x.as_subclass(kind)


@pytest.fixture(scope="module")
def kernel():
    return moba.compile(head_dim=D, num_heads=HQ, num_kv_heads=HKV,
                        block_size=BLOCK, top_k=TOP_K, dtype="f32",
                        target="cpu", backward=True)


def arguments():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(T, HQ, D, generator=g)
    k = torch.randn(T, HKV, D, generator=g)
    v = torch.randn(T, HKV, D, generator=g)
    return dict(q=on_gpu(q), k=on_gpu(k), v=on_gpu(v),
                cu_seqlens=on_gpu(torch.tensor([0, 20, T],
                                               dtype=torch.int32)),
                out=on_gpu(torch.randn(T, HQ, D, generator=g)),
                lse=on_gpu(torch.randn(T, HQ, generator=g)),
                grad_out=on_gpu(torch.randn(T, HQ, D, generator=g)),
                grad_lse=on_gpu(torch.randn(T, HQ, generator=g)))


def call(kernel, **changes):
    args = arguments()
    args.update({name: change(args) if callable(change) else change
                 for name, change in changes.items()})
    return kernel.backward(**args)


def test_good_arguments_pass_every_check(kernel):
    with pytest.raises(ValueError, match=PASSED_EVERY_CHECK):
        call(kernel)
    with pytest.raises(ValueError, match=PASSED_EVERY_CHECK):
        call(kernel, grad_lse=None, max_seqlen=20)
    # Given results of their own pass too.
    with pytest.raises(ValueError, match=PASSED_EVERY_CHECK):
        call(kernel, dq=lambda a: on_gpu(torch.empty(T, HQ, D)),
             dk=lambda a: on_gpu(torch.empty(T, HKV, D)))


# One buffer given as two gradients.
SHARED = torch.empty(T, HKV, D)
BAD = {
    "grad_out dtype": (dict(grad_out=lambda a: a["grad_out"].half()),
                       TypeError, r"grad_out has dtype torch.float16, the "
                       r"kernel takes f32"),
    "grad_out heads": (dict(grad_out=lambda a: on_gpu(torch.randn(T, HKV,
                                                                  D))),
                       ValueError, r"grad_out has shape \(32, 2, 16\): "
                       r"expected 4 heads"),
    "grad_out tokens": (dict(grad_out=lambda a: on_gpu(torch.randn(
        T - 1, HQ, D))), ValueError, r"grad_out has shape \(31, 4, 16\) but "
        r"q has \(32, 4, 16\)"),
    "out not contiguous": (dict(out=lambda a: on_gpu(torch.randn(
        HQ, T, D)).transpose(0, 1)), ValueError, r"out is not contiguous"),
    "lse missing": (dict(lse=None), ValueError, r"lse is required"),
    "out missing": (dict(out=None), TypeError, r"out is required"),
    "grad_out missing": (dict(grad_out=None), TypeError,
                         r"grad_out is required"),
    "lse shape": (dict(lse=lambda a: on_gpu(torch.randn(T, HKV))),
                  ValueError, r"lse has shape \(32, 2\) and dtype "
                  r"torch.float32; expected \(32, 4\)"),
    "lse dtype": (dict(lse=lambda a: a["lse"].double()), ValueError,
                  r"lse has shape \(32, 4\) and dtype torch.float64"),
    "grad_lse shape": (dict(grad_lse=lambda a: on_gpu(torch.randn(T))),
                       ValueError, r"grad_lse has shape \(32,\)"),
    "lse on the host": (dict(lse=lambda a: torch.randn(T, HQ)), ValueError,
                        r"lse is in host memory but q is on cuda:0"),
    "grad_out on another GPU": (
        dict(grad_out=lambda a: on_gpu(a["grad_out"], FakeOtherCudaTensor)),
        ValueError, r"grad_out is on cuda:1 but q is on cuda:0"),
    "k on another GPU": (dict(k=lambda a: on_gpu(a["k"],
                                                 FakeOtherCudaTensor)),
                         ValueError, r"k is on cuda:1 but q is on cuda:0"),
    "cu_seqlens on the host": (
        dict(cu_seqlens=lambda a: torch.tensor([0, 20, T])), ValueError,
        r"cu_seqlens is in host memory but q is on cuda:0"),
    "cu_seqlens end": (dict(cu_seqlens=lambda a: on_gpu(torch.tensor(
        [0, 20, T - 1], dtype=torch.int32))), ValueError,
        r"cu_seqlens must end at the token count 32, got 31"),
    "max_seqlen": (dict(max_seqlen=19), ValueError,
                   r"max_seqlen is 19 but the longest sequence has 20"),
    "dq shape": (dict(dq=lambda a: on_gpu(torch.empty(T, HKV, D))),
                 ValueError, r"dq has shape \(32, 2, 16\)"),
    "dv dtype": (dict(dv=lambda a: on_gpu(torch.empty(T, HKV, D,
                                                      dtype=torch.half))),
                 ValueError, r"dv has shape \(32, 2, 16\) and dtype "
                 r"torch.float16"),
    "dq a host array": (dict(dq=lambda a: np.empty((T, HQ, D), np.float32)),
                        ValueError, r"dq must be a torch tensor on cuda:0"),
    "dk on k": (dict(dk=lambda a: a["k"]), ValueError,
                r"dk overlaps k: each gradient needs a tensor of its own"),
    "dq on grad_out": (dict(dq=lambda a: a["grad_out"]), ValueError,
                       r"dq overlaps grad_out"),
    "dv on dk": (dict(dk=lambda a: on_gpu(SHARED), dv=lambda a: on_gpu(
        SHARED)), ValueError, r"dv overlaps dk"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_argument_is_named_before_the_gpu_is_touched(kernel, case):
    changes, error, pattern = BAD[case]
    with pytest.raises(error, match=pattern):
        call(kernel, **changes)


def test_host_q_with_device_gradients_is_refused(kernel):
    args = arguments()
    args["q"] = torch.randn(T, HQ, D)
    with pytest.raises(ValueError, match="k is on a GPU but q is in host "
                       "memory"):
        kernel.backward(**args)


def test_a_kernel_without_the_backward_says_so_first():
    forward_only = moba.compile(head_dim=D, num_heads=HQ, num_kv_heads=HKV,
                                block_size=BLOCK, top_k=TOP_K, dtype="f32",
                                target="cpu")
    with pytest.raises(ValueError, match="compiled without the backward"):
        forward_only.backward(**arguments())
