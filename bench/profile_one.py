"""One moba call on one configuration, for a profiler (ncu) on the device.

    ncu --clock-control none -k regex:moba --launch-skip 9 --launch-count 1 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        python3 .device/profile_one.py N HQ HKV BLOCK TOPK

compiles head_dim 128, bf16, causal MoBA with the tuning table's kernels
(MOBA_MMA_* as in test/device/gpu_check.py pick others) and calls it once
on random inputs. --launch-skip is the number of moba's launches before
the attention: pooling (two for blocks of more than 256 keys), the means'
split, the gate, the grouping's three, the partials' clearing, the tile
list and, with K/V by TMA (the tuned rows), the tensor maps: 9 for the
tuned rows at block 128, 10 at block 512 and 4096. docs/PERFORMANCE.md
has what it showed (measured before pooling took two launches: 9).
Run with PYTHONPATH=.device after `bash .device/run.sh small` has unpacked
the library.
"""
import os
import sys

import torch

import moba


def main(argv):
    if len(argv) != 5:
        raise SystemExit(__doc__)
    n, hq, hkv, block, top_k = (int(x) for x in argv)
    generator = torch.Generator(device="cuda").manual_seed(0)
    make = lambda h: torch.randn((n, h, 128), generator=generator,
                                 device="cuda").to(torch.bfloat16)
    q, k, v = make(hq), make(hkv), make(hkv)
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    env = os.environ.get
    kernel = moba.compile(
        head_dim=128, num_heads=hq, num_kv_heads=hkv, block_size=block,
        top_k=top_k, dtype="bf16",
        mma_instruction=env("MOBA_MMA_INSTRUCTION") or None,
        mma_key_value_loads=env("MOBA_MMA_KEY_VALUE_LOADS") or None,
        mma_merge=env("MOBA_MMA_MERGE") or None)
    kernel(q, k, v, cu)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
