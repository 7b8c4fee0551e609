"""The worker side of test_stand_in_driver.py.

The runtime opens its CUDA driver once per process, so the tests that run
GPU kernels on the stand-in driver (test/stand-in-driver, built as
build/lib/libmoba-stand-in-cuda.so) call these functions in a worker process
of their own whose MOBA_CUDA_DRIVER is the stand-in. The worker keeps its
compiled kernels and device buffers between calls; each function returns
plain data for the test to check.

Device buffers come from the stand-in's cuMemAlloc_v2 with device 0's
primary context current on the worker's main thread, as torch arranges it;
`run(..., new_thread=True)` calls from a thread with no context current.
"""
import ctypes
import os
import threading

import numpy as np

LIBRARY_NAME = "libmoba-stand-in-cuda.so"

# A small configuration that still takes every kind of kernel: the gate,
# the attention and the merge.
TOKENS = 256
SEQLENS = [0, 100, 256]


def library_path():
    """The stand-in driver: $MOBA_STAND_IN_DRIVER, else the lib folder of
    $MOBA_BUILD_DIR, else that of the build directory the moba package was
    assembled in (PYTHONPATH=<build>/python). An installed package (the
    wheel) has no build directory beside it, so CI names it (scripts/test.sh).
    """
    explicit = os.environ.get("MOBA_STAND_IN_DRIVER")
    if explicit:
        return explicit
    build = os.environ.get("MOBA_BUILD_DIR")
    if not build:
        import moba
        package = os.path.dirname(os.path.abspath(moba.__file__))
        build = os.path.join(package, "..", "..")
    return os.path.normpath(os.path.join(build, "lib", LIBRARY_NAME))


# The device buffers allocated per configuration: q, k, v, out, lse,
# cu_seqlens, and the backward's dout, dlse, dq, dk and dv.
BUFFERS_PER_CONFIGURATION = 11

_driver = None
_kernels = {}  # name -> (handle, config)
_cache_info = {}  # name -> how its compile went (cache_info())
_buffers = {}  # config -> dict of device pointers and host offsets


def start(driver, environment):
    """The worker's initializer: the stand-in becomes the process's driver
    before anything loads one."""
    global _driver
    os.environ.update(environment)
    os.environ["MOBA_CUDA_DRIVER"] = driver
    _driver = ctypes.CDLL(driver)
    _driver.mobaStandInCount.restype = ctypes.c_longlong
    _driver.mobaStandInCount.argtypes = [ctypes.c_char_p]
    _driver.mobaStandInSetFailures.restype = ctypes.c_int
    _driver.mobaStandInSetFailures.argtypes = [ctypes.c_char_p]
    _driver.mobaStandInSetComputeCapability.argtypes = [ctypes.c_int] * 2
    _driver.mobaStandInSetLatency.argtypes = [ctypes.c_int]


def _check(result, call):
    if result != 0:
        raise RuntimeError(f"{call} failed in the test itself: CUresult "
                           f"{result}")


def _make_context_current():
    _check(_driver.cuInit(0), "cuInit")
    context = ctypes.c_void_p()
    _check(_driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), 0),
           "cuDevicePrimaryCtxRetain")
    _check(_driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")


def count(*names):
    """The stand-in's counters (see StandInCudaDriver.cpp), by name."""
    values = {}
    for name in names:
        value = _driver.mobaStandInCount(name.encode())
        if value < 0:
            raise ValueError(f"the stand-in has no counter {name!r}")
        values[name] = value
    return values


def set_failures(spec):
    if _driver.mobaStandInSetFailures(spec.encode()) != 0:
        raise ValueError(f"the stand-in rejects the failure plan {spec!r}")


def set_compute_capability(major, minor):
    _driver.mobaStandInSetComputeCapability(major, minor)


def compute_capability():
    from moba import _capi
    return _capi.gpu_compute_capability()


def compile(name, target, cache_dir=None, **options):
    """Compiles a GPU kernel (head_dim 64, 2 query heads on 1 KV head, block
    64, top-2, bf16) under `name`, once; with `cache_dir`, through the disk
    cache there (cache_info() says how it went)."""
    import time
    from moba import _capi
    if name not in _kernels:
        config = dict(head_dim=options.pop("head_dim", 64), num_heads=2,
                      num_kv_heads=1, block_size=64, top_k=2, dtype="bf16")
        start = time.perf_counter()
        handle, from_cache = _capi.compile_kernel(
            config["head_dim"], config["num_heads"], config["num_kv_heads"],
            config["block_size"], config["top_k"], True, None,
            config["dtype"], target, "fused", None, None, cache_dir, None,
            **options)
        _cache_info[name] = dict(from_cache=from_cache,
                                 warning=_capi.cache_warning(handle),
                                 seconds=time.perf_counter() - start)
        _kernels[name] = (handle, tuple(sorted(config.items())))
    return _kernels[name][0]


def cache_info(name):
    """How compile() of kernel `name` went: from_cache, the cache's warning
    (None when there was nothing to say) and the seconds it took."""
    return _cache_info[name]


def compile_grad(name, target, **options):
    """Compiles compile()'s configuration with the backward under `name`,
    once. Returns None, or the compiler's message when it fails (the GPU
    pipeline that does not carry the backward says so)."""
    from moba import CompileError
    try:
        compile(name, target, backward=True, **options)
    except CompileError as e:
        return str(e)
    return None


def allocate_buffers(name):
    """Allocates the device buffers kernel `name` runs on, if not yet."""
    _device_buffers(_kernels[name][1])


def destroy(name):
    from moba import _capi
    handle, _ = _kernels.pop(name)
    _capi.destroy(handle)


def _device_buffers(config):
    if config in _buffers:
        return _buffers[config]
    _make_context_current()
    c = dict(config)
    element = 2  # bf16
    sizes = {
        "q": TOKENS * c["num_heads"] * c["head_dim"] * element,
        "k": TOKENS * c["num_kv_heads"] * c["head_dim"] * element,
        "v": TOKENS * c["num_kv_heads"] * c["head_dim"] * element,
        "out": TOKENS * c["num_heads"] * c["head_dim"] * element,
        "lse": TOKENS * c["num_heads"] * 4,
        "cu_seqlens": len(SEQLENS) * 4,
    }
    # The backward's: the upstream gradients and the gradients written.
    sizes.update(dout=sizes["out"], dlse=sizes["lse"], dq=sizes["q"],
                 dk=sizes["k"], dv=sizes["v"])
    buffers = {}
    for name, size in sizes.items():
        pointer = ctypes.c_uint64()
        _check(_driver.cuMemAlloc_v2(ctypes.byref(pointer),
                                     ctypes.c_size_t(size)), "cuMemAlloc_v2")
        buffers[name] = pointer.value
    host = np.array(SEQLENS, dtype=np.int32)
    _check(_driver.cuMemcpyHtoD_v2(ctypes.c_uint64(buffers["cu_seqlens"]),
                                   host.ctypes.data_as(ctypes.c_void_p),
                                   ctypes.c_size_t(host.nbytes)),
           "cuMemcpyHtoD_v2")
    buffers["host_cu_seqlens"] = host
    assert len(sizes) == BUFFERS_PER_CONFIGURATION
    _buffers[config] = buffers
    return buffers


_other_context = None


def _another_context():
    """A context of device 0 other than its primary one, made once."""
    global _other_context
    if _other_context is None:
        _make_context_current()
        context = ctypes.c_void_p()
        _check(_driver.cuCtxCreate_v2(ctypes.byref(context), 0, 0),
               "cuCtxCreate_v2")
        _other_context = context.value
        _make_context_current()  # cuCtxCreate made the new one current
    return _other_context


def create_stream():
    _make_context_current()
    stream = ctypes.c_void_p()
    _check(_driver.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
    return stream.value


# The entry points a call may make, whose calls run() counts.
ENTRIES = ["cuMemPoolCreate", "cuMemPoolSetAttribute",
           "cuMemAllocFromPoolAsync", "cuMemFreeAsync", "cuModuleLoadDataEx",
           "cuModuleGetFunction", "cuFuncSetAttribute", "cuLaunchKernel",
           "cuTensorMapEncodeTiled", "cuCtxGetCurrent", "cuCtxGetDevice",
           "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxSetCurrent",
           "cuDeviceGetAttribute", "cuDeviceGetName", "cuModuleUnload"]

# What must come back to where it was after a failed call.
LEAK_COUNTERS = ["allocations", "bytes", "modules", "streams", "pools"]


def _fake_buffers():
    """Aligned addresses that nothing may touch: for calls that must fail
    before they reach the device."""
    buffers = {name: 0x100000 * (i + 1) for i, name in
               enumerate(["q", "k", "v", "out", "lse", "cu_seqlens"])}
    buffers["host_cu_seqlens"] = np.array(SEQLENS, dtype=np.int32)
    return buffers


class RecordingAllocator:
    """A scratch allocator (the C API's MobaScratchAllocator) over the
    stand-in's cuMemAlloc_v2 and cuMemFree_v2 that records every call.
    Options: `fail_at` (the nth allocation returns 0), `raise_at` (it
    raises MemoryError), `misalign_at` (it returns an address 16 bytes into
    its buffer), `raise_in_free` (every deallocate raises after freeing)."""

    def __init__(self, fail_at=None, raise_at=None, misalign_at=None,
                 raise_in_free=False):
        self.options = dict(fail_at=fail_at, raise_at=raise_at,
                            misalign_at=misalign_at,
                            raise_in_free=raise_in_free)
        self.allocations = []  # (nbytes, stream, address or 0)
        self.frees = []  # (address, nbytes, stream)
        self.unknown_frees = 0
        self.live = {}  # address given -> (driver's address, nbytes)
        self.torch_calls = None

    def allocate(self, nbytes, stream):
        nth = len(self.allocations) + 1
        if nth == self.options["fail_at"]:
            self.allocations.append((nbytes, stream, 0))
            return 0
        if nth == self.options["raise_at"]:
            self.allocations.append((nbytes, stream, 0))
            raise MemoryError(f"the test allocator refuses {nbytes} bytes")
        pointer = ctypes.c_uint64()
        shift = 16 if nth == self.options["misalign_at"] else 0
        _check(_driver.cuMemAlloc_v2(ctypes.byref(pointer),
                                     ctypes.c_size_t(nbytes + shift)),
               "cuMemAlloc_v2")
        address = pointer.value + shift
        self.live[address] = (pointer.value, nbytes)
        self.allocations.append((nbytes, stream, address))
        return address

    def deallocate(self, address, nbytes, stream):
        self.frees.append((address, nbytes, stream))
        if address not in self.live or self.live[address][1] != nbytes:
            self.unknown_frees += 1
            return
        base, _ = self.live.pop(address)
        _check(_driver.cuMemFree_v2(ctypes.c_uint64(base)), "cuMemFree_v2")
        if self.options["raise_in_free"]:
            raise ValueError("the test allocator's deallocate raises")

    def record(self):
        return dict(allocations=list(self.allocations),
                    frees=list(self.frees), live=len(self.live),
                    unknown_frees=self.unknown_frees,
                    torch_calls=self.torch_calls)


class FakeTorch:
    """What moba/torch_scratch.py uses of torch (torch.cuda's
    current_device, caching_allocator_alloc and caching_allocator_delete),
    over a RecordingAllocator, for a worker without torch. The nth
    allocation (`oom_at`) raises FakeTorch.OutOfMemoryError as torch's
    allocator does past its memory fraction. `calls` records each call's
    device and stream, `deletes` each address deleted."""

    class OutOfMemoryError(RuntimeError):
        pass

    def __init__(self, oom_at=None):
        import types
        self.recorder = RecordingAllocator()
        self.oom_at = oom_at
        self.calls = []  # (nbytes, device, stream)
        self.cuda = types.SimpleNamespace(
            current_device=lambda: 0,
            caching_allocator_alloc=self._alloc,
            caching_allocator_delete=self._delete)
        self._sizes = {}

    def _alloc(self, size, device=None, stream=None):
        self.calls.append((size, device, stream))
        if len(self.calls) == self.oom_at:
            raise FakeTorch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {size} bytes")
        address = self.recorder.allocate(size, stream)
        self._sizes[address] = (size, stream)
        return address

    def _delete(self, address):
        size, stream = self._sizes.pop(address)
        self.recorder.deallocate(address, size, stream)


def _scratch(options):
    """(the _capi.ScratchAllocator, the RecordingAllocator) for `options`,
    or (None, None). With options["torch"], the allocator is
    moba.torch_scratch's over a FakeTorch (`oom_at` its option); its calls
    are then in the record as "torch_calls"."""
    if options is None:
        return None, None
    from moba import _capi
    if options.get("torch"):
        import sys
        from moba import torch_scratch
        fake = FakeTorch(options.get("oom_at"))
        real = sys.modules.get("torch")
        sys.modules["torch"] = fake
        try:
            import types
            allocator = torch_scratch.scratch_allocator(
                types.SimpleNamespace(index=None))
        finally:
            if real is None:
                del sys.modules["torch"]
            else:
                sys.modules["torch"] = real
        fake.recorder.torch_calls = fake.calls
        return allocator, fake.recorder
    recorder = RecordingAllocator(**options)
    return _capi.ScratchAllocator(recorder.allocate,
                                  recorder.deallocate), recorder


def _with_record(counters, recorder):
    if recorder is not None:
        counters["scratch"] = recorder.record()
    return counters


def run(name, fail="", stream=None, new_thread=False, fake_buffers=False,
        other_context=False, scratch=None):
    """Calls mobaRunDevice on kernel `name` with the failure plan `fail` in
    force for this call only. Returns (None or the error message, counters):
    the LEAK_COUNTERS, "launches", "last_launch_stream", "rejected" and
    "pools_keeping_memory" after the call, and "calls:<entry>" and
    "after_failure:<entry>" for the ENTRIES during the call. `fake_buffers`: addresses that are no device
    memory, for a process where the driver cannot make any. `new_thread`:
    called from a thread with no current context; `other_context`: from one
    whose current context is not the primary one. `scratch`: the options
    of a RecordingAllocator that the call's scratch comes from; its record
    is then counters["scratch"]."""
    from moba import _capi
    handle, config = _kernels[name]
    buffers = _fake_buffers() if fake_buffers else _device_buffers(config)
    context = _another_context() if other_context else None
    allocator, recorder = _scratch(scratch)
    outcome = {}

    def call():
        if context is not None:
            _check(_driver.cuCtxSetCurrent(ctypes.c_void_p(context)),
                   "cuCtxSetCurrent")
        try:
            _capi.run_kernel_on_device(
                handle, buffers["q"], buffers["k"], buffers["v"],
                buffers["cu_seqlens"], len(SEQLENS) - 1, TOKENS,
                buffers["out"], buffers["lse"], stream,
                buffers["host_cu_seqlens"].ctypes.data, allocator=allocator)
            outcome["error"] = None
        except RuntimeError as e:
            outcome["error"] = str(e)
            if e.__cause__ is not None:
                outcome["cause"] = type(e.__cause__).__name__

    set_failures(fail)
    try:
        if new_thread or other_context:
            thread = threading.Thread(target=call)
            thread.start()
            thread.join()
        else:
            call()
        after = count(*LEAK_COUNTERS, "launches", "last_launch_stream",
                      "rejected", "pools_keeping_memory",
                      "pool_bytes_requested",
                      *("calls:" + entry for entry in ENTRIES),
                      *("after_failure:" + entry for entry in ENTRIES))
    finally:
        set_failures("")
    if "error" not in outcome:
        raise RuntimeError("the call raised something other than an error "
                           "message (see the worker's output)")
    after["cause"] = outcome.get("cause")
    return outcome["error"], _with_record(after, recorder)


def run_grad(name, fail="", stream=None, tokens=TOKENS, scratch=None,
             **changes):
    """Calls mobaRunGradDevice on kernel `name` with the failure plan `fail`
    in force for this call only; `changes` replace pointers of the call
    ("dq": an address or None, "host_cu_seqlens": a host array); `scratch`
    as for run(). Returns (None or the error message, counters) as run()
    does."""
    from moba import _capi
    handle, config = _kernels[name]
    allocator, recorder = _scratch(scratch)
    buffers = dict(_device_buffers(config))
    buffers.update(changes)
    host_cu = buffers["host_cu_seqlens"]
    set_failures(fail)
    try:
        try:
            _capi.run_grad_kernel_on_device(
                handle, *(buffers[n] for n in ("q", "k", "v", "cu_seqlens")),
                len(SEQLENS) - 1, tokens,
                *(buffers[n] for n in ("out", "lse", "dout", "dlse", "dq",
                                       "dk", "dv")),
                stream,
                None if host_cu is None else host_cu.ctypes.data,
                allocator=allocator)
            error = None
        except RuntimeError as e:
            error = str(e)
        after = count(*LEAK_COUNTERS, "launches", "last_launch_stream",
                      "rejected", "pools_keeping_memory",
                      "pool_bytes_requested",
                      *("calls:" + entry for entry in ENTRIES),
                      *("after_failure:" + entry for entry in ENTRIES))
    finally:
        set_failures("")
    return error, _with_record(after, recorder)


def grad_buffer(name, buffer):
    """The device address of `buffer` ("q", "dq", ...) of kernel `name`."""
    return _device_buffers(_kernels[name][1])[buffer]


def run_concurrently(name, threads, rounds, fail="", latency_us=100):
    """Calls kernel `name` `rounds` times from each of `threads` threads at
    once (each making the primary context current first, as torch does),
    with the failure plan `fail` over all of them and every driver call
    taking `latency_us`, so that the calls interleave. Returns (the errors,
    in no order, with None for each success; counters as run() gives
    them)."""
    from moba import _capi
    handle, config = _kernels[name]
    buffers = _device_buffers(config)
    start_together = threading.Barrier(threads)
    errors = []

    def call():
        _make_context_current()
        start_together.wait()
        for _ in range(rounds):
            try:
                _capi.run_kernel_on_device(
                    handle, buffers["q"], buffers["k"], buffers["v"],
                    buffers["cu_seqlens"], len(SEQLENS) - 1, TOKENS,
                    buffers["out"], buffers["lse"], None,
                    buffers["host_cu_seqlens"].ctypes.data)
                errors.append(None)
            except RuntimeError as e:
                errors.append(str(e))

    set_failures(fail)
    _driver.mobaStandInSetLatency(latency_us)
    try:
        workers = [threading.Thread(target=call) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        after = count(*LEAK_COUNTERS, "launches", "rejected",
                      *("calls:" + entry for entry in ENTRIES))
    finally:
        _driver.mobaStandInSetLatency(0)
        set_failures("")
    return errors, after


def counters():
    """The LEAK_COUNTERS, "rejected" and "pools_keeping_memory" now."""
    return count(*LEAK_COUNTERS, "rejected", "pools_keeping_memory")


# The paged KV cache kernels' tests: head_dim 64, 4 query heads on 2 KV
# heads, pages of 16, blocks of 32, top-2, bf16; a cache of 8 pages, 4 a
# sequence, 50 blocks of sums a sequence, 3 sequences; 200 new tokens, 40
# queries (the counts make the launches' grids differ).
PAGED = dict(head_dim=64, num_heads=4, num_kv_heads=2, page_size=16,
             block_size=32, top_k=2, dtype="bf16")
PAGED_COUNTS = dict(num_pages=8, max_pages=4, max_blocks=50,
                    num_sequences=3, tokens=200, queries=40)
# What the PAGED buffers hold room for: a call that should run may ask
# counts up to these (run_paged's changes; larger ones are for the library
# to refuse). The library checks that no buffer it writes overlaps another
# over the extents the counts give, so buffers sized for smaller counts
# would overlap or not by where the allocator happened to put them.
PAGED_CAPACITY = dict(num_sequences=8, tokens=200, queries=128)


def compile_paged(name, target):
    """Compiles the PAGED kernels for `target` under `name`, once."""
    from moba import _capi
    if name not in _kernels:
        c = PAGED
        handle, _ = _capi.compile_paged_kernel(
            c["head_dim"], c["num_heads"], c["num_kv_heads"], c["page_size"],
            c["block_size"], c["top_k"], 16, None, c["dtype"], "query_head",
            None, None, target)
        _kernels[name] = (handle, "paged")
    return _kernels[name][0]


def _paged_buffers():
    if "paged" in _buffers:
        return _buffers["paged"]
    _make_context_current()
    c, n, cap = PAGED, PAGED_COUNTS, PAGED_CAPACITY
    row = c["head_dim"] * 2  # bf16
    sizes = {
        "k_cache": n["num_pages"] * c["page_size"] * c["num_kv_heads"] * row,
        "v_cache": n["num_pages"] * c["page_size"] * c["num_kv_heads"] * row,
        "block_key_sums": cap["num_sequences"] * n["max_blocks"] *
        c["num_kv_heads"] * c["head_dim"] * 4,
        "block_table": cap["num_sequences"] * n["max_pages"] * 4,
        "cache_lens": cap["num_sequences"] * 4,
        "k": cap["tokens"] * c["num_kv_heads"] * row,
        "v": cap["tokens"] * c["num_kv_heads"] * row,
        "cu_seqlens": (cap["num_sequences"] + 1) * 4,
        "q": cap["queries"] * c["num_heads"] * row,
        "cu_seqlens_q": (cap["num_sequences"] + 1) * 4,
        "out": cap["queries"] * c["num_heads"] * row,
        "lse": cap["queries"] * c["num_heads"] * 4,
    }
    buffers = {}
    for name, size in sizes.items():
        pointer = ctypes.c_uint64()
        _check(_driver.cuMemAlloc_v2(ctypes.byref(pointer),
                                     ctypes.c_size_t(size)), "cuMemAlloc_v2")
        buffers[name] = pointer.value
    _buffers["paged"] = buffers
    return buffers


def run_paged(name, entry, stream=None, fail="", **changes):
    """Calls mobaPagedAppendDevice (entry "append") or mobaPagedDecodeDevice
    ("decode") of kernel `name` on the PAGED buffers, with `changes` to the
    pointers (by buffer name: an int address, or None) and counts. Returns
    (None or the error message, counters as run()'s, the launches:
    [(kernel, grid x, block x)] from the stand-in's trace, which the worker
    must have on: MOBA_STAND_IN_TRACE=1)."""
    import tempfile
    from moba import _capi
    handle, _ = _kernels[name]
    b = dict(_paged_buffers())
    n = dict(PAGED_COUNTS)
    for key, value in changes.items():
        (n if key in n else b)[key] = value
    cache = _capi.paged_cache(b["k_cache"], b["v_cache"], b["block_key_sums"],
                              b["block_table"], b["cache_lens"],
                              n["num_pages"], n["max_pages"], n["max_blocks"],
                              n["num_sequences"])
    outcome = {}
    set_failures(fail)
    log = tempfile.TemporaryFile(mode="w+")
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        if entry == "append":
            _capi.run_paged_append_on_device(handle, cache, b["k"], b["v"],
                                             b["cu_seqlens"], n["tokens"],
                                             stream)
        else:
            _capi.run_paged_decode_on_device(handle, cache, b["q"],
                                             b["cu_seqlens_q"], n["queries"],
                                             b["out"], b["lse"], stream)
        outcome["error"] = None
    except (RuntimeError, ValueError) as e:
        outcome["error"] = str(e)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        after = count(*LEAK_COUNTERS, "launches", "last_launch_stream",
                      "rejected",
                      *("calls:" + entry for entry in ENTRIES))
        set_failures("")
    log.seek(0)
    launches = []
    for line in log.read().splitlines():
        parts = line.split()
        if parts[:2] == ["stand-in:", "launch"]:
            launches.append((parts[2], int(parts[4].split("x")[0]),
                             int(parts[6].split("x")[0])))
    return outcome["error"], after, launches


def run_beside_a_thread_allocator(name):
    """Sets a RecordingAllocator as this thread's scratch allocator through
    the C API, calls kernel `name` from another thread, then from this one.
    Returns (error, counters) of each call and the allocations recorded
    after the first and after the second."""
    from moba import _capi
    recorder = RecordingAllocator()
    allocator = _capi.ScratchAllocator(recorder.allocate, recorder.deallocate)
    assert _capi._lib.mobaSetScratchAllocator(
        ctypes.byref(allocator.struct), None, None) == 0
    try:
        other = run(name, new_thread=True)
        after_other = len(recorder.allocations)
        own = run(name)
    finally:
        _capi._lib.mobaSetScratchAllocator(None, None, None)
    return other, own, after_other, recorder.record()


def set_incomplete_allocator(missing):
    """mobaSetScratchAllocator with `missing` ("allocate" or "deallocate")
    NULL: (its status, its message, and whether the thread's allocator
    stayed unset)."""
    from moba import _capi
    recorder = RecordingAllocator()
    allocator = _capi.ScratchAllocator(recorder.allocate, recorder.deallocate)
    incomplete = _capi.MobaScratchAllocator()
    setattr(incomplete, "deallocate" if missing == "allocate" else
            "allocate", getattr(allocator.struct, "deallocate" if missing ==
                                "allocate" else "allocate"))
    error = ctypes.c_void_p()
    status = _capi._lib.mobaSetScratchAllocator(
        ctypes.byref(incomplete), None, ctypes.byref(error))
    message = _capi._take_error(error.value) if status else None
    previous = _capi.MobaScratchAllocator()
    _capi._lib.mobaSetScratchAllocator(None, ctypes.byref(previous), None)
    return status, message, not previous.allocate and not previous.deallocate


def run_inside_an_outer_allocator(name):
    """Sets an outer RecordingAllocator on this thread through the C API,
    then calls kernel `name` with an inner one through _capi (which scopes
    it to the call). Returns (error, allocations the outer and the inner
    recorded, and whether the thread's allocator afterwards is the outer
    one again)."""
    from moba import _capi
    outer = RecordingAllocator()
    outer_allocator = _capi.ScratchAllocator(outer.allocate,
                                             outer.deallocate)
    assert _capi._lib.mobaSetScratchAllocator(
        ctypes.byref(outer_allocator.struct), None, None) == 0
    try:
        error, counters = run(name, scratch={})
    finally:
        now = _capi.MobaScratchAllocator()
        _capi._lib.mobaSetScratchAllocator(None, ctypes.byref(now), None)
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value
    restored = (address(now.allocate) ==
                address(outer_allocator.struct.allocate) and
                address(now.deallocate) ==
                address(outer_allocator.struct.deallocate))
    return (error, len(outer.allocations),
            len(counters["scratch"]["allocations"]), restored)


def outputs_outlive_a_failed_call(name, oom_at):
    """Calls kernel `name` from a frame that holds an object standing for
    the call's outputs, with moba.torch_scratch's allocator over a
    FakeTorch whose allocation `oom_at` raises OutOfMemoryError (inside the
    runtime's callback, under mobaRunDevice), and drops the error. Returns
    (the error's text, whether the outputs' stand-in is still alive) with
    the garbage collector off: only reference counts free it, as they free
    torch's output tensors right after a failed call."""
    import gc
    import weakref
    from moba import _capi
    handle, config = _kernels[name]
    buffers = _device_buffers(config)

    class Outputs:
        pass

    def call(outputs):
        allocator, _ = _scratch({"torch": True, "oom_at": oom_at})
        _capi.run_kernel_on_device(
            handle, buffers["q"], buffers["k"], buffers["v"],
            buffers["cu_seqlens"], len(SEQLENS) - 1, TOKENS,
            buffers["out"], buffers["lse"], None,
            buffers["host_cu_seqlens"].ctypes.data, allocator=allocator)
        return outputs

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        outputs = Outputs()
        alive = weakref.ref(outputs)
        message = None
        try:
            call(outputs)
        except RuntimeError as e:
            message = str(e)
        del outputs
        return message, alive() is not None
    finally:
        if enabled:
            gc.enable()
