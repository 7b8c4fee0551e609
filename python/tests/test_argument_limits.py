"""Arguments at and beyond their limits (docs/python.md, "Limits"): each gets
a ValueError or TypeError naming it, never a wrapped value, a crash, or a
silently different kernel.

What could once kill or hang the interpreter runs in a child process with its
address space capped, so that a regression fails one test instead of the run.
"""
import ctypes
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import moba
from reference import moba_reference, random_inputs

D, HQ, HKV = 16, 4, 2
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def kernel(**overrides):
    args = dict(head_dim=D, num_heads=HQ, num_kv_heads=HKV, block_size=16,
                top_k=2, dtype="f32")
    args.update(overrides)
    return moba.compile(**args)


def inputs(seqlens=(20, 12)):
    return random_inputs(np.random.default_rng(0), list(seqlens), HQ, HKV, D)


CHILD_PRELUDE = """
    import numpy as np, moba
    def raised(f):
        try:
            f()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return "no exception"
"""


def _cap_memory():
    cap = 8 << 30  # far above what these children need
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def run_child(code, env=None, timeout=300):
    """Runs `code` after CHILD_PRELUDE in a fresh interpreter; returns the
    CompletedProcess."""
    source = textwrap.dedent(CHILD_PRELUDE) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", source],
        env=dict(os.environ, **(env or {})), capture_output=True, text=True,
        timeout=timeout, preexec_fn=_cap_memory)


def assert_child_says(result, expected):
    assert result.returncode == 0, (
        f"the child died (status {result.returncode}):\n{result.stderr}")
    assert expected in result.stdout, result.stdout + result.stderr




# --- Tile sizes: a loop step (tile_q) and a vector width (tile_k) ---------

def test_tile_q_beyond_the_limit():
    # tile_q = 2^63 - 1 once wrapped the query-tile loop counter: the kernel
    # wrote out of bounds on the second sequence.
    result = run_child("""
        print(raised(lambda: moba.compile(16, 4, 2, 16, 2, "f32",
                                          tile_q=2**63 - 1)))
    """)
    assert_child_says(result, "ValueError: tile_q must be at most 2147483647,"
                      " got 9223372036854775807")


def test_tile_q_at_the_limit_runs():
    q, k, v, cu = inputs()
    out = kernel(tile_q=INT32_MAX)(q, k, v, cu)
    ref, _, tie = moba_reference(q, k, v, cu, 16, 2)
    np.testing.assert_allclose(out[~tie], ref[~tie], atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("tile_k", [2**63 - 1, 2**31, 2**30, 1025])
def test_tile_k_beyond_the_limit(tile_k):
    # A vector width: 2^30 once ended the interpreter with an LLVM fatal
    # error and 2^31 took all the memory there was.
    result = run_child(f"""
        print(raised(lambda: moba.compile(16, 4, 2, 16, 2, "f32",
                                          tile_k={tile_k})))
    """)
    assert_child_says(result, "ValueError: tile_k must be at most 1024, got "
                      f"{tile_k}")


def test_tile_k_at_the_limit_runs():
    q, k, v, cu = inputs()
    out = kernel(tile_k=1024)(q, k, v, cu)
    ref, _, tie = moba_reference(q, k, v, cu, 16, 2)
    np.testing.assert_allclose(out[~tie], ref[~tie], atol=2e-5, rtol=2e-4)


# --- Counts: C int64 fields, checked before ctypes and against the library's
# limits after -----------------------------------------------------------

INT_ARGUMENTS = ["head_dim", "num_heads", "num_kv_heads", "block_size",
                 "top_k", "tile_q", "tile_k", "mma_warps", "mma_key_chunk"]


@pytest.mark.parametrize("name", INT_ARGUMENTS)
@pytest.mark.parametrize("value", [2**63, 2**64 + 16, -2**63 - 1])
def test_ints_beyond_64_bits(name, value):
    with pytest.raises(ValueError, match=f"{name} must fit a signed 64-bit "
                       f"integer, got {value}"):
        kernel(**{name: value})


def test_block_size_that_wrapped():
    # 2^64 + 16 was block 16 in ctypes while kernel.config said otherwise.
    with pytest.raises(ValueError, match="block_size must fit a signed "
                       "64-bit integer, got 18446744073709551632"):
        kernel(block_size=2**64 + 16)


@pytest.mark.parametrize("name, value, message", [
    ("block_size", INT32_MAX + 1,
     "block_size must be at most 2147483647, got 2147483648"),
    ("num_heads", 2**21,
     "num_heads must be at most 1048576, got 2097152"),
    ("num_kv_heads", 2**21,
     "num_kv_heads must be at most 1048576, got 2097152"),
    ("tile_q", INT32_MAX + 1,
     "tile_q must be at most 2147483647, got 2147483648"),
])
def test_limits_of_the_library(name, value, message):
    with pytest.raises(ValueError, match=message):
        kernel(**{name: value})


def test_block_size_at_the_limit_runs():
    q, k, v, cu = inputs()
    out = kernel(block_size=INT32_MAX)(q, k, v, cu)
    ref, _, tie = moba_reference(q, k, v, cu, INT32_MAX, 2)
    np.testing.assert_allclose(out[~tie], ref[~tie], atol=2e-5, rtol=2e-4)


# --- scale: a float32 -------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-46, 1e-40, 1e39, float("inf"),
                                   float("nan"), 0.0, -0.5])
def test_scale_that_is_no_positive_normal_float32(scale):
    # 1e-46 is 0.0 in float32, which the C API reads as "the default".
    with pytest.raises(ValueError, match="scale must be a positive normal "
                       "float32"):
        kernel(scale=scale)


@pytest.mark.parametrize("scale", [True, "0.1", 1j])
def test_scale_of_another_type(scale):
    with pytest.raises(TypeError, match="scale must be a real number"):
        kernel(scale=scale)


def test_scale_is_exact(tmp_path, monkeypatch):
    # 1 and the next float32 above it are different kernels: neither may be
    # taken from the disk cache for the other.
    monkeypatch.setenv("MOBA_CACHE_DIR", str(tmp_path))
    one = kernel(scale=1.0)
    above = kernel(scale=float(np.nextafter(np.float32(1), np.float32(2))))
    assert not one.from_cache and not above.from_cache
    assert above.config["scale"] == 1.0000001192092896


# --- causal, max_seqlen, return_lse ---------------------------------------

@pytest.mark.parametrize("causal", ["no", 0, 1, None])
def test_causal_must_be_a_bool(causal):
    with pytest.raises(TypeError, match="causal must be a bool"):
        kernel(causal=causal)


def test_causal_numpy_bool():
    assert kernel(causal=np.bool_(False)).config["causal"] is False


@pytest.mark.parametrize("max_seqlen", [float("nan"), 32.0, "32", True])
def test_max_seqlen_must_be_an_int(max_seqlen):
    q, k, v, cu = inputs()
    with pytest.raises(TypeError, match="max_seqlen must be an int"):
        kernel()(q, k, v, cu, max_seqlen=max_seqlen)


def test_max_seqlen_negative():
    q, k, v, cu = inputs()
    with pytest.raises(ValueError, match="max_seqlen must not be negative, "
                       "got -1"):
        kernel()(q, k, v, cu, max_seqlen=-1)


def test_max_seqlen_zero_d_array_is_an_int():
    q, k, v, cu = inputs()
    out = kernel()(q, k, v, cu, max_seqlen=np.array(20))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("layout", ["varlen", "batched"])
def test_max_seqlen_shorter_than_a_sequence(layout):
    q, k, v, cu = inputs((20, 20))
    if layout == "batched":
        q, k, v = (x.reshape(2, 20, *x.shape[1:]) for x in (q, k, v))
        cu = None
    with pytest.raises(ValueError, match="max_seqlen is 19 but the longest "
                       "sequence has 20 tokens"):
        kernel(layout=layout)(q, k, v, cu, max_seqlen=19)


def test_return_lse_must_be_a_bool():
    q, k, v, cu = inputs()
    with pytest.raises(TypeError, match="return_lse must be a bool, got 'no'"):
        kernel()(q, k, v, cu, return_lse="no")


# --- out= and lse= ------------------------------------------------------

@pytest.mark.parametrize("alias", ["q", "k", "v"])
def test_out_aliasing_an_input(alias):
    q, k, v, cu = inputs()
    kern = kernel(num_kv_heads=HQ)
    k, v = (np.repeat(x, 2, axis=1) for x in (k, v))
    given = dict(q=q, k=k, v=v)[alias]
    with pytest.raises(ValueError, match=f"out overlaps {alias}"):
        kern(q, k, v, cu, out=given)


def test_lse_aliasing_q():
    q, k, v, cu = inputs()
    lse = q.reshape(-1)[:q.shape[0] * HQ].reshape(q.shape[0], HQ)
    with pytest.raises(ValueError, match="lse overlaps q"):
        kernel()(q, k, v, cu, lse=lse)


def test_lse_aliasing_cu_seqlens():
    q, k, v, _ = inputs()
    tokens = q.shape[0]
    memory = np.zeros(tokens * HQ, np.int32)
    memory[1] = tokens
    cu = memory[:2]
    lse = memory.view(np.float32).reshape(tokens, HQ)
    with pytest.raises(ValueError, match="lse overlaps cu_seqlens"):
        kernel()(q, k, v, cu, lse=lse)


def test_out_and_lse_overlap():
    q, k, v, cu = inputs()
    memory = np.empty(q.size + 1, np.float32)
    out = memory[:q.size].reshape(q.shape)
    lse = memory[1:1 + q.shape[0] * HQ].reshape(q.shape[0], HQ)
    with pytest.raises(ValueError, match="out and lse overlap"):
        kernel()(q, k, v, cu, out=out, lse=lse)


def test_read_only_out():
    q, k, v, cu = inputs()
    out = np.zeros_like(q)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        kernel()(q, k, v, cu, out=out)
    assert not out.any()


def test_read_only_lse():
    q, k, v, cu = inputs()
    lse = np.zeros(q.shape[:-1], np.float32)
    lse.setflags(write=False)
    with pytest.raises(ValueError, match="lse is read-only"):
        kernel()(q, k, v, cu, lse=lse)


def test_bytes_as_out():
    q, k, v, cu = inputs()
    buffer = bytes(q.nbytes)
    with pytest.raises(TypeError, match="out must be a numpy array or a "
                       "torch tensor, got bytes"):
        kernel()(q, k, v, cu, out=buffer)
    assert buffer == bytes(q.nbytes)


def test_read_only_view_of_bytes_as_out():
    q, k, v, cu = inputs()
    buffer = bytes(q.nbytes)
    out = np.frombuffer(buffer, np.float32).reshape(q.shape)
    with pytest.raises(ValueError, match="out is read-only"):
        kernel()(q, k, v, cu, out=out)
    assert buffer == bytes(q.nbytes)


def test_given_out_and_lse_are_written():
    q, k, v, cu = inputs()
    out, lse = np.empty_like(q), np.empty(q.shape[:-1], np.float32)
    got, got_lse = kernel()(q, k, v, cu, out=out, lse=lse, return_lse=True)
    assert got is out and got_lse is lse
    ref, ref_lse, tie = moba_reference(q, k, v, cu, 16, 2)
    np.testing.assert_allclose(out[~tie], ref[~tie], atol=2e-5, rtol=2e-4)


# --- Empty batches ------------------------------------------------------

@pytest.mark.parametrize("batch, seq", [(0, 8), (0, 0)])
def test_empty_batch_batched(batch, seq):
    # No sequence at all was no cu_seqlens entry for the library.
    q = np.zeros((batch, seq, HQ, D), np.float32)
    kv = np.zeros((batch, seq, HKV, D), np.float32)
    out = kernel(layout="batched")(q, kv, kv)
    assert out.shape == q.shape


# --- The C API's run-time checks (through the binding) --------------------

def _handle():
    handle, _ = moba._capi.compile_kernel(D, HQ, HKV, 16, 2, True, None,
                                          "f32", "cpu", "fused", None, None,
                                          None, None)
    return handle


def test_run_with_null_buffers_and_tokens():
    handle = _handle()
    q, k, v, cu = inputs()
    out, lse = np.empty_like(q), np.empty(q.shape[:-1], np.float32)
    with pytest.raises(RuntimeError, match="q is null but there are 32 "
                       "tokens"):
        moba._capi.run_kernel(handle, None, k.ctypes.data, v.ctypes.data,
                              cu.ctypes.data, 2, 32, out.ctypes.data,
                              lse.ctypes.data)
    moba._capi.destroy(handle)


def test_run_empty_batch_with_null_buffers():
    # An empty torch tensor's data pointer is 0: nothing is read or written.
    handle = _handle()
    cu = np.array([0, 0, 0], np.int32)
    moba._capi.run_kernel(handle, None, None, None, cu.ctypes.data, 2, 0,
                          None, None)
    moba._capi.destroy(handle)


def test_run_sequence_count_beyond_the_limit():
    # The offsets were read up to num_sequences: far past this array.
    result = run_child("""
        handle, _ = moba._capi.compile_kernel(16, 4, 2, 16, 2, True, None,
                                              "f32", "cpu", "fused", None,
                                              None, None, None)
        cu = np.zeros(4, np.int32)
        print(raised(lambda: moba._capi.run_kernel(
            handle, None, None, None, cu.ctypes.data, 2**31, 0, None, None)))
    """)
    assert_child_says(result, "RuntimeError: num_sequences must be at most "
                      "2147483647, got 2147483648")


@pytest.mark.parametrize("name, position", [("num_sequences", 5),
                                            ("tokens", 6)])
def test_run_counts_beyond_64_bits(name, position):
    # ctypes kept the low 64 bits: 2^64 was 0.
    handle = _handle()
    cu = np.zeros(2, np.int32)
    args = [handle, None, None, None, cu.ctypes.data, 1, 0, None, None]
    args[position] = 2**64
    with pytest.raises(ValueError, match=f"{name} must fit a signed 64-bit "
                       "integer"):
        moba._capi.run_kernel(*args)
    moba._capi.destroy(handle)


# --- What must never end the process --------------------------------------

def test_ir_dump_that_cannot_be_written(tmp_path):
    # A dump file that fails on write (here /dev/full, as on a full disk)
    # once ended the process with "LLVM ERROR: IO failure on output stream".
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    compile_once = """
        print(raised(lambda: moba.compile(16, 4, 2, 16, 2, "f32",
                                          target="cpu")))
    """
    names = tmp_path / "names"
    result = run_child(compile_once, env={"MOBA_DUMP_IR": str(names)})
    assert_child_says(result, "no exception")
    full = tmp_path / "full"
    full.mkdir()
    for name in os.listdir(names):
        os.symlink("/dev/full", full / name)
    result = run_child(compile_once, env={"MOBA_DUMP_IR": str(full)})
    assert_child_says(result, "CompileError: could not write the IR dump")
    assert "No space left on device" in result.stdout


@pytest.mark.parametrize("kind, message", [
    ("fatal-error", "LLVM ERROR: moba test hook: a fatal error"),
    ("bad-alloc", "LLVM ERROR: moba test hook: an allocation failure"),
    ("exception", "C++ exception: moba test hook: an exception"),
    ("abort", "crashed with signal 6"),
])
def test_crash_in_compile_becomes_a_compile_error(kind, message):
    # MOBA_TEST_CRASH (include/moba-c/Moba.h) fails one compile the way a
    # bug in LLVM or moba would; the process lives on and compiles again.
    result = run_child("""
        import os
        print(raised(lambda: moba.compile(16, 4, 2, 16, 2, "f32",
                                          target="cpu")))
        del os.environ["MOBA_TEST_CRASH"]
        k = moba.compile(16, 4, 2, 32, 2, "f32", target="cpu")
        q = np.ones((8, 4, 16), np.float32)
        kv = np.ones((8, 2, 16), np.float32)
        print("after:", float(k(q, kv, kv, np.array([0, 8], np.int32)).sum()))
    """, env={"MOBA_TEST_CRASH": kind, "MOBA_CACHE_DIR": ""})
    assert_child_says(result, "CompileError: ")
    assert message in result.stdout, result.stdout
    assert "after: 512.0" in result.stdout, result.stdout


def test_scratch_memory_beyond_the_host():
    # The tiled stage keeps every query's score of every block: T * Hq *
    # ceil(T / block_size) floats, 4 TiB here (and the means, the selected
    # blocks, staging rows: 4398273003648 bytes). malloc returned NULL and
    # the kernel wrote through it.
    result = run_child("""
        tokens = 2**19
        q = np.zeros((tokens, 4, 16), np.float32)
        kv = np.zeros((tokens, 2, 16), np.float32)
        cu = np.array([0, tokens], np.int32)
        k = moba.compile(16, 4, 2, 1, 2, "f32", target="cpu", stage="tiled")
        print(raised(lambda: k(q, kv, kv, cu)))
    """)
    assert_child_says(result, "RuntimeError: a call on 524288 tokens in 1 "
                      "sequences needs up to 4398273003648 bytes of scratch "
                      "memory for d16_h4_kv2_b1_k2_causal_f32, more than the ")


class FakeTensor:
    """What moba reads of a torch tensor to tell overlap on a GPU."""

    def __init__(self, address, shape, strides, itemsize=4):
        self.address, self.shape, self.strides = address, shape, strides
        self.itemsize = itemsize

    def numel(self):
        return int(np.prod(self.shape))

    def stride(self):
        return self.strides

    def data_ptr(self):
        return self.address

    def element_size(self):
        return self.itemsize


@pytest.mark.parametrize("b, overlap", [
    (FakeTensor(1000 + 4 * 24, (4,), (1,)), False),  # just past the end
    (FakeTensor(1000 + 4 * 23, (4,), (1,)), True),   # on the last element
    (FakeTensor(1000 - 16, (4,), (1,)), False),      # just before
    (FakeTensor(1000 - 16, (2, 2), (4, 1)), True),   # a stride reaches in
    (FakeTensor(1000, (0,), (1,)), False),           # empty
])
def test_device_overlap_by_spans(b, overlap):
    a = FakeTensor(1000, (2, 3, 4), (12, 4, 1))  # 24 floats at 1000
    assert moba._spans_overlap(a, b) is overlap
    assert moba._spans_overlap(b, a) is overlap
