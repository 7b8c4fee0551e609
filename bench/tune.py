"""Tunes the tensor-core attention kernel's tile shape on this GPU.

For each configuration (head layout, head_dim, block size, top-k, dtype) it
compiles every candidate -- the matrix instruction (mma.sync; on sm_90a also
wgmma), warps per CTA (16 queries each), keys staged in shared memory per
step and, for wgmma, how K and V are loaded (cp.async or TMA) and, for TMA,
the stages of the loads' ring (--stages) and the schedule (in order, or a
producer warpgroup beside consumer warpgroups: --schedules) -- checks the
candidate's output against
the float64 reference (on a shorter sequence, sampled rows), times it on the
full length with triton.testing.do_bench, and keeps the fastest. The winners
are written as lib/Pipelines/MmaTuningTable.inc, the table the GPU runner
takes its default shape from (include/moba/Pipelines/MmaTuning.h); copy the
file into the repository and rebuild. docs/tuning.md has the steps.

On the device, after `bash scripts/device-bundle.sh`:
    bash .device/tune.sh [--configs N:HQ:HKV:D:BLOCK:TOPK[:DTYPE],...]
                         [--candidates INSTRUCTION:WARPS:KEY_CHUNK[:LOADS[:STAGES[:SCHEDULE]]],...]
                         [--stages 2,3,4] [--schedules auto,warp-specialized]
The table goes to $OUT/MmaTuningTable.inc (or the current folder).
"""
import argparse
import math
import os
import time

# torch and triton are imported where they are used: the table's format
# (table_row, table_text) is checked without them (test/Tuning).

DEFAULT_CONFIGS = [  # N, Hq, Hkv, D, block, top_k, dtype
    (32768, 32, 32, 128, 512, 3, "bf16"),
    (32768, 32, 8, 128, 512, 3, "bf16"),
    (32768, 32, 32, 128, 128, 8, "bf16"),
    (131072, 32, 8, 128, 4096, 8, "bf16"),
]
WARPS = (2, 4, 8)
KEY_CHUNKS = (32, 64, 128)
# wgmma takes whole warpgroups and 64-key panels.
WGMMA_WARPS = (4, 8, 12)
WGMMA_KEY_CHUNKS = (64, 128)
# How wgmma's K and V reach shared memory. With TMA the warpgroups of a
# CTA run in order and share each K/V chunk; with cp.async a CTA of several
# overlaps the softmax with the products instead; tma-multicast shares each
# chunk between the two CTAs of a cluster too.
WGMMA_LOADS = ("cp.async", "tma", "tma-multicast")
# The stages of the TMA loads' ring searched by default (--stages); the
# cp.async loops are double-buffered, so their candidates take 2.
STAGES = (2,)
# The schedules of the TMA candidates searched by default (--schedules):
# "auto" runs them in order; "warp-specialized" gives the ring to a
# producer warpgroup (TMA without multicast only).
SCHEDULES = ("auto",)
CHECK_TOKENS = 16384
# The table names the instruction and the loads by their C++ enum values
# (MatrixInstruction, KeyValueLoads in AttentionKernelPlan.h).
ENUM_NAMES = {"mma.sync": "MmaSync", "wgmma": "Wgmma", "cp.async": "CpAsync",
              "tma": "Tma", "tma-multicast": "TmaMulticast", "auto": "Auto",
              "in-order": "InOrder", "overlapped": "Overlapped",
              "warp-specialized": "WarpSpecialized",
              "warp-specialized-overlapped": "WarpSpecializedOverlapped",
              "ping-pong": "PingPong",
              "persistent": "Persistent"}


def candidates(chip, stages=STAGES, schedules=SCHEDULES):
    """(instruction, warps, key_chunk, loads, stages, schedule) to try on
    `chip`."""
    found = [("mma.sync", w, c, "cp.async", 2, "auto") for w in WARPS
             for c in KEY_CHUNKS]
    if chip == "sm_90a":
        found += [("wgmma", w, c, loads, s, schedule) for w in WGMMA_WARPS
                  for c in WGMMA_KEY_CHUNKS for loads in WGMMA_LOADS
                  for s in (stages if loads != "cp.async" else (2,))
                  for schedule in (schedules if loads == "tma" else ("auto",))]
    return found


def default_candidate(chip):
    """What the runner takes without a table row (MmaTuning.cpp)."""
    return (("wgmma", 4, 64, "cp.async", 2, "auto") if chip == "sm_90a"
            else ("mma.sync", 4, 64, "cp.async", 2, "auto"))


def parse_candidates(text):
    """INSTRUCTION:WARPS:KEY_CHUNK[:LOADS[:STAGES[:SCHEDULE]]],... (e.g.
    wgmma:4:64:tma:3 or wgmma:8:64:tma:2:warp-specialized)."""
    found = []
    for item in text.split(","):
        fields = item.split(":")
        loads = fields[3] if len(fields) > 3 else "cp.async"
        stages = int(fields[4]) if len(fields) > 4 else 2
        schedule = fields[5] if len(fields) > 5 else "auto"
        found.append((fields[0], int(fields[1]), int(fields[2]), loads,
                      stages, schedule))
    return found


def parse_stages(text):
    """2,3,4 -> (2, 3, 4)."""
    return tuple(int(x) for x in text.split(","))


def parse_schedules(text):
    """auto,warp-specialized -> ("auto", "warp-specialized")."""
    return tuple(text.split(","))


def table_row(chip, config, candidate, best, default):
    """One MOBA_MMA_TUNED(...) row of MmaTuningTable.inc: the winner of
    `config` and, as a comment, its time and the default's."""
    n, hq, hkv, d, block, top_k, dtype = config
    instruction, warps, key_chunk, loads, stages, schedule = candidate
    return (f'MOBA_MMA_TUNED("{chip}", "{dtype}", {d}, {hq // hkv}, '
            f'{block}, {ENUM_NAMES[instruction]}, {warps}, {key_chunk}, '
            f'{ENUM_NAMES[loads]}, {stages}, {ENUM_NAMES[schedule]}) '
            f"// N={n} {hq}/{hkv} top-{top_k}: {best:.3f} ms, "
            f"default {default:.3f} ms")


def table_text(rows, device, version):
    """MmaTuningTable.inc: its header, then `rows`."""
    header = (
        "// Tuned tile shapes of the tensor-core attention kernel, written by\n"
        "// bench/tune.py on the device (see docs/tuning.md): one row per\n"
        "// configuration, MOBA_MMA_TUNED(chip, dtype, head_dim, query heads "
        "per KV\n// head, block_size, instruction, warps, key_chunk, K/V "
        "loads, stages,\n// schedule), the instruction, loads and schedule "
        "as the names of\n// MatrixInstruction, KeyValueLoads and "
        "KernelSchedule\n// (include/moba/Conversion/AttentionKernelPlan.h)."
        " Configurations without a\n// row use wgmma on sm_90a, else "
        "mma.sync, with 4 warps and 64 keys, K and V\n// by cp.async, 2 "
        "stages, the auto schedule.\n"
        f"// Measured on {device} with moba {version}.\n")
    return header + "".join(row + "\n" for row in rows)


def parse(text):
    configs = []
    for item in text.split(","):
        fields = item.split(":")
        dtype = fields[6] if len(fields) > 6 else "bf16"
        configs.append(tuple(int(x) for x in fields[:6]) + (dtype,))
    return configs


def tensors(n, hq, hkv, d, dtype, seed):
    import gpu_check
    import torch
    generator = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, cu = gpu_check.random_case([n], hq, hkv, d, dtype, generator)
    return q, k, v, cu


def compile_candidate(moba, config, candidate):
    n, hq, hkv, d, block, top_k, dtype = config
    instruction, warps, key_chunk, loads, stages, schedule = candidate
    return moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                        block_size=block, top_k=top_k, dtype=dtype,
                        mma_instruction=instruction, mma_warps=warps,
                        mma_key_chunk=key_chunk, mma_key_value_loads=loads,
                        mma_stages=stages, mma_schedule=schedule)


def check(moba, config, candidate):
    """The candidate's output on a shorter sequence against the reference."""
    import gpu_check
    import torch
    n, hq, hkv, d, block, top_k, dtype = config
    n = min(n, max(CHECK_TOKENS, 2 * block))
    q, k, v, cu = tensors(n, hq, hkv, d, dtype, seed=1)
    kernel = compile_candidate(moba, config, candidate)
    out = torch.full_like(q, math.nan)
    lse = torch.full(q.shape[:-1], math.nan, device="cuda")
    kernel(q, k, v, cu.cuda(), out=out, lse=lse)
    torch.cuda.synchronize()
    rows = torch.unique(torch.randint(0, n, (512,), device="cuda"))
    ref_out, ref_lse, near, _ = gpu_check.reference(
        q, k, v, cu, block, top_k, True, rows=rows)
    ok, message, _, _ = gpu_check.compare(out, lse, ref_out, ref_lse, near,
                                          dtype)
    return ok, message


def time_candidate(moba, config, candidate, data):
    import torch
    import triton.testing
    q, k, v, cu = data
    kernel = compile_candidate(moba, config, candidate)
    kernel(q, k, v, cu)
    torch.cuda.synchronize()
    return triton.testing.do_bench(lambda: kernel(q, k, v, cu), warmup=10,
                                   rep=100, return_mode="median")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", type=parse, default=DEFAULT_CONFIGS)
    p.add_argument("--candidates", type=parse_candidates, default=None,
                   help="only these shapes, "
                        "INSTRUCTION:WARPS:KEY_CHUNK[:LOADS[:STAGES"
                        "[:SCHEDULE]]],... "
                        "(default: the whole search space)")
    p.add_argument("--stages", type=parse_stages, default=STAGES,
                   help="the TMA candidates' ring stages to search, e.g. "
                        "2,3,4 (default: 2)")
    p.add_argument("--schedules", type=parse_schedules, default=SCHEDULES,
                   help="the TMA candidates' schedules to search, e.g. "
                        "auto,warp-specialized (default: auto)")
    a = p.parse_args()
    import moba
    import torch
    major, minor = torch.cuda.get_device_capability()
    chip = "sm_90a" if (major, minor) == (9, 0) else "sm_80"
    out_dir = os.environ.get("OUT", ".")
    rows = []
    start = time.time()
    for config in a.configs:
        n, hq, hkv, d, block, top_k, dtype = config
        data = tensors(n, hq, hkv, d, dtype, seed=2)
        data = data[:3] + (data[3].cuda(),)
        timings = {}
        for candidate in (a.candidates
                          or candidates(chip, a.stages, a.schedules)):
            name = "{} {} x {} {} stages={} {}".format(*candidate)
            # The compiler rejects shapes that do not fit (shared memory):
            # they are no candidates.
            try:
                ok, message = check(moba, config, candidate)
            except moba.CompileError as error:
                print(f"  {config} {name}: not compiled ({error})",
                      flush=True)
                continue
            if not ok:
                print(f"  {config} {name}: WRONG ({message}); not a "
                      "candidate", flush=True)
                continue
            ms = time_candidate(moba, config, candidate, data)
            timings[candidate] = ms
            print(f"  {config} {name}: {ms:.3f} ms ({message})", flush=True)
        if not timings:
            raise SystemExit(f"no candidate of {config} was right")
        winner, best = min(timings.items(), key=lambda t: t[1])
        default = timings.get(default_candidate(chip), math.nan)
        print("{}: {} {} x {} {} stages={} {}: ".format(config, *winner)
              + f"{best:.3f} ms (default: {default:.3f} ms)", flush=True)
        rows.append(table_row(chip, config, winner, best, default))
        del data
        torch.cuda.empty_cache()
    text = table_text(rows, torch.cuda.get_device_name(), moba.version())
    with open(os.path.join(out_dir, "MmaTuningTable.inc"), "w") as f:
        f.write(text)
    print(text)
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
