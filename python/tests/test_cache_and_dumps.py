"""The disk cache, the IR dumps and the library's version."""
import os
import re
import subprocess
import sys
import textwrap

import moba

COMPILE = textwrap.dedent("""
    import time, moba
    start = time.perf_counter()
    k = moba.compile(head_dim=64, num_heads=8, num_kv_heads=2, block_size=64,
                     top_k=3, dtype="bf16")
    cold = time.perf_counter() - start
    start = time.perf_counter()
    moba.compile(head_dim=64, num_heads=8, num_kv_heads=2, block_size=64,
                 top_k=3, dtype="bf16")
    memory = time.perf_counter() - start
    print(k.from_cache, cold, memory)
""")


def run_fresh_process(env):
    out = subprocess.run([sys.executable, "-c", COMPILE], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


def test_disk_cache(tmp_path):
    env = dict(os.environ, MOBA_CACHE_DIR=str(tmp_path / "cache"))
    cached, cold, _ = run_fresh_process(env)
    assert not cached
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and moba.version() in files[0]
    # The stored key names the LLVM release the library links: a rebuild
    # against another release at the same revision must not load it.
    data = (tmp_path / "cache" / files[0]).read_bytes()
    key_bytes = int.from_bytes(data[12:16], "little")
    key = data[56:56 + key_bytes].decode()
    assert re.search(r"\+llvm-\d+\.\d+\.\d+", key), key
    cached, warm, memory = run_fresh_process(env)
    assert cached
    assert warm < cold
    print(f"cold compile {cold * 1e3:.1f} ms, from disk {warm * 1e3:.2f} ms, "
          f"from memory {memory * 1e6:.1f} us")


def test_cache_can_be_disabled(tmp_path):
    env = dict(os.environ, MOBA_CACHE_DIR="", HOME=str(tmp_path))
    cached, _, _ = run_fresh_process(env)
    assert not cached
    cached, _, _ = run_fresh_process(env)
    assert not cached
    assert not (tmp_path / ".cache").exists()


def test_ir_dumps(tmp_path):
    env = dict(os.environ, MOBA_DUMP_IR=str(tmp_path / "ir"))
    run_fresh_process(env)
    names = sorted(os.listdir(tmp_path / "ir"))
    assert [n.rsplit(".", 2)[1] for n in names] == ["llvm", "loops", "moba"]
    moba_ir = (tmp_path / "ir" / names[2]).read_text()
    assert "moba.attention" in moba_ir
    assert "llvm.func @_mlir_ciface_moba_attention" in (
        tmp_path / "ir" / names[0]).read_text()


def test_same_arguments_same_kernel():
    a = moba.compile(head_dim=16, num_heads=2, num_kv_heads=1, block_size=8,
                     top_k=2, dtype="f32")
    b = moba.compile(head_dim=16, num_heads=2, num_kv_heads=1, block_size=8,
                     top_k=2, dtype="float32")
    assert a is b


def test_version():
    assert moba.version().startswith("0.1.0+")


def _attention_ptx(tmp_path, block=4096, **shape):
    """The PTX of the tensor-core attention kernel compiled for sm_90a
    (32/8 heads, head_dim 128, bf16), from the dumped IR."""
    handle, _ = moba._capi.compile_kernel(
        128, 32, 8, block, 8, True, None, "bf16", "sm_90a", "fused", None,
        None, None, str(tmp_path), "mma", **shape)
    moba._capi.destroy(handle)
    (dump,) = tmp_path.glob("*.gpu.mlir")
    # The kernel that stages its operands by cp.async (the queries, and K/V
    # unless TMA loads them) is the attention.
    ptx = [p for p in dump.read_text().split("gpu.binary")
           if "cp.async" in p]
    assert len(ptx) == 1
    return ptx[0]


def _attention_kernel(tmp_path, block=4096, **shape):
    """The attention kernel's (threads per CTA, matrix instruction)."""
    import re
    ptx = _attention_ptx(tmp_path, block, **shape)
    instruction = ("wgmma" if "wgmma.mma_async" in ptx else
                   "mma.sync" if "mma.sync.aligned" in ptx else None)
    return int(re.search(r"maxntid (\d+)", ptx).group(1)), instruction


def _key_value_loads(tmp_path, block=4096, **shape):
    """How the attention kernel loads K and V: "tma-multicast" (launched in
    clusters of two, copies multicast to both), "tma" or "cp.async"."""
    ptx = _attention_ptx(tmp_path, block, **shape)
    if ".reqnctapercluster 2, 1, 1" in ptx and ".multicast::cluster" in ptx:
        return "tma-multicast"
    return "tma" if "cp.async.bulk.tensor" in ptx else "cp.async"


def test_tuned_row_loads_key_values_by_tma(tmp_path):
    # The table's row for block 4096 chose TMA with the warp-specialized
    # schedule, the untuned default is cp.async: this tells the table from
    # the default.
    assert _key_value_loads(tmp_path / "tuned") == "tma"
    assert _key_value_loads(tmp_path / "untuned", block=256) == "cp.async"


def test_explicit_key_value_loads_win_over_the_table(tmp_path):
    assert _key_value_loads(tmp_path / "cp", mma_key_value_loads="cp.async"
                            ) == "cp.async"
    assert _key_value_loads(tmp_path / "tma", block=256,
                            mma_key_value_loads="tma") == "tma"
    assert _key_value_loads(tmp_path / "pairs", block=256,
                            mma_key_value_loads="tma-multicast"
                            ) == "tma-multicast"
    # Over the table's row for block 4096 (TMA, warp-specialized).
    assert _key_value_loads(tmp_path / "alone",
                            mma_key_value_loads="cp.async") == "cp.async"


def _kernels(tmp_path, **shape):
    """The GPU binaries' kernels of the dumped module (32/8 heads, block
    4096), and the attention kernel's PTX."""
    _attention_ptx(tmp_path, **shape)
    (dump,) = tmp_path.glob("*.gpu.mlir")
    text = dump.read_text()
    return text.count("gpu.binary @"), _attention_ptx(tmp_path / "again",
                                                     **shape)


def test_merge_fused_into_the_attention_on_request(tmp_path):
    # Fused: the attention kernel decrements each row's arrivals after a
    # release fence and merges the rows it finished last; the two merge
    # kernels (lse, then output) are gone. The default is separate.
    fused, fused_ptx = _kernels(tmp_path / "fused", mma_merge="fused")
    separate, separate_ptx = _kernels(tmp_path / "default")
    assert fused == separate - 2
    assert "fence.acq_rel.gpu" in fused_ptx and "atom.global.add" in fused_ptx
    assert "fence.acq_rel.gpu" not in separate_ptx
    assert _kernels(tmp_path / "separate", mma_merge="separate")[0] == \
        separate


def test_tuned_row_is_warp_specialized(tmp_path):
    # lib/Pipelines/MmaTuningTable.inc tunes this configuration (block
    # 4096) to wgmma, 12 warps and the warp-specialized schedule: three
    # consumer warpgroups and the producer's (512 threads), which moves
    # registers to the consumers.
    assert _attention_kernel(tmp_path / "tuned") == (512, "wgmma")
    ptx = _attention_ptx(tmp_path / "registers")
    assert "setmaxnreg.inc.sync.aligned.u32" in ptx
    assert "setmaxnreg.dec.sync.aligned.u32" in ptx


def test_untuned_sm90a_default_is_wgmma_4_warps(tmp_path):
    # No table row has block 256.
    assert _attention_kernel(tmp_path / "untuned", block=256) == (128,
                                                                  "wgmma")


def test_explicit_tile_shape_wins_over_the_table(tmp_path):
    # A shape without an instruction takes mma.sync, which takes any shape.
    assert _attention_kernel(tmp_path / "explicit", mma_warps=4,
                             mma_key_chunk=64) == (128, "mma.sync")


def test_explicit_instruction_wins_over_the_table(tmp_path):
    assert _attention_kernel(tmp_path / "sync", mma_instruction="mma.sync",
                             mma_warps=8, mma_key_chunk=64) == (256,
                                                                "mma.sync")
    assert _attention_kernel(tmp_path / "wgmma", mma_instruction="wgmma",
                             mma_warps=4, mma_key_chunk=128) == (128,
                                                                 "wgmma")
