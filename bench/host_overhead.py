"""The host's share of a moba call on the device: enqueue time against
device time.

    PYTHONPATH=.device python3 .device/host_overhead.py [N HQ HKV BLOCK TOPK]

compiles head_dim 128, bf16, causal MoBA (default: 32K tokens, 32/32
heads, block 512, top-3) with the tuning table's kernels and prints:
the host time per call of 20 calls queued without a sync (small when the
call never waits for the stream; near the device time when it does), the
time per call once they have run, one call timed from an idle and from a
busy queue (the gap is the host's work before the first launch), and the
Python profile of 20 calls. docs/PERFORMANCE.md (ninth round) has what
it showed.
"""
import cProfile
import pstats
import sys
import time

import torch

import moba


def main(argv):
    n, hq, hkv, block, top_k = ((int(x) for x in argv) if argv else
                                (32768, 32, 32, 512, 3))
    generator = torch.Generator(device="cuda").manual_seed(0)
    make = lambda h: torch.randn((n, h, 128), generator=generator,
                                 device="cuda").to(torch.bfloat16)
    q, k, v = make(hq), make(hkv), make(hkv)
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    kernel = moba.compile(head_dim=128, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16")
    for _ in range(3):
        kernel(q, k, v, cu)
    calls = 20
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        kernel(q, k, v, cu)
    queued = time.perf_counter()
    torch.cuda.synchronize()
    done = time.perf_counter()
    print(f"host {1e3 * (queued - start) / calls:.3f} ms/call, "
          f"all {1e3 * (done - start) / calls:.3f} ms/call")
    begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    for queue in ("idle", "busy"):
        torch.cuda.synchronize()
        if queue == "busy":
            torch.cuda._sleep(1_000_000)
        begin.record()
        kernel(q, k, v, cu)
        end.record()
        torch.cuda.synchronize()
        print(f"one call from a {queue} queue: "
              f"{begin.elapsed_time(end):.3f} ms")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        kernel(q, k, v, cu)
    profile.disable()
    torch.cuda.synchronize()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(8)


if __name__ == "__main__":
    main(sys.argv[1:])
