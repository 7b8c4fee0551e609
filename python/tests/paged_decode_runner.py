"""Runs moba.paged_kv_append and moba.paged_decode_attention through the
CPU pipeline (moba-opt --moba-cpu-pipeline, then mlir-runner) on numpy
inputs, for the paged decode tests.

The inputs go into the module as dense constants of their raw bytes, so
they arrive bit for bit; the outputs come back as the bits of every f32,
printed one per line, so nothing is lost to decimal printing.
"""
import os
import shutil
import subprocess

import numpy as np

import moba

LLVM_BIN = "/usr/lib/llvm-22/bin"


def moba_opt():
    """moba-opt of the build tree: $MOBA_BUILD_DIR/bin, else beside the moba
    package when it is the build tree's (PYTHONPATH=<build>/python). An
    installed package (the wheel) carries no moba-opt, so CI names the build
    directory (scripts/test.sh)."""
    build = os.environ.get("MOBA_BUILD_DIR")
    if not build:
        package = os.path.dirname(os.path.abspath(moba.__file__))
        build = os.path.join(package, "..", "..")
    return os.path.normpath(os.path.join(build, "bin", "moba-opt"))


def _mlir_runner():
    return shutil.which("mlir-runner") or os.path.join(LLVM_BIN, "mlir-runner")


def _type(shape, element):
    return "tensor<" + "x".join(str(d) for d in shape) + f"x{element}>"


def _constant(name, array, element=None):
    """`array` as a dense constant of its raw bytes; element "bf16" takes
    float32 values and stores their bfloat16 bits (moba.to_bf16)."""
    if element == "bf16":
        array = moba.to_bf16(array)
    array = np.ascontiguousarray(array)
    element = element or {np.dtype(np.float32): "f32",
                          np.dtype(np.int32): "i32"}[array.dtype]
    t = _type(array.shape, element)
    return (f'  %{name} = arith.constant dense<"0x{array.tobytes().hex()}"> '
            f": {t}\n", t)


def run_decode_step(q, chunks, k, v, cu_seqlens, k_cache_poison,
                    block_table, block_size, top_k, max_blocks,
                    selection="query_head", scale=None, decode_lens=None,
                    dtype="f32", parallel=False):
    """Appends the tokens of every sequence to an empty paged cache in
    `chunks` appends, then runs decode for the queries of the last chunk.

    chunks: list of per-sequence token counts, one list per append (their
    sums are the sequences' lengths); the last append's tokens are the
    queries. k, v [T, Hkv, D] packed as cu_seqlens; q [T, Hq, D] likewise
    (only the rows of the last chunk are used). k_cache_poison: the pages'
    initial content ([pages, page_size, Hkv, D]; NaN, so a read of a slot
    never written shows). decode_lens: the cache_lens decode is given
    (default: the true lengths). dtype: the element type of q, k, v, the
    cache and the output, "f32" or "bf16" (values rounded to it on the way
    in; the block sums and lse stay f32). parallel: lower the ops to their
    scf.forall forms (the GPU pipeline's), run here as serial loops.

    Returns (out [Tq, Hq, D], lse [Tq, Hq], rows): rows are the packed
    indices of the queries in q.
    """
    cu = [int(x) for x in cu_seqlens]
    batch = len(cu) - 1
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    body, decls = "", {}

    def const(name, array, element=None):
        nonlocal body
        text, t = _constant(name, array, element)
        body += text
        decls[name] = t

    const("kc0", k_cache_poison.astype(np.float32), dtype)
    const("table", block_table.astype(np.int32))
    sums0 = np.full((batch, max_blocks, hkv, d), np.nan, dtype=np.float32)
    const("sums0", sums0)
    done = [0] * batch
    kc, vc, sums = "kc0", "kc0", "sums0"
    rows = []
    for step, counts in enumerate(chunks):
        take = []
        cu_new = [0]
        for b in range(batch):
            take.extend(range(cu[b] + done[b], cu[b] + done[b] + counts[b]))
            cu_new.append(cu_new[-1] + counts[b])
        take = np.asarray(take, dtype=np.int64)
        const(f"k{step}", k[take].astype(np.float32), dtype)
        const(f"v{step}", v[take].astype(np.float32), dtype)
        const(f"cu{step}", np.asarray(cu_new, dtype=np.int32))
        const(f"lens{step}", np.asarray(done, dtype=np.int32))
        body += (
            f"  %kc{step + 1}, %vc{step + 1}, %sums{step + 1} = "
            f"moba.paged_kv_append k(%k{step} : {decls[f'k{step}']}) "
            f"v(%v{step} : {decls[f'v{step}']}) "
            f"cu_seqlens(%cu{step} : {decls[f'cu{step}']}) "
            f"block_table(%table : {decls['table']}) "
            f"cache_lens(%lens{step} : {decls[f'lens{step}']}) "
            f"outs(%{kc} : {decls['kc0']}, %{vc} : {decls['kc0']}, "
            f"%{sums} : {decls['sums0']}) {{block_size = {block_size}}}\n")
        kc, vc, sums = f"kc{step + 1}", f"vc{step + 1}", f"sums{step + 1}"
        done = [a + n for a, n in zip(done, counts)]
        rows = take
    const("q", q[rows].astype(np.float32), dtype)
    const("cuq", np.asarray(np.concatenate([[0], np.cumsum(chunks[-1])]),
                            dtype=np.int32))
    lens = done if decode_lens is None else decode_lens
    const("lens", np.asarray(lens, dtype=np.int32))
    tq = len(rows)
    out_t, lse_t = _type((tq, hq, d), dtype), _type((tq, hq), "f32")
    attrs = f"block_size = {block_size}, top_k = {top_k}, " \
            f'selection = "{selection}"'
    if scale is not None:
        attrs += f", scale = {scale} : f32"
    body += (
        f"  %o0 = tensor.empty() : {out_t}\n"
        f"  %l0 = tensor.empty() : {lse_t}\n"
        f"  %out, %lse = moba.paged_decode_attention q(%q : {decls['q']}) "
        f"cu_seqlens_q(%cuq : {decls['cuq']}) "
        f"k_cache(%{kc} : {decls['kc0']}) v_cache(%{vc} : {decls['kc0']}) "
        f"block_table(%table : {decls['table']}) "
        f"cache_lens(%lens : {decls['lens']}) "
        f"block_key_sums(%{sums} : {decls['sums0']}) "
        f"outs(%o0 : {out_t}, %l0 : {lse_t}) {{{attrs}}}\n")
    # Every f32 of out, then of lse, as its bits.
    n_out, n_lse = tq * hq * d, tq * hq
    widen = "" if dtype == "f32" else \
        f"    %x = arith.extf %e : {dtype} to f32\n"
    body += f"""  %fo = tensor.collapse_shape %out [[0, 1, 2]] : {out_t} into tensor<{n_out}x{dtype}>
  %fl = tensor.collapse_shape %lse [[0, 1]] : {lse_t} into tensor<{n_lse}xf32>
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %no = arith.constant {n_out} : index
  %nl = arith.constant {n_lse} : index
  scf.for %i = %c0 to %no step %c1 {{
    %{"e" if widen else "x"} = tensor.extract %fo[%i] : tensor<{n_out}x{dtype}>
{widen}
    %bits = arith.bitcast %x : f32 to i32
    vector.print %bits : i32
  }}
  scf.for %i = %c0 to %nl step %c1 {{
    %x = tensor.extract %fl[%i] : tensor<{n_lse}xf32>
    %bits = arith.bitcast %x : f32 to i32
    vector.print %bits : i32
  }}
"""
    module = "func.func @main() {\n" + body + "  return\n}\n"
    lowered = subprocess.run(
        [moba_opt(), "-", "--moba-cpu-pipeline=stage=fused" +
         (" parallel=true" if parallel else "")], input=module,
        capture_output=True, text=True)
    if lowered.returncode != 0:
        raise RuntimeError("moba-opt failed:\n" + lowered.stderr)
    lib = os.path.join(LLVM_BIN, "..", "lib", "libmlir_c_runner_utils.so")
    ran = subprocess.run(
        [_mlir_runner(), "-e", "main", "-entry-point-result=void",
         f"-shared-libs={lib}"], input=lowered.stdout, capture_output=True,
        text=True)
    if ran.returncode != 0:
        raise RuntimeError("mlir-runner failed:\n" + ran.stderr)
    bits = np.asarray([int(x) for x in ran.stdout.split()], dtype=np.int64)
    assert bits.size == n_out + n_lse, (bits.size, n_out + n_lse)
    values = bits.astype(np.uint32).view(np.float32)
    return (values[:n_out].reshape(tq, hq, d), values[n_out:].reshape(tq, hq),
            rows)
