"""What a call does when it is being captured into a CUDA graph before it
can be: a clear error saying what to do, never a CUDA error that
invalidates the capture. Without a GPU the capture state is the test's
(moba.device_offsets.stream_is_capturing); the device side is
test/device/torch_check.py graphs.
"""
import pytest

import moba
from moba import device_offsets


@pytest.fixture
def capturing(monkeypatch):
    state = {"capturing": True, "queries": 0}

    def query(device):
        state["queries"] += 1
        return state["capturing"]

    monkeypatch.setattr(device_offsets, "stream_is_capturing", query)
    return state


@pytest.fixture(scope="module")
def kernel():
    return moba.compile(head_dim=16, num_heads=2, num_kv_heads=1,
                        block_size=16, top_k=2, dtype="f32", target="cpu")


def test_a_kernel_that_has_not_run_on_the_device_refuses_capture(
        kernel, capturing):
    with pytest.raises(RuntimeError, match="has not run on cuda:0 yet and "
                       "this call is being captured into a CUDA graph.*Call "
                       "it once before the capture"):
        kernel._check_loaded_for_capture("cuda:0")
    capturing["capturing"] = False
    kernel._check_loaded_for_capture("cuda:0")  # eager: the call loads


def test_a_kernel_that_ran_there_asks_nothing(kernel, capturing):
    kernel._loaded_on.add("cuda:1")
    try:
        kernel._check_loaded_for_capture("cuda:1")
        assert capturing["queries"] == 0
    finally:
        kernel._loaded_on.discard("cuda:1")


def test_a_gpu_paged_kernel_refuses_capture_before_its_first_call(
        capturing):
    paged = moba.GpuPagedKernel(dict(head_dim=16, num_heads=2,
                                     num_kv_heads=1, page_size=16,
                                     block_size=16, top_k=2, dtype="f32",
                                     selection="query_head", scale=None,
                                     max_query_tokens=0, target="sm_90a"),
                                None)
    with pytest.raises(RuntimeError, match="Call it once before the "
                       "capture"):
        paged._check_loaded_for_capture("cuda:0")
    paged._loaded_on.add("cuda:0")
    paged._check_loaded_for_capture("cuda:0")


@pytest.mark.parametrize("what", ["append", "decode", "prefill"])
def test_a_kv_cache_refuses_capture_naming_the_functional_forms(
        capturing, what):
    cache = moba.KVCache(num_pages=4, page_size=16, num_kv_heads=1,
                         head_dim=16, dtype="f32", batch=1, num_heads=2,
                         block_size=16, top_k=2)
    cache.device = "cuda:0"  # the device path's guard, without a GPU
    with pytest.raises(RuntimeError, match=f"KVCache.{what} is being "
                       "captured into a CUDA graph.*moba.paged_kv_append "
                       "and moba.paged_decode"):
        if what == "append":
            cache._append_on_device(None, None, None)
        else:
            cache._attend_on_device(None, None,
                                    16 if what == "decode" else 0, False)
