"""The disk cache trusts nothing it finds: each attack ends in a recompile
(the file is replaced) or a refusal of the directory, never in foreign code
running. Each case runs in a fresh process with a timeout, so that a crash or
a hang fails the test instead of the test run."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import moba

TESTS = os.path.dirname(os.path.abspath(__file__))
SMALL = dict(head_dim=16, num_heads=2, num_kv_heads=1, block_size=8, top_k=2)
# Another head count: the object of SMALL run on it would read and write
# out of bounds.
OTHER = dict(head_dim=16, num_heads=4, num_kv_heads=1, block_size=8, top_k=2)
MAGIC = b"MOBAKRNL"
HEADER = 56

CHILD = textwrap.dedent("""
    import json, os, sys, warnings
    import numpy as np
    import moba
    from reference import moba_reference, random_inputs

    shape = json.loads(sys.argv[1])
    plant = json.loads(sys.argv[2])
    for name, target in plant.items():  # symbolic links at our temporaries
        os.symlink(target, name.replace("{pid}", str(os.getpid())))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = moba.compile(dtype="f32", **shape)
    rng = np.random.default_rng(0)
    q, k, v, cu = random_inputs(rng, [5, 40], shape["num_heads"],
                                shape["num_kv_heads"], shape["head_dim"])
    out, lse = kernel(q, k, v, cu, return_lse=True)
    ref, ref_lse, tie = moba_reference(q, k, v, cu, shape["block_size"],
                                       shape["top_k"])
    rows = ~tie
    correct = bool(np.allclose(out[rows], ref[rows], atol=2e-5, rtol=2e-4)
                   and np.allclose(lse[rows], ref_lse[rows], atol=2e-4))
    print(json.dumps({
        "from_cache": kernel.from_cache, "warning": kernel.cache_warning,
        "warned": [str(w.message) for w in caught
                   if issubclass(w.category, moba.CacheWarning)],
        "correct": correct}))
""")


def run(cache, shape=SMALL, plant=None, timeout=300):
    """Compiles `shape` (f32) in a fresh process with MOBA_CACHE_DIR=cache
    and runs it against the reference; returns what the child saw."""
    env = dict(os.environ, MOBA_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(
        [TESTS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(shape),
         json.dumps(plant or {})],
        env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["correct"], result
    # The attribute and the Python warning say the same.
    assert result["warned"] == ([result["warning"]] if result["warning"]
                                else []), result
    return result


def read_cache_file(path):
    """(key, payload) of a cache file, checked here independently of the
    library: layout, lengths, SHA-256."""
    data = path.read_bytes()
    assert data[:8] == MAGIC
    version, key_bytes, payload_bytes = struct.unpack_from("<IIQ", data, 8)
    assert version == 1
    key = data[HEADER:HEADER + key_bytes]
    payload = data[HEADER + key_bytes:]
    assert len(payload) == payload_bytes
    assert hashlib.sha256(data[:24] + key + payload).digest() == data[24:56]
    return key.decode(), payload


def cache_files(cache):
    return sorted(p for p in cache.iterdir() if p.name.endswith(".mobak"))


def populated(tmp_path, shape=SMALL, name="cache"):
    """A cache directory holding the verified file of `shape`; returns
    (directory, file)."""
    cache = tmp_path / name
    first = run(cache, shape)
    assert not first["from_cache"] and first["warning"] is None
    (path,) = cache_files(cache)
    return cache, path


def assert_recompiled_and_replaced(cache, path, reason):
    """The next compile rejects the file at `path` for `reason`, compiles
    again and replaces it (by a rename: a new inode) with a verified file
    that a further compile loads."""
    inode = path.lstat().st_ino
    result = run(cache)
    assert not result["from_cache"]
    assert result["warning"] and reason in result["warning"], result
    assert "compiling it again" in result["warning"]
    assert not path.is_symlink() and path.is_file()
    assert path.lstat().st_ino != inode
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    read_cache_file(path)
    again = run(cache)
    assert again["from_cache"] and again["warning"] is None


def test_layout_of_a_cache_file(tmp_path):
    # Missing parents are created too, all 0700.
    cache, path = populated(tmp_path, name="home/.cache/moba-mlir")
    for d in (cache, cache.parent):
        assert oct(d.stat().st_mode & 0o777) == oct(0o700)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    key, payload = read_cache_file(path)
    assert payload[:4] == b"\x7fELF"
    prefix, features = key.split("|")
    assert moba.version() in prefix and prefix.startswith("cpu-d16_h2_kv1")
    assert features.startswith("+") and "+sse2" in features.split(",")
    # The file name: the readable part of the key and a hash of all of it.
    assert path.name.startswith(prefix[:40])
    assert path.name.endswith(hashlib.sha256(key.encode()).hexdigest()[:16]
                              + ".mobak")
    assert run(cache)["from_cache"]
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporaries


def test_object_of_another_configuration_under_a_key(tmp_path):
    cache, small = populated(tmp_path)
    other_cache, other = populated(tmp_path, OTHER, name="other")
    shutil.copyfile(other, small)
    assert_recompiled_and_replaced(cache, small, "another key")


def test_bare_object_under_a_key(tmp_path):
    # A plain relocatable object, as the cache once held.
    cache, path = populated(tmp_path)
    _, payload = read_cache_file(path)
    path.write_bytes(payload)
    assert_recompiled_and_replaced(cache, path, "magic")


# Header fields (magic, version, key length, payload length, hash, key) and
# the payload's first, middle and last bytes.
@pytest.mark.parametrize("where", ["magic", "version", "key-length",
                                   "payload-length", "hash", "key",
                                   "payload-start", "payload-middle",
                                   "payload-end"])
def test_bit_flip(tmp_path, where):
    cache, path = populated(tmp_path)
    data = bytearray(path.read_bytes())
    key_bytes = struct.unpack_from("<I", data, 12)[0]
    position = {"magic": 3, "version": 8, "key-length": 13,
                "payload-length": 17, "hash": 40, "key": HEADER + 5,
                "payload-start": HEADER + key_bytes + 1,
                "payload-middle": (HEADER + key_bytes + len(data)) // 2,
                "payload-end": len(data) - 1}[where]
    data[position] ^= 0x10
    path.write_bytes(bytes(data))
    reasons = {"magic": "magic", "version": "format version",
               "key-length": "bytes", "payload-length": "bytes"}
    assert_recompiled_and_replaced(cache, path,
                                   reasons.get(where, "content hash"))


@pytest.mark.parametrize("size", [0, 10, "half"])
def test_truncated_file(tmp_path, size):
    cache, path = populated(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 if size == "half" else size])
    assert_recompiled_and_replaced(cache, path, "bytes")


def test_symlink_to_dev_zero(tmp_path):
    cache, path = populated(tmp_path)
    path.unlink()
    path.symlink_to("/dev/zero")
    assert_recompiled_and_replaced(cache, path, "symbolic link")


def test_symlink_to_a_file(tmp_path):
    # Even to a valid cache file of this very key: links are not followed,
    # and the file they point at is left alone.
    cache, path = populated(tmp_path)
    target = tmp_path / "elsewhere.mobak"
    path.rename(target)
    before = target.read_bytes()
    path.symlink_to(target)
    assert_recompiled_and_replaced(cache, path, "symbolic link")
    assert target.read_bytes() == before


def test_fifo(tmp_path):
    cache, path = populated(tmp_path)
    path.unlink()
    os.mkfifo(path, 0o600)
    # A blocking open would wait for a writer forever; run() times out.
    assert_recompiled_and_replaced(cache, path, "not a regular file")


def test_file_open_to_others(tmp_path):
    cache, path = populated(tmp_path)
    path.chmod(0o644)
    assert_recompiled_and_replaced(cache, path, "mode 0644")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_file_of_another_user(tmp_path):
    cache, path = populated(tmp_path)
    os.chown(path, 65534, 65534)
    assert_recompiled_and_replaced(cache, path, "owned by uid 65534")


def test_temporary_names_are_not_followed(tmp_path):
    # Symbolic links at the first temporary name a process tries (and at the
    # old "<name>.<pid>.tmp" form), pointing at a file of the user's: the
    # store creates its temporary with O_EXCL under another name, and the
    # file stays as it was.
    cache, path = populated(tmp_path)
    path.unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    plant = {str(cache / f".{path.name}.{{pid}}.tmp"): str(victim),
             str(cache / f"{path.name}.{{pid}}.tmp"): str(victim)}
    result = run(cache, plant=plant)
    assert not result["from_cache"] and result["warning"] is None, result
    assert victim.read_bytes() == b"precious"
    links = [p for p in cache.iterdir() if p.is_symlink()]
    assert len(links) == 2 and all(os.readlink(p) == str(victim)
                                   for p in links)
    read_cache_file(path)
    assert run(cache)["from_cache"]


def assert_refused(cache, reason):
    """The directory `cache` (a path or a string) is not used: compiled
    without the cache, nothing loaded from it and nothing written to it.
    Returns the child's result."""
    def listing():
        return sorted(os.listdir(cache)) if os.path.isdir(cache) else None
    before = listing()
    result = run(cache)
    assert not result["from_cache"]
    assert result["warning"] and reason in result["warning"], result
    assert "compiling without the disk cache" in result["warning"]
    assert listing() == before
    return result


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o777])
def test_directory_open_to_others(tmp_path, mode):
    # A valid file inside is not loaded either.
    cache, _ = populated(tmp_path)
    cache.chmod(mode)
    assert "chmod 700" in assert_refused(cache, f"mode {mode:04o}")["warning"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_directory_of_another_user(tmp_path):
    cache, _ = populated(tmp_path)
    os.chown(cache, 65534, 65534)
    assert_refused(cache, "owned by uid 65534")


def test_directory_is_a_symlink(tmp_path):
    real, _ = populated(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert_refused(link, "symbolic link")
    # A trailing slash makes open() follow a link despite O_NOFOLLOW.
    assert_refused(str(link) + "/", "symbolic link")


def test_directory_is_a_file(tmp_path):
    cache = tmp_path / "cache"
    cache.write_bytes(b"")
    assert_refused(cache, "not a directory")


def test_concurrent_processes_share_one_key(tmp_path):
    # Processes compiling the same key into one directory, started together
    # and then staggered (so that some load what others are writing): every
    # one runs correctly and none meets a file that fails verification.
    cache = tmp_path / "cache"
    env = dict(os.environ, MOBA_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([TESTS,
                                           os.environ.get("PYTHONPATH", "")]))
    for stagger in (0, 0.1):
        children = []
        for _ in range(6):
            children.append(subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(SMALL), "{}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True))
            time.sleep(stagger)
        for child in children:
            out, err = child.communicate(timeout=600)
            assert child.returncode == 0, err
            result = json.loads(out.strip().splitlines()[-1])
            assert result["correct"] and result["warning"] is None, result
        (path,) = cache_files(cache)
        read_cache_file(path)
        assert os.listdir(cache) == [path.name]  # no temporaries left
        path.unlink()
