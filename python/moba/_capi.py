"""ctypes binding of libMobaC.so (include/moba-c/Moba.h).

ctypes rather than a compiled extension: the same package works on any
CPython (3.11 here, 3.12 on the GPU machines) with no build step, and the
library it loads carries its own MLIR and LLVM.
"""
import ctypes
import numbers
import operator
import os

import numpy as np

_DTYPES = {"f32": 0, "f16": 1, "bf16": 2}
_TARGETS = {"cpu": 0, "sm_80": 1, "sm_90a": 2}
_STAGES = {"fused": 0, "tiled": 1, "decomposed": 2}
_GPU_ATTENTION = {"mma": 0, "simt": 1}
_MMA_INSTRUCTIONS = {None: 0, "mma.sync": 1, "wgmma": 2}
_KEY_VALUE_LOADS = {None: 0, "cp.async": 1, "tma": 2, "tma-multicast": 3}
_MERGES = {None: 0, "fused": 1, "separate": 2}
_SCHEDULES = {None: 0, "auto": 0, "in-order": 1, "overlapped": 2,
              "warp-specialized": 3, "warp-specialized-overlapped": 4,
              "ping-pong": 5, "persistent": 6}


class MobaConfig(ctypes.Structure):
    _fields_ = [
        ("head_dim", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64),
        ("block_size", ctypes.c_int64),
        ("top_k", ctypes.c_int64),
        ("causal", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("dtype", ctypes.c_int),
        ("target", ctypes.c_int),
        ("stage", ctypes.c_int),
        ("tile_q", ctypes.c_int64),
        ("tile_k", ctypes.c_int64),
        ("cache_dir", ctypes.c_char_p),
        ("dump_dir", ctypes.c_char_p),
        ("gpu_attention", ctypes.c_int),
        ("mma_warps", ctypes.c_int64),
        ("mma_key_chunk", ctypes.c_int64),
        ("mma_instruction", ctypes.c_int),
        ("mma_key_value_loads", ctypes.c_int),
        ("mma_merge", ctypes.c_int),
        ("mma_stages", ctypes.c_int64),
        ("mma_schedule", ctypes.c_int),
        ("backward", ctypes.c_int32),
    ]


_SELECTIONS = {"query_head": 0, "kv_head": 1}


class MobaPagedConfig(ctypes.Structure):
    _fields_ = [
        ("head_dim", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64),
        ("page_size", ctypes.c_int64),
        ("block_size", ctypes.c_int64),
        ("top_k", ctypes.c_int64),
        ("max_query_tokens", ctypes.c_int64),
        ("scale", ctypes.c_float),
        ("dtype", ctypes.c_int),
        ("selection", ctypes.c_int),
        ("target", ctypes.c_int),
        ("cache_dir", ctypes.c_char_p),
        ("dump_dir", ctypes.c_char_p),
    ]


class MobaPagedCache(ctypes.Structure):
    _fields_ = [
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
        ("block_key_sums", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p),
        ("cache_lens", ctypes.c_void_p),
        ("num_pages", ctypes.c_int64),
        ("max_pages", ctypes.c_int64),
        ("max_blocks", ctypes.c_int64),
        ("num_sequences", ctypes.c_int64),
    ]


_ALLOCATE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                             ctypes.c_void_p)
_DEALLOCATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_int64, ctypes.c_void_p)


class MobaScratchAllocator(ctypes.Structure):
    _fields_ = [
        ("allocate", _ALLOCATE),
        ("deallocate", _DEALLOCATE),
        ("user_data", ctypes.c_void_p),
    ]


def _library_path():
    explicit = os.environ.get("MOBA_LIBRARY")
    if explicit:
        return explicit
    return os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "libMobaC.so")


def _load():
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"moba: cannot load the compiler library {path!r} ({e}). Build it "
            "with scripts/build.sh, or point MOBA_LIBRARY at libMobaC.so.")
    char_pp = ctypes.POINTER(ctypes.c_void_p)  # char **, freed by us
    lib.mobaVersion.restype = ctypes.c_char_p
    lib.mobaVersion.argtypes = []
    lib.mobaConfigInit.restype = None
    lib.mobaConfigInit.argtypes = [ctypes.POINTER(MobaConfig)]
    lib.mobaCheckConfig.restype = ctypes.c_int32
    lib.mobaCheckConfig.argtypes = [ctypes.POINTER(MobaConfig), char_pp]
    lib.mobaCompile.restype = ctypes.c_void_p
    lib.mobaCompile.argtypes = [ctypes.POINTER(MobaConfig),
                                ctypes.POINTER(ctypes.c_int32), char_pp]
    lib.mobaRun.restype = ctypes.c_int32
    lib.mobaRun.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 4 + [
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        char_pp]
    # backward fills what was MobaConfig's tail padding, so the size check
    # below cannot tell a library older than it: the entry point does.
    if not hasattr(lib, "mobaRunGrad"):
        raise ImportError(
            f"moba: {path!r} has no mobaRunGrad: the library is older than "
            "this Python package")
    lib.mobaRunGrad.restype = ctypes.c_int32
    lib.mobaRunGrad.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 4 + [
        ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 7 + [char_pp]
    if not hasattr(lib, "mobaRunGradDevice"):
        raise ImportError(
            f"moba: {path!r} has no mobaRunGradDevice: the library is older "
            "than this Python package")
    lib.mobaRunGradDevice.restype = ctypes.c_int32
    lib.mobaRunGradDevice.argtypes = [ctypes.c_void_p] + [
        ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64] + [
        ctypes.c_void_p] * 9 + [char_pp]
    lib.mobaRunDevice.restype = ctypes.c_int32
    lib.mobaRunDevice.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 4 + [
        ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [char_pp]
    if not hasattr(lib, "mobaSetScratchAllocator"):
        raise ImportError(
            f"moba: {path!r} has no mobaSetScratchAllocator: the library is "
            "older than this Python package")
    lib.mobaSetScratchAllocator.restype = ctypes.c_int32
    lib.mobaSetScratchAllocator.argtypes = [
        ctypes.POINTER(MobaScratchAllocator),
        ctypes.POINTER(MobaScratchAllocator), char_pp]
    lib.mobaGpuComputeCapability.restype = ctypes.c_int32
    lib.mobaGpuComputeCapability.argtypes = [char_pp]
    lib.mobaKernelCacheWarning.restype = ctypes.c_char_p
    lib.mobaKernelCacheWarning.argtypes = [ctypes.c_void_p]
    lib.mobaKernelPlan.restype = ctypes.c_char_p
    lib.mobaKernelPlan.argtypes = [ctypes.c_void_p]
    lib.mobaConfigSize.restype = ctypes.c_int64
    lib.mobaConfigSize.argtypes = []
    if lib.mobaConfigSize() != ctypes.sizeof(MobaConfig):
        raise ImportError(
            f"moba: {path!r} lays out MobaConfig in {lib.mobaConfigSize()} "
            f"bytes, this binding in {ctypes.sizeof(MobaConfig)}: the library "
            "and the Python package are of different versions")
    if not hasattr(lib, "mobaCompilePaged"):
        raise ImportError(
            f"moba: {path!r} has no mobaCompilePaged: the library is older "
            "than this Python package")
    lib.mobaPagedConfigInit.restype = None
    lib.mobaPagedConfigInit.argtypes = [ctypes.POINTER(MobaPagedConfig)]
    for name, struct in (("mobaPagedConfigSize", MobaPagedConfig),
                         ("mobaPagedCacheSize", MobaPagedCache)):
        getattr(lib, name).restype = ctypes.c_int64
        getattr(lib, name).argtypes = []
        if getattr(lib, name)() != ctypes.sizeof(struct):
            raise ImportError(
                f"moba: {path!r} lays out {struct.__name__} in "
                f"{getattr(lib, name)()} bytes, this binding in "
                f"{ctypes.sizeof(struct)}: the library and the Python "
                "package are of different versions")
    lib.mobaCheckPagedConfig.restype = ctypes.c_int32
    lib.mobaCheckPagedConfig.argtypes = [ctypes.POINTER(MobaPagedConfig),
                                         char_pp]
    lib.mobaCompilePaged.restype = ctypes.c_void_p
    lib.mobaCompilePaged.argtypes = [ctypes.POINTER(MobaPagedConfig),
                                     ctypes.POINTER(ctypes.c_int32), char_pp]
    lib.mobaPagedAppend.restype = ctypes.c_int32
    lib.mobaPagedAppend.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(MobaPagedCache)] + [
        ctypes.c_void_p] * 3 + [ctypes.c_int64, char_pp]
    lib.mobaPagedDecode.restype = ctypes.c_int32
    lib.mobaPagedDecode.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(MobaPagedCache)] + [
        ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 2 + [
        char_pp]
    if not hasattr(lib, "mobaPagedDecodeDevice"):
        raise ImportError(
            f"moba: {path!r} has no mobaPagedDecodeDevice: the library is "
            "older than this Python package")
    lib.mobaPagedAppendDevice.restype = ctypes.c_int32
    lib.mobaPagedAppendDevice.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(MobaPagedCache)] + [
        ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p, char_pp]
    lib.mobaPagedDecodeDevice.restype = ctypes.c_int32
    lib.mobaPagedDecodeDevice.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(MobaPagedCache)] + [
        ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [
        char_pp]
    lib.mobaLiveKernels.restype = ctypes.c_int64
    lib.mobaLiveKernels.argtypes = []
    lib.mobaDestroy.restype = None
    lib.mobaDestroy.argtypes = [ctypes.c_void_p]
    lib.mobaFreeString.restype = None
    lib.mobaFreeString.argtypes = [ctypes.c_void_p]
    return lib


_lib = _load()


class CompileError(RuntimeError):
    """The compiler rejected or failed on a configuration."""


def version():
    return _lib.mobaVersion().decode()


def _take_error(address):
    """The message at `address` (a char * the library allocated), freed."""
    if not address:
        return "unknown error"
    text = ctypes.cast(address, ctypes.c_char_p).value.decode(errors="replace")
    _lib.mobaFreeString(address)
    return text


_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
_FLOAT32_LEAST_NORMAL = float(np.finfo(np.float32).tiny)


def int64(name, value):
    """`value` as a Python int that fits the C API's int64_t: ctypes would
    silently keep only its low 64 bits."""
    # operator.index takes what is an int: Python and numpy ints, integer
    # torch scalars; not floats, strings, or bools (which are ints to it).
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} must fit a signed 64-bit integer, got "
                         f"{value}")
    return value


def float32_scale(scale):
    """The float32 the C API receives for `scale` (0.0 for None: the
    default). Checked after the conversion, which ctypes would do silently:
    1e-46 becomes 0.0 there, which the library reads as "the default"."""
    if scale is None:
        return 0.0
    if isinstance(scale, (bool, np.bool_)) or not isinstance(
            scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    with np.errstate(over="ignore", under="ignore"):
        single = float(np.float32(scale))
    if not (np.isfinite(single) and single >= _FLOAT32_LEAST_NORMAL):
        raise ValueError(f"scale must be a positive normal float32 (finite, "
                         f"at least {_FLOAT32_LEAST_NORMAL:.9g}), got "
                         f"{float(scale):.9g}")
    return single


def _config(head_dim, num_heads, num_kv_heads, block_size, top_k, causal,
            scale, dtype, target, stage, tile_q, tile_k, cache_dir, dump_dir,
            gpu_attention, mma_warps, mma_key_chunk, mma_instruction,
            mma_key_value_loads, mma_merge, mma_stages=None,
            mma_schedule=None, backward=False):
    """A MobaConfig; None for tile_q, tile_k, mma_warps, mma_key_chunk,
    mma_stages and scale is the C API's 0, "the default"."""
    config = MobaConfig()
    _lib.mobaConfigInit(ctypes.byref(config))
    config.head_dim = int64("head_dim", head_dim)
    config.num_heads = int64("num_heads", num_heads)
    config.num_kv_heads = int64("num_kv_heads", num_kv_heads)
    config.block_size = int64("block_size", block_size)
    config.top_k = int64("top_k", top_k)
    config.causal = 1 if causal else 0
    config.scale = float32_scale(scale)
    config.dtype, config.target = _DTYPES[dtype], _TARGETS[target]
    config.stage = _STAGES[stage]
    for name, value in (("tile_q", tile_q), ("tile_k", tile_k),
                        ("mma_warps", mma_warps),
                        ("mma_key_chunk", mma_key_chunk),
                        ("mma_stages", mma_stages)):
        setattr(config, name, 0 if value is None else int64(name, value))
    config.cache_dir = cache_dir.encode() if cache_dir else None
    config.dump_dir = dump_dir.encode() if dump_dir else None
    config.gpu_attention = _GPU_ATTENTION[gpu_attention]
    config.mma_instruction = _MMA_INSTRUCTIONS[mma_instruction]
    config.mma_key_value_loads = _KEY_VALUE_LOADS[mma_key_value_loads]
    config.mma_merge = _MERGES[mma_merge]
    config.mma_schedule = _SCHEDULES[mma_schedule]
    config.backward = 1 if backward else 0
    return config


def check_config(head_dim, num_heads, num_kv_heads, block_size, top_k,
                 causal, scale, dtype, target, stage, tile_q, tile_k,
                 gpu_attention="mma", mma_warps=None, mma_key_chunk=None,
                 mma_instruction=None, mma_key_value_loads=None,
                 mma_merge=None, mma_stages=None, mma_schedule=None,
                 backward=False):
    """None when the library would compile these values, else its message
    naming the first bad one."""
    config = _config(head_dim, num_heads, num_kv_heads, block_size, top_k,
                     causal, scale, dtype, target, stage, tile_q, tile_k,
                     None, None, gpu_attention, mma_warps, mma_key_chunk,
                     mma_instruction, mma_key_value_loads, mma_merge,
                     mma_stages, mma_schedule, backward)
    error = ctypes.c_void_p()
    if _lib.mobaCheckConfig(ctypes.byref(config), ctypes.byref(error)):
        return _take_error(error.value)
    return None


def compile_kernel(head_dim, num_heads, num_kv_heads, block_size, top_k,
                   causal, scale, dtype, target, stage, tile_q, tile_k,
                   cache_dir, dump_dir, gpu_attention="mma", mma_warps=None,
                   mma_key_chunk=None, mma_instruction=None,
                   mma_key_value_loads=None, mma_merge=None, mma_stages=None,
                   mma_schedule=None, backward=False):
    """Returns (handle, from_cache); raises CompileError."""
    config = _config(head_dim, num_heads, num_kv_heads, block_size, top_k,
                     causal, scale, dtype, target, stage, tile_q, tile_k,
                     cache_dir, dump_dir, gpu_attention, mma_warps,
                     mma_key_chunk, mma_instruction, mma_key_value_loads,
                     mma_merge, mma_stages, mma_schedule, backward)
    from_cache = ctypes.c_int32(0)
    error = ctypes.c_void_p()
    handle = _lib.mobaCompile(ctypes.byref(config), ctypes.byref(from_cache),
                              ctypes.byref(error))
    if not handle:
        raise CompileError(_take_error(error.value))
    return handle, bool(from_cache.value)


def run_kernel(handle, q, k, v, cu_seqlens, num_sequences, tokens, out, lse):
    """Pointers in, raises RuntimeError with the runner's message."""
    num_sequences = int64("num_sequences", num_sequences)
    tokens = int64("tokens", tokens)
    error = ctypes.c_void_p()
    status = _lib.mobaRun(handle, q, k, v, cu_seqlens, num_sequences, tokens,
                          out, lse, ctypes.byref(error))
    if status != 0:
        raise RuntimeError(_take_error(error.value))


def run_grad_kernel(handle, q, k, v, cu_seqlens, num_sequences, tokens, out,
                    lse, dout, dlse, dq, dk, dv):
    """Pointers in (dlse may be None: a zero gradient); raises
    RuntimeError with the runner's message."""
    num_sequences = int64("num_sequences", num_sequences)
    tokens = int64("tokens", tokens)
    error = ctypes.c_void_p()
    status = _lib.mobaRunGrad(handle, q, k, v, cu_seqlens, num_sequences,
                              tokens, out, lse, dout, dlse, dq, dk, dv,
                              ctypes.byref(error))
    if status != 0:
        raise RuntimeError(_take_error(error.value))


class ScratchAllocator:
    """Python functions as a GPU call's scratch allocator
    (MobaScratchAllocator): `allocate(nbytes, stream)` returns a device
    address (an int; 0 or None when it cannot), `deallocate(address, nbytes,
    stream)` takes it back; `stream` is the call's CUstream as an int (0:
    the legacy default stream).

    The ctypes callbacks live as long as this object, which a call keeps.
    An exception in either function must not unwind through the library's
    C frames (ctypes would print and drop it): it is kept, the allocation
    fails, and the call raises a RuntimeError chained to it (a
    BaseException that is no Exception, e.g. KeyboardInterrupt, is raised
    again as it is).
    """

    def __init__(self, allocate, deallocate):
        self._allocate = allocate
        self._deallocate = deallocate
        self._error = None
        self._callbacks = (_ALLOCATE(self._on_allocate),
                           _DEALLOCATE(self._on_deallocate))
        self.struct = MobaScratchAllocator(*self._callbacks, None)

    def _keep(self, error):
        if self._error is None:
            self._error = error

    def _on_allocate(self, _user_data, nbytes, stream):
        try:
            address = self._allocate(nbytes, stream or 0)
            return int(address) if address else None
        except BaseException as e:  # noqa: B036 -- none may reach C
            self._keep(e)
            return None

    def _on_deallocate(self, _user_data, address, nbytes, stream):
        try:
            self._deallocate(address or 0, nbytes, stream or 0)
        except BaseException as e:  # noqa: B036 -- none may reach C
            self._keep(e)

    def take_error(self):
        """What the functions raised since the last take, or None."""
        error, self._error = self._error, None
        return error


def _run_with_scratch(allocator, entry, *args):
    """Calls `entry(*args, char **error)` with `allocator` (a
    ScratchAllocator, or None for moba's pool) as the thread's scratch
    allocator for this call only; raises RuntimeError on failure."""
    error = ctypes.c_void_p()
    if allocator is None:
        if entry(*args, ctypes.byref(error)) != 0:
            raise RuntimeError(_take_error(error.value))
        return
    previous = MobaScratchAllocator()
    if _lib.mobaSetScratchAllocator(ctypes.byref(allocator.struct),
                                    ctypes.byref(previous),
                                    ctypes.byref(error)) != 0:
        raise RuntimeError(_take_error(error.value))
    allocator.take_error()
    try:
        status = entry(*args, ctypes.byref(error))
    finally:
        _lib.mobaSetScratchAllocator(
            ctypes.byref(previous) if previous.allocate else None, None,
            None)
    raised = allocator.take_error()
    # The allocator's exception was raised in a callback under this frame:
    # its traceback's frames link back (f_back) to this one and to the
    # caller's, which hold the call's outputs. Were this frame still to
    # hold the exception while the error propagates, that would be a
    # reference cycle, and the outputs would outlive the error until the
    # garbage collector ran; so the local goes before anything is raised.
    try:
        if raised is not None and not isinstance(raised, Exception):
            if status != 0:
                _take_error(error.value)
            raise raised
        if status != 0:
            message = _take_error(error.value)
            if raised is not None:
                message += f" ({type(raised).__name__}: {raised})"
            raise RuntimeError(message) from raised
        if raised is not None:
            raise RuntimeError(
                "the scratch allocator failed to take back moba's scratch "
                f"({type(raised).__name__}: {raised})") from raised
    finally:
        del raised


def run_kernel_on_device(handle, q, k, v, cu_seqlens, num_sequences, tokens,
                         out, lse, stream, host_cu_seqlens, allocator=None):
    """Device pointers in; returns once the work is queued on `stream`.
    Scratch comes from `allocator` (a ScratchAllocator), else moba's
    pool."""
    num_sequences = int64("num_sequences", num_sequences)
    tokens = int64("tokens", tokens)
    _run_with_scratch(allocator, _lib.mobaRunDevice, handle, q, k, v,
                      cu_seqlens, num_sequences, tokens, out, lse, stream,
                      host_cu_seqlens)


def run_grad_kernel_on_device(handle, q, k, v, cu_seqlens, num_sequences,
                              tokens, out, lse, dout, dlse, dq, dk, dv,
                              stream, host_cu_seqlens, allocator=None):
    """Device pointers in (dlse a device buffer whenever there are
    tokens); returns once the work is queued on `stream`. Scratch as for
    run_kernel_on_device."""
    num_sequences = int64("num_sequences", num_sequences)
    tokens = int64("tokens", tokens)
    _run_with_scratch(allocator, _lib.mobaRunGradDevice, handle, q, k, v,
                      cu_seqlens, num_sequences, tokens, out, lse, dout,
                      dlse, dq, dk, dv, stream, host_cu_seqlens)


def _paged_config(head_dim, num_heads, num_kv_heads, page_size, block_size,
                  top_k, max_query_tokens, scale, dtype, selection, cache_dir,
                  dump_dir, target="cpu"):
    config = MobaPagedConfig()
    _lib.mobaPagedConfigInit(ctypes.byref(config))
    for name, value in (("head_dim", head_dim), ("num_heads", num_heads),
                        ("num_kv_heads", num_kv_heads),
                        ("page_size", page_size), ("block_size", block_size),
                        ("top_k", top_k),
                        ("max_query_tokens", max_query_tokens)):
        setattr(config, name, int64(name, value))
    config.scale = float32_scale(scale)
    config.dtype = _DTYPES[dtype]
    config.selection = _SELECTIONS[selection]
    config.target = _TARGETS[target]
    config.cache_dir = cache_dir.encode() if cache_dir else None
    config.dump_dir = dump_dir.encode() if dump_dir else None
    return config


def check_paged_config(head_dim, num_heads, num_kv_heads, page_size,
                       block_size, top_k, max_query_tokens, scale, dtype,
                       selection):
    """None when the library would compile these values, else its message
    naming the first bad one."""
    config = _paged_config(head_dim, num_heads, num_kv_heads, page_size,
                           block_size, top_k, max_query_tokens, scale, dtype,
                           selection, None, None)
    error = ctypes.c_void_p()
    if _lib.mobaCheckPagedConfig(ctypes.byref(config), ctypes.byref(error)):
        return _take_error(error.value)
    return None


def compile_paged_kernel(head_dim, num_heads, num_kv_heads, page_size,
                         block_size, top_k, max_query_tokens, scale, dtype,
                         selection, cache_dir, dump_dir, target="cpu"):
    """Returns (handle, from_cache); raises CompileError. target: "cpu",
    "sm_80" or "sm_90a"."""
    config = _paged_config(head_dim, num_heads, num_kv_heads, page_size,
                           block_size, top_k, max_query_tokens, scale, dtype,
                           selection, cache_dir, dump_dir, target)
    from_cache = ctypes.c_int32(0)
    error = ctypes.c_void_p()
    handle = _lib.mobaCompilePaged(ctypes.byref(config),
                                   ctypes.byref(from_cache),
                                   ctypes.byref(error))
    if not handle:
        raise CompileError(_take_error(error.value))
    return handle, bool(from_cache.value)


def paged_cache(k_cache, v_cache, block_key_sums, block_table, cache_lens,
                num_pages, max_pages, max_blocks, num_sequences):
    """A MobaPagedCache of pointers and counts."""
    cache = MobaPagedCache()
    cache.k_cache, cache.v_cache = k_cache, v_cache
    cache.block_key_sums = block_key_sums
    cache.block_table, cache.cache_lens = block_table, cache_lens
    for name, value in (("num_pages", num_pages), ("max_pages", max_pages),
                        ("max_blocks", max_blocks),
                        ("num_sequences", num_sequences)):
        setattr(cache, name, int64(name, value))
    return cache


def run_paged_append(handle, cache, k, v, cu_seqlens, tokens):
    """Pointers in; raises ValueError with the runner's message (every
    failure of a call is a bad value it names)."""
    error = ctypes.c_void_p()
    if _lib.mobaPagedAppend(handle, ctypes.byref(cache), k, v, cu_seqlens,
                            int64("tokens", tokens), ctypes.byref(error)):
        raise ValueError(_take_error(error.value))


def run_paged_decode(handle, cache, q, cu_seqlens_q, tokens, out, lse):
    """Pointers in; raises ValueError with the runner's message."""
    error = ctypes.c_void_p()
    if _lib.mobaPagedDecode(handle, ctypes.byref(cache), q, cu_seqlens_q,
                            int64("tokens", tokens), out, lse,
                            ctypes.byref(error)):
        raise ValueError(_take_error(error.value))


def run_paged_append_on_device(handle, cache, k, v, cu_seqlens, tokens,
                               stream):
    """Device pointers in (a GPU paged kernel); raises RuntimeError with
    the runner's message (a bad value, or a failure of the driver)."""
    error = ctypes.c_void_p()
    if _lib.mobaPagedAppendDevice(handle, ctypes.byref(cache), k, v,
                                  cu_seqlens, int64("tokens", tokens), stream,
                                  ctypes.byref(error)):
        raise RuntimeError(_take_error(error.value))


def run_paged_decode_on_device(handle, cache, q, cu_seqlens_q, tokens, out,
                               lse, stream):
    """Device pointers in; raises RuntimeError with the runner's
    message."""
    error = ctypes.c_void_p()
    if _lib.mobaPagedDecodeDevice(handle, ctypes.byref(cache), q,
                                  cu_seqlens_q, int64("tokens", tokens), out,
                                  lse, stream, ctypes.byref(error)):
        raise RuntimeError(_take_error(error.value))


def gpu_compute_capability():
    """(capability, None), e.g. (90, None), or (0, why there is no GPU)."""
    error = ctypes.c_void_p()
    capability = _lib.mobaGpuComputeCapability(ctypes.byref(error))
    if capability == 0:
        return 0, _take_error(error.value)
    return capability, None


def cache_warning(handle):
    """What went wrong with the disk cache while compiling `handle` (a
    refused directory, a cached file that failed verification), or None."""
    text = _lib.mobaKernelCacheWarning(handle)
    return text.decode(errors="replace").strip() if text else None


def kernel_plan(handle):
    """The printed plan of `handle`'s tensor-core attention (the tuning
    table's choices filled in), or None for other kernels."""
    text = _lib.mobaKernelPlan(handle)
    return text.decode() if text else None


def live_kernels():
    """The number of kernels compiled and not yet destroyed."""
    return _lib.mobaLiveKernels()


def destroy(handle):
    _lib.mobaDestroy(handle)
