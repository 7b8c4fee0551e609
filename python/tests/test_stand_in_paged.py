"""The GPU paged KV cache kernels (mobaPagedAppendDevice,
mobaPagedDecodeDevice) on the stand-in CUDA driver: no GPU runs them, so
these tests check the plumbing -- which kernels a call launches, on which
stream, over how many threads, that bad input is refused before any launch,
and that failures of the driver leak nothing. The numerics of the append's
loops are tested on the CPU (test_paged_decode.py runs the same scf.forall
forms); the decode's split-K kernels (moba-convert-paged-decode-to-nvvm)
and the append on the device by test/device/paged_check.py.
"""
import re

import pytest

import stand_in_device as device
from test_stand_in_driver import Worker, calls, leaks

THREADS = 128  # the GPU pipeline's threads-per-block
# The split-K decode of PAGED (head_dim 64, block 32): four warps a CTA for
# the selection, one warp a CTA for the attention (a block of 32 keys is one
# chunk), one thread per (row, 4 elements) for the merge; slabs of 64 query
# tokens.
SLAB = 64


@pytest.fixture(scope="module")
def worker():
    worker = Worker({"MOBA_STAND_IN_TRACE": "1"})
    worker(device.compile_paged, "paged-sm90", "sm_90a")
    worker(device.compile_paged, "paged-sm80", "sm_80")
    # The first call makes the memory pool, which stays, and a kernel's
    # first call loads its modules (one for each of the seven kernels: three
    # of the append, four of the split-K decode).
    for name in ("paged-sm90", "paged-sm80"):
        before = worker(device.counters)
        error, after, _ = worker(device.run_paged, name, "append")
        assert error is None
        assert calls(after, "cuModuleLoadDataEx") == 7
        assert after["modules"] == before["modules"] + 7
    yield worker
    worker.close()


def grid(iterations):
    return -(-iterations // THREADS)


@pytest.mark.parametrize("name", ["paged-sm90", "paged-sm80"])
def test_append_launches_the_check_rows_and_sums_kernels(worker, name):
    c, n = device.PAGED, device.PAGED_COUNTS
    stream = worker(device.create_stream)
    before = worker(device.counters)
    error, after, launches = worker(device.run_paged, name, "append",
                                    stream=stream)
    assert error is None
    # One thread per sequence, per (new token, kv head), per (sequence,
    # block, kv head); the flags are device scratch, freed again.
    assert [(g, b) for _, g, b in launches] == [
        (grid(n["num_sequences"]), THREADS),
        (grid(n["tokens"] * c["num_kv_heads"]), THREADS),
        (grid(n["num_sequences"] * n["max_blocks"] * c["num_kv_heads"]),
         THREADS)]
    assert all(kernel == "moba_paged_append_kernel"
               for kernel, _, _ in launches)
    assert after["last_launch_stream"] == stream
    assert calls(after, "cuMemAllocFromPoolAsync") == 1
    assert leaks(before, after) == {}
    assert after["rejected"] == before["rejected"]


def split_k_launches(queries, sequences):
    """The decode's launches: the check, then per slab of query tokens the
    selection, the attention and the merge."""
    c, n = device.PAGED, device.PAGED_COUNTS
    kernel = "moba_paged_decode_kernel"
    launches = [(kernel, grid(sequences), THREADS)]
    for first in range(0, queries, SLAB):
        rows = min(SLAB, queries - first) * c["num_heads"]
        launches += [
            (kernel, -(-rows // 4), THREADS),
            (kernel, sequences * c["num_kv_heads"] * n["max_blocks"], 32),
            (kernel, grid(rows * c["head_dim"] // 4), THREADS)]
    return launches


@pytest.mark.parametrize("name", ["paged-sm90", "paged-sm80"])
def test_decode_launches_the_check_and_the_split_k_kernels(worker, name):
    n = device.PAGED_COUNTS
    stream = worker(device.create_stream)
    before = worker(device.counters)
    error, after, launches = worker(device.run_paged, name, "decode",
                                    stream=stream)
    assert error is None
    assert launches == split_k_launches(n["queries"], n["num_sequences"])
    assert after["last_launch_stream"] == stream
    assert leaks(before, after) == {}


def test_decode_runs_a_round_of_launches_per_slab_of_queries(worker):
    """100 queries: two slabs (64 and 36 tokens), the scratch of one."""
    error, _, launches = worker(device.run_paged, "paged-sm90", "decode",
                                queries=100, num_sequences=7)
    assert error is None
    assert launches == split_k_launches(100, 7)
    assert len(launches) == 7


def test_no_queries_runs_the_check_alone(worker):
    error, _, launches = worker(device.run_paged, "paged-sm90", "decode",
                                queries=0, q=None, out=None, lse=None)
    assert error is None, error
    assert launches == split_k_launches(0, 3)


def test_no_new_tokens_is_a_call_like_any_other(worker):
    """With no new tokens (k and v may be null) the row kernel still has a
    block (a grid of none is invalid) whose threads find no iteration."""
    c, n = device.PAGED, device.PAGED_COUNTS
    error, _, launches = worker(device.run_paged, "paged-sm90", "append",
                                tokens=0, k=None, v=None)
    assert error is None
    assert [g for _, g, _ in launches] == [
        1, 1, grid(n["num_sequences"] * n["max_blocks"] * c["num_kv_heads"])]


# Bad calls, refused on the host before anything is launched, and what the
# message must say.
BAD_CALLS = [
    ("append", dict(k=None), r"k is null but there are 200 tokens"),
    ("append", dict(cu_seqlens=None), r"cu_seqlens is null"),
    ("append", dict(tokens=-1), r"tokens"),
    ("append", dict(num_pages=0), r"num_pages"),
    ("append", dict(k_cache="misaligned"), r"k_cache at .* is not 16-byte "
                                           r"aligned"),
    ("append", dict(block_key_sums="k"), r"block_key_sums overlaps k"),
    ("decode", dict(out=None), r"out is null but there are 40 tokens"),
    ("decode", dict(cu_seqlens_q=None), r"cu_seqlens_q is null"),
    ("decode", dict(out="q"), r"out overlaps q"),
    ("decode", dict(q="misaligned"), r"q at .* is not 16-byte aligned"),
    ("decode", dict(num_sequences=1 << 40), r"num_sequences"),
]


@pytest.mark.parametrize("entry,change,message", BAD_CALLS)
def test_bad_calls_are_refused_before_any_launch(worker, entry, change,
                                                 message):
    buffers = worker(device._paged_buffers)
    for key, value in change.items():
        if value == "misaligned":
            change[key] = buffers[key] + 8
        elif isinstance(value, str):
            change[key] = buffers[value]
    before = worker(device.counters)
    error, after, launches = worker(device.run_paged, "paged-sm90", entry,
                                    **change)
    assert error is not None
    assert re.search(message, error), error
    assert launches == []
    assert calls(after, "cuLaunchKernel") == 0
    assert leaks(before, after) == {}


def test_cpu_and_gpu_paged_kernels_refuse_each_others_calls(worker):
    from moba import _capi
    error, _, _ = worker(device.run_paged, "paged-sm90", "decode")
    assert error is None
    with pytest.raises(ValueError, match="runs on the GPU: call "
                                         "mobaPagedAppendDevice"):
        c = device.PAGED
        handle, _ = _capi.compile_paged_kernel(
            c["head_dim"], c["num_heads"], c["num_kv_heads"], c["page_size"],
            c["block_size"], c["top_k"], 16, None, c["dtype"], "query_head",
            None, None, "sm_90a")
        try:
            cache = _capi.paged_cache(16, 32, 48, 64, 80, 1, 1, 1, 1)
            _capi.run_paged_append(handle, cache, 96, 112, 128, 0)
        finally:
            _capi.destroy(handle)
    handle, _ = _capi.compile_paged_kernel(
        c["head_dim"], c["num_heads"], c["num_kv_heads"], c["page_size"],
        c["block_size"], c["top_k"], 16, None, c["dtype"], "query_head", None,
        None, "cpu")
    try:
        with pytest.raises(RuntimeError, match="runs on the CPU: call "
                                               "mobaPagedAppend or "
                                               "mobaPagedDecode"):
            _capi.run_paged_decode_on_device(handle, cache, 96, 112, 0, 128,
                                             144, None)
    finally:
        _capi.destroy(handle)


@pytest.mark.parametrize("failing", ["cuLaunchKernel",
                                     "cuMemAllocFromPoolAsync"])
def test_a_failing_driver_call_is_an_error_that_leaks_nothing(worker,
                                                              failing):
    before = worker(device.counters)
    error, after, _ = worker(device.run_paged, "paged-sm90", "append",
                             fail=failing + ":1")
    assert error is not None and failing in error, error
    assert error.startswith("running the append of paged_")
    assert leaks(before, after) == {}
    error, _, _ = worker(device.run_paged, "paged-sm90", "append")
    assert error is None
