"""Bad input raises ValueError or TypeError naming the argument and value:
one test per rule."""
import numpy as np
import pytest

import moba

D, HQ, HKV = 16, 4, 2


def kernel(**overrides):
    args = dict(head_dim=D, num_heads=HQ, num_kv_heads=HKV, block_size=16,
                top_k=2, dtype="f32")
    args.update(overrides)
    return moba.compile(**args)


def inputs(tokens=32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((tokens, HQ, D), dtype=np.float32)
    k = rng.standard_normal((tokens, HKV, D), dtype=np.float32)
    return q, k, k.copy(), np.array([0, tokens], dtype=np.int32)


class FakeCudaArray:
    """Anything that says it lives on a GPU."""
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<i4",
                                "data": (0, False), "version": 3}


def test_wrong_dtype():
    q, k, v, cu = inputs()
    with pytest.raises(TypeError, match="q has dtype float64"):
        kernel()(q.astype(np.float64), k, v, cu)


def test_bf16_needs_bits():
    q, k, v, cu = inputs()
    with pytest.raises(TypeError, match="q has dtype float32, the kernel takes bf16"):
        kernel(dtype="bf16")(q, k, v, cu)


def test_non_contiguous():
    q, k, v, cu = inputs()
    strided = np.repeat(q, 2, axis=0)[::2]
    with pytest.raises(ValueError, match="q is not contiguous"):
        kernel()(strided, k, v, cu)


def test_k_v_shapes_differ():
    q, k, v, cu = inputs()
    with pytest.raises(ValueError, match=r"k has shape \(32, 2, 16\) but v has \(31, 2, 16\)"):
        kernel()(q, k, v[:31], cu)


def test_q_heads_wrong():
    q, k, v, cu = inputs()
    with pytest.raises(ValueError, match="q has shape .* expected 4 heads of head_dim 16"):
        kernel()(q[:, :3].copy(), k, v, cu)


def test_token_counts_differ():
    q, k, v, cu = inputs()
    with pytest.raises(ValueError, match="leading dims must agree"):
        kernel()(q[:20].copy(), k, v, cu)


def test_rank():
    q, k, v, cu = inputs()
    with pytest.raises(ValueError, match="q must have rank 3"):
        kernel()(q[None], k, v, cu)


def test_heads_not_multiple():
    with pytest.raises(ValueError, match=r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"):
        moba.compile(head_dim=D, num_heads=6, num_kv_heads=4, block_size=16,
                     top_k=2, dtype="f32")


def test_cu_seqlens_not_monotonic():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match=r"cu_seqlens is not monotonic: cu_seqlens\[2\]=10 < cu_seqlens\[1\]=20"):
        kernel()(q, k, v, np.array([0, 20, 10, 32], dtype=np.int32))


def test_cu_seqlens_wrong_end():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="cu_seqlens must end at the token count 32, got 30"):
        kernel()(q, k, v, np.array([0, 30], dtype=np.int32))


def test_cu_seqlens_wrong_start():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="cu_seqlens must start at 0, got 2"):
        kernel()(q, k, v, np.array([2, 32], dtype=np.int32))


def test_cu_seqlens_on_gpu():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="cu_seqlens is on a GPU"):
        kernel()(q, k, v, FakeCudaArray())


def test_cu_seqlens_float():
    q, k, v, _ = inputs()
    with pytest.raises(TypeError, match="cu_seqlens must be a 1-D integer array, got dtype float32"):
        kernel()(q, k, v, np.array([0, 32], dtype=np.float32))


def test_cu_seqlens_missing():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="cu_seqlens is required"):
        kernel()(q, k, v)


def test_max_seqlen_too_small():
    q, k, v, cu = inputs()
    with pytest.raises(ValueError, match="max_seqlen is 16 but the longest sequence has 32 tokens"):
        kernel()(q, k, v, cu, max_seqlen=16)


@pytest.mark.parametrize("name", ["block_size", "top_k", "head_dim",
                                  "num_heads", "num_kv_heads"])
def test_counts_below_one(name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1, got 0"):
        kernel(**{name: 0})


def test_count_not_int():
    with pytest.raises(TypeError, match="block_size must be an int, got 1.5"):
        kernel(block_size=1.5)


@pytest.mark.skipif(moba._available_gpu_target()[0] is not None,
                    reason="this machine has a GPU")
@pytest.mark.parametrize("target", ["sm_80", "sm_90a"])
def test_gpu_target_without_gpu(target):
    with pytest.raises(ValueError, match=f"target '{target}' needs a GPU, but "
                       "no CUDA driver: libcuda.so.1 could not be loaded"):
        kernel(target=target)


def test_gpu_target_with_a_missing_driver(monkeypatch):
    # Works the same on a GPU machine: the driver library is not found.
    monkeypatch.setenv("MOBA_CUDA_DRIVER", "/nonexistent/libcuda.so.1")
    capability, why = moba._capi.gpu_compute_capability()
    if capability:
        pytest.skip("the driver was already loaded in this process")
    assert "could not be loaded" in why


def test_numpy_arrays_for_a_gpu_kernel():
    # A GPU kernel compiled without a GPU (through the C API, which allows
    # it): host arrays are refused before anything runs.
    handle, _ = moba._capi.compile_kernel(16, 2, 1, 16, 2, True, None, "f32",
                                          "sm_80", "fused", None, None, None,
                                          None)
    config = dict(head_dim=16, num_heads=2, num_kv_heads=1, block_size=16,
                  top_k=2, dtype="f32", layout="varlen", causal=True,
                  target="sm_80", scale=None, stage="fused", tile_q=None,
                  tile_k=None, gpu_attention="mma")
    k = moba.Kernel(config, {"sm_80": handle}, False, 0.0)
    q = np.ones((4, 2, 16), np.float32)
    kv = np.ones((4, 1, 16), np.float32)
    with pytest.raises(ValueError, match="q is in host memory but the kernel "
                       "was compiled for target='sm_80': pass CUDA tensors"):
        k(q, kv, kv, np.array([0, 4], np.int32))


def test_unknown_target():
    with pytest.raises(ValueError, match="target must be one of auto, cpu, sm_80, sm_90a, got 'tpu'"):
        kernel(target="tpu")


def test_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, bf16, got 'int8'"):
        kernel(dtype="int8")


def test_unknown_layout():
    with pytest.raises(ValueError, match="layout must be 'varlen' or 'batched', got 'paged'"):
        kernel(layout="paged")


def test_bad_scale():
    with pytest.raises(ValueError, match=r"scale must be a positive normal "
                       r"float32 \(finite, at least 1.17549435e-38\), got -1"):
        kernel(scale=-1.0)


@pytest.mark.skipif(moba._available_gpu_target()[0] is not None,
                    reason="this machine has a GPU")
def test_gpu_input_without_gpu():
    _, k, v, cu = inputs()
    with pytest.raises(ValueError, match="q is a GPU array but no CUDA "
                       "driver"):
        kernel()(FakeCudaArray(), k, v, cu)


def test_gpu_input_for_a_cpu_kernel():
    _, k, v, cu = inputs()
    with pytest.raises(ValueError, match="q is on a GPU but the kernel was "
                       "compiled for target='cpu'"):
        kernel(target="cpu")(FakeCudaArray(), k, v, cu)


def test_not_an_array():
    _, k, v, cu = inputs()
    with pytest.raises(TypeError, match="q must be a numpy array or a torch tensor, got list"):
        kernel()([[1.0]], k, v, cu)


def test_batched_takes_no_cu_seqlens():
    q = np.zeros((1, 8, HQ, D), np.float32)
    k = np.zeros((1, 8, HKV, D), np.float32)
    with pytest.raises(ValueError, match="cu_seqlens is only for layout='varlen'"):
        kernel(layout="batched")(q, k, k, np.array([0, 8], np.int32))


@pytest.mark.parametrize("name", ["head_dim", "top_k"])
def test_vector_widths_too_large(name):
    with pytest.raises(ValueError, match=f"{name} must be at most 1024, got 4096"):
        kernel(**{name: 4096})


def test_mma_tile_shape_must_be_positive():
    with pytest.raises(ValueError, match="mma_warps must be at least 1, "
                       "got 0"):
        kernel(mma_warps=0)


def test_mma_key_chunk_the_kernel_cannot_take():
    # Through the C API: GPU kernels compile without a GPU. The message
    # names the C API's (and Python's) field and shows the whole plan.
    with pytest.raises(moba.CompileError, match="mma_key_chunk must be a "
                       "multiple of 16 in \\[16, 256\\], got 40 \\(plan "
                       "mma.sync,cp.async,auto,separate,warps=2,key-chunk=40,"
                       "stages=2\\)"):
        moba._capi.compile_kernel(64, 4, 2, 64, 2, True, None, "bf16",
                                  "sm_90a", "fused", None, None, None, None,
                                  "mma", mma_warps=2, mma_key_chunk=40)


def test_mma_instruction_must_be_known():
    with pytest.raises(ValueError, match="mma_instruction must be "
                       "'mma.sync', 'wgmma' or None, got 'hgmma'"):
        kernel(mma_instruction="hgmma")


def test_mma_key_value_loads_must_be_known():
    with pytest.raises(ValueError, match="mma_key_value_loads must be "
                       "'cp.async', 'tma', 'tma-multicast' or None, got "
                       "'ldg'"):
        kernel(mma_key_value_loads="ldg")


def test_mma_merge_must_be_known():
    with pytest.raises(ValueError, match="mma_merge must be 'fused', "
                       "'separate' or None, got 'atomic'"):
        kernel(mma_merge="atomic")


def gpu_problem(target="sm_90a", **plan):
    """The library's message for a bf16, head_dim 64 configuration on
    `target` with the plan fields `plan`, or None."""
    return moba._capi.check_config(64, 4, 2, 64, 2, True, None, "bf16",
                                   target, "fused", None, None, "mma",
                                   **plan)


def test_tma_needs_wgmma():
    # One check, the library's: Python passes the names on.
    for loads in ("tma", "tma-multicast"):
        assert gpu_problem(mma_instruction="mma.sync",
                           mma_key_value_loads=loads) == (
            f"mma_key_value_loads={loads} needs mma_instruction=wgmma (TMA "
            f"is sm_90's), got 'mma.sync' (plan mma.sync,{loads},auto,"
            "separate,warps=4,key-chunk=64,stages=2)")
    with pytest.raises(moba.CompileError, match="mma_key_value_loads=tma "
                       "needs mma_instruction=wgmma"):
        moba._capi.compile_kernel(64, 4, 2, 64, 2, True, None, "bf16",
                                  "sm_90a", "fused", None, None, None, None,
                                  "mma", mma_instruction="mma.sync",
                                  mma_key_value_loads="tma")


def test_wgmma_needs_whole_warpgroups():
    assert gpu_problem(mma_warps=2, mma_key_chunk=32,
                       mma_instruction="wgmma") == (
        "mma_instruction=wgmma needs mma_warps a multiple of 4 (whole "
        "warpgroups), got 2; mma_instruction=wgmma needs mma_key_chunk a "
        "multiple of 64 (whole 64-column panels), got 32 (plan wgmma,"
        "cp.async,auto,separate,warps=2,key-chunk=32,stages=2)")


def test_wgmma_needs_sm90a():
    with pytest.raises(moba.CompileError, match="mma_instruction=wgmma needs "
                       "chip sm_90a, got 'sm_80'"):
        moba._capi.compile_kernel(64, 4, 2, 64, 2, True, None, "bf16",
                                  "sm_80", "fused", None, None, None, None,
                                  "mma", mma_instruction="wgmma")


def test_mma_stages_rules():
    assert gpu_problem(mma_stages=3) == (
        "mma_stages=3 needs mma_key_value_loads tma or tma-multicast (the "
        "cp.async loops are double-buffered), got 'cp.async' (plan wgmma,"
        "cp.async,auto,separate,warps=4,key-chunk=64,stages=3)")
    assert gpu_problem(mma_stages=5, mma_instruction="wgmma",
                       mma_key_value_loads="tma").startswith(
        "mma_stages must be in [2, 4], got 5 (plan")
    assert gpu_problem(mma_stages=4, mma_instruction="wgmma",
                       mma_key_value_loads="tma-multicast") is None
    # 0 is the C API's "tuned", which None says in Python.
    with pytest.raises(ValueError, match="mma_stages must be at least 1, "
                       "got 0"):
        kernel(mma_stages=0)
    with pytest.raises(TypeError, match="mma_stages"):
        kernel(mma_stages="3")


def test_cpu_target_refuses_gpu_fields_no_gpu_takes():
    # The CPU ignores the GPU fields, but a value outside every GPU's range
    # is an error there too (a target="auto" caller on a CPU-only machine
    # must not learn of it on the first GPU); cross-field rules, which
    # depend on the chip and the tuning table, wait for a GPU target.
    assert gpu_problem(target="cpu", mma_stages=5) == (
        "mma_stages must be in [2, 4], got 5")
    assert gpu_problem(target="cpu", mma_warps=17, mma_key_chunk=40) == (
        "mma_warps must be in [1, 16], got 17; mma_key_chunk must be a "
        "multiple of 16 in [16, 256], got 40")
    assert gpu_problem(target="cpu", mma_stages=3) is None
    with pytest.raises(ValueError, match="mma_stages must be in \\[2, 4\\], "
                       "got 5"):
        kernel(mma_stages=5)


def test_mma_schedule_rules():
    with pytest.raises(ValueError, match="mma_schedule must be 'auto', "
                       "'in-order', 'overlapped', 'warp-specialized', "
                       "'warp-specialized-overlapped', 'ping-pong', "
                       "'persistent' or None, got 'round-robin'"):
        kernel(mma_schedule="round-robin")
    assert gpu_problem(mma_schedule="ping-pong", mma_instruction="wgmma",
                       mma_key_value_loads="tma", mma_warps=4).startswith(
        "mma_schedule=ping-pong needs mma_warps 8 or 12 (two or three "
        "consumer warpgroups to take turns), got 4")
    assert gpu_problem(mma_schedule="persistent", mma_instruction="wgmma",
                       mma_key_value_loads="tma-multicast").startswith(
        "mma_schedule=persistent needs mma_key_value_loads=tma (its "
        "producer owns one CTA's ring), got 'tma-multicast'")
    assert gpu_problem(mma_schedule="overlapped",
                       mma_instruction="mma.sync").startswith(
        "mma_schedule=overlapped needs mma_instruction=wgmma, got "
        "'mma.sync' (plan mma.sync,cp.async,overlapped,")
    assert gpu_problem(mma_schedule="overlapped",
                       mma_key_value_loads="tma").startswith(
        "mma_schedule=overlapped needs mma_key_value_loads=cp.async (the "
        "TMA loop runs in order), got 'tma' (plan wgmma,tma,overlapped,")
    assert gpu_problem(mma_schedule="warp-specialized",
                       mma_instruction="wgmma",
                       mma_key_value_loads="tma-multicast").startswith(
        "mma_schedule=warp-specialized needs mma_key_value_loads=tma (its "
        "producer owns one CTA's ring), got 'tma-multicast' (plan "
        "wgmma,tma-multicast,warp-specialized,")
    assert gpu_problem(mma_schedule="warp-specialized",
                       mma_instruction="wgmma", mma_key_value_loads="tma",
                       mma_warps=16).startswith(
        "mma_schedule=warp-specialized needs mma_warps at most 12")
    for schedule in ("auto", "in-order", "overlapped"):
        assert gpu_problem(mma_schedule=schedule) is None
    assert gpu_problem(mma_schedule="warp-specialized",
                       mma_instruction="wgmma",
                       mma_key_value_loads="tma") is None


def test_the_compiled_plan_reads_back():
    # Every field away from its default, given; the kernel's plan prints
    # them back in the canonical text.
    handle, _ = moba._capi.compile_kernel(
        128, 4, 4, 512, 2, True, None, "bf16", "sm_90a", "fused", None, None,
        None, None, "mma", mma_warps=8, mma_key_chunk=128,
        mma_instruction="wgmma", mma_key_value_loads="tma-multicast",
        mma_merge="fused", mma_stages=3, mma_schedule="in-order")
    try:
        assert moba._capi.kernel_plan(handle) == (
            "wgmma,tma-multicast,in-order,fused,warps=8,key-chunk=128,"
            "stages=3")
    finally:
        moba._capi.destroy(handle)
    # Nothing given: the tuning table's row (bf16, head_dim 128, block
    # 512) with its stages.
    handle, _ = moba._capi.compile_kernel(
        128, 4, 4, 512, 2, True, None, "bf16", "sm_90a", "fused", None, None,
        None, None, "mma")
    try:
        assert moba._capi.kernel_plan(handle) == (
            "wgmma,tma,auto,separate,warps=4,key-chunk=64,stages=2")
    finally:
        moba._capi.destroy(handle)
    handle, _ = moba._capi.compile_kernel(16, 2, 1, 16, 2, True, None, "f32",
                                          "sm_80", "fused", None, None, None,
                                          None, "simt")
    try:
        assert moba._capi.kernel_plan(handle) is None
    finally:
        moba._capi.destroy(handle)


def test_kernel_config_reports_the_plan_arguments():
    k = kernel(target="cpu", mma_stages=3, mma_schedule="in-order",
               mma_instruction="wgmma", mma_key_value_loads="tma")
    assert k.config["mma_stages"] == 3
    assert k.config["mma_schedule"] == "in-order"
    assert k.plan is None  # a CPU kernel has none


def test_mma_tile_shape_compiles():
    handle, _ = moba._capi.compile_kernel(64, 4, 2, 64, 2, True, None, "bf16",
                                          "sm_90a", "fused", None, None, None,
                                          None, "mma", mma_warps=2,
                                          mma_key_chunk=32)
    assert handle
    moba._capi.destroy(handle)
