"""What a process keeps: kernels only while they are used, no JIT debug
dumps unless asked for, and no lock that makes a call wait for a compile."""
import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import numpy as np

import moba
from moba import _capi
from reference import random_inputs


def small_kernel(block_size, **overrides):
    args = dict(head_dim=16, num_heads=2, num_kv_heads=1,
                block_size=block_size, top_k=2, dtype="f32", target="cpu")
    args.update(overrides)
    return moba.compile(**args)


def test_kernel_freed_when_dropped(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBA_CACHE_DIR", str(tmp_path / "cache"))
    gc.collect()
    live = _capi.live_kernels()
    kernel = small_kernel(24)
    assert _capi.live_kernels() == live + 1
    assert small_kernel(24) is kernel  # found again while held
    dropped = weakref.ref(kernel)
    del kernel
    gc.collect()
    assert dropped() is None
    assert _capi.live_kernels() == live
    again = small_kernel(24)  # compiled again (from the disk cache)
    assert again.from_cache
    assert _capi.live_kernels() == live + 1


def test_functional_api_keeps_a_few_recent_kernels(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBA_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    q, k, v, cu = random_inputs(rng, [20], 2, 1, 16)
    with moba._registry_lock:
        moba._recent.clear()  # those of earlier tests
    gc.collect()
    live = _capi.live_kernels()
    for block in range(4, 4 + 4 * moba._RECENT_KERNELS, 2):  # 2 x as many
        moba.moba_attn_varlen(q, k, v, cu, 20, block, 2)
    gc.collect()
    assert _capi.live_kernels() - live == moba._RECENT_KERNELS
    # The most recent one is still alive: a repeated call does not compile.
    kept = {id(k) for k in moba._recent}
    last = moba.compile(head_dim=16, num_heads=2, num_kv_heads=1,
                        block_size=block, top_k=2, dtype="f32",
                        layout="varlen")
    assert id(last) in kept


def test_calls_never_wait_for_another_compile(monkeypatch):
    # One thread compiles a slow configuration (no disk cache) while another
    # calls a compiled kernel: the calls are done long before the compile.
    monkeypatch.setenv("MOBA_CACHE_DIR", "")
    fast = small_kernel(8)
    rng = np.random.default_rng(0)
    q, k, v, cu = random_inputs(rng, [16], 2, 1, 16)
    fast(q, k, v, cu)
    started, finished = threading.Event(), []

    def compile_slow():
        started.set()
        moba.compile(head_dim=1024, num_heads=16, num_kv_heads=16,
                     block_size=32, top_k=8, dtype="bf16", target="cpu",
                     stage="decomposed", tile_q=7, tile_k=5)
        finished.append(time.perf_counter())

    slow = threading.Thread(target=compile_slow)
    slow.start()
    started.wait()
    time.sleep(0.05)  # the compile is under way and holds what it holds
    calls = []
    for _ in range(200):
        start = time.perf_counter()
        fast(q, k, v, cu)
        small_kernel(8)  # the in-memory lookup of a compiled kernel
        calls.append(time.perf_counter() - start)
    calls_done = time.perf_counter()
    slow.join()
    assert finished, "the slow compile failed"
    # Measured with the compile still running: otherwise this test shows
    # nothing.
    assert calls_done < finished[0], (
        f"the compile finished before the calls ({finished[0] - calls_done:.3f}"
        " s): pick a slower configuration")
    assert max(calls) < 0.1, f"a call took {max(calls) * 1e3:.1f} ms"


JIT = ("import moba; moba.compile(head_dim=16, num_heads=2, num_kv_heads=1, "
       "block_size=8, top_k=2, dtype='f32', target='cpu')")


def jit_dumps(tmp_path, **env):
    """Compiles in a fresh process whose temporary and home directories are
    `tmp_path`; returns the files left under .debug there."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("JITDUMPDIR", "MOBA_JIT_DEBUG")}
    environment.update(TMPDIR=str(tmp_path), HOME=str(home),
                       MOBA_CACHE_DIR="", **env)
    subprocess.run([sys.executable, "-c", JIT], env=environment, check=True,
                   timeout=300)
    return [os.path.relpath(os.path.join(d, f), tmp_path)
            for d, _, files in os.walk(tmp_path) for f in files
            if ".debug" in d]


def test_no_jit_dumps_by_default(tmp_path):
    assert jit_dumps(tmp_path) == []


def test_jit_dumps_on_request(tmp_path):
    # The switch works, and the test above looks where the dumps go.
    dumps = jit_dumps(tmp_path, MOBA_JIT_DEBUG="1")
    assert any(os.path.basename(d).startswith("jit-") and d.endswith(".dump")
               for d in dumps), dumps


def test_threads_compile_different_configurations_at_once(monkeypatch,
                                                          tmp_path):
    # Compiles of different keys are no longer serialized in Python: the
    # library compiles them in parallel, each correct.
    from reference import moba_reference
    monkeypatch.setenv("MOBA_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    q, k, v, cu = random_inputs(rng, [9, 30], 2, 1, 16)
    results, errors = {}, []
    gate = threading.Barrier(8)

    def work(block):
        try:
            gate.wait()
            kernel = small_kernel(block, top_k=3)
            results[block] = (kernel, kernel(q, k, v, cu, return_lse=True))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(b,))
               for b in range(3, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for block, (_, (out, lse)) in results.items():
        ref, ref_lse, tie = moba_reference(q, k, v, cu, block, 3)
        np.testing.assert_allclose(out[~tie], ref[~tie], atol=2e-5,
                                   rtol=2e-4)
        np.testing.assert_allclose(lse[~tie], ref_lse[~tie], atol=2e-4)


def test_threads_compiling_one_key_share_one_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBA_CACHE_DIR", str(tmp_path / "cache"))
    gc.collect()
    live = _capi.live_kernels()
    kernels = []
    gate = threading.Barrier(6)

    def work():
        gate.wait()
        kernels.append(small_kernel(40))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kernels) == 6 and all(k is kernels[0] for k in kernels)
    assert _capi.live_kernels() == live + 1  # compiled once
    assert not moba._compiling  # no lock left behind
