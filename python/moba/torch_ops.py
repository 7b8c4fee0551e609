"""moba's attention as torch.library custom operators, for training with
torch autograd and torch.compile.

    torch.ops.moba.attention_varlen(q, k, v, cu_seqlens, max_seqlen,
                                    block_size, top_k, causal, scale)
        -> (out [T, Hq, D], lse [T, Hq] float32)
    torch.ops.moba.attention_varlen_backward(grad_out, grad_lse, q, k, v,
                                             out, lse, cu_seqlens, max_seqlen,
                                             block_size, top_k, causal, scale)
        -> (dq, dk, dv)

Users call moba.moba_attn_varlen, which goes through these ops for torch
tensors. Why custom ops rather than an autograd.Function alone: torch.compile
cannot look inside a ctypes call, so it would break the graph there; an op
with a fake implementation (shapes and dtypes, nothing run) is one opaque
node of the graph, which torch.compile(fullgraph=True) traces through, and
whose autograd formula AOTAutograd moves into the compiled backward.

The ops need torch 2.4 or newer (torch.library.custom_op, register_fake,
register_autograd). With an older torch (or none) importing moba still works
and OPS_AVAILABLE is False; UNAVAILABLE_REASON says why, naming the torch
version, and moba.moba_attn_varlen then runs through moba.MobaAttention
(docs/python.md, "torch.library ops and torch.compile").

The ops run moba's compiled Kernel (moba.compile, kept per configuration as
the functional API keeps its kernels): CPU tensors on the CPU, CUDA tensors
on the GPU on torch's current stream. The backward reruns nothing of the
forward but its block selection, which the same compiled kernel recomputes
bit for bit (docs/semantics.md, "Gradients").
"""
import re

import numpy as np

from . import _capi
from . import (compile as _compile, _available_gpu_target, _infer_dtype,
               _is_gpu_array, _keep_recent, _like)

MIN_TORCH_VERSION = (2, 4)

try:
    import torch
except ImportError:  # moba's numpy API needs no torch
    torch = None


def torch_version_tuple(version):
    """(major, minor) of a torch version string ("2.11.0+cu128",
    "1.13.0a0+git", "2.4.0.dev20240601"); None when it has no such
    prefix."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def unavailable_reason(version):
    """None when torch `version` (a string, or None for no torch) has what
    the custom ops need, else why not."""
    needed = ".".join(map(str, MIN_TORCH_VERSION))
    if version is None:
        return (f"torch is not installed: moba's torch ops need torch "
                f"{needed} or newer")
    parsed = torch_version_tuple(version)
    if parsed is None or parsed < MIN_TORCH_VERSION:
        return (f"torch {version} is installed: moba's torch ops "
                f"(torch.library.custom_op, register_fake, "
                f"register_autograd) need torch {needed} or newer")
    return None


UNAVAILABLE_REASON = unavailable_reason(
    None if torch is None else torch.__version__)
OPS_AVAILABLE = UNAVAILABLE_REASON is None


def is_tensor(x):
    return torch is not None and isinstance(x, torch.Tensor)


_FLOAT_DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")


def check_shapes(q, k, v, cu_seqlens):
    """The checks that need no values, only shapes, dtypes and devices: what
    the fake implementation can say before anything runs (torch.compile
    traces with it). The values (cu_seqlens, sizes the library limits) are
    checked when the kernel runs."""
    for name, x in (("q", q), ("k", k), ("v", v), ("cu_seqlens",
                                                    cu_seqlens)):
        if not is_tensor(x):
            raise TypeError(f"{name} must be a torch tensor like q, got "
                            f"{type(x).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 3:
            raise ValueError(f"{name} must have rank 3 [tokens, heads, "
                             f"head_dim], got shape {tuple(x.shape)}")
        if str(x.dtype) not in _FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; moba takes "
                            "float32, float16 or bfloat16")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has "
                            f"{q.dtype}: they must agree")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on "
                             f"{q.device}: they must be on the same device")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k has shape {tuple(k.shape)} but v has "
                         f"{tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q has shape {tuple(q.shape)} but k has "
                         f"{tuple(k.shape)}: tokens and head_dim must agree")
    if k.shape[1] < 1 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q has {q.shape[1]} heads and k {k.shape[1]}: the "
                         "query heads must be a multiple of the key/value "
                         "heads")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32,
                                                         torch.int64):
        raise TypeError(f"cu_seqlens must be a 1-D int32 or int64 tensor, "
                        f"got dtype {cu_seqlens.dtype} shape "
                        f"{tuple(cu_seqlens.shape)}")


def check_sizes(max_seqlen, block_size, top_k, causal, scale):
    """The op's non-tensor arguments as the op takes them: ints that fit
    int64 (numpy ints too), a bool, a float or None; raises naming the
    argument otherwise. Their limits are the library's (moba.compile)."""
    if max_seqlen is not None:
        max_seqlen = _capi.int64("max_seqlen", max_seqlen)
        if max_seqlen < 0:
            raise ValueError(f"max_seqlen must not be negative, got "
                             f"{max_seqlen}")
    block_size = _capi.int64("block_size", block_size)
    top_k = _capi.int64("top_k", top_k)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if scale is not None:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(
                scale, (int, float, np.floating, np.integer)):
            raise TypeError(f"softmax_scale must be a float, got {scale!r}")
        scale = float(scale)
    return max_seqlen, block_size, top_k, bool(causal), scale


# (config, chip) -> whether the library compiles the backward for that GPU.
_gpu_backward = {}


def _backward_compiles_for(q, k, block_size, top_k, causal, scale, dtype):
    """Whether the kernel the op runs on q's device can carry the backward:
    always on the CPU; on a GPU when the library says so (the backward is
    CPU-only so far, and this follows the library as that changes). The
    forward and the backward must run one compiled kernel, so that the
    backward recomputes the forward's selection bit for bit."""
    if not _is_gpu_array(q):
        return True
    chip, _ = _available_gpu_target()
    if chip is None:
        return False  # the forward's call says why it cannot run
    key = (q.shape[-1], q.shape[-2], k.shape[-2], block_size, top_k, causal,
           scale, dtype, chip)
    known = _gpu_backward.get(key)
    if known is None:
        known = _capi.check_config(
            q.shape[-1], q.shape[-2], k.shape[-2], block_size, top_k, causal,
            scale, dtype, chip, "fused", None, None, backward=True) is None
        _gpu_backward[key] = known
    return known


def kernel_for(q, k, block_size, top_k, causal, scale):
    """The Kernel that runs the ops for these inputs: compiled once per
    configuration and kept among the functional API's recent kernels (the
    forward and the backward of one step find the same one)."""
    dtype = _infer_dtype(q)
    heads, head_dim = int(q.shape[-2]), int(q.shape[-1])
    kv_heads = int(k.shape[-2])
    backward = _backward_compiles_for(q, k, block_size, top_k, causal, scale,
                                      dtype)
    # The kernel of q's device: host tensors get the CPU's even where a GPU
    # is present (target "auto" would pick the GPU).
    kernel = _compile(head_dim=head_dim, num_heads=heads,
                      num_kv_heads=kv_heads, block_size=block_size,
                      top_k=top_k, dtype=dtype, layout="varlen",
                      causal=causal,
                      target="auto" if _is_gpu_array(q) else "cpu",
                      scale=scale, backward=backward)
    _keep_recent(kernel)
    return kernel


def _as_tensor(result):
    """A float32 kernel result (numpy from CPU calls, a tensor from GPU
    calls) as a tensor."""
    if isinstance(result, np.ndarray):
        return torch.from_numpy(result)
    return result


def moba_attn_varlen_torch(q, k, v, cu_seqlens, max_seqlen, block_size,
                           top_k, causal, softmax_scale, return_lse):
    """moba.moba_attn_varlen for torch tensors with torch >= 2.4: through
    torch.ops.moba.attention_varlen (autograd, torch.compile)."""
    if not OPS_AVAILABLE:
        raise RuntimeError(UNAVAILABLE_REASON)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}")
    if not torch.compiler.is_compiling():
        # Eager calls get messages naming the argument before the
        # dispatcher's schema check. Under torch.compile these Python
        # checks are not traced (graph breaks are what fullgraph refuses):
        # the dispatcher checks the types and the kernel the values.
        max_seqlen, block_size, top_k, causal, softmax_scale = check_sizes(
            max_seqlen, block_size, top_k, causal, softmax_scale)
    if not isinstance(cu_seqlens, torch.Tensor):  # a list or numpy array
        cu_seqlens = torch.as_tensor(np.asarray(cu_seqlens))
    out, lse = torch.ops.moba.attention_varlen(
        q, k, v, cu_seqlens, max_seqlen, block_size, top_k, causal,
        softmax_scale)
    return (out, lse) if return_lse else out


if OPS_AVAILABLE:
    from typing import Optional, Tuple

    Tensor = torch.Tensor

    @torch.library.custom_op("moba::attention_varlen", mutates_args=())
    def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor,
                         max_seqlen: Optional[int], block_size: int,
                         top_k: int, causal: bool,
                         scale: Optional[float]) -> Tuple[Tensor, Tensor]:
        """MoBA attention, varlen layout: q [T, Hq, D], k and v [T, Hkv, D],
        cu_seqlens [B + 1] on q's device; returns (out [T, Hq, D] of q's
        dtype, lse [T, Hq] float32). scale None: 1/sqrt(D)."""
        check_shapes(q, k, v, cu_seqlens)
        kernel = kernel_for(q, k, block_size, top_k, causal, scale)
        q, k, v = (x.contiguous() for x in (q, k, v))
        out, lse = kernel(q, k, v, cu_seqlens, max_seqlen=max_seqlen,
                          return_lse=True)
        return _like(q, out), _as_tensor(lse)

    @attention_varlen.register_fake
    def _attention_varlen_fake(q, k, v, cu_seqlens, max_seqlen, block_size,
                               top_k, causal, scale):
        check_shapes(q, k, v, cu_seqlens)
        return (q.new_empty(q.shape),
                q.new_empty(q.shape[:-1], dtype=torch.float32))

    @torch.library.custom_op("moba::attention_varlen_backward",
                             mutates_args=())
    def attention_varlen_backward(
            grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor,
            k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
            cu_seqlens: Tensor, max_seqlen: Optional[int], block_size: int,
            top_k: int, causal: bool,
            scale: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
        """(dq, dk, dv) of a loss whose gradients with respect to the
        forward's out and lse are grad_out and grad_lse (None: zero), the
        forward's inputs and results given (Kernel.backward)."""
        check_shapes(q, k, v, cu_seqlens)
        kernel = kernel_for(q, k, block_size, top_k, causal, scale)
        contiguous = [x.contiguous() for x in (q, k, v, out, lse)]
        grad_out = grad_out.to(out.dtype).contiguous()
        if grad_lse is not None:
            grad_lse = grad_lse.to(torch.float32).contiguous()
        return tuple(kernel.backward(*contiguous[:3], cu_seqlens,
                                     *contiguous[3:], grad_out, grad_lse,
                                     max_seqlen=max_seqlen))

    @attention_varlen_backward.register_fake
    def _attention_varlen_backward_fake(grad_out, grad_lse, q, k, v, out,
                                        lse, cu_seqlens, max_seqlen,
                                        block_size, top_k, causal, scale):
        check_shapes(q, k, v, cu_seqlens)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens = inputs[:4]
        out, lse = output
        ctx.save_for_backward(q, k, v, cu_seqlens, out, lse)
        ctx.sizes = inputs[4:]  # max_seqlen, block_size, top_k, causal, scale

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, cu_seqlens, out, lse = ctx.saved_tensors
        if grad_out is None:  # only lse reached the loss
            grad_out = torch.zeros_like(out)
        dq, dk, dv = torch.ops.moba.attention_varlen_backward(
            grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, *ctx.sizes)
        # No gradient for cu_seqlens and the sizes.
        return dq, dk, dv, None, None, None, None, None, None

    attention_varlen.register_autograd(_backward,
                                       setup_context=_setup_context)
