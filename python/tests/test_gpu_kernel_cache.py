"""The disk cache of GPU kernels (lib/Runner/KernelCache.h, docs/python.md).

A GPU kernel's cached file holds its host object with the PTX embedded: a
second process links it without running the compiler (from_cache) and its
kernels load and launch as a fresh compile's do -- checked on the stand-in
driver (test/stand-in-driver), in worker processes of their own as
test_stand_in_driver.py runs them. A file that fails verification, or
whose verified object does not link, is rejected with a warning and
compiled again, a store that is half done is
never read, and the cache can be turned off per kernel or moved by
MOBA_CACHE_DIR.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

import stand_in_device as device
from test_stand_in_driver import DRIVER, KERNELS, Worker

# The small SIMT kernel of test_stand_in_driver.py through the C API: it
# compiles for sm_90a without a driver, in a fraction of a second.
COMPILE_SIMT = textwrap.dedent("""
    import json, sys
    from moba import _capi
    handle, from_cache = _capi.compile_kernel(
        64, 2, 1, 64, 2, True, None, "bf16", "sm_90a", "fused", None, None,
        sys.argv[1], None, gpu_attention="simt")
    print(json.dumps(dict(from_cache=from_cache,
                          warning=_capi.cache_warning(handle))))
""")

# moba.compile() for the GPU, which the stand-in driver makes sm_90a.
COMPILE_PUBLIC = textwrap.dedent("""
    import json, sys, moba
    kernel = moba.compile(head_dim=64, num_heads=2, num_kv_heads=1,
                          block_size=64, top_k=2, dtype="bf16",
                          target="sm_90a", gpu_attention="simt",
                          **json.loads(sys.argv[1]))
    print(json.dumps(dict(from_cache=kernel.from_cache,
                          warning=kernel.cache_warning,
                          targets=list(kernel.targets))))
""")


def cache_files(directory):
    """The cache's files, temporaries included (names starting with a
    dot)."""
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def run_script(script, argument, **environment):
    """Runs `script` in a fresh process; returns what it printed, parsed."""
    env = dict(os.environ, **environment)
    out = subprocess.run([sys.executable, "-c", script, argument], env=env,
                         check=True, capture_output=True, text=True,
                         timeout=300)
    return json.loads(out.stdout)


def compile_in_worker(cache, name, kernel, **options):
    """Compiles KERNELS[kernel] through the cache `cache` in a fresh worker
    process on the stand-in driver and runs it (the backward too when
    compiled with it). Returns (the compile's cache_info, the run's error,
    the run's counters)."""
    worker = Worker()
    try:
        worker.compile(name, kernel, cache_dir=cache, **options)
        info = worker(device.cache_info, name)
        run = device.run_grad if options.get("backward") else device.run
        error, after = worker(run, name)
        return info, error, after
    finally:
        worker.close()


@pytest.fixture(autouse=True)
def stand_in_driver():
    if not os.path.exists(DRIVER):
        pytest.fail(f"the stand-in driver {DRIVER} is not built: build the "
                    "target moba-stand-in-cuda (scripts/build.sh does), or "
                    "point MOBA_STAND_IN_DRIVER at it")


@pytest.mark.parametrize("kernel,backward", [("sm90", False),
                                             ("sm80", True)])
def test_a_second_process_runs_the_cached_kernel(tmp_path, kernel, backward):
    # sm90 loads K and V by TMA: its host code calls mobaEncodeTensorMap,
    # which must resolve to the runtime's in a process that compiled
    # nothing; the backward needs its own entry point from the object.
    cache = str(tmp_path / "cache")
    options = dict(backward=True) if backward else {}
    cold, error, cold_run = compile_in_worker(cache, "cold", kernel,
                                              **options)
    assert error is None, error
    assert not cold["from_cache"] and cold["warning"] is None
    (name,) = cache_files(cache)
    assert name.startswith("gpu-" + KERNELS[kernel][0] + "-")
    assert ("_grad-" in name) == backward
    warm, error, warm_run = compile_in_worker(cache, "warm", kernel,
                                              **options)
    assert warm["from_cache"], warm
    assert warm["warning"] is None, warm["warning"]
    assert error is None, error
    # The cached kernels load and launch as the fresh compile's did.
    for counter in ("cuModuleLoadDataEx", "cuModuleGetFunction",
                    "cuLaunchKernel", "cuTensorMapEncodeTiled"):
        assert warm_run["calls:" + counter] == cold_run["calls:" + counter], \
            counter
    assert warm_run["calls:cuLaunchKernel"] > 0
    assert (warm_run["calls:cuTensorMapEncodeTiled"] > 0) == (
        kernel == "sm90")
    assert warm_run["rejected"] == 0
    assert cache_files(cache) == [name]
    assert warm["seconds"] < cold["seconds"] / 4
    print(f"{kernel}{' backward' if backward else ''}: cold compile "
          f"{cold['seconds'] * 1e3:.0f} ms, from the cache "
          f"{warm['seconds'] * 1e3:.1f} ms")


def flip_middle_byte(data):
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def with_payload(good, payload):
    """`good`'s key with `payload` in place of its object, hashed as the
    cache hashes (docs/python.md has the layout): a file that verifies."""
    import hashlib
    import struct
    (key_bytes,) = struct.unpack_from("<I", good, 12)
    key = good[56:56 + key_bytes]
    fixed = good[:16] + struct.pack("<Q", len(payload))
    digest = hashlib.sha256(fixed + key + payload).digest()
    return fixed + digest + key + payload


# How a file is damaged, and what the warning says of it.
CORRUPTIONS = {
    # Verified, but what it holds is no object the JIT can link.
    "unlinkable": (lambda good, other: with_payload(good, b"\0" * 64),
                      r"the cached kernel of gpu-sm_90a-d128_h2_kv1_b64_k2_"
                      r"causal_bf16-mma-isa-O2 could not be linked"),
    "truncated": (lambda good, other: good[:len(good) // 2],
                  r"it has \d+ bytes but its header describes \d+"),
    "bit-flipped": (lambda good, other: flip_middle_byte(good),
                    r"its content hash does not match"),
    "empty": (lambda good, other: b"",
              r"it has 0 bytes, fewer than the header's 56"),
    # A whole, valid file of another GPU kernel (another plan) under this
    # kernel's name.
    "another-key": (lambda good, other: other,
                         r"it holds the kernel of another key "
                         r"\('gpu-sm_90a-d64_h2_kv1_b64_k2_causal_bf16-simt"),
}


@pytest.fixture(scope="module")
def cached_worker(tmp_path_factory):
    """A worker on the stand-in driver, its cache holding the sm90 kernel
    (its file's bytes kept) and the simt one."""
    cache = str(tmp_path_factory.mktemp("gpu-cache") / "cache")
    worker = Worker()
    worker.compile("sm90-first", "sm90", cache_dir=cache)
    (sm90,) = cache_files(cache)
    worker.compile("simt-first", "simt", cache_dir=cache)
    (simt,) = set(cache_files(cache)) - {sm90}
    with open(os.path.join(cache, sm90), "rb") as f:
        good = f.read()
    with open(os.path.join(cache, simt), "rb") as f:
        other = f.read()
    yield worker, cache, os.path.join(cache, sm90), good, other
    worker.close()


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_file_is_rejected_and_compiled_again(cached_worker,
                                                       corruption):
    worker, cache, path, good, other = cached_worker
    damage, pattern = CORRUPTIONS[corruption]
    with open(path, "wb") as f:
        f.write(damage(good, other))
    worker.compile("after-" + corruption, "sm90", cache_dir=cache)
    info = worker(device.cache_info, "after-" + corruption)
    assert not info["from_cache"], info
    assert info["warning"] is not None, f"the {corruption} file was used"
    assert "compiling it again" in info["warning"], info["warning"]
    assert re.search(pattern, info["warning"]), info["warning"]
    error, after = worker(device.run, "after-" + corruption)
    assert error is None, error
    assert after["calls:cuLaunchKernel"] > 0
    # The file was replaced by the fresh compile's: the next compile loads
    # it.
    worker.compile("reloaded-" + corruption, "sm90", cache_dir=cache)
    info = worker(device.cache_info, "reloaded-" + corruption)
    assert info["from_cache"] and info["warning"] is None, info
    error, _ = worker(device.run, "reloaded-" + corruption)
    assert error is None, error
    assert [n for n in cache_files(cache) if n.startswith(".")] == []


def test_a_store_half_done_is_never_read(tmp_path):
    # Process A writes half of its file and waits; B, compiling the same
    # key meanwhile, must not see a torn file (a store writes a temporary
    # and renames it over the name).
    cache = str(tmp_path / "cache")
    pause = str(tmp_path / "pause")
    first = subprocess.Popen(
        [sys.executable, "-c", COMPILE_SIMT, cache],
        env=dict(os.environ, MOBA_TEST_CACHE_STORE_PAUSE=pause),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(pause):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the store never paused"
            time.sleep(0.02)
        second = run_script(COMPILE_SIMT, cache)
        assert second["warning"] is None, second["warning"]
        assert not second["from_cache"]
    finally:
        if os.path.exists(pause):
            os.remove(pause)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    first_result = json.loads(out)
    assert not first_result["from_cache"]
    assert "MOBA_TEST_CACHE_STORE_PAUSE paused this store" in (
        first_result["warning"] or ""), first_result
    third = run_script(COMPILE_SIMT, cache)
    assert third == dict(from_cache=True, warning=None)
    assert len(cache_files(cache)) == 1  # no temporary left


def test_moba_compile_caches_gpu_kernels_where_moba_cache_dir_says(tmp_path):
    env = dict(MOBA_CUDA_DRIVER=DRIVER, HOME=str(tmp_path / "home"))
    first = tmp_path / "first"
    result = run_script(COMPILE_PUBLIC, "{}", MOBA_CACHE_DIR=str(first),
                        **env)
    assert result == dict(from_cache=False, warning=None, targets=["sm_90a"])
    (name,) = cache_files(first)
    assert name.startswith("gpu-sm_90a-")
    result = run_script(COMPILE_PUBLIC, "{}", MOBA_CACHE_DIR=str(first),
                        **env)
    assert result == dict(from_cache=True, warning=None, targets=["sm_90a"])
    # Moved: the other directory holds nothing yet.
    moved = tmp_path / "moved"
    result = run_script(COMPILE_PUBLIC, "{}", MOBA_CACHE_DIR=str(moved),
                        **env)
    assert not result["from_cache"]
    assert cache_files(moved) == [name]
    assert not (tmp_path / "home").exists()


def test_cache_false_neither_reads_nor_writes(tmp_path):
    env = dict(MOBA_CUDA_DRIVER=DRIVER, MOBA_CACHE_DIR=str(tmp_path / "c"))
    for _ in range(2):
        result = run_script(COMPILE_PUBLIC, json.dumps(dict(cache=False)),
                            **env)
        assert not result["from_cache"] and result["warning"] is None
    assert cache_files(tmp_path / "c") == []
    # A cached kernel is not read either.
    run_script(COMPILE_PUBLIC, "{}", **env)
    assert len(cache_files(tmp_path / "c")) == 1
    result = run_script(COMPILE_PUBLIC, json.dumps(dict(cache=False)), **env)
    assert not result["from_cache"]


def test_an_empty_moba_cache_dir_keeps_gpu_kernels_off_disk(tmp_path):
    env = dict(MOBA_CUDA_DRIVER=DRIVER, MOBA_CACHE_DIR="",
               HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for _ in range(2):
        result = run_script(COMPILE_PUBLIC, "{}", **env)
        assert not result["from_cache"] and result["warning"] is None
    assert os.listdir(tmp_path) == []


def test_cache_must_be_a_bool():
    import moba
    with pytest.raises(TypeError, match="cache must be a bool, got 'no'"):
        moba.compile(head_dim=16, num_heads=2, num_kv_heads=1, block_size=8,
                     top_k=2, dtype="f32", target="cpu", cache="no")
