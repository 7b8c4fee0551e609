"""The GPU runtime on the stand-in CUDA driver (test/stand-in-driver): every
driver call it makes can fail, and each failure must become an error naming
the call -- never a crash -- leave no device memory or module behind, and
leave the next call working.

No GPU is needed: the stand-in books device memory in host memory, checks
the handles it is given and runs no kernel. Since the runtime opens its
driver once per process, the calls run in a worker process whose
MOBA_CUDA_DRIVER is the stand-in (stand_in_device.py is its side).
"""
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

import stand_in_device as device

DRIVER = device.library_path()
# The same, as a driver older than CUDA 12 (no cuTensorMapEncodeTiled).
OLD_DRIVER = os.path.join(os.path.dirname(DRIVER),
                          "libmoba-stand-in-cuda-11.so")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The kernels the tests run. sm90 asks for more than 48 KiB of shared memory
# (cuFuncSetAttribute) and loads K and V by TMA (cuTensorMapEncodeTiled);
# simt has three kernels and compiles in a fraction of a second.
KERNELS = {
    "sm90": ("sm_90a", dict(head_dim=128, mma_instruction="wgmma",
                            mma_key_value_loads="tma")),
    "sm80": ("sm_80", {}),
    "simt": ("sm_90a", dict(gpu_attention="simt")),
}


class Worker:
    """A process whose CUDA driver is the stand-in; worker(f, ...) runs
    stand_in_device.f(...) there and returns its result."""

    def __init__(self, environment=None, driver=DRIVER):
        self.environment = dict(environment or {})
        self.driver = driver
        self.pool = None

    def __call__(self, function, *args, **kwargs):
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=device.start,
                initargs=(self.driver, self.environment))
        try:
            return self.pool.submit(function, *args, **kwargs).result(
                timeout=300)
        except BrokenProcessPool:
            self.pool = None
            pytest.fail(f"the worker process died in {function.__name__}"
                        f"{args}: the runtime crashed")
        except FutureTimeout:
            for process in self.pool._processes.values():
                process.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            pytest.fail(f"{function.__name__}{args} still runs after 300 s: "
                        "the runtime hangs")

    def compile(self, name, kernel=None, **options):
        """Compiles KERNELS[kernel or name] under `name` and allocates the
        buffers it runs on."""
        target, known = KERNELS[kernel or name]
        handle = self(device.compile, name, target, **known, **options)
        self(device.allocate_buffers, name)
        return handle

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


@pytest.fixture(scope="module")
def worker():
    if not os.path.exists(DRIVER):
        pytest.fail(f"the stand-in driver {DRIVER} is not built: build the "
                    "target moba-stand-in-cuda (scripts/build.sh does), or "
                    "point MOBA_STAND_IN_DRIVER at it")
    worker = Worker()
    # A first call makes the process's memory pool, which stays: the tests
    # then compare everything else before and after.
    worker.compile("simt")
    error, _ = worker(device.run, "simt")
    assert error is None, error
    yield worker
    worker.close()


@pytest.fixture
def fresh_worker():
    """A worker of its own, for what happens once per process (the driver's
    initialization, the memory pool's creation)."""
    workers = []

    def make(environment=None, driver=DRIVER):
        workers.append(Worker(environment, driver))
        return workers[-1]

    yield make
    for worker in workers:
        worker.close()


def leaks(before, after):
    """The counters that did not come back: {name: (before, after)}."""
    return {name: (before[name], after[name]) for name in device.LEAK_COUNTERS
            if before[name] != after[name]}


def calls(counters, entry):
    return counters["calls:" + entry]


def called_after_the_failure(counters):
    """The entry points called after the injected failure."""
    return {entry for entry in device.ENTRIES
            if counters["after_failure:" + entry]}


def test_the_stand_in_exports_what_the_runtime_resolves():
    import ctypes
    with open(os.path.join(ROOT, "lib", "Runtime", "CudaDriver.cpp")) as f:
        source = f.read()
    resolved = set(re.findall(r'resolve\(library, "(cu\w+)"', source))
    resolved |= set(re.findall(r'dlsym\(library, "(cu\w+)"\)', source))
    assert len(resolved) > 20, "the runtime's entry points were not found"
    if not os.path.exists(DRIVER):
        pytest.fail(f"the stand-in driver {DRIVER} is not built")
    stand_in = ctypes.CDLL(DRIVER)
    missing = sorted(name for name in resolved if not hasattr(stand_in, name))
    assert not missing


@pytest.mark.parametrize("spec,valid", [
    ("cuLaunchKernel:1", True), ("cuLaunchKernel:2+,cuMemFreeAsync:*", True),
    ("cuModuleLoadDataEx:1=218", True), ("", True),
    ("cuLaunch:1", False), ("cuLaunchKernel", False),
    ("cuLaunchKernel:0", False), ("cuLaunchKernel:x", False),
    ("cuLaunchKernel:1=abc", False), ("cuLaunchKernel:1=0", False),
])
def test_the_stand_in_refuses_a_failure_plan_it_cannot_follow(spec, valid):
    # A misspelt plan would fail nothing and test nothing.
    import ctypes
    if not os.path.exists(DRIVER):
        pytest.fail(f"the stand-in driver {DRIVER} is not built")
    stand_in = ctypes.CDLL(DRIVER)
    stand_in.mobaStandInSetFailures.argtypes = [ctypes.c_char_p]
    assert (stand_in.mobaStandInSetFailures(spec.encode()) == 0) == valid
    stand_in.mobaStandInSetFailures(b"")


@pytest.mark.parametrize("kernel", ["sm90", "sm80"])
def test_a_clean_call_on_the_callers_stream(worker, kernel):
    name = "clean-" + kernel  # loaded by no other test
    worker.compile(name, kernel)
    stream = worker(device.create_stream)
    before = worker(device.counters)
    error, first = worker(device.run, name, stream=stream)
    assert error is None
    # The first call loads the kernels; its scratch memory is all freed.
    assert calls(first, "cuModuleLoadDataEx") > 0
    assert first["modules"] >= before["modules"] + calls(first,
                                                         "cuModuleLoadDataEx")
    assert calls(first, "cuLaunchKernel") > 0
    assert calls(first, "cuMemAllocFromPoolAsync") > 0
    assert first["last_launch_stream"] == stream
    error, second = worker(device.run, name, stream=stream)
    assert error is None
    assert calls(second, "cuModuleLoadDataEx") == 0
    assert calls(second, "cuLaunchKernel") == calls(first, "cuLaunchKernel")
    assert leaks(first, second) == {}
    assert second["rejected"] == before["rejected"]
    assert worker(device.compute_capability) == (90, None)


# The entry points a call makes once its kernels are loaded, with what the
# error must say, and the kernels that make them.
CALL_ERRORS = {
    "cuMemAllocFromPoolAsync": r"cuMemAllocFromPoolAsync\(\d+ bytes\) "
                               r"failed: CUDA_ERROR_OUT_OF_MEMORY \(out of "
                               r"memory\)",
    "cuModuleGetFunction": r"cuModuleGetFunction\(moba_attention_kernel\) "
                           r"failed: CUDA_ERROR_NOT_FOUND \(named symbol not "
                           r"found\)",
    "cuFuncSetAttribute": r"cuFuncSetAttribute\(max dynamic shared memory, "
                          r"\d+ bytes\) failed: CUDA_ERROR_INVALID_VALUE",
    "cuLaunchKernel": r"cuLaunchKernel\(grid \d+x1x1, block \d+x1x1, \d+ "
                      r"bytes shared\) failed: CUDA_ERROR_LAUNCH_FAILED "
                      r"\(unspecified launch failure\)",
    "cuTensorMapEncodeTiled": r"cuTensorMapEncodeTiled\([KV]: 256 tokens x "
                              r"1 heads x 128, box \d+ rows\) failed: "
                              r"CUDA_ERROR_INVALID_VALUE",
    "cuCtxGetCurrent": r"cuCtxGetCurrent failed: CUDA_ERROR_NOT_INITIALIZED",
    "cuCtxGetDevice": r"cuCtxGetDevice failed: CUDA_ERROR_INVALID_CONTEXT",
    "cuDeviceGetAttribute": r"cuDeviceGetAttribute\(compute capability "
                            r"(major|minor)\) failed: "
                            r"CUDA_ERROR_INVALID_DEVICE",
    "cuDeviceGetName": r"cuDeviceGetName failed: CUDA_ERROR_INVALID_DEVICE",
}
CALL_CASES = [("sm90", entry) for entry in CALL_ERRORS] + [
    ("sm80", entry) for entry in ["cuMemAllocFromPoolAsync",
                                  "cuModuleGetFunction", "cuLaunchKernel"]]


@pytest.mark.parametrize("name,entry", CALL_CASES)
def test_each_failing_call_is_an_error_that_leaks_nothing(worker, name,
                                                          entry):
    worker.compile(name)
    error, clean = worker(device.run, name)  # loads the kernels
    assert error is None
    error, clean = worker(device.run, name)
    assert error is None
    made = calls(clean, entry)
    assert made > 0, f"a call of {name} makes no {entry}"
    # Fail the first, each middle and the last of them in turn.
    for nth in range(1, made + 1):
        error, failed = worker(device.run, name, fail=f"{entry}:{nth}")
        assert error is not None, f"{entry}:{nth} went unreported"
        assert re.search(CALL_ERRORS[entry], error), error
        assert leaks(clean, failed) == {}, f"{entry}:{nth}"
        assert failed["rejected"] == clean["rejected"], f"{entry}:{nth}"
        # After the failure the call only gave its scratch memory back.
        assert called_after_the_failure(failed) <= {"cuMemFreeAsync"}, \
            f"{entry}:{nth}"
        error, after = worker(device.run, name)
        assert error is None, f"the call after {entry}:{nth}: {error}"
        assert leaks(clean, after) == {}
        assert calls(after, "cuLaunchKernel") == calls(clean, "cuLaunchKernel")


def test_a_failing_free_keeps_only_its_own_buffer(worker):
    # The driver keeps what it failed to free; every other scratch buffer of
    # the call must still be freed.
    worker.compile("sm80")
    assert worker(device.run, "sm80")[0] is None
    error, clean = worker(device.run, "sm80")
    made = calls(clean, "cuMemFreeAsync")
    assert made > 0
    for nth in (1, made // 2 + 1, made):
        before = worker(device.counters)
        error, failed = worker(device.run, "sm80", fail=f"cuMemFreeAsync:{nth}")
        assert re.search(r"cuMemFreeAsync failed: CUDA_ERROR_ILLEGAL_ADDRESS",
                         error), error
        assert failed["allocations"] == before["allocations"] + 1
        # Every buffer allocated got its free (those after the failure were
        # never allocated).
        assert calls(failed, "cuMemFreeAsync") == calls(
            failed, "cuMemAllocFromPoolAsync")
        error, after = worker(device.run, "sm80")
        assert error is None
        assert after["allocations"] == failed["allocations"]


@pytest.mark.parametrize("name,failure", [
    ("simt", "cuModuleLoadDataEx:1"),
    ("simt", "cuModuleLoadDataEx:2"),
    ("simt", "cuModuleLoadDataEx:3"),
    ("sm80", "cuModuleLoadDataEx:6"),
    # The context check before the second of the three loads.
    ("simt", "cuCtxGetCurrent:3"),
])
def test_a_failed_kernel_load_unloads_and_the_next_call_loads(worker, name,
                                                              failure):
    fresh = f"{name}-{failure}"  # loaded by no test before
    worker.compile(fresh, name)
    before = worker(device.counters)
    error, failed = worker(device.run, fresh, fail=failure)
    assert error is not None
    assert re.search(r"loading the kernels of \w+ on device 0 .* failed: "
                     + failure.split(":")[0], error), error
    assert calls(failed, "cuLaunchKernel") == 0
    # What loaded before the failure is unloaded, and nothing else is done.
    assert called_after_the_failure(failed) <= {"cuModuleUnload"}
    assert leaks(before, failed) == {}
    assert failed["rejected"] == before["rejected"]
    error, after = worker(device.run, fresh)
    assert error is None, f"the call after the failed load: {error}"
    assert calls(after, "cuModuleLoadDataEx") > 0
    assert after["modules"] == before["modules"] + calls(after,
                                                         "cuModuleLoadDataEx")
    assert calls(after, "cuLaunchKernel") > 0
    worker(device.destroy, fresh)
    assert worker(device.counters) == before


def test_a_rejected_load_gives_the_jit_log_after_the_drivers_error(worker):
    worker.compile("rejected", "simt")
    error, _ = worker(device.run, "rejected", fail="cuModuleLoadDataEx:2=218")
    assert re.search(r"failed: cuModuleLoadDataEx\(PTX\) failed: "
                     r"CUDA_ERROR_INVALID_PTX \(a PTX JIT compilation "
                     r"failed\): injected by the stand-in driver "
                     r"\(cuModuleLoadDataEx call 2\)$", error), error


@pytest.mark.parametrize("failure", ["", "cuModuleLoadDataEx:2",
                                     "cuLaunchKernel:20",
                                     "cuMemAllocFromPoolAsync:30"])
def test_threads_loading_and_running_one_kernel(worker, failure):
    # Four threads call a kernel not loaded yet, five times each, their
    # driver calls interleaved: one loads it, a failure fails that one call
    # only, and every other call launches all its kernels.
    fresh = f"threads-{failure}"
    worker.compile(fresh, "simt")
    before = worker(device.counters)
    launched = worker(device.count, "launches")["launches"]
    errors, after = worker(device.run_concurrently, fresh, 4, 5,
                           fail=failure)
    failed = [error for error in errors if error is not None]
    assert len(errors) == 20
    assert len(failed) == (1 if failure else 0), failed
    if failure:
        assert failure.split(":")[0] in failed[0], failed[0]
    # The simt kernel's call launches three kernels; the failed one fewer.
    launched = after["launches"] - launched
    assert 0 <= launched - 3 * (20 - len(failed)) <= 2 * len(failed)
    assert after["modules"] == before["modules"] + 3
    assert leaks(before, after).keys() <= {"modules"}
    assert after["rejected"] == before["rejected"]
    worker(device.destroy, fresh)
    assert worker(device.counters) == before


def test_a_kernel_unloads_when_destroyed(worker):
    worker.compile("destroyed", "simt")
    before = worker(device.counters)
    error, after = worker(device.run, "destroyed")
    assert error is None
    assert after["modules"] == before["modules"] + 3
    worker(device.destroy, "destroyed")
    assert worker(device.counters) == before


def test_error_names_the_driver_does_not_know(worker):
    worker.compile("simt")
    assert worker(device.run, "simt")[0] is None
    error, _ = worker(device.run, "simt", fail="cuGetErrorName:*,"
                      "cuGetErrorString:*,cuLaunchKernel:1")
    assert re.search(r"cuLaunchKernel\(.*\) failed: CUDA error 719 \(no "
                     r"description\)", error), error
    error, _ = worker(device.run, "simt", fail="cuLaunchKernel:2=4242")
    assert re.search(r"cuLaunchKernel\(.*\) failed: CUDA error 4242 \(no "
                     r"description\)", error), error
    assert worker(device.run, "simt")[0] is None


def test_a_stream_the_driver_does_not_know(worker):
    worker.compile("simt")
    assert worker(device.run, "simt")[0] is None
    before = worker(device.counters)
    error, failed = worker(device.run, "simt", stream=0xdead00)
    assert re.search(r"cuMemAllocFromPoolAsync\(\d+ bytes\) failed: "
                     r"CUDA_ERROR_INVALID_HANDLE", error), error
    assert calls(failed, "cuLaunchKernel") == 0
    assert leaks(before, failed) == {}
    assert failed["rejected"] == before["rejected"] + 1
    assert worker(device.run, "simt")[0] is None


@pytest.mark.parametrize("entry,message", [
    ("cuCtxGetCurrent", r"cuCtxGetCurrent failed"),
    ("cuDeviceGetAttribute", r"cuDeviceGetAttribute\(compute capability "
                             r"major\) failed: CUDA_ERROR_INVALID_DEVICE"),
    ("cuDeviceGetName", r"cuDeviceGetName failed"),
])
def test_compute_capability_query_fails_cleanly(worker, entry, message):
    worker(device.set_failures, f"{entry}:1")
    try:
        capability, why = worker(device.compute_capability)
    finally:
        worker(device.set_failures, "")
    assert capability == 0
    assert re.search(message, why), why
    assert worker(device.compute_capability) == (90, None)


def test_compute_capability_decides_what_loads(worker):
    worker.compile("hopper-only", "simt")  # sm_90a
    worker.compile("ampere", "sm80", gpu_attention="simt")
    try:
        worker(device.set_compute_capability, 8, 0)
        assert worker(device.compute_capability) == (80, None)
        before = worker(device.counters)
        error, refused = worker(device.run, "hopper-only")
        assert re.search(r"kernels compiled for sm_90a need compute "
                         r"capability 9\.0 exactly, but device 0 \(moba "
                         r"stand-in CUDA device \(8\.0\)\) has 8\.0", error), \
            error
        assert calls(refused, "cuModuleLoadDataEx") == 0
        assert leaks(before, refused) == {}
        error, ran = worker(device.run, "ampere")
        assert error is None
        assert calls(ran, "cuLaunchKernel") > 0
    finally:
        worker(device.set_compute_capability, 9, 0)
    # The refusal is not remembered: on 9.0 the same kernel runs.
    assert worker(device.run, "hopper-only")[0] is None
    assert worker(device.run, "ampere")[0] is None


@pytest.mark.parametrize("entry,message", [
    ("cuDeviceGet", r"cuDeviceGet\(0\) failed: CUDA_ERROR_INVALID_DEVICE"),
    ("cuDevicePrimaryCtxRetain", r"cuDevicePrimaryCtxRetain\(device 0\) "
                                 r"failed: CUDA_ERROR_OUT_OF_MEMORY"),
    ("cuCtxSetCurrent", r"cuCtxSetCurrent failed: CUDA_ERROR_INVALID_CONTEXT"),
])
def test_a_thread_without_a_context_gets_the_primary_one(worker, entry,
                                                         message):
    worker.compile("simt")
    assert worker(device.run, "simt")[0] is None
    before = worker(device.counters)
    error, failed = worker(device.run, "simt", fail=f"{entry}:1",
                           new_thread=True)
    assert re.search(message, error), error
    assert leaks(before, failed) == {}
    error, after = worker(device.run, "simt", new_thread=True)
    assert error is None
    assert calls(after, "cuDevicePrimaryCtxRetain") == 1
    assert calls(after, "cuCtxSetCurrent") == 1
    assert calls(after, "cuLaunchKernel") > 0
    assert after["rejected"] == before["rejected"]


def test_a_kernel_runs_only_in_the_context_it_was_loaded_into(worker):
    worker.compile("here", "simt")
    assert worker(device.run, "here")[0] is None  # the primary context
    before = worker(device.counters)
    refusal = (r"the \w+ kernel was loaded into another CUDA context than "
               r"the current one \(device 0\): compile one kernel per device")
    error, refused = worker(device.run, "here", other_context=True)
    assert re.search(refusal, error), error
    assert leaks(before, refused) == {}
    assert refused["rejected"] == before["rejected"]
    # A kernel first called in the other context is loaded there.
    worker.compile("there", "simt")
    error, ran = worker(device.run, "there", other_context=True)
    assert error is None
    assert calls(ran, "cuLaunchKernel") == 3
    error, _ = worker(device.run, "there")
    assert re.search(refusal, error), error
    assert worker(device.run, "here")[0] is None
    worker(device.destroy, "there")
    after = worker(device.counters)
    assert leaks(before, after) == {}
    assert after["rejected"] == before["rejected"]


def test_the_memory_pool_after_failures_to_make_it(fresh_worker):
    worker = fresh_worker()
    worker.compile("simt")
    error, failed = worker(device.run, "simt", fail="cuMemPoolCreate:1")
    assert re.search(r"cuMemPoolCreate\(device 0\) failed: "
                     r"CUDA_ERROR_OUT_OF_MEMORY", error), error
    assert failed["pools"] == 0
    # The test's own buffers.
    assert failed["allocations"] == device.BUFFERS_PER_CONFIGURATION
    # The pool is made, but not told to keep its memory.
    error, failed = worker(device.run, "simt",
                           fail="cuMemPoolSetAttribute:1")
    assert re.search(r"cuMemPoolSetAttribute\(release threshold\) failed: "
                     r"CUDA_ERROR_INVALID_VALUE", error), error
    assert failed["allocations"] == device.BUFFERS_PER_CONFIGURATION
    assert calls(failed, "cuLaunchKernel") == 0
    error, after = worker(device.run, "simt")
    assert error is None
    # One pool, which keeps its memory between calls as the runtime means.
    assert after["pools"] == 1
    assert after["pools_keeping_memory"] == 1
    assert after["allocations"] == device.BUFFERS_PER_CONFIGURATION
    assert after["rejected"] == 0


def test_no_device(fresh_worker):
    worker = fresh_worker({"MOBA_STAND_IN_FAIL": "cuInit:*"})
    capability, why = worker(device.compute_capability)
    assert capability == 0
    assert re.search(r"no usable GPU: cuInit failed with "
                     r"CUDA_ERROR_NO_DEVICE", why), why
    # Compiling needs no device; running says why it cannot.
    worker(device.compile, "simt", KERNELS["simt"][0], **KERNELS["simt"][1])
    error, _ = worker(device.run, "simt", fake_buffers=True)
    assert re.search(r"cuInit failed with CUDA_ERROR_NO_DEVICE", error), error


def test_a_driver_older_than_cuda_12(fresh_worker):
    # It has no cuTensorMapEncodeTiled: only the kernels that load K and V
    # by TMA need it.
    worker = fresh_worker(driver=OLD_DRIVER)
    worker.compile("simt")
    worker.compile("sm90")
    assert worker(device.run, "simt")[0] is None
    before = worker(device.counters)
    error, failed = worker(device.run, "sm90")
    assert re.search(r"the CUDA driver has no cuTensorMapEncodeTiled \(it is "
                     r"older than CUDA 12\.0\): the kernels' TMA loads need "
                     r"it", error), error
    assert leaks(before, failed).keys() <= {"modules"}
    assert failed["rejected"] == before["rejected"]
    assert worker(device.run, "simt")[0] is None


# The backward on the GPU (GpuAttentionKernel::runGrad, mobaRunGradDevice).

def scratch_bound(tokens, sequences, grad, densified, head_dim=64,
                  num_heads=2, num_kv_heads=1, block=64, top_k=2, element=2):
    """The bytes a call of the worker's configuration may ask of the memory
    pool: kernelScratchBytes (the forward) or gradScratchBytes (the
    backward) of lib/Runner/AttentionConfig.cpp for a GPU kernel (chunked
    block pooling; densified with gpu_attention="mma")."""
    t, hq, hkv, d, k = tokens, num_heads, num_kv_heads, head_dim, top_k
    rows = t // block + sequences
    chunks = rows * ((block + 255) // 256) * hkv * d * 4
    if grad:
        return (rows * hkv * d * 4 + t * hq * -(-t // block) * 4
                + t * hq * k * 4 + 2 * t * hq * 4 + 2 * hq * rows * 4
                + hq * t * k * 4 + k * t * hq * d * 4 + 2 * t * hkv * d * 4
                + 3 * t * hq * d * element + chunks)
    total = (rows * hkv * d * 4 + t * hq * k * 4 + t * hq * d * element
             + t * hq * 4 + chunks)
    if densified:
        total += (2 * hq * rows * 4 + hq * t * k * 4 + k * t * hq * d * element
                  + k * t * hq * 4)
    return total


@pytest.mark.parametrize("kernel,densified", [("simt", False),
                                              ("sm80", True)])
def test_a_call_asks_the_pool_for_no_more_than_its_bound(worker, kernel,
                                                         densified):
    """The runner refuses calls whose scratch bound wraps; the bound must
    cover what the kernels ask for."""
    worker.compile(kernel)
    error, counters = worker(device.run, kernel)
    assert error is None
    asked = counters["pool_bytes_requested"]
    assert 0 < asked <= scratch_bound(device.TOKENS, len(device.SEQLENS) - 1,
                                      grad=False, densified=densified)


def test_a_gpu_kernel_without_the_backward_refuses_the_backward(worker):
    worker.compile("simt")
    before = worker(device.counters)
    error, after = worker(device.run_grad, "simt")
    assert error is not None and "compiled without the backward" in error
    assert calls(after, "cuLaunchKernel") == 0
    assert calls(after, "cuModuleLoadDataEx") == 0
    assert leaks(before, after) == {}


# The GPU backward runs on the tensor-core path only (its kernels are
# mma.sync): the SIMT path's refusal, by the C API's check of the
# configuration (lib/CAPI/Moba.cpp).
NO_SIMT_BACKWARD = "backward on a GPU target needs gpu_attention mma"
GRAD_KERNELS = {"grad-sm90": "sm90", "grad-sm80": "sm80"}


def compile_grad(worker, name):
    """Compiles GRAD_KERNELS[name] with the backward and allocates its
    buffers; a compile error fails the test."""
    target, known = KERNELS[GRAD_KERNELS[name]]
    problem = worker(device.compile_grad, name, target, **known)
    if problem is not None:
        pytest.fail(f"compiling {name} with the backward failed: {problem}")
    worker(device.allocate_buffers, name)


def test_the_simt_path_refuses_the_backward_by_name(worker):
    target, known = KERNELS["simt"]
    problem = worker(device.compile_grad, "grad-simt", target, **known)
    assert problem is not None and NO_SIMT_BACKWARD in problem, problem


@pytest.mark.parametrize("name", sorted(GRAD_KERNELS))
def test_the_backward_runs_on_the_callers_stream(worker, name):
    compile_grad(worker, name)
    stream = worker(device.create_stream)
    before = worker(device.counters)
    error, first = worker(device.run_grad, name, stream=stream)
    assert error is None, error
    assert calls(first, "cuLaunchKernel") > 0
    assert first["last_launch_stream"] == stream
    # Its scratch memory is all given back, and stays within the bound the
    # runner checks for wrapping.
    assert {n: first[n] for n in ("allocations", "bytes")} == \
        {n: before[n] for n in ("allocations", "bytes")}
    asked = first["pool_bytes_requested"]
    assert 0 < asked <= scratch_bound(device.TOKENS, len(device.SEQLENS) - 1,
                                      grad=True, densified=True)
    error, second = worker(device.run_grad, name, stream=stream)
    assert error is None, error
    assert calls(second, "cuModuleLoadDataEx") == 0
    assert calls(second, "cuLaunchKernel") == calls(first, "cuLaunchKernel")
    assert leaks(first, second) == {}
    assert second["rejected"] == before["rejected"]


def grad_argument_cases():
    """(what the call changes, as run_grad's keywords from the kernel's
    buffers, and a pattern of the error naming it)."""
    return {
        # Addresses far below the buffers, which nothing touches.
        "misaligned dq": (lambda b: dict(dq=0x100002),
                          r"dq at 0x0*100002 is not 16-byte aligned"),
        "misaligned dout": (lambda b: dict(dout=0x200008),
                            r"dout at 0x0*200008 is not 16-byte aligned"),
        "dq on dout": (lambda b: dict(dq=b("dout")), r"dq overlaps dout"),
        "dk on dv": (lambda b: dict(dv=b("dk")), r"dk overlaps dv"),
        "no dlse": (lambda b: dict(dlse=None),
                    r"dlse is null but there are 256 tokens"),
        "no dv": (lambda b: dict(dv=None), r"dv is null but there are 256 "
                  r"tokens"),
        "bad host offsets": (
            lambda b: dict(host_cu_seqlens=np.array([0, 100, 255],
                                                    dtype=np.int32)),
            r"cu_seqlens must end at the token count 256, got 255"),
        "too many tokens": (lambda b: dict(tokens=2**31),
                            r"2147483648 tokens do not fit"),
    }


@pytest.mark.parametrize("case", sorted(grad_argument_cases()))
def test_a_bad_backward_call_names_the_value_before_any_launch(worker, case):
    compile_grad(worker, "grad-sm80")
    change, pattern = grad_argument_cases()[case]
    changes = change(lambda buffer: worker(device.grad_buffer, "grad-sm80",
                                           buffer))
    before = worker(device.counters)
    error, after = worker(device.run_grad, "grad-sm80", **changes)
    assert error is not None, f"{case} went unreported"
    assert re.search(pattern, error), error
    assert calls(after, "cuLaunchKernel") == 0
    assert calls(after, "cuMemAllocFromPoolAsync") == 0
    assert leaks(before, after) == {}
    error, _ = worker(device.run_grad, "grad-sm80")
    assert error is None, f"the call after {case}: {error}"


@pytest.mark.parametrize("entry", ["cuMemAllocFromPoolAsync",
                                   "cuLaunchKernel"])
def test_each_failing_call_of_the_backward_leaks_nothing(worker, entry):
    compile_grad(worker, "grad-sm80")
    error, clean = worker(device.run_grad, "grad-sm80")  # loads the kernels
    assert error is None, error
    error, clean = worker(device.run_grad, "grad-sm80")
    assert error is None, error
    made = calls(clean, entry)
    assert made > 0, f"the backward makes no {entry}"
    for nth in range(1, made + 1):
        error, failed = worker(device.run_grad, "grad-sm80",
                               fail=f"{entry}:{nth}")
        assert error is not None, f"{entry}:{nth} went unreported"
        assert "running the backward of" in error
        assert re.search(CALL_ERRORS[entry], error), error
        assert leaks(clean, failed) == {}, f"{entry}:{nth}"
        assert called_after_the_failure(failed) <= {"cuMemFreeAsync"}
        error, after = worker(device.run_grad, "grad-sm80")
        assert error is None, f"the call after {entry}:{nth}: {error}"
        assert leaks(clean, after) == {}


# The caller's scratch allocator (mobaSetScratchAllocator): the calls whose
# scratch it gives, forward and backward.
SCRATCH_CALLS = {"sm90": device.run, "sm80": device.run,
                 "grad-sm80": device.run_grad}


def scratch_call(worker, name, **options):
    if name in GRAD_KERNELS:
        compile_grad(worker, name)
    else:
        worker.compile(name)
    return lambda **more: worker(SCRATCH_CALLS[name], name, **options, **more)


def balanced(record, stream):
    """Every address the allocator gave came back once, with its size, on
    the call's stream, and nothing else did."""
    given = sorted((address, nbytes) for nbytes, _, address in
                   record["allocations"] if address)
    taken = sorted((address, nbytes) for address, nbytes, _ in
                   record["frees"])
    return (given == taken and record["live"] == 0 and
            record["unknown_frees"] == 0 and
            all(s == stream for _, _, s in record["frees"]))


@pytest.mark.parametrize("name", sorted(SCRATCH_CALLS))
def test_every_scratch_buffer_comes_from_the_callers_allocator(worker, name):
    stream = worker(device.create_stream)
    call = scratch_call(worker, name, stream=stream)
    error, _ = call()  # loads the kernels
    assert error is None, error
    error, pooled = call()
    assert error is None, error
    buffers = calls(pooled, "cuMemAllocFromPoolAsync")
    assert buffers > 0
    error, given = call(scratch={})
    assert error is None, error
    record = given["scratch"]
    # Not one buffer from the pool: the allocator gave the same buffers,
    # each on the call's stream, and took every one back.
    assert calls(given, "cuMemAllocFromPoolAsync") == 0
    assert calls(given, "cuMemFreeAsync") == 0
    assert len(record["allocations"]) == buffers
    assert sum(n for n, _, _ in record["allocations"]) == \
        pooled["pool_bytes_requested"]
    assert all(s == stream for _, s, _ in record["allocations"])
    assert balanced(record, stream), record
    assert calls(given, "cuLaunchKernel") == calls(pooled, "cuLaunchKernel")
    assert given["last_launch_stream"] == stream
    assert leaks(pooled, given) == {}
    # Without an allocator the next call is the pool's again.
    error, after = call()
    assert error is None, error
    assert calls(after, "cuMemAllocFromPoolAsync") == buffers
    assert "scratch" not in after


ALLOCATOR_FAILURES = {
    "fail_at": (r"the caller's scratch allocator could not allocate (\d+) "
                r"bytes on stream 0x[0-9a-f]+$", None),
    "raise_at": (r"the caller's scratch allocator could not allocate (\d+) "
                 r"bytes on stream 0x[0-9a-f]+ \(MemoryError: the test "
                 r"allocator refuses (\d+) bytes\)", "MemoryError"),
    "misalign_at": (r"the caller's scratch allocator returned 0x[0-9a-f]+ "
                    r"for (\d+) bytes: scratch must be 256-byte aligned",
                    None),
}


@pytest.mark.parametrize("name", ["sm90", "grad-sm80"])
@pytest.mark.parametrize("failure", sorted(ALLOCATOR_FAILURES))
def test_a_failing_scratch_allocator_is_an_error_that_leaks_nothing(
        worker, name, failure):
    stream = worker(device.create_stream)
    call = scratch_call(worker, name, stream=stream)
    error, clean = call(scratch={})
    assert error is None, error
    buffers = len(clean["scratch"]["allocations"])
    assert buffers > 0
    pattern, cause = ALLOCATOR_FAILURES[failure]
    # Fail the first, each middle and the last allocation in turn.
    for nth in range(1, buffers + 1):
        error, failed = call(scratch={failure: nth})
        assert error is not None, f"{failure}={nth} went unreported"
        found = re.search(pattern, error)
        assert found, error
        record = failed["scratch"]
        asked = record["allocations"][nth - 1][0]
        assert all(int(size) == asked for size in found.groups()), error
        # It asked for nothing after the failure, launched less than a
        # whole call, and took back all it had given.
        assert len(record["allocations"]) == nth
        assert balanced(record, stream), record
        assert leaks(clean, failed) == {}
        assert calls(failed, "cuLaunchKernel") < \
            calls(clean, "cuLaunchKernel")
        assert calls(failed, "cuMemAllocFromPoolAsync") == 0
        if name in SCRATCH_CALLS and SCRATCH_CALLS[name] is device.run:
            assert failed["cause"] == cause
    error, after = call(scratch={})
    assert error is None, error
    assert leaks(clean, after) == {}


@pytest.mark.parametrize("entry", ["cuLaunchKernel", "cuModuleGetFunction"])
def test_a_driver_failure_gives_the_callers_scratch_back(worker, entry):
    call = scratch_call(worker, "sm90")
    error, clean = call(scratch={})
    assert error is None, error
    error, failed = call(scratch={}, fail=f"{entry}:1")
    assert error is not None and entry in error, error
    assert balanced(failed["scratch"], 0), failed["scratch"]
    assert leaks(clean, failed) == {}


def test_a_raising_deallocate_is_an_error_after_the_call(worker):
    call = scratch_call(worker, "sm80")
    error, clean = call(scratch={})
    assert error is None, error
    error, raised = call(scratch={"raise_in_free": True})
    assert error is not None and "failed to take back moba's scratch " \
        "(ValueError: the test allocator's deallocate raises)" in error, error
    assert raised["cause"] == "ValueError"
    # Every buffer was still offered back (the test's frees them first).
    assert balanced(raised["scratch"], 0)
    assert calls(raised, "cuLaunchKernel") == calls(clean, "cuLaunchKernel")
    assert leaks(clean, raised) == {}


def test_the_scratch_allocator_belongs_to_its_thread(worker):
    worker.compile("sm80")
    (error, other), (own_error, own), after_other, record = worker(
        device.run_beside_a_thread_allocator, "sm80")
    assert error is None and own_error is None, (error, own_error)
    # The other thread's call used the pool, this thread's the allocator.
    assert calls(other, "cuMemAllocFromPoolAsync") > 0
    assert after_other == 0
    assert calls(own, "cuMemAllocFromPoolAsync") == 0
    assert len(record["allocations"]) == calls(other,
                                               "cuMemAllocFromPoolAsync")
    assert balanced(record, 0), record


@pytest.mark.parametrize("missing", ["allocate", "deallocate"])
def test_an_incomplete_scratch_allocator_is_refused(worker, missing):
    status, message, unset = worker(device.set_incomplete_allocator, missing)
    assert status != 0
    assert message == f"the scratch allocator's {missing} is NULL"
    assert unset


def test_torch_scratch_asks_torchs_allocator_on_the_calls_stream(worker):
    """moba/torch_scratch.py over a stand-in for torch's caching allocator:
    every buffer from caching_allocator_alloc on the call's device and
    stream, every one deleted."""
    stream = worker(device.create_stream)
    call = scratch_call(worker, "sm80", stream=stream)
    error, pooled = call()
    assert error is None, error
    error, given = call(scratch={"torch": True})
    assert error is None, error
    record = given["scratch"]
    assert calls(given, "cuMemAllocFromPoolAsync") == 0
    assert [(n, d, s) for n, d, s in record["torch_calls"]] == \
        [(n, 0, stream) for n, _, _ in record["allocations"]]
    assert len(record["allocations"]) == calls(pooled,
                                               "cuMemAllocFromPoolAsync")
    assert balanced(record, stream), record
    assert leaks(pooled, given) == {}


def test_torchs_out_of_memory_fails_the_call_with_its_message(worker):
    call = scratch_call(worker, "sm80")
    error, clean = call(scratch={"torch": True})
    assert error is None, error
    error, failed = call(scratch={"torch": True, "oom_at": 2})
    assert error is not None
    assert re.search(r"the caller's scratch allocator could not allocate "
                     r"(\d+) bytes on stream 0x0 \(OutOfMemoryError: CUDA "
                     r"out of memory. Tried to allocate \1 bytes\)$",
                     error), error
    assert failed["cause"] == "OutOfMemoryError"
    assert balanced(failed["scratch"], 0), failed["scratch"]
    assert leaks(clean, failed) == {}


@pytest.mark.parametrize("oom_at", [1, 2])
def test_a_failed_call_leaves_its_callers_outputs_to_their_refcounts(
        worker, oom_at):
    """torch's OutOfMemoryError inside the allocator's callback must not
    tie the failed call's frames (and the outputs they hold) into a
    reference cycle (the device's memory check saw them stay allocated)."""
    worker.compile("sm80")
    error, alive = worker(device.outputs_outlive_a_failed_call, "sm80",
                          oom_at)
    assert error is not None and "OutOfMemoryError" in error, error
    assert not alive


def test_a_calls_allocator_gives_the_thread_its_own_back(worker):
    worker.compile("sm80")
    error, outer, inner, restored = worker(
        device.run_inside_an_outer_allocator, "sm80")
    assert error is None, error
    assert outer == 0 and inner > 0
    assert restored
