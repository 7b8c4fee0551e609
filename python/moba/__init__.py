"""moba: MoBA (Mixture of Block Attention) compiled by moba-mlir.

    import moba
    kernel = moba.compile(head_dim=64, num_heads=8, num_kv_heads=2,
                          block_size=64, top_k=3, dtype="f32")
    out = kernel(q, k, v, cu_seqlens)                 # numpy: runs on the CPU
    out, lse = kernel(q, k, v, cu_seqlens, return_lse=True)

    out = moba.moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen,
                                moba_chunk_size=64, moba_topk=3)
    out = kernel(q_cuda, k_cuda, v_cuda, cu_seqlens_cuda)  # torch on a GPU

On torch tensors moba_attn_varlen is differentiable and, with torch 2.4 or
newer, runs through the torch.library ops of moba.torch_ops, which
torch.compile(fullgraph=True) traces (docs/python.md). GPU calls with fixed
shapes and cu_seqlens can be captured in a CUDA graph after one warm-up
call (moba.device_offsets says why the warm-up). Hugging Face models:
moba.integrations.transformers.register(block_size=..., top_k=...), then
attn_implementation="moba".

Layouts: "varlen" q [T, Hq, D], k and v [T, Hkv, D] with cu_seqlens [B + 1];
"batched" q [B, S, Hq, D], k and v [B, S, Hkv, D]. The log-sum-exp has q's
shape without D. Semantics: docs/semantics.md.

Environment:
  MOBA_CACHE_DIR  where compiled kernels, CPU and GPU, are kept (default
                  $XDG_CACHE_HOME/moba-mlir or ~/.cache/moba-mlir);
                  set it to an empty string to keep nothing on disk
                  (compile(..., cache=False) does so for one kernel). It
                  must be your own directory with mode 0700 (it is created
                  so); any other is not used and a moba.CacheWarning says
                  why. Cached files are verified before they run
                  (docs/python.md).
  MOBA_DUMP_IR    a directory: the IR after every stage of every compile is
                  written there (moba, loops, llvm; moba, gpu for GPU
                  targets), and the cache is bypassed.
  MOBA_CUDA_DRIVER  the CUDA driver library to open (default libcuda.so.1).
  MOBA_LIBRARY    the libMobaC.so to load (default: the one in this package).
  MOBA_TEST_CRASH a test hook: every compile fails as an internal error
                  would (fatal-error, bad-alloc, exception, abort) and
                  raises CompileError (include/moba-c/Moba.h).
  MOBA_TEST_CACHE_STORE_PAUSE  a test hook: a path; a store into the disk
                  cache writes half its file, creates the path and waits
                  until it is removed (lib/Runner/KernelCache.h).
  MOBA_JIT_DEBUG  1: announce JIT-compiled code to debuggers (GDB's JIT
                  interface) and to perf, which writes a jit-<pid>.dump
                  under .debug/jit/ per process. Off otherwise, so that no
                  process leaves files behind.

Kernels live while something holds them: a Kernel nobody refers to is freed
with its compiled code (compile() finds it again while it is alive).

Limits of every argument, and why: docs/python.md.
"""
import collections
import os
import threading
import time
import warnings
import weakref

import numpy as np

from . import _capi, device_offsets, torch_scratch
from ._capi import CompileError

__all__ = ["compile", "Kernel", "moba_attn_varlen", "moba_attn_batched",
           "CompileError", "CacheWarning", "to_bf16", "from_bf16",
           "cache_dir", "version"]


class CacheWarning(UserWarning):
    """The disk cache was not used as asked: its directory was refused (not
    yours, or open to other users: the kernel was compiled without it), or
    a cached file failed verification (it was compiled again and the file
    replaced). The message says which; Kernel.cache_warning keeps it."""

_DTYPE_NAMES = {
    "f32": "f32", "float32": "f32", "float": "f32",
    "f16": "f16", "float16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16",
}
_NUMPY_DTYPE = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16)}
_TARGETS = ("auto", "cpu", "sm_80", "sm_90a")
_LAYOUTS = ("varlen", "batched")


def version():
    """The compiler's version (part of every cache key)."""
    return _capi.version()


def cache_dir():
    """The directory compiled kernels are kept in, or None for none."""
    value = os.environ.get("MOBA_CACHE_DIR")
    if value is not None:
        return value or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(base, "moba-mlir")


def to_bf16(array):
    """float32 values -> uint16 arrays holding bfloat16 bits (round to
    nearest even): numpy has no bfloat16 type."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def from_bf16(bits):
    """uint16 arrays of bfloat16 bits -> float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(
        np.float32)


def _optional_positive_int(name, value):
    """None, or an int of at least 1: the C API reads 0 as "the default",
    which None says here."""
    if value is None:
        return None
    value = _capi.int64(name, value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _bool(name, value):
    """A bool: any other object (the string 'no', say) has a truth value
    that would be taken silently."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_max_seqlen(max_seqlen, longest):
    """A caller's max_seqlen promises that no sequence is longer: one that
    is broken is refused in either layout rather than ignored."""
    if max_seqlen is not None and max_seqlen < longest:
        raise ValueError(f"max_seqlen is {max_seqlen} but the longest "
                         f"sequence has {longest} tokens")


def _is_gpu_array(x):
    device = getattr(x, "device", None)
    if getattr(device, "type", None) == "cuda":
        return True
    try:  # torch raises RuntimeError here for tensors that require grad
        return hasattr(x, "__cuda_array_interface__")
    except RuntimeError:
        return False


def _as_numpy(name, x):
    """numpy arrays as they are; CPU torch tensors viewed without a copy."""
    if isinstance(x, np.ndarray):
        return x
    module = type(x).__module__
    if module.startswith("torch"):
        import torch  # only reached with torch inputs
        x = x.detach()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy().view(np.uint16)
        return x.numpy()
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got "
                    f"{type(x).__name__}")


def _uniform_offsets(batch, seq):
    """cu_seqlens of `batch` sequences of `seq` tokens; no sequence at all
    is one empty sequence to the library, which needs one."""
    return np.arange(max(batch, 1) + 1, dtype=np.int32) * (seq if batch
                                                           else 0)


def _overlaps(a, b):
    """Whether numpy arrays `a` and `b` share memory: by their bounds when
    both are contiguous (exact then, and cheap), else exactly."""
    if a.flags["C_CONTIGUOUS"] and b.flags["C_CONTIGUOUS"]:
        return np.may_share_memory(a, b)
    return np.shares_memory(a, b)


def _spans_overlap(a, b):
    """Whether torch tensors `a` and `b` touch a common byte: the spans
    from their first to one past their last element (strides are not
    negative in torch)."""
    spans = []
    for t in (a, b):
        if t.numel() == 0:
            return False
        extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        start = t.data_ptr()
        spans.append((start, start + extent * t.element_size()))
    (a0, a1), (b0, b1) = spans
    return a0 < b1 and b0 < a1


def _as_cuda_tensor(name, x):
    """A torch CUDA tensor viewing `x`: torch tensors as they are, other
    __cuda_array_interface__ or DLPack objects (cupy, ...) without a copy."""
    try:
        import torch
    except ImportError:
        raise TypeError(f"{name} is a GPU array: GPU inputs go through torch, "
                        "which is not installed") from None
    if isinstance(x, torch.Tensor):
        return x.detach()
    if hasattr(x, "__cuda_array_interface__"):
        return torch.as_tensor(x, device="cuda")
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(f"{name} must be a torch tensor or expose "
                    f"__cuda_array_interface__, got {type(x).__name__}")


def _dtype_name(x):
    """The moba name of an array's element type (numpy or torch), or its
    own spelling when moba has none."""
    name = str(x.dtype).replace("torch.", "")
    if name == "uint16":  # numpy arrays of bfloat16 bits
        return "bf16"
    return _DTYPE_NAMES.get(name, name)


def _gpu_target_for(capability):
    """The chip moba compiles for on a GPU of `capability` (e.g. 90)."""
    if capability == 90:
        return "sm_90a"
    if capability >= 80:
        return "sm_80"
    raise ValueError(f"the GPU has compute capability {capability // 10}."
                     f"{capability % 10}; moba's GPU kernels need 8.0 or "
                     "newer")


def _available_gpu_target():
    """(chip, None) for this machine's GPU, or (None, why there is none)."""
    capability, why = _capi.gpu_compute_capability()
    if capability == 0:
        return None, why
    return _gpu_target_for(capability), None


class Kernel:
    """A compiled MoBA attention configuration. Call it on arrays: numpy or
    CPU torch arrays run on the CPU, torch CUDA tensors (or other CUDA
    arrays) on the GPU, on torch's current stream.

    from_cache: whether the code came from the disk cache. cache_warning:
    None, or what went wrong with the disk cache (see CacheWarning)."""

    def __init__(self, config, handles, from_cache, compile_seconds,
                 cache_warning=None):
        self._handles = handles  # "cpu" / "sm_80" / "sm_90a" -> handle
        # The torch devices a GPU call has run on: the kernel's modules are
        # loaded into their contexts (which CUDA-graph capture forbids).
        self._loaded_on = set()
        # Held only to compile another target; calls never take it.
        self._lock = threading.Lock()
        self.config = config
        self.from_cache = from_cache
        self.compile_seconds = compile_seconds
        self.cache_warning = cache_warning

    def __del__(self):
        handles, self._handles = getattr(self, "_handles", None) or {}, {}
        # At interpreter exit the module's globals may already be None: the
        # process's end frees the handles then.
        if _capi is None or getattr(_capi, "destroy", None) is None:
            return
        for handle in handles.values():
            _capi.destroy(handle)

    def __repr__(self):
        c = self.config
        return (f"moba.Kernel(head_dim={c['head_dim']}, num_heads="
                f"{c['num_heads']}, num_kv_heads={c['num_kv_heads']}, "
                f"block_size={c['block_size']}, top_k={c['top_k']}, dtype="
                f"{c['dtype']!r}, layout={c['layout']!r}, causal="
                f"{c['causal']}, target={c['target']!r})")

    @property
    def targets(self):
        """The targets compiled so far."""
        return tuple(self._handles)

    @property
    def plan(self):
        """The plan of the tensor-core attention kernel of the GPU target
        compiled so far, its tuning-table choices filled in, as text (e.g.
        "wgmma,tma,auto,separate,warps=4,key-chunk=64,stages=2"); None when
        there is none (CPU, gpu_attention="simt")."""
        for target, handle in self._handles.items():
            if target != "cpu":
                return _capi.kernel_plan(handle)
        return None

    def _handle_for(self, on_gpu, name):
        """The handle that runs where the arrays are, compiled on first use
        for target='auto'."""
        requested = self.config["target"]
        if on_gpu:
            if requested == "cpu":
                raise ValueError(f"{name} is on a GPU but the kernel was "
                                 "compiled for target='cpu'")
            if requested == "auto":
                chip, why = _available_gpu_target()
                if chip is None:
                    raise ValueError(f"{name} is a GPU array but {why}")
            else:
                chip = requested
        else:
            if requested not in ("auto", "cpu"):
                raise ValueError(
                    f"{name} is in host memory but the kernel was compiled "
                    f"for target={requested!r}: pass CUDA tensors")
            chip = "cpu"
        handle = self._handles.get(chip)
        if handle is not None:
            return handle
        with self._lock:
            if chip not in self._handles:
                handle, _, warning = _compile_handle(self.config, chip)
                self._handles[chip] = handle
                if warning:
                    self.cache_warning = warning
                    warnings.warn(warning, CacheWarning, stacklevel=3)
            return self._handles[chip]

    def _check_tensor(self, name, x, heads, contiguous):
        c = self.config
        if _dtype_name(x) != c["dtype"]:
            hint = ""
            if c["dtype"] == "bf16" and isinstance(x, np.ndarray):
                hint = (": pass uint16 arrays of bfloat16 bits "
                        "(moba.to_bf16) or bfloat16 torch tensors")
            raise TypeError(f"{name} has dtype {x.dtype}, the kernel takes "
                            f"{c['dtype']}{hint}")
        shape = tuple(x.shape)
        rank = 3 if c["layout"] == "varlen" else 4
        if len(shape) != rank:
            layout = ("[tokens, heads, head_dim]" if rank == 3 else
                      "[batch, seq, heads, head_dim]")
            raise ValueError(f"{name} must have rank {rank} {layout}, got "
                             f"shape {shape}")
        if shape[-1] != c["head_dim"] or shape[-2] != heads:
            raise ValueError(
                f"{name} has shape {shape}: expected {heads} heads of "
                f"head_dim {c['head_dim']} in its last two dims")
        if not contiguous:
            raise ValueError(f"{name} is not contiguous (strides "
                             f"{tuple(x.strides) if hasattr(x, 'strides') else x.stride()}); "
                             "pass a contiguous array")

    def _check_qkv(self, q, k, v, contiguous):
        c = self.config
        self._check_tensor("q", q, c["num_heads"], contiguous(q))
        self._check_tensor("k", k, c["num_kv_heads"], contiguous(k))
        self._check_tensor("v", v, c["num_kv_heads"], contiguous(v))
        if tuple(k.shape) != tuple(v.shape):
            raise ValueError(f"k has shape {tuple(k.shape)} but v has "
                             f"{tuple(v.shape)}")
        if tuple(q.shape[:-2]) != tuple(k.shape[:-2]):
            raise ValueError(f"q has shape {tuple(q.shape)} but k has "
                             f"{tuple(k.shape)}: their leading dims must "
                             "agree")

    def _host_call_offsets(self, q, cu_seqlens, max_seqlen, inputs):
        """The host call's sequence offsets and token count: the batched
        layout's uniform ones, or the caller's cu_seqlens checked (and
        recorded in `inputs`, for the aliasing checks)."""
        if self.config["layout"] == "batched":
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens is only for layout='varlen'")
            batch, seq = q.shape[:2]
            _check_max_seqlen(max_seqlen, seq if batch else 0)
            return _uniform_offsets(batch, seq), batch * seq
        tokens = q.shape[0]
        if _is_gpu_array(cu_seqlens):
            raise ValueError("cu_seqlens is on a GPU but q is on the "
                             "host: they must be on the same device")
        cu = self._check_cu_seqlens(cu_seqlens, tokens, max_seqlen)
        inputs["cu_seqlens"] = cu
        return cu, tokens

    def __call__(self, q, k, v, cu_seqlens=None, *, max_seqlen=None,
                 return_lse=False, out=None, lse=None):
        """Returns the output (and the log-sum-exp with return_lse=True).
        `out` and `lse`, when given, are written instead of new arrays:
        contiguous, q's shape and dtype, and q's shape without head_dim in
        float32, on q's device."""
        return_lse = _bool("return_lse", return_lse)
        if max_seqlen is not None:
            max_seqlen = _capi.int64("max_seqlen", max_seqlen)
            if max_seqlen < 0:
                raise ValueError(f"max_seqlen must not be negative, got "
                                 f"{max_seqlen}")
        if any(_is_gpu_array(x) for x in (q, k, v)):
            return self._call_gpu(q, k, v, cu_seqlens, max_seqlen, return_lse,
                                  out, lse)
        handle = self._handle_for(False, "q")
        c = self.config
        q, k, v = (_as_numpy(n, x) for n, x in (("q", q), ("k", k), ("v", v)))
        self._check_qkv(q, k, v, lambda x: x.flags["C_CONTIGUOUS"])
        inputs = {"q": q, "k": k, "v": v}
        cu, tokens = self._host_call_offsets(q, cu_seqlens, max_seqlen,
                                             inputs)
        cu32 = np.ascontiguousarray(cu, dtype=np.int32)
        out, out_array = self._host_result("out", out, q.shape, q.dtype,
                                           inputs)
        lse, lse_array = self._host_result("lse", lse, q.shape[:-1],
                                           np.dtype(np.float32), inputs)
        if _overlaps(out_array, lse_array):
            raise ValueError("out and lse overlap: pass separate arrays")
        _capi.run_kernel(handle, q.ctypes.data, k.ctypes.data,
                         v.ctypes.data, cu32.ctypes.data, len(cu32) - 1,
                         tokens, out_array.ctypes.data, lse_array.ctypes.data)
        return (out, lse) if return_lse else out

    @classmethod
    def _host_result(cls, name, given, shape, dtype, inputs):
        """(the object a result goes to, a numpy view of it): `given`,
        checked -- an array of `shape` and `dtype`, contiguous, writable,
        sharing no memory with `inputs` -- or a new array."""
        if given is None:
            array = np.empty(shape, dtype=dtype)
            return array, array
        array = _as_numpy(name, given)
        cls._result(name, array, shape, dtype, None)
        if not array.flags.writeable:
            raise ValueError(f"{name} is read-only: pass a writable array")
        for input_name, x in inputs.items():
            if _overlaps(array, x):
                raise ValueError(f"{name} overlaps {input_name}: the kernel "
                                 "would read what it has written; pass an "
                                 "array of its own")
        return given, array

    @staticmethod
    def _result(name, given, shape, dtype, make):
        """The array a result goes to: `given` (a numpy array or a torch
        tensor), checked, or a new one."""
        if given is None:
            return make()
        if tuple(given.shape) != tuple(shape) or given.dtype != dtype:
            raise ValueError(f"{name} has shape {tuple(given.shape)} and "
                             f"dtype {given.dtype}; expected {tuple(shape)} "
                             f"and {dtype}")
        contiguous = (given.is_contiguous() if hasattr(given, "is_contiguous")
                      else given.flags["C_CONTIGUOUS"])
        if not contiguous:
            raise ValueError(f"{name} is not contiguous")
        return given

    def backward(self, q, k, v, cu_seqlens, out, lse, grad_out,
                 grad_lse=None, dq=None, dk=None, dv=None, *,
                 max_seqlen=None):
        """The gradients (dq, dk, dv) of the loss with respect to q, k and v
        (docs/semantics.md, "Gradients"), given the forward's inputs, its
        results `out` and `lse` on them, and the loss's gradients with
        respect to them: `grad_out` (out's shape and dtype) and `grad_lse`
        (lse's shape, float32; None when the loss does not use lse). dk and
        dv sum over the query heads that share a key/value head. Needs a
        kernel compiled with backward=True. Host arrays (numpy, CPU torch
        tensors) run on the CPU; torch CUDA tensors (or other CUDA arrays,
        all on q's device) on the GPU, on torch's current stream, where
        every argument is checked before anything is queued.

        `dq`, `dk`, `dv`, when given, are written instead of new arrays:
        contiguous, writable, of q's, k's and v's shape and dtype, sharing
        no memory with an input or each other. New arrays are of q's kind
        (torch tensors for torch inputs)."""
        if not self.config.get("backward"):
            raise ValueError("this kernel was compiled without the backward: "
                             "compile it with moba.compile(..., "
                             "backward=True)")
        if max_seqlen is not None:
            max_seqlen = _capi.int64("max_seqlen", max_seqlen)
            if max_seqlen < 0:
                raise ValueError(f"max_seqlen must not be negative, got "
                                 f"{max_seqlen}")
        on_gpu = [name for name, x in (
            ("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse),
            ("grad_out", grad_out), ("grad_lse", grad_lse), ("dq", dq),
            ("dk", dk), ("dv", dv)) if x is not None and _is_gpu_array(x)]
        if on_gpu and on_gpu[0] != "q":
            raise ValueError(f"{on_gpu[0]} is on a GPU but q is in host "
                             "memory: they must be on the same device")
        if on_gpu:
            return self._backward_gpu(q, k, v, cu_seqlens, out, lse,
                                      grad_out, grad_lse, dq, dk, dv,
                                      max_seqlen)
        handle = self._handle_for(False, "q")
        c = self.config
        like = q
        arrays = {}
        for name, x in (("q", q), ("k", k), ("v", v), ("out", out),
                        ("grad_out", grad_out)):
            arrays[name] = _as_numpy(name, x)
        q, k, v = arrays["q"], arrays["k"], arrays["v"]
        contiguous = lambda x: x.flags["C_CONTIGUOUS"]
        self._check_qkv(q, k, v, contiguous)
        for name in ("out", "grad_out"):
            x = arrays[name]
            self._check_tensor(name, x, c["num_heads"], contiguous(x))
            if x.shape != q.shape:
                raise ValueError(f"{name} has shape {x.shape} but q has "
                                 f"{q.shape}: they must agree")
        for name, x in (("lse", lse), ("grad_lse", grad_lse)):
            if x is None:
                if name == "lse":
                    raise ValueError("lse is required: the forward's "
                                     "log-sum-exp (return_lse=True)")
                continue
            x = _as_numpy(name, x)
            self._result(name, x, q.shape[:-1], np.dtype(np.float32), None)
            arrays[name] = x
        inputs = dict(arrays)

        cu, tokens = self._host_call_offsets(q, cu_seqlens, max_seqlen,
                                             inputs)
        cu32 = np.ascontiguousarray(cu, dtype=np.int32)

        results = {}
        for name, given, x in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
            result, array = self._host_result(name, given, x.shape, x.dtype,
                                              inputs)
            for other, (_, other_array) in results.items():
                if _overlaps(array, other_array):
                    raise ValueError(f"{name} overlaps {other}: pass "
                                     "separate arrays")
            results[name] = (result, array)
        pointer = lambda name: (arrays[name].ctypes.data
                                if name in arrays else None)
        _capi.run_grad_kernel(
            handle, q.ctypes.data, k.ctypes.data, v.ctypes.data,
            cu32.ctypes.data, len(cu32) - 1, tokens, pointer("out"),
            pointer("lse"), pointer("grad_out"), pointer("grad_lse"),
            *(results[n][1].ctypes.data for n in ("dq", "dk", "dv")))
        return tuple(_like(like, results[n][0]) if given is None
                     else results[n][0]
                     for n, given in (("dq", dq), ("dk", dk), ("dv", dv)))

    def _backward_gpu(self, q, k, v, cu_seqlens, out, lse, grad_out,
                      grad_lse, dq, dk, dv, max_seqlen):
        """Kernel.backward on device tensors. Everything is checked before
        the GPU handle is taken (which compiles it on first use): a bad
        argument is an error naming it, whatever the machine."""
        import torch
        c = self.config
        if lse is None:
            raise ValueError("lse is required: the forward's log-sum-exp "
                             "(return_lse=True)")
        q, k, v = self._device_qkv(q, k, v)
        tensors = {}
        for name, x in (("out", out), ("grad_out", grad_out), ("lse", lse),
                        ("grad_lse", grad_lse)):
            if x is None:
                if name in ("out", "grad_out"):
                    raise TypeError(f"{name} is required: a tensor of q's "
                                    "shape and dtype on its device")
                continue
            if not _is_gpu_array(x):
                raise ValueError(f"{name} is in host memory but q is on "
                                 f"{q.device}: they must be on the same "
                                 "device")
            x = _as_cuda_tensor(name, x)
            if x.device != q.device:
                raise ValueError(f"{name} is on {x.device} but q is on "
                                 f"{q.device}: they must be on the same "
                                 "device")
            if name in ("out", "grad_out"):
                self._check_tensor(name, x, c["num_heads"], x.is_contiguous())
                if x.shape != q.shape:
                    raise ValueError(f"{name} has shape {tuple(x.shape)} but "
                                     f"q has {tuple(q.shape)}: they must "
                                     "agree")
            else:
                self._result(name, x, q.shape[:-1], torch.float32, None)
            tensors[name] = x
        cu, host_cu, tokens, inputs = self._device_offsets(q, cu_seqlens,
                                                           max_seqlen)
        inputs.update(q=q, k=k, v=v, **tensors)
        given = {}
        for name, x, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
            if x is None:
                continue
            if not isinstance(x, torch.Tensor) or x.device != q.device:
                raise ValueError(f"{name} must be a torch tensor on "
                                 f"{q.device}")
            self._result(name, x, like.shape, like.dtype, None)
            for other, y in list(inputs.items()) + list(given.items()):
                if _spans_overlap(x, y):
                    raise ValueError(
                        f"{name} overlaps {other}: each gradient needs a "
                        "tensor of its own")
            given[name] = x

        handle = self._handle_for(True, "q")
        self._check_loaded_for_capture(q.device)
        results = {name: given.get(name) if name in given else
                   torch.empty_like(like)
                   for name, like in (("dq", q), ("dk", k), ("dv", v))}
        dlse = tensors.get("grad_lse")
        if dlse is None:  # the GPU entry takes a buffer: a zero gradient
            dlse = torch.zeros(q.shape[:-1], dtype=torch.float32,
                               device=q.device)
        with torch.cuda.device(q.device):
            stream = torch.cuda.current_stream(q.device).cuda_stream
            _capi.run_grad_kernel_on_device(
                handle, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                cu.data_ptr(), len(host_cu) - 1, tokens,
                tensors["out"].data_ptr(), tensors["lse"].data_ptr(),
                tensors["grad_out"].data_ptr(), dlse.data_ptr(),
                *(results[n].data_ptr() for n in ("dq", "dk", "dv")),
                stream, host_cu.ctypes.data,
                allocator=torch_scratch.scratch_allocator(q.device))
        self._loaded_on.add(q.device)
        return results["dq"], results["dk"], results["dv"]

    def _call_gpu(self, q, k, v, cu_seqlens, max_seqlen, return_lse,
                  out=None, lse=None):
        handle = self._handle_for(True, "q")
        import torch
        q, k, v = self._device_qkv(q, k, v)
        self._check_loaded_for_capture(q.device)
        cu, host_cu, tokens, inputs = self._device_offsets(q, cu_seqlens,
                                                           max_seqlen)
        for name, given in (("out", out), ("lse", lse)):
            if given is not None and (not isinstance(given, torch.Tensor) or
                                      given.device != q.device):
                raise ValueError(f"{name} must be a torch tensor on "
                                 f"{q.device}")
        out = self._result("out", out, q.shape, q.dtype,
                           lambda: torch.empty_like(q))
        lse = self._result("lse", lse, q.shape[:-1], torch.float32,
                           lambda: torch.empty(q.shape[:-1],
                                               dtype=torch.float32,
                                               device=q.device))
        inputs.update(q=q, k=k, v=v)
        for name, given in (("out", out), ("lse", lse)):
            for input_name, x in inputs.items():
                if _spans_overlap(given, x):
                    raise ValueError(f"{name} overlaps {input_name}: the "
                                     "kernel would read what it has written; "
                                     "pass a tensor of its own")
        if _spans_overlap(out, lse):
            raise ValueError("out and lse overlap: pass separate tensors")
        with torch.cuda.device(q.device):
            stream = torch.cuda.current_stream(q.device).cuda_stream
            _capi.run_kernel_on_device(
                handle, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                cu.data_ptr(), len(host_cu) - 1, tokens, out.data_ptr(),
                lse.data_ptr(), stream, host_cu.ctypes.data,
                allocator=torch_scratch.scratch_allocator(q.device))
        self._loaded_on.add(q.device)
        return (out, lse) if return_lse else out

    def _check_loaded_for_capture(self, device):
        device_offsets.refuse_first_call_in_capture(self, self._loaded_on,
                                                    device)

    def _device_qkv(self, q, k, v):
        """q, k and v as torch CUDA tensors on one device, checked."""
        q, k, v = (_as_cuda_tensor(n, x) for n, x in (("q", q), ("k", k),
                                                      ("v", v)))
        for name, x in (("k", k), ("v", v)):
            if x.device != q.device:
                raise ValueError(f"{name} is on {x.device} but q is on "
                                 f"{q.device}: they must be on the same "
                                 "device")
        self._check_qkv(q, k, v, lambda x: x.is_contiguous())
        return q, k, v

    def _device_offsets(self, q, cu_seqlens, max_seqlen):
        """A GPU call's sequence offsets: (the int32 device tensor, its
        checked host copy, the token count, {"cu_seqlens": the caller's
        offsets} for the aliasing checks, empty for the batched layout)."""
        import torch
        if self.config["layout"] == "batched":
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens is only for layout='varlen'")
            batch, seq = q.shape[:2]
            _check_max_seqlen(max_seqlen, seq if batch else 0)
            host_cu = _uniform_offsets(batch, seq)
            # Uploaded once per shape and device: a copy from pageable host
            # memory would wait for the stream on every call.
            uploads = self.__dict__.setdefault("_batched_offsets", {})
            cu = uploads.get((batch, seq, q.device))
            if cu is None:
                if device_offsets.stream_is_capturing(q.device):
                    raise device_offsets.OffsetsNotKnownError(
                        f"the first call of batch {batch} and seq {seq} on "
                        f"{q.device} is being captured into a CUDA graph: "
                        "it uploads the sequence offsets (a copy the "
                        "capture does not allow). Call it once with this "
                        "shape before the capture (the warm-up "
                        "torch.cuda.graph needs anyway)")
                cu = torch.from_numpy(host_cu).to(q.device)
                uploads[(batch, seq, q.device)] = cu
            return cu, host_cu, batch * seq, {}
        tokens = q.shape[0]
        if cu_seqlens is None:
            raise ValueError("cu_seqlens is required for layout='varlen'")
        if not _is_gpu_array(cu_seqlens):
            raise ValueError("cu_seqlens is in host memory but q is on "
                             f"{q.device}: they must be on the same "
                             "device")
        cu = _as_cuda_tensor("cu_seqlens", cu_seqlens)
        if cu.device != q.device:
            raise ValueError(f"cu_seqlens is on {cu.device} but q is on "
                             f"{q.device}: they must be on the same "
                             "device")
        host_cu = self._host_offsets(cu, cu_seqlens, tokens, max_seqlen)
        return cu.to(torch.int32).contiguous(), host_cu, tokens, {
            "cu_seqlens": _as_cuda_tensor("cu_seqlens", cu_seqlens)}

    def _host_offsets(self, cu, given, tokens, max_seqlen):
        """The checked host copy of the device offsets `cu` (a torch view of
        `given`, the caller's object), kept per tensor while torch reports
        it unchanged and read from the device only otherwise (never during
        CUDA-graph capture): moba.device_offsets says how and why."""
        return device_offsets.host_offsets(given, cu, cu.device, tokens,
                                           max_seqlen,
                                           self._check_cu_seqlens)

    @staticmethod
    def _check_cu_seqlens(cu_seqlens, tokens, max_seqlen):
        if cu_seqlens is None:
            raise ValueError("cu_seqlens is required for layout='varlen'")
        cu = _as_numpy("cu_seqlens", cu_seqlens)
        if cu.ndim != 1 or not np.issubdtype(cu.dtype, np.integer):
            raise TypeError("cu_seqlens must be a 1-D integer array, got "
                            f"dtype {cu.dtype} shape {cu.shape}")
        if cu.size < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 offsets, got "
                             f"{cu.tolist()}")
        if cu[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
        steps = np.diff(cu.astype(np.int64))
        if (steps < 0).any():
            i = int(np.argmax(steps < 0)) + 1
            raise ValueError(
                f"cu_seqlens is not monotonic: cu_seqlens[{i}]={int(cu[i])} < "
                f"cu_seqlens[{i - 1}]={int(cu[i - 1])}")
        if cu[-1] != tokens:
            raise ValueError(f"cu_seqlens must end at the token count "
                             f"{tokens}, got {int(cu[-1])}")
        if tokens > np.iinfo(np.int32).max:
            raise ValueError(f"{tokens} tokens do not fit int32 offsets")
        _check_max_seqlen(max_seqlen, int(steps.max()) if steps.size else 0)
        return cu


# compile()'s kernels: found here while something holds them, freed (with
# their compiled code) when nothing does.
_kernels = weakref.WeakValueDictionary()
# The kernels moba_attn_varlen and moba_attn_batched used last, most recent
# at the end: those calls drop their Kernel, and must not compile it again
# each time.
_recent = collections.OrderedDict()
_RECENT_KERNELS = 8
# Guards _kernels, _recent and _compiling; never held while compiling, so
# that no call waits for another configuration's compile.
_registry_lock = threading.Lock()
# key -> [lock, number of threads using it]: one compile of a key at a time.
_compiling = {}


def _compile_handle(config, target):
    """Compiles `config` for `target`; returns (handle, from_cache,
    cache_warning)."""
    c = config
    handle, from_cache = _capi.compile_kernel(
        c["head_dim"], c["num_heads"], c["num_kv_heads"], c["block_size"],
        c["top_k"], c["causal"], c["scale"], c["dtype"], target, c["stage"],
        c["tile_q"], c["tile_k"], cache_dir() if c["cache"] else None,
        os.environ.get("MOBA_DUMP_IR") or None, c["gpu_attention"],
        c["mma_warps"], c["mma_key_chunk"], c["mma_instruction"],
        c["mma_key_value_loads"], c["mma_merge"], c["mma_stages"],
        c["mma_schedule"], c["backward"])
    return handle, from_cache, _capi.cache_warning(handle)


def _kernel_for(key, config, target):
    """The live Kernel of `key`, else a new one compiled for `target`.
    Compiles of one key are serialized; different keys compile in
    parallel."""
    with _registry_lock:
        kernel = _kernels.get(key)
        if kernel is not None:
            return kernel
        entry = _compiling.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            with _registry_lock:
                kernel = _kernels.get(key)
            if kernel is not None:
                return kernel
            start = time.perf_counter()
            handle, from_cache, warning = _compile_handle(config, target)
            kernel = Kernel(config, {target: handle}, from_cache,
                            time.perf_counter() - start, warning)
            with _registry_lock:
                _kernels[key] = kernel
    finally:
        with _registry_lock:
            entry[1] -= 1
            if not entry[1]:
                del _compiling[key]
    if warning:
        warnings.warn(warning, CacheWarning, stacklevel=3)
    return kernel


def _keep_recent(kernel):
    """Holds `kernel` as one of the functional API's last few."""
    with _registry_lock:
        _recent[kernel] = None
        _recent.move_to_end(kernel)
        evicted = []
        while len(_recent) > _RECENT_KERNELS:
            evicted.append(_recent.popitem(last=False)[0])
    # Freed here, outside the lock, if nothing else holds them.
    del evicted


def compile(head_dim, num_heads, num_kv_heads, block_size, top_k, dtype,
            layout="varlen", causal=True, target="auto", *, scale=None,
            stage="fused", tile_q=None, tile_k=None, gpu_attention="mma",
            mma_warps=None, mma_key_chunk=None, mma_instruction=None,
            mma_key_value_loads=None, mma_merge=None, mma_stages=None,
            mma_schedule=None, backward=False, cache=True):
    """Compiles one MoBA attention configuration and returns a Kernel.

    backward: also compile the gradient (Kernel.backward), in the same
    compilation as the forward so that it recomputes the forward's selection
    bit for bit (docs/semantics.md, "Gradients"), for every target.

    target: "cpu"; "sm_80" (Ampere and newer) or "sm_90a" (Hopper), which
    need a GPU; or "auto": the GPU's chip when there is a GPU, else the CPU
    (the other is compiled when the kernel is first called with arrays
    there).

    Kernels are kept in memory while something holds them (the same
    arguments then give the same Kernel) and on disk (see cache_dir()),
    keyed by the configuration, the compiler's version and the host CPU,
    and for a GPU by the chip, the kernel plan and the CUDA toolkit too
    (docs/python.md): a second process loads a compiled configuration
    from there without running the compiler (kernel.from_cache says so).
    cache=False neither reads nor writes the disk cache for this kernel.
    Raises ValueError or TypeError naming a bad argument, and CompileError
    if the compiler fails; warns with CacheWarning when the disk cache was
    not used as asked.

    gpu_attention: "mma" (default): the queries grouped by the key block they
    chose, attended in 16-query tiles on tensor cores, partials merged by
    log-sum-exp (f32 and head_dims other than multiples of 16 up to 128 run
    the grouped form on plain threads); "simt": one thread per (token, head).
    mma_warps, mma_key_chunk: the tensor-core kernel's warps per CTA and keys
    per shared-memory stage; None takes the tuning table's choice
    (docs/tuning.md).
    mma_instruction: "mma.sync" (sm_80 and newer) or "wgmma" (sm_90a only;
    mma_warps a multiple of 4, mma_key_chunk a multiple of 64; head_dims
    other than 64 and 128 keep mma.sync); None takes the tuning table's
    choice with its shape, and mma.sync when mma_warps or mma_key_chunk is
    given.
    mma_key_value_loads: with wgmma, how K and V reach shared memory:
    "tma" (TMA bulk copies on mbarriers, started by one thread),
    "tma-multicast" (TMA shared by clusters of two CTAs that read the same
    keys: each copies half of a chunk into both) or "cp.async" (every thread
    copies 16 bytes at a time); None: the tuning table's choice with its
    shape, else "cp.async". The TMA forms need K and V 16-byte aligned with
    strides of whole 16 bytes (a contiguous head_dim of 64 or 128 is).
    mma_stages: with TMA loads, the K/V buffers of the loads' ring, 2 to 4
    (the cp.async loops take 2); None: the tuning table's with its shape and
    loads, else 2.
    mma_schedule: with wgmma, the chunk loop's order: "in-order",
    "overlapped" (each chunk's softmax under the previous chunk's P V;
    cp.async loads only), "warp-specialized" (a producer warpgroup fills
    the TMA ring while consumer warpgroups multiply; TMA loads only),
    "warp-specialized-overlapped" (the same, each consumer's softmax under
    the previous chunk's P V), "ping-pong" (that, with the consumer
    warpgroups taking turns on the tensor cores; mma_warps 8 or 12),
    "persistent" (warp-specialized on persistent CTAs, whose producer
    copies the next tile's chunks while the consumers finish the current
    one) or "auto" (None: overlapped where one CTA fills an SM and K and V
    come by cp.async, else in order).
    The rules between these (wgmma needs sm_90a and whole warpgroups, TMA
    needs wgmma, ...) are the library's, checked once the tuning table has
    filled in what is None; its messages name the argument and show the
    whole plan. kernel.plan says the plan a GPU kernel was compiled with.
    mma_merge: where the slots' partials are merged: "separate" (None:
    kernels of their own after the attention) or "fused" (inside the
    attention kernel, by the CTA that finishes a row's last slot; slower on
    the H200 today, docs/PERFORMANCE.md).
    """
    # Types and the C types' ranges here (ctypes would wrap); the limits
    # and the rules between values in the library (mobaCheckConfig), whose
    # messages name the argument.
    head_dim = _capi.int64("head_dim", head_dim)
    num_heads = _capi.int64("num_heads", num_heads)
    num_kv_heads = _capi.int64("num_kv_heads", num_kv_heads)
    block_size = _capi.int64("block_size", block_size)
    top_k = _capi.int64("top_k", top_k)
    tile_q = _optional_positive_int("tile_q", tile_q)
    tile_k = _optional_positive_int("tile_k", tile_k)
    mma_warps = _optional_positive_int("mma_warps", mma_warps)
    mma_key_chunk = _optional_positive_int("mma_key_chunk", mma_key_chunk)
    mma_stages = _optional_positive_int("mma_stages", mma_stages)
    causal = _bool("causal", causal)
    backward = _bool("backward", backward)
    cache = _bool("cache", cache)
    if scale is not None:
        scale = _capi.float32_scale(scale)  # what the kernel will use
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of f32, f16, bf16, got {dtype!r}")
    dtype = _DTYPE_NAMES[name]
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'varlen' or 'batched', got "
                         f"{layout!r}")
    if target not in _TARGETS:
        raise ValueError(f"target must be one of {', '.join(_TARGETS)}, got "
                         f"{target!r}")
    if gpu_attention not in ("mma", "simt"):
        raise ValueError(f"gpu_attention must be 'mma' or 'simt', got "
                         f"{gpu_attention!r}")
    if mma_instruction not in (None, "mma.sync", "wgmma"):
        raise ValueError(f"mma_instruction must be 'mma.sync', 'wgmma' or "
                         f"None, got {mma_instruction!r}")
    if mma_key_value_loads not in (None, "cp.async", "tma", "tma-multicast"):
        raise ValueError(f"mma_key_value_loads must be 'cp.async', 'tma', "
                         f"'tma-multicast' or None, got "
                         f"{mma_key_value_loads!r}")
    if mma_merge not in (None, "fused", "separate"):
        raise ValueError(f"mma_merge must be 'fused', 'separate' or None, "
                         f"got {mma_merge!r}")
    if mma_schedule not in (None, "auto", "in-order", "overlapped",
                            "warp-specialized",
                            "warp-specialized-overlapped", "ping-pong",
                            "persistent"):
        raise ValueError(f"mma_schedule must be 'auto', 'in-order', "
                         f"'overlapped', 'warp-specialized', "
                         f"'warp-specialized-overlapped', 'ping-pong', "
                         f"'persistent' or None, got "
                         f"{mma_schedule!r}")
    if stage not in ("fused", "tiled", "decomposed"):
        raise ValueError(f"stage must be 'fused', 'tiled' or 'decomposed', "
                         f"got {stage!r}")
    first = target
    if target in ("sm_80", "sm_90a", "auto"):
        chip, why = _available_gpu_target()
        if target != "auto" and chip is None:
            raise ValueError(f"target {target!r} needs a GPU, but {why}")
        first = (chip or "cpu") if target == "auto" else target
    if first != "cpu" and stage != "fused":
        raise ValueError(f"stage {stage!r} is for the CPU; GPU targets use "
                         "'fused'")

    config = dict(head_dim=head_dim, num_heads=num_heads,
                  num_kv_heads=num_kv_heads, block_size=block_size,
                  top_k=top_k, dtype=dtype, layout=layout,
                  causal=causal, target=target, scale=scale,
                  stage=stage, tile_q=tile_q, tile_k=tile_k,
                  gpu_attention=gpu_attention, mma_warps=mma_warps,
                  mma_key_chunk=mma_key_chunk,
                  mma_instruction=mma_instruction,
                  mma_key_value_loads=mma_key_value_loads,
                  mma_merge=mma_merge, mma_stages=mma_stages,
                  mma_schedule=mma_schedule, backward=backward, cache=cache)
    disk = cache_dir() if cache else None
    dump = os.environ.get("MOBA_DUMP_IR") or None
    key = (tuple(sorted(config.items())), disk, dump)
    with _registry_lock:
        known = key in _kernels
    if not known:  # a configuration checked once, before its compile
        def check(on):
            return _capi.check_config(
                head_dim, num_heads, num_kv_heads, block_size, top_k, causal,
                scale, dtype, on, stage, tile_q, tile_k, gpu_attention,
                mma_warps, mma_key_chunk, mma_instruction,
                mma_key_value_loads, mma_merge, mma_stages, mma_schedule,
                backward)
        problem = check(first)
        # "auto" with a backward the GPU cannot carry (f32, an odd
        # head_dim): the CPU, which carries every backward.
        if (problem is not None and backward and target == "auto" and
                first != "cpu" and check("cpu") is None):
            first, problem = "cpu", None
        if problem is not None:
            raise ValueError(problem)
    return _kernel_for(key, config, first)


def _infer_dtype(x):
    name = str(getattr(x, "dtype", ""))
    name = name.replace("torch.", "")
    if name == "uint16":
        return "bf16"
    if name not in _DTYPE_NAMES:
        raise TypeError(f"q has dtype {name or type(x).__name__}; moba takes "
                        "float32, float16 or bfloat16")
    return _DTYPE_NAMES[name]


def moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size,
                     moba_topk, *, causal=True, softmax_scale=None,
                     return_lse=False):
    """MoBA's reference signature, with flash-attn's keywords: q [T, Hq, D],
    k and v [T, Hkv, D], cu_seqlens [B + 1]; returns the output [T, Hq, D]
    (and the log-sum-exp [T, Hq], float32, with return_lse=True).
    softmax_scale None: 1/sqrt(D).

    torch tensors with torch 2.4 or newer go through the custom op
    torch.ops.moba.attention_varlen (moba.torch_ops): q, k and v get
    gradients, and torch.compile(fullgraph=True) traces the call. With an
    older torch a call that needs gradients goes through MobaAttention,
    which is causal with the default scale (others raise RuntimeError
    naming the torch version); one that needs none runs the kernel."""
    if _torch_ops.is_tensor(q):
        if _torch_ops.OPS_AVAILABLE:
            return _torch_ops.moba_attn_varlen_torch(
                q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk,
                causal, softmax_scale, return_lse)
        if _needs_grad(q, k, v):
            if causal is not True or softmax_scale is not None:
                raise RuntimeError(
                    "moba_attn_varlen: gradients with causal=False or a "
                    "softmax_scale need moba's torch ops; "
                    f"{_torch_ops.UNAVAILABLE_REASON} (without gradients, "
                    "under torch.no_grad(), this call runs)")
            return MobaAttention.apply(q, k, v, cu_seqlens, max_seqlen,
                                       moba_chunk_size, moba_topk,
                                       return_lse)
    return_lse = _bool("return_lse", return_lse)
    kernel = compile(head_dim=q.shape[-1], num_heads=q.shape[-2],
                     num_kv_heads=k.shape[-2], block_size=moba_chunk_size,
                     top_k=moba_topk, dtype=_infer_dtype(q), layout="varlen",
                     causal=causal, scale=softmax_scale)
    _keep_recent(kernel)
    out, lse = kernel(q, k, v, cu_seqlens, max_seqlen=max_seqlen,
                      return_lse=True)
    out = _like(q, out)
    if not return_lse:
        return out
    if not isinstance(q, np.ndarray) and isinstance(lse, np.ndarray):
        import torch
        lse = torch.from_numpy(lse)  # float32 whatever q's dtype
    return out, lse


def _needs_grad(*tensors):
    """Whether autograd would record a call on these torch tensors."""
    import torch
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def moba_attn_batched(q, k, v, moba_chunk_size, moba_topk, causal=True):
    """The batched form: q [B, S, Hq, D], k and v [B, S, Hkv, D]."""
    kernel = compile(head_dim=q.shape[-1], num_heads=q.shape[-2],
                     num_kv_heads=k.shape[-2], block_size=moba_chunk_size,
                     top_k=moba_topk, dtype=_infer_dtype(q), layout="batched",
                     causal=causal)
    _keep_recent(kernel)
    return _like(q, kernel(q, k, v))


def _like(reference, out):
    """Returns `out` as the kind of array `reference` is (numpy or torch)."""
    if isinstance(reference, np.ndarray) or not isinstance(out, np.ndarray):
        return out
    import torch
    if reference.dtype == torch.bfloat16:
        return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(out)


try:  # the autograd wrapper exists where torch does
    import torch as _torch

    class MobaAttention(_torch.autograd.Function):
        """moba_attn_varlen as a torch.autograd.Function:
        MobaAttention.apply(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size,
        moba_topk, return_lse=False) returns out, or (out, lse) with
        return_lse=True. The backward gives q, k and v their gradients, from
        out's and (when returned and used) lse's; cu_seqlens and the sizes
        get none. It saves q, k, v, out and lse, and recomputes the
        selection (docs/semantics.md, "Gradients"), on the CPU or the
        GPU where the tensors are. The backward is compiled with the
        forward when q, k or v requires a gradient."""

        @staticmethod
        def forward(ctx, q, k, v, cu_seqlens, max_seqlen, moba_chunk_size,
                    moba_topk, return_lse=False):
            return_lse = _bool("return_lse", return_lse)
            kernel = compile(head_dim=q.shape[-1], num_heads=q.shape[-2],
                             num_kv_heads=k.shape[-2],
                             block_size=moba_chunk_size, top_k=moba_topk,
                             dtype=_infer_dtype(q), layout="varlen",
                             backward=any(ctx.needs_input_grad[:3]))
            _keep_recent(kernel)
            out, lse = kernel(q, k, v, cu_seqlens, max_seqlen=max_seqlen,
                              return_lse=True)
            out = _like(q, out)
            if not isinstance(lse, _torch.Tensor):  # CPU calls give numpy
                lse = _torch.from_numpy(lse)  # float32 whatever q's dtype
            ctx.kernel, ctx.cu_seqlens = kernel, cu_seqlens
            ctx.max_seqlen = max_seqlen
            ctx.save_for_backward(q, k, v, out, lse)
            if not return_lse:
                ctx.mark_non_differentiable(lse)
                return out
            return out, lse

        @staticmethod
        def backward(ctx, grad_out, grad_lse=None):
            q, k, v, out, lse = ctx.saved_tensors
            if grad_out is None:  # only lse reached the loss
                grad_out = _torch.zeros_like(out)
            dq, dk, dv = ctx.kernel.backward(
                q, k, v, ctx.cu_seqlens, out, lse,
                grad_out.to(out.dtype).contiguous(),
                None if grad_lse is None else
                grad_lse.to(_torch.float32).contiguous(),
                max_seqlen=ctx.max_seqlen)
            return dq, dk, dv, None, None, None, None, None

    __all__.append("MobaAttention")
except ImportError:
    pass

# Decode against a paged KV cache (CPU and GPU).
from .paged import (GpuPagedKernel, KVCache, PagedKernel,  # noqa: E402
                    compile_paged, paged_decode, paged_kv_append)

__all__ += ["GpuPagedKernel", "KVCache", "PagedKernel", "compile_paged",
            "paged_decode", "paged_kv_append"]

# torch.library ops (torch >= 2.4); imported last: they build on the above.
from . import torch_ops as _torch_ops  # noqa: E402
