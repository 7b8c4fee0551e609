"""Decode and chunked prefill against a paged KV cache, on the CPU or a GPU.

    cache = moba.KVCache(num_pages=64, page_size=16, num_kv_heads=2,
                         head_dim=64, dtype="f32", batch=4, num_heads=8,
                         block_size=64, top_k=3)
    out = cache.prefill(q, k, v, cu_seqlens)   # a chunk: cache + itself
    cache.append(k1, v1)                       # one new token a sequence
    out = cache.decode(q1)                     # its rows of the forward

    moba.paged_kv_append(k, v, cu_seqlens, k_cache, v_cache, block_key_sums,
                         block_table, cache_lens, block_size=64)
    out = moba.paged_decode(q, cu_seqlens_q, k_cache, v_cache,
                            block_key_sums, block_table, cache_lens,
                            block_size=64, top_k=3)

The cache is vLLM's (docs/semantics.md, "Decode and chunked prefill"):
k_cache, v_cache [num_pages, page_size, Hkv, D], block_table [B, max_pages]
of int32 page ids, cache_lens [B] int32, and the f32 key sums of every MoBA
block, block_key_sums [B, max_blocks, Hkv, D], which the append keeps so that
decode never re-reads old keys to gate. A query at position p computes row p
of the full causal forward. Arrays are numpy or CPU torch tensors, or CUDA
torch tensors (all of one call on one GPU; the kernels run on torch's
current stream): KVCache(..., device="cuda") keeps its cache on the GPU.
On the GPU the host never reads the device's offsets, table or lengths:
the kernels check them and give NaN rows for a sequence that fails (the
functional forms), while KVCache checks its own host copies first and
raises ValueError as on the CPU.

CUDA graphs: the functional forms on CUDA tensors read nothing back to the
host, so a decode step made of them can be captured once each kernel has
run on the device (the warm-up; its first call loads its modules, which
capture forbids): paged_kv_append, then cache_lens advanced on the device
(cache_lens.copy_(the append's result)), then paged_decode, with a block
table that already holds the pages the replays will fill. A KVCache cannot
be captured: it keeps its lengths and page table on the host, checks and
advances them in Python on every call and uploads them (a replay would
skip all of that), so its calls raise RuntimeError during capture.
"""
import threading
import weakref

import numpy as np

from . import _capi

# The most queries per sequence of one decode call (the C API's limit);
# more is chunked prefill.
MAX_DECODE_QUERY_TOKENS = 16

_DTYPE_NAMES = {
    "f32": "f32", "float32": "f32", "float": "f32",
    "f16": "f16", "float16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16",
}
_STORAGE = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16),
            "bf16": np.dtype(np.uint16)}
_SELECTIONS = ("query_head", "kv_head")


def _dtype_name(dtype):
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of f32, f16, bf16, got {dtype!r}")
    return _DTYPE_NAMES[name]


def _element_name(x):
    """The moba name of an array's element type (uint16 numpy arrays hold
    bfloat16 bits), or its own spelling."""
    name = str(x.dtype).replace("torch.", "")
    if name == "uint16":
        return "bf16"
    return _DTYPE_NAMES.get(name, name)


def _as_host_array(name, x):
    """A numpy view of `x` (numpy, or a CPU torch tensor: no copy, so that
    writes reach it); GPU and other arrays raise ValueError."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        import torch
        if x.device.type != "cpu":
            raise ValueError(
                f"{name} is on {x.device} but the call's other arrays are "
                "host arrays: pass all of one call's arrays on the CPU or "
                "all on one GPU")
        x = x.detach()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy().view(np.uint16)
        return x.numpy()
    raise ValueError(f"{name} must be a numpy array or a CPU torch tensor, "
                     f"got {type(x).__name__}")


def _check_data(name, x, dtype, shape):
    """`x` of moba dtype `dtype` and `shape` (None: any size there),
    contiguous."""
    if _element_name(x) != dtype:
        hint = (": pass uint16 arrays of bfloat16 bits (moba.to_bf16) or "
                "bfloat16 torch tensors") if dtype == "bf16" else ""
        raise ValueError(f"{name} has dtype {x.dtype}, expected {dtype}{hint}")
    _check_shape(name, x, shape)
    if not x.flags["C_CONTIGUOUS"]:
        raise ValueError(f"{name} is not contiguous (strides {x.strides}); "
                         "pass a contiguous array")


def _check_shape(name, x, shape):
    got = tuple(x.shape)
    if len(got) != len(shape) or any(
            want is not None and g != want for g, want in zip(got, shape)):
        spelled = ", ".join("*" if d is None else str(d) for d in shape)
        raise ValueError(f"{name} has shape {got}, expected ({spelled})")


def _int32_array(name, x, shape):
    """An int32 copy of integer array `x` of `shape` (None: any), its values
    checked to fit int32. Lists and tuples are taken too."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    x = _as_host_array(name, x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype "
                         f"{x.dtype}")
    _check_shape(name, x, shape)
    info = np.iinfo(np.int32)
    if x.dtype.kind == "u" and x.size and x.max() > info.max:
        # Before the cast to int64, which would wrap 2^64 - 1 to -1.
        raise ValueError(f"{name} holds {int(x.max())}, which does not fit "
                         "int32")
    wide = x.astype(np.int64)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        bad = int(wide.flat[int(np.argmax((wide < info.min) |
                                          (wide > info.max)))])
        raise ValueError(f"{name} holds {bad}, which does not fit int32")
    return np.ascontiguousarray(wide, dtype=np.int32)


def _offsets(name, cu, batch, tokens):
    """cu_seqlens `cu` checked: batch + 1 offsets from 0, never decreasing,
    ending at `tokens`."""
    cu = _int32_array(name, cu, (batch + 1,))
    if cu[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {int(cu[0])}")
    steps = np.diff(cu.astype(np.int64))
    if (steps < 0).any():
        i = int(np.argmax(steps < 0)) + 1
        raise ValueError(f"{name} must not decrease: {name}[{i}]={int(cu[i])} "
                         f"< {name}[{i - 1}]={int(cu[i - 1])}")
    if cu[-1] != tokens:
        raise ValueError(f"{name} must end at the token count {tokens}, got "
                         f"{int(cu[-1])}")
    return cu


def _check_query_counts(counts, max_query_tokens):
    """Raises ValueError naming the first sequence with more than
    `max_query_tokens` queries (0: any number, chunked prefill)."""
    if max_query_tokens and counts.size and counts.max() > max_query_tokens:
        b = int(np.argmax(counts > max_query_tokens))
        raise ValueError(
            f"sequence {b} has {int(counts[b])} queries; decode takes at "
            f"most {max_query_tokens} a sequence: use prefill() for a "
            "longer chunk")


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _like(reference, array):
    """`array` (numpy, of reference's dtype) as the kind of array
    `reference` is."""
    if not _is_torch(reference):
        return array
    import torch
    if reference.dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _results(reference, out, lse, return_lse):
    """out (reference's dtype) and lse (float32) as the kind of array
    `reference` is."""
    out = _like(reference, out)
    if not return_lse:
        return out
    if _is_torch(reference):
        import torch
        lse = torch.from_numpy(lse)
    return out, lse


class PagedKernel:
    """A compiled paged KV cache configuration: its append and decode entry
    points (moba.compile_paged). Most callers use KVCache or the functional
    forms, which compile these as they need them."""

    def __init__(self, config, handle, from_cache):
        self._handle = handle
        self.config = config
        self.from_cache = from_cache
        self.cache_warning = _capi.cache_warning(handle)

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle and _capi is not None and getattr(_capi, "destroy", None):
            _capi.destroy(handle)

    def __repr__(self):
        c = self.config
        return ("moba.PagedKernel(" + ", ".join(
            f"{name}={c[name]!r}" for name in (
                "head_dim", "num_heads", "num_kv_heads", "page_size",
                "block_size", "top_k", "selection", "dtype",
                "max_query_tokens")) + ")")

    def _cache(self, k_cache, v_cache, block_key_sums, block_table,
               cache_lens):
        """(the C struct of the cache, the numpy arrays it points into)
        after the shape and dtype checks."""
        c = self.config
        k_cache = _as_host_array("k_cache", k_cache)
        v_cache = _as_host_array("v_cache", v_cache)
        block_key_sums = _as_host_array("block_key_sums", block_key_sums)
        cache_shape = (None, c["page_size"], c["num_kv_heads"], c["head_dim"])
        _check_data("k_cache", k_cache, c["dtype"], cache_shape)
        _check_data("v_cache", v_cache, c["dtype"], cache_shape)
        if v_cache.shape != k_cache.shape:
            raise ValueError(f"v_cache has shape {v_cache.shape} but k_cache "
                             f"has {k_cache.shape}")
        if isinstance(block_table, (list, tuple)):
            block_table = np.asarray(block_table)
        block_table = _as_host_array("block_table", block_table)
        if block_table.ndim != 2:
            raise ValueError(f"block_table has shape {block_table.shape}, "
                             "expected (batch, max_pages)")
        batch = block_table.shape[0]
        block_table = _int32_array("block_table", block_table,
                                   block_table.shape)
        cache_lens = _int32_array("cache_lens", cache_lens, (batch,))
        _check_data("block_key_sums", block_key_sums, "f32",
                    (batch, None, c["num_kv_heads"], c["head_dim"]))
        for name, x in (("k_cache", k_cache), ("v_cache", v_cache),
                        ("block_key_sums", block_key_sums)):
            if not x.flags.writeable:
                raise ValueError(f"{name} is read-only: the cache is written "
                                 "in place")
        arrays = (k_cache, v_cache, block_key_sums, block_table, cache_lens)
        struct = _capi.paged_cache(
            k_cache.ctypes.data, v_cache.ctypes.data,
            block_key_sums.ctypes.data, block_table.ctypes.data,
            cache_lens.ctypes.data, k_cache.shape[0], block_table.shape[1],
            block_key_sums.shape[1], batch)
        return struct, arrays

    def append(self, k, v, cu_seqlens, k_cache, v_cache, block_key_sums,
               block_table, cache_lens):
        """Writes k, v [N, Hkv, D] (packed by cu_seqlens [B + 1]) into the
        cache at positions cache_lens[b] + i, and their keys into the block
        sums, in place. Returns the grown lengths (int32 numpy)."""
        c = self.config
        struct, arrays = self._cache(k_cache, v_cache, block_key_sums,
                                     block_table, cache_lens)
        k, v = _as_host_array("k", k), _as_host_array("v", v)
        kv_shape = (None, c["num_kv_heads"], c["head_dim"])
        _check_data("k", k, c["dtype"], kv_shape)
        _check_data("v", v, c["dtype"], kv_shape)
        if v.shape != k.shape:
            raise ValueError(f"v has shape {v.shape} but k has {k.shape}")
        batch = arrays[3].shape[0]
        cu = _offsets("cu_seqlens", cu_seqlens, batch, k.shape[0])
        _capi.run_paged_append(self._handle, struct, k.ctypes.data,
                               v.ctypes.data, cu.ctypes.data, k.shape[0])
        return arrays[4] + np.diff(cu).astype(np.int32)

    def decode(self, q, cu_seqlens_q, k_cache, v_cache, block_key_sums,
               block_table, cache_lens):
        """The rows of q [Tq, Hq, D] (packed by cu_seqlens_q [B + 1]; the
        queries of sequence b are its last n_b cached tokens). Returns
        (out [Tq, Hq, D], lse [Tq, Hq] float32) as numpy arrays."""
        c = self.config
        struct, arrays = self._cache(k_cache, v_cache, block_key_sums,
                                     block_table, cache_lens)
        q = _as_host_array("q", q)
        _check_data("q", q, c["dtype"],
                    (None, c["num_heads"], c["head_dim"]))
        batch = arrays[3].shape[0]
        cu = _offsets("cu_seqlens_q", cu_seqlens_q, batch, q.shape[0])
        out = np.empty(q.shape, dtype=q.dtype)
        lse = np.empty(q.shape[:2], dtype=np.float32)
        _capi.run_paged_decode(self._handle, struct, q.ctypes.data,
                               cu.ctypes.data, q.shape[0], out.ctypes.data,
                               lse.ctypes.data)
        return out, lse


def _is_cuda(x):
    return _is_torch(x) and x.device.type == "cuda"


def _gpu_target(device):
    """The chip to compile for on torch device `device`."""
    import torch
    from . import _gpu_target_for
    major, minor = torch.cuda.get_device_capability(device)
    return _gpu_target_for(10 * major + minor)


def _cuda_data(name, x, dtype, shape, device):
    """CUDA tensor `x` checked: on `device`, of moba dtype `dtype` (or
    "int32") and `shape` (None: any size there), contiguous."""
    if not _is_cuda(x):
        raise ValueError(f"{name} must be a CUDA torch tensor like the "
                         f"call's other arrays, got {type(x).__name__}"
                         + (f" on {x.device}" if _is_torch(x) else ""))
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the call runs on "
                         f"{device}")
    got = str(x.dtype).replace("torch.", "")
    if _DTYPE_NAMES.get(got, got) != dtype:
        raise ValueError(f"{name} has dtype {x.dtype}, expected {dtype}")
    _check_shape(name, x, shape)
    if not x.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {x.stride()}); "
                         "pass a contiguous tensor")
    return x.detach()


class _DeviceCall:
    """The CUDA tensors of one GPU call, checked, and its C struct."""

    def __init__(self, config, k_cache, v_cache, block_key_sums,
                 block_table, cache_lens):
        c = config
        self.device = k_cache.device if _is_torch(k_cache) else None
        cache_shape = (None, c["page_size"], c["num_kv_heads"], c["head_dim"])
        self.k_cache = _cuda_data("k_cache", k_cache, c["dtype"],
                                  cache_shape, self.device)
        self.v_cache = _cuda_data("v_cache", v_cache, c["dtype"],
                                  tuple(self.k_cache.shape), self.device)
        if block_table.ndim != 2:
            raise ValueError(f"block_table has shape "
                             f"{tuple(block_table.shape)}, expected (batch, "
                             "max_pages)")
        self.batch = block_table.shape[0]
        self.block_table = _cuda_data("block_table", block_table, "int32",
                                      (self.batch, None), self.device)
        self.cache_lens = _cuda_data("cache_lens", cache_lens, "int32",
                                     (self.batch,), self.device)
        self.sums = _cuda_data("block_key_sums", block_key_sums, "f32",
                               (self.batch, None, c["num_kv_heads"],
                                c["head_dim"]), self.device)
        self.struct = _capi.paged_cache(
            self.k_cache.data_ptr(), self.v_cache.data_ptr(),
            self.sums.data_ptr(), self.block_table.data_ptr(),
            self.cache_lens.data_ptr(), self.k_cache.shape[0],
            self.block_table.shape[1], self.sums.shape[1], self.batch)

    def stream(self):
        import torch
        return torch.cuda.current_stream(self.device).cuda_stream


class GpuPagedKernel:
    """A paged KV cache configuration compiled for a GPU (moba.compile_paged
    with target "sm_80" or "sm_90a"): append and decode on CUDA torch
    tensors, on torch's current stream."""

    def __init__(self, config, handle):
        self._handle = handle
        self.config = config
        # The torch devices a call has run on (its modules are loaded
        # there, which CUDA-graph capture forbids).
        self._loaded_on = set()

    def _check_loaded_for_capture(self, device):
        from . import device_offsets
        device_offsets.refuse_first_call_in_capture(self, self._loaded_on,
                                                    device)

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle and _capi is not None and getattr(_capi, "destroy", None):
            _capi.destroy(handle)

    def __repr__(self):
        return PagedKernel.__repr__(self).replace("moba.PagedKernel(",
                                                  "moba.GpuPagedKernel(")

    def append(self, k, v, cu_seqlens, k_cache, v_cache, block_key_sums,
               block_table, cache_lens):
        """As PagedKernel.append, on CUDA tensors (cu_seqlens, block_table
        and cache_lens int32 CUDA tensors too). The kernels check every
        sequence (offsets, lengths, page ids) and write nothing of one that
        fails; nothing is returned (the device lengths are the caller's)."""
        import torch
        c = self.config
        call = _DeviceCall(c, k_cache, v_cache, block_key_sums, block_table,
                           cache_lens)
        kv_shape = (None, c["num_kv_heads"], c["head_dim"])
        k = _cuda_data("k", k, c["dtype"], kv_shape, call.device)
        v = _cuda_data("v", v, c["dtype"], tuple(k.shape), call.device)
        cu = _cuda_data("cu_seqlens", cu_seqlens, "int32", (call.batch + 1,),
                        call.device)
        self._check_loaded_for_capture(call.device)
        with torch.cuda.device(call.device):
            _capi.run_paged_append_on_device(
                self._handle, call.struct, k.data_ptr(), v.data_ptr(),
                cu.data_ptr(), k.shape[0], call.stream())
        self._loaded_on.add(call.device)

    def decode(self, q, cu_seqlens_q, k_cache, v_cache, block_key_sums,
               block_table, cache_lens):
        """As PagedKernel.decode, on CUDA tensors: returns (out, lse) as
        CUDA tensors; the rows of a sequence the kernels' check rejects are
        NaN."""
        import torch
        c = self.config
        call = _DeviceCall(c, k_cache, v_cache, block_key_sums, block_table,
                           cache_lens)
        q = _cuda_data("q", q, c["dtype"], (None, c["num_heads"],
                                            c["head_dim"]), call.device)
        cu = _cuda_data("cu_seqlens_q", cu_seqlens_q, "int32",
                        (call.batch + 1,), call.device)
        self._check_loaded_for_capture(call.device)
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
        with torch.cuda.device(call.device):
            _capi.run_paged_decode_on_device(
                self._handle, call.struct, q.data_ptr(), cu.data_ptr(),
                q.shape[0], out.data_ptr(), lse.data_ptr(), call.stream())
        self._loaded_on.add(call.device)
        return out, lse


# compile_paged()'s kernels while something holds them, and the last few
# the functional forms and caches used (they keep no kernel of their own).
_kernels = weakref.WeakValueDictionary()
_recent = []
_RECENT_KERNELS = 8
_lock = threading.Lock()


def compile_paged(head_dim, num_heads, num_kv_heads, page_size, block_size,
                  top_k, dtype, *, selection="query_head", scale=None,
                  max_query_tokens=MAX_DECODE_QUERY_TOKENS, target="cpu"):
    """Compiles the append and decode entry points of one paged KV cache
    configuration and returns a PagedKernel (target "cpu") or a
    GpuPagedKernel (target "sm_80" or "sm_90a": the GPU pipeline's generic
    kernels; not kept in the disk cache).

    block_size: a multiple of page_size. selection: "query_head" (MoBA's
    rule, every query head chooses) or "kv_head" (the query heads of a GQA
    group share one top-k: a different model semantics, opt-in).
    max_query_tokens: the most queries a sequence may have in one decode
    call, 1 to 16; 0 for any number (chunked prefill). Raises ValueError
    naming a bad argument, CompileError if the compiler fails."""
    from . import cache_dir, CacheWarning  # the package's, set up by now
    import os
    import warnings
    dtype = _dtype_name(dtype)
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be 'query_head' or 'kv_head', got "
                         f"{selection!r}")
    if scale is not None:
        scale = _capi.float32_scale(scale)
    ints = {}
    for name, value in (("head_dim", head_dim), ("num_heads", num_heads),
                        ("num_kv_heads", num_kv_heads),
                        ("page_size", page_size), ("block_size", block_size),
                        ("top_k", top_k),
                        ("max_query_tokens", max_query_tokens)):
        try:
            ints[name] = _capi.int64(name, value)
        except TypeError as e:
            raise ValueError(str(e)) from None
    if target not in ("cpu", "sm_80", "sm_90a"):
        raise ValueError(f"target must be 'cpu', 'sm_80' or 'sm_90a', got "
                         f"{target!r}")
    config = dict(ints, dtype=dtype, selection=selection, scale=scale,
                  target=target)
    disk = cache_dir()
    dump = os.environ.get("MOBA_DUMP_IR") or None
    key = (tuple(sorted(config.items())), disk, dump)
    with _lock:
        kernel = _kernels.get(key)
    if kernel is not None:
        return kernel
    args = (ints["head_dim"], ints["num_heads"], ints["num_kv_heads"],
            ints["page_size"], ints["block_size"], ints["top_k"],
            ints["max_query_tokens"], scale, dtype, selection)
    problem = _capi.check_paged_config(*args)
    if problem is not None:
        raise ValueError(problem)
    if target != "cpu":
        handle, _ = _capi.compile_paged_kernel(*args, None, dump, target)
        kernel = GpuPagedKernel(config, handle)
        with _lock:
            kernel = _kernels.setdefault(key, kernel)
            if kernel in _recent:
                _recent.remove(kernel)
            _recent.append(kernel)
            del _recent[:-_RECENT_KERNELS]
        return kernel
    handle, from_cache = _capi.compile_paged_kernel(*args, disk, dump)
    kernel = PagedKernel(config, handle, from_cache)
    if kernel.cache_warning:
        warnings.warn(kernel.cache_warning, CacheWarning, stacklevel=2)
    with _lock:
        kernel = _kernels.setdefault(key, kernel)
        if kernel in _recent:
            _recent.remove(kernel)
        _recent.append(kernel)
        del _recent[:-_RECENT_KERNELS]
    return kernel


def paged_kv_append(k, v, cu_seqlens, k_cache, v_cache, block_key_sums,
                    block_table, cache_lens, *, block_size):
    """Appends k, v [N, Hkv, D], packed by cu_seqlens [B + 1], to a paged
    cache: new token i of sequence b goes to position cache_lens[b] + i
    (the lengths before the append) through block_table [B, max_pages].
    Writes k_cache, v_cache [pages, page_size, Hkv, D] and block_key_sums
    [B, max_blocks, Hkv, D] (f32) in place (numpy arrays or CPU torch
    tensors) and returns the grown lengths, int32, as the kind of array
    cache_lens is; cache_lens itself is not changed. A sequence that would
    not fit its pages or blocks, or whose pages are outside the pool,
    raises ValueError naming it, and nothing is written.

    With CUDA torch tensors (all of them) the append runs on their GPU and
    returns the grown lengths as a CUDA tensor; the kernels, not the host,
    check the lengths and pages, and skip a sequence that fails."""
    if _is_cuda(k):
        _, page_size, kv_heads, head_dim = k_cache.shape
        kernel = compile_paged(head_dim, kv_heads, kv_heads, page_size,
                               block_size, 1, _element_name(k),
                               max_query_tokens=0,
                               target=_gpu_target(k.device))
        kernel.append(k, v, cu_seqlens, k_cache, v_cache, block_key_sums,
                      block_table, cache_lens)
        return cache_lens + (cu_seqlens[1:] - cu_seqlens[:-1])
    k_array = _as_host_array("k", k)
    cache = _as_host_array("k_cache", k_cache)
    if cache.ndim != 4:
        raise ValueError(f"k_cache has shape {cache.shape}, expected "
                         "(pages, page_size, kv_heads, head_dim)")
    _, page_size, kv_heads, head_dim = cache.shape
    kernel = compile_paged(head_dim, kv_heads, kv_heads, page_size,
                           block_size, 1, _element_name(k_array),
                           max_query_tokens=0)
    lens = kernel.append(k_array, v, cu_seqlens, cache, v_cache,
                         block_key_sums, block_table, cache_lens)
    if _is_torch(cache_lens):
        import torch
        return torch.from_numpy(lens)
    return lens


def paged_decode(q, cu_seqlens_q, k_cache, v_cache, block_key_sums,
                 block_table, cache_lens, *, block_size, top_k,
                 selection="query_head", scale=None, return_lse=False):
    """Causal MoBA of q [Tq, Hq, D] (packed by cu_seqlens_q [B + 1])
    against a paged cache: the queries of sequence b are its last n_b
    tokens, already appended (cache_lens are the lengths after the append),
    and query i sits at position cache_lens[b] - n_b + i. 1 to 16 queries a
    sequence is decode, more is chunked prefill; either way every row
    equals the full causal forward's row at its position. Returns out
    [Tq, Hq, D] (and lse [Tq, Hq], float32, with return_lse=True) as the
    kind of array q is. With CUDA torch tensors (all of them) it runs on
    their GPU; the rows of a sequence whose lengths or pages the kernels
    reject are NaN."""
    if _is_cuda(q):
        if q.ndim != 3 or k_cache.ndim != 4:
            raise ValueError(f"q has shape {tuple(q.shape)} and k_cache "
                             f"{tuple(k_cache.shape)}, expected (tokens, "
                             "heads, head_dim) and (pages, page_size, "
                             "kv_heads, head_dim)")
        _, page_size, kv_heads, head_dim = k_cache.shape
        kernel = compile_paged(head_dim, q.shape[1], kv_heads, page_size,
                               block_size, top_k, _element_name(q),
                               selection=selection, scale=scale,
                               max_query_tokens=0,
                               target=_gpu_target(q.device))
        out, lse = kernel.decode(q, cu_seqlens_q, k_cache, v_cache,
                                 block_key_sums, block_table, cache_lens)
        return (out, lse) if return_lse else out
    q_array = _as_host_array("q", q)
    cache = _as_host_array("k_cache", k_cache)
    if cache.ndim != 4:
        raise ValueError(f"k_cache has shape {cache.shape}, expected "
                         "(pages, page_size, kv_heads, head_dim)")
    if q_array.ndim != 3:
        raise ValueError(f"q has shape {q_array.shape}, expected "
                         "(tokens, heads, head_dim)")
    _, page_size, kv_heads, head_dim = cache.shape
    kernel = compile_paged(head_dim, q_array.shape[1], kv_heads, page_size,
                           block_size, top_k, _element_name(q_array),
                           selection=selection, scale=scale,
                           max_query_tokens=0)
    out, lse = kernel.decode(q_array, cu_seqlens_q, cache, v_cache,
                             block_key_sums, block_table, cache_lens)
    return _results(q, out, lse, return_lse)


class KVCache:
    """A paged KV cache of `batch` sequences in a pool of `num_pages` pages
    of `page_size` tokens, with the f32 key sums of its MoBA blocks of
    `block_size` tokens (a multiple of page_size), in host memory.

    block_table: None (the cache hands out pages as sequences grow, from a
    free list, and takes them back on reset()) or the caller's [batch,
    max_pages] page ids, copied (the caller's allocator decides; entries
    past a sequence's pages are not read). max_pages: the most pages one
    sequence may hold (default: the whole pool, or the table's width).
    The cache allocates its arrays; KVCache.from_arrays wraps the caller's
    own (caches, sums, a live block table and the lengths), written in
    place; the functional forms (moba.paged_kv_append, moba.paged_decode)
    take them call by call.

    num_heads (query heads), top_k, selection and scale are the model's
    MoBA settings for decode and prefill (see compile_paged). Arrays in (k, v, q) are numpy arrays
    or CPU torch tensors of `dtype`; results come back as the kind of array
    q is.

    device: "cpu", or a CUDA device ("cuda", "cuda:1", a torch.device): the
    caches and sums are then torch tensors on it, k, v and q CUDA tensors
    there, and the kernels run on torch's current stream. The block table
    and lengths stay on the host (their device copies are made per call),
    so every length and page is checked on the host first, as on the CPU.
    """

    def __init__(self, num_pages, page_size, num_kv_heads, head_dim, dtype,
                 *, batch, num_heads, block_size, top_k,
                 selection="query_head", scale=None, max_pages=None,
                 block_table=None, device="cpu", _storage=True):
        ints = {}
        for name, value in (("num_pages", num_pages),
                            ("page_size", page_size),
                            ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("batch", batch),
                            ("block_size", block_size), ("top_k", top_k)):
            try:
                value = _capi.int64(name, value)
            except TypeError as e:
                raise ValueError(str(e)) from None
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
            ints[name] = value
        self.dtype = _dtype_name(dtype)
        self.num_pages, self.page_size = ints["num_pages"], ints["page_size"]
        self.num_heads = ints["num_heads"]
        self.num_kv_heads, self.head_dim = ints["num_kv_heads"], \
            ints["head_dim"]
        self.batch, self.block_size = ints["batch"], ints["block_size"]
        self.top_k, self.selection, self.scale = ints["top_k"], selection, \
            scale
        # The configuration's checks, with the library's messages, now.
        problem = _capi.check_paged_config(
            self.head_dim, self.num_heads, self.num_kv_heads,
            self.page_size, self.block_size, self.top_k, 0, scale,
            self.dtype, selection) if selection in _SELECTIONS else (
            f"selection must be 'query_head' or 'kv_head', got "
            f"{selection!r}")
        if problem is not None:
            raise ValueError(problem)
        self._managed = block_table is None
        if block_table is None:
            width = self.num_pages if max_pages is None else max_pages
            width = _capi.int64("max_pages", width)
            if not 1 <= width <= self.num_pages:
                raise ValueError(f"max_pages must be in 1..{self.num_pages} "
                                 f"(num_pages), got {width}")
            self.block_table = np.full((self.batch, width), -1, np.int32)
            # Handed out lowest first.
            self._free = list(range(self.num_pages - 1, -1, -1))
        else:
            table = _as_host_array("block_table", block_table)
            if table.ndim != 2 or table.shape[0] != self.batch:
                raise ValueError(f"block_table has shape {table.shape}, "
                                 f"expected ({self.batch}, max_pages)")
            if max_pages is not None and max_pages != table.shape[1]:
                raise ValueError(f"max_pages is {max_pages} but block_table "
                                 f"has {table.shape[1]} columns")
            self.block_table = _int32_array("block_table", table, table.shape)
        self.max_pages = self.block_table.shape[1]
        self.max_blocks = -(-self.max_pages * self.page_size //
                            self.block_size)
        self.device = None
        if str(device) != "cpu":
            import torch
            self.device = torch.device(device)
            if self.device.type != "cuda":
                raise ValueError(f"device must be 'cpu' or a CUDA device, "
                                 f"got {device!r}")
            if self.device.index is None:
                self.device = torch.device("cuda",
                                           torch.cuda.current_device())
            if not _storage:
                raise ValueError("KVCache.from_arrays takes host arrays; a "
                                 "GPU cache allocates its own")
        if not _storage:  # from_arrays: the caller's arrays
            return
        shape = (self.num_pages, self.page_size, self.num_kv_heads,
                 self.head_dim)
        if self.device is not None:
            import torch
            element = {"f32": torch.float32, "f16": torch.float16,
                       "bf16": torch.bfloat16}[self.dtype]
            self.k_cache = torch.zeros(shape, dtype=element,
                                       device=self.device)
            self.v_cache = torch.zeros(shape, dtype=element,
                                       device=self.device)
            self.block_key_sums = torch.zeros(
                (self.batch, self.max_blocks, self.num_kv_heads,
                 self.head_dim), dtype=torch.float32, device=self.device)
            self.lengths = np.zeros(self.batch, dtype=np.int32)
            return
        self.k_cache = np.zeros(shape, dtype=_STORAGE[self.dtype])
        self.v_cache = np.zeros(shape, dtype=_STORAGE[self.dtype])
        self.block_key_sums = np.zeros(
            (self.batch, self.max_blocks, self.num_kv_heads, self.head_dim),
            dtype=np.float32)
        self.lengths = np.zeros(self.batch, dtype=np.int32)

    @classmethod
    def from_arrays(cls, k_cache, v_cache, block_key_sums, block_table,
                    lengths, *, num_heads, block_size, top_k,
                    selection="query_head", scale=None):
        """A KVCache over the caller's arrays (numpy or CPU torch tensors),
        all written in place: k_cache, v_cache [num_pages, page_size, Hkv,
        D] of the cache's dtype, block_key_sums [batch, max_blocks, Hkv, D]
        float32, block_table [batch, max_pages] (the caller's pages, used
        as given) and lengths [batch] int32, which append() advances. The
        sums must be those the appends made for the cached tokens (all
        zero, or anything, for an empty cache)."""
        arrays = {}
        for name, x in (("k_cache", k_cache), ("v_cache", v_cache),
                        ("block_key_sums", block_key_sums),
                        ("lengths", lengths)):
            x = _as_host_array(name, x)
            if not x.flags.writeable:
                raise ValueError(f"{name} is read-only: the cache is written "
                                 "in place")
            arrays[name] = x
        k = arrays["k_cache"]
        if k.ndim != 4:
            raise ValueError(f"k_cache has shape {k.shape}, expected "
                             "(pages, page_size, kv_heads, head_dim)")
        table = _as_host_array("block_table", block_table)
        if table.ndim != 2:
            raise ValueError(f"block_table has shape {table.shape}, "
                             "expected (batch, max_pages)")
        lens = arrays["lengths"]
        _check_data("lengths", lens, "int32", (table.shape[0],))
        self = cls(k.shape[0], k.shape[1], k.shape[2], k.shape[3],
                   _element_name(k), batch=table.shape[0],
                   num_heads=num_heads, block_size=block_size, top_k=top_k,
                   selection=selection, scale=scale, block_table=table,
                   _storage=False)
        cache_shape = (self.num_pages, self.page_size, self.num_kv_heads,
                       self.head_dim)
        _check_data("k_cache", k, self.dtype, cache_shape)
        _check_data("v_cache", arrays["v_cache"], self.dtype, cache_shape)
        _check_data("block_key_sums", arrays["block_key_sums"], "f32",
                    (self.batch, self.max_blocks, self.num_kv_heads,
                     self.head_dim))
        _check_data("block_table", table, "int32", (self.batch, None))
        self.block_table = table  # the caller's, live
        if (lens < 0).any():
            b = int(np.argmax(lens < 0))
            raise ValueError(f"lengths[{b}] must not be negative, got "
                             f"{int(lens[b])}")
        self.k_cache, self.v_cache = k, arrays["v_cache"]
        self.block_key_sums, self.lengths = arrays["block_key_sums"], lens
        return self

    def __repr__(self):
        return (f"moba.KVCache(num_pages={self.num_pages}, page_size="
                f"{self.page_size}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, dtype={self.dtype!r}, batch="
                f"{self.batch}, block_size={self.block_size}, top_k="
                f"{self.top_k}, lengths={self.lengths.tolist()})")

    def _counts(self, name, cu_seqlens, tokens):
        """The per-sequence counts of `cu_seqlens` (None: one token each,
        which needs `tokens` == batch)."""
        if cu_seqlens is None:
            if tokens != self.batch:
                raise ValueError(
                    f"{name} is None, which means one token a sequence, but "
                    f"there are {tokens} tokens for {self.batch} sequences: "
                    f"pass {name}")
            cu_seqlens = np.arange(self.batch + 1, dtype=np.int32)
        cu = _offsets(name, cu_seqlens, self.batch, tokens)
        return cu, np.diff(cu.astype(np.int64))

    def _reserve(self, grown):
        """Hands out the pages that lengths `grown` need (managed table);
        nothing changes when the pool or a sequence's row runs out. Returns
        the (sequence, position) entries it filled, for _release."""
        need = [(b, -(-int(n) // self.page_size)) for b, n in
                enumerate(grown)]
        extra = 0
        for b, pages in need:
            if pages > self.max_pages:
                raise ValueError(
                    f"sequence {b} would hold {int(grown[b])} tokens, more "
                    f"than its max_pages = {self.max_pages} pages of "
                    f"{self.page_size}")
            extra += max(0, pages - int((self.block_table[b] >= 0).sum()))
        if extra > len(self._free):
            raise ValueError(f"the append needs {extra} more pages but only "
                             f"{len(self._free)} of {self.num_pages} are "
                             "free: reset() finished sequences or make a "
                             "larger cache")
        handed = []
        for b, pages in need:
            for i in range(int((self.block_table[b] >= 0).sum()), pages):
                self.block_table[b, i] = self._free.pop()
                handed.append((b, i))
        return handed

    def _release(self, handed):
        """Gives back the pages _reserve handed out, last first, so that the
        table and the free list are as they were before it."""
        for b, i in reversed(handed):
            self._free.append(int(self.block_table[b, i]))
            self.block_table[b, i] = -1

    def _kernel(self, max_query_tokens):
        target = "cpu" if self.device is None else _gpu_target(self.device)
        return compile_paged(self.head_dim, self.num_heads, self.num_kv_heads,
                             self.page_size, self.block_size, self.top_k,
                             self.dtype, selection=self.selection,
                             scale=self.scale,
                             max_query_tokens=max_query_tokens, target=target)

    def _host_offsets(self, name, cu_seqlens, tokens):
        """_counts of offsets that may be a CUDA tensor (copied to the
        host, which waits for the stream)."""
        if _is_cuda(cu_seqlens):
            cu_seqlens = cu_seqlens.cpu()
        return self._counts(name, cu_seqlens, tokens)

    def _device_copies(self, cu, lengths):
        """The device copies of offsets `cu`, the block table and
        `lengths` (host int32 arrays) for one GPU call."""
        import torch
        return tuple(torch.from_numpy(np.ascontiguousarray(x)).to(
            self.device) for x in (cu, self.block_table, lengths))

    def _check_pages(self, grown):
        """Every page of lengths `grown` in the pool (a caller's table)."""
        for b, n in enumerate(grown):
            used = self.block_table[b, :-(-int(n) // self.page_size)]
            bad = (used < 0) | (used >= self.num_pages)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"sequence {b}: block_table[{b}, {i}] = {int(used[i])} "
                    f"is not a page of the pool (0..{self.num_pages - 1}), "
                    f"and the sequence's {int(n)} tokens use it")

    def _refuse_capture(self, what):
        """KVCache's calls cannot be captured into a CUDA graph (the module
        docstring says why)."""
        from . import device_offsets
        if device_offsets.stream_is_capturing(self.device):
            raise RuntimeError(
                f"KVCache.{what} is being captured into a CUDA graph, which "
                "it does not support: it checks and advances its lengths and "
                "page table on the host and uploads them every call, which a "
                "replay would skip. Capture the functional forms instead "
                "(moba.paged_kv_append and moba.paged_decode on device "
                "tensors, advancing cache_lens on the device; docs/python.md)")

    def _append_on_device(self, k, v, cu_seqlens):
        self._refuse_capture("append")
        c = dict(dtype=self.dtype)
        kv_shape = (None, self.num_kv_heads, self.head_dim)
        k = _cuda_data("k", k, c["dtype"], kv_shape, self.device)
        v = _cuda_data("v", v, c["dtype"], tuple(k.shape), self.device)
        cu, counts = self._host_offsets("cu_seqlens", cu_seqlens, k.shape[0])
        grown = self.lengths.astype(np.int64) + counts
        handed = []
        if self._managed:
            handed = self._reserve(grown)
        elif (grown > self.max_pages * self.page_size).any():
            b = int(np.argmax(grown > self.max_pages * self.page_size))
            raise ValueError(
                f"sequence {b} would hold {int(grown[b])} tokens, more than "
                f"its max_pages = {self.max_pages} pages of {self.page_size}")
        try:
            self._check_pages(grown)
            cu_d, table_d, lens_d = self._device_copies(cu, self.lengths)
            self._kernel(MAX_DECODE_QUERY_TOKENS).append(
                k, v, cu_d, self.k_cache, self.v_cache, self.block_key_sums,
                table_d, lens_d)
        except BaseException:
            # A refused append changes nothing, the pages it took included.
            self._release(handed)
            raise
        self.lengths[:] = grown.astype(np.int32)

    def _attend_on_device(self, q, cu_seqlens_q, max_query_tokens,
                          return_lse):
        self._refuse_capture("decode" if max_query_tokens else "prefill")
        q = _cuda_data("q", q, self.dtype,
                       (None, self.num_heads, self.head_dim), self.device)
        cu, counts = self._host_offsets("cu_seqlens_q", cu_seqlens_q,
                                        q.shape[0])
        _check_query_counts(counts, max_query_tokens)
        if (counts > self.lengths).any():
            b = int(np.argmax(counts > self.lengths))
            raise ValueError(
                f"sequence {b}: cache_lens[{b}] = {int(self.lengths[b])}, "
                f"fewer than its {int(counts[b])} queries (the queries are "
                "the last tokens of the cache: append their keys and values "
                "first)")
        cu_d, table_d, lens_d = self._device_copies(cu, self.lengths)
        out, lse = self._kernel(max_query_tokens).decode(
            q, cu_d, self.k_cache, self.v_cache, self.block_key_sums,
            table_d, lens_d)
        return (out, lse) if return_lse else out

    def append(self, k, v, cu_seqlens=None):
        """Appends k, v [N, Hkv, D] to the sequences, packed by cu_seqlens
        [batch + 1] (None: one token a sequence). Raises ValueError naming a
        bad shape, dtype or length (a sequence past its pages or blocks)
        and then changes nothing."""
        if self.device is not None:
            return self._append_on_device(k, v, cu_seqlens)
        k_array, v_array = _as_host_array("k", k), _as_host_array("v", v)
        kv_shape = (None, self.num_kv_heads, self.head_dim)
        _check_data("k", k_array, self.dtype, kv_shape)
        _check_data("v", v_array, self.dtype, kv_shape)
        if v_array.shape != k_array.shape:
            raise ValueError(f"v has shape {v_array.shape} but k has "
                             f"{k_array.shape}")
        cu, counts = self._counts("cu_seqlens", cu_seqlens, k_array.shape[0])
        grown = self.lengths.astype(np.int64) + counts
        handed = self._reserve(grown) if self._managed else []
        try:
            kernel = self._kernel(MAX_DECODE_QUERY_TOKENS)
            # In place: the lengths may be the caller's array (from_arrays).
            self.lengths[:] = kernel.append(
                k_array, v_array, cu, self.k_cache, self.v_cache,
                self.block_key_sums, self.block_table, self.lengths)
        except BaseException:
            # A refused append changes nothing, the pages it took included.
            self._release(handed)
            raise

    def _attend(self, q, cu_seqlens_q, max_query_tokens, return_lse):
        if self.device is not None:
            return self._attend_on_device(q, cu_seqlens_q, max_query_tokens,
                                          return_lse)
        q_array = _as_host_array("q", q)
        if q_array.ndim != 3:
            raise ValueError(f"q has shape {q_array.shape}, expected "
                             "(tokens, heads, head_dim)")
        cu, counts = self._counts("cu_seqlens_q", cu_seqlens_q,
                                  q_array.shape[0])
        _check_query_counts(counts, max_query_tokens)
        kernel = self._kernel(max_query_tokens)
        out, lse = kernel.decode(q_array, cu, self.k_cache, self.v_cache,
                                 self.block_key_sums, self.block_table,
                                 self.lengths)
        return _results(q, out, lse, return_lse)

    def decode(self, q, cu_seqlens_q=None, *, return_lse=False):
        """Decode: q [Tq, Hq, D] holds 0 to 16 queries a sequence, packed
        by cu_seqlens_q [batch + 1] (None: one a sequence), which are the
        last tokens already appended. Returns out [Tq, Hq, D] (and lse
        [Tq, Hq] float32 with return_lse=True): row by row the full causal
        forward's rows at those positions."""
        return self._attend(q, cu_seqlens_q, MAX_DECODE_QUERY_TOKENS,
                            return_lse)

    def prefill(self, q, k, v, cu_seqlens=None, *, return_lse=False):
        """Chunked prefill: appends a chunk of new tokens (k, v [N, Hkv, D],
        packed by cu_seqlens [batch + 1]; None: one a sequence) and returns
        the rows of its queries q [N, Hq, D], each attending to the cache
        and the chunk up to itself."""
        host = _as_host_array if self.device is None else (
            lambda name, x: x)
        q_array = host("q", q)
        if q_array.ndim != 3:
            raise ValueError(f"q has shape {tuple(q_array.shape)}, expected "
                             "(tokens, heads, head_dim)")
        k_array = host("k", k)
        if k_array.shape[:1] != q_array.shape[:1]:
            raise ValueError(f"q has shape {q_array.shape} but k has "
                             f"{k_array.shape}: one key a query")
        # q is checked before the append writes anything: a refused q must
        # leave the cache as it was, so that the call can be retried.
        shape = (k_array.shape[0], self.num_heads, self.head_dim)
        if self.device is None:
            _check_data("q", q_array, self.dtype, shape)
        else:
            _cuda_data("q", q_array, self.dtype, shape, self.device)
        self.append(k, v, cu_seqlens)
        return self._attend(q, cu_seqlens, 0, return_lse)

    def reset(self, sequence=None):
        """Empties `sequence` (an index; None: all), giving its pages back
        to the pool when the cache manages the block table."""
        rows = range(self.batch) if sequence is None else [
            _capi.int64("sequence", sequence)]
        for b in rows:
            if not 0 <= b < self.batch:
                raise ValueError(f"sequence must be in 0..{self.batch - 1}, "
                                 f"got {b}")
            self.lengths[b] = 0
            self.block_key_sums[b] = 0
            if self._managed:
                used = self.block_table[b][self.block_table[b] >= 0]
                self._free.extend(int(p) for p in used[::-1])
                self.block_table[b] = -1
