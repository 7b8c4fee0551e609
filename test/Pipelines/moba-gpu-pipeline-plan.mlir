// The kernel plan through moba-gpu-pipeline: its rules as the pipeline's
// options spell them, each message ending in the whole plan
// (AttentionKernelPlan::print), mma-plan read back from that text
// (AttentionKernelPlan::parse), and the plan reaching the conversion pass.
//
// The rules the pass cannot check (no chip there) and those spelled mma-*:
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_80 densify=true mma=true mma-instruction=wgmma" 2>&1 | FileCheck %s --check-prefix=CHIP
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-stages=3" 2>&1 | FileCheck %s --check-prefix=RING
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-stages=5" 2>&1 | FileCheck %s --check-prefix=STAGES
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma-multicast mma-schedule=overlapped" 2>&1 | FileCheck %s --check-prefix=OVERLAP
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-schedule=round-robin" 2>&1 | FileCheck %s --check-prefix=SCHEDULE-NAME
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-schedule=warp-specialized" 2>&1 | FileCheck %s --check-prefix=PRODUCER
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma-multicast mma-schedule=warp-specialized mma-warps=16" 2>&1 | FileCheck %s --check-prefix=PRODUCER-RING
//
// Round trip: the printed plan of an error, given back as mma-plan, prints
// the same text (every field away from its default); items in another
// order print canonically.
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-plan=wgmma,cp.async,overlapped,fused,warps=8,key-chunk=128,stages=3" 2>&1 | FileCheck %s --check-prefix=ROUND
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-plan=stages=3,warps=8,fused,key-chunk=128,overlapped,cp.async,wgmma" 2>&1 | FileCheck %s --check-prefix=ROUND
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-plan=wgmma,tma,warps=4,tma" 2>&1 | FileCheck %s --check-prefix=TWICE
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-plan=wgmma,warps=0x10" 2>&1 | FileCheck %s --check-prefix=NUMBER
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-plan=wgmma,ldg" 2>&1 | FileCheck %s --check-prefix=ITEM
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-plan=wgmma mma-warps=8" 2>&1 | FileCheck %s --check-prefix=BOTH
//
// A valid plan reaches the pass, from mma-plan or from the options, and a
// 3-stage TMA plan compiles (what stages does to the kernel is the
// emitter's: its own tests).
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-plan=wgmma,tma,in-order,fused,warps=8,key-chunk=128,stages=3" --dump-pass-pipeline -o /dev/null 2>&1 | FileCheck %s --check-prefix=PASS
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=in-order mma-fused-merge=true mma-warps=8 mma-key-chunk=128 mma-stages=3" --dump-pass-pipeline -o /dev/null 2>&1 | FileCheck %s --check-prefix=PASS
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-plan=wgmma,tma,auto,separate,warps=4,key-chunk=64,stages=3" | FileCheck %s --check-prefix=STAGED

// CHIP: error: moba-gpu-pipeline: mma-instruction=wgmma needs chip sm_90a, got 'sm_80' (plan wgmma,cp.async,auto,separate,warps=4,key-chunk=64,stages=2)
// RING: error: moba-gpu-pipeline: mma-stages=3 needs mma-key-value-loads tma or tma-multicast (the cp.async loops are double-buffered), got 'cp.async' (plan mma.sync,cp.async,auto,separate,warps=4,key-chunk=64,stages=3)
// STAGES: error: moba-gpu-pipeline: mma-stages must be in [2, 4], got 5 (plan wgmma,tma,auto,separate,warps=4,key-chunk=64,stages=5)
// OVERLAP: error: moba-gpu-pipeline: mma-schedule=overlapped needs mma-key-value-loads=cp.async (the TMA loop runs in order), got 'tma-multicast'
// SCHEDULE-NAME: for the --mma-schedule option: Cannot find option named 'round-robin'!
// PRODUCER: mma-schedule=warp-specialized needs mma-instruction=wgmma, got 'mma.sync'; mma-schedule=warp-specialized needs mma-key-value-loads=tma (its producer owns one CTA's ring), got 'cp.async' (plan mma.sync,cp.async,warp-specialized,separate,warps=4,key-chunk=64,stages=2)
// PRODUCER-RING: mma-schedule=warp-specialized needs mma-key-value-loads=tma (its producer owns one CTA's ring), got 'tma-multicast'; mma-schedule=warp-specialized needs mma-warps at most 12 (three consumer warpgroups beside the producer's), got 16 (plan wgmma,tma-multicast,warp-specialized,separate,warps=16,key-chunk=64,stages=2)
// ROUND: error: moba-gpu-pipeline: mma-stages=3 needs mma-key-value-loads tma or tma-multicast (the cp.async loops are double-buffered), got 'cp.async' (plan wgmma,cp.async,overlapped,fused,warps=8,key-chunk=128,stages=3)
// TWICE: error: moba-gpu-pipeline: kernel plan 'wgmma,tma,warps=4,tma': 'tma' sets a field named before
// NUMBER: error: moba-gpu-pipeline: kernel plan 'wgmma,warps=0x10': 'warps=0x10' needs a decimal integer
// ITEM: error: moba-gpu-pipeline: kernel plan 'wgmma,ldg': unknown item 'ldg'
// BOTH: error: moba-gpu-pipeline: mma-plan holds mma-warps: give one or the other
// PASS: moba-fuse-lse-merge
// PASS: moba-convert-grouped-attention-to-nvvm{instruction=wgmma key-chunk=128 key-value-loads=tma schedule=in-order stages=3 warps=8}
// STAGED: llvm.call @mobaEncodeTensorMap(
// STAGED: gpu.binary @moba_attention_kernel_8
// STAGED-SAME: cp.async.bulk.tensor
// STAGED-SAME: wgmma.mma_async

func.func @moba_attention(%q: memref<?x8x64xbf16>, %k: memref<?x2x64xbf16>, %v: memref<?x2x64xbf16>,
                          %cu: memref<?xi32>, %out: memref<?x8x64xbf16>,
                          %lse: memref<?x8xf32>) attributes {llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<?x8x64xbf16> to tensor<?x8x64xbf16>
  %kt = bufferization.to_tensor %k restrict : memref<?x2x64xbf16> to tensor<?x2x64xbf16>
  %vt = bufferization.to_tensor %v restrict : memref<?x2x64xbf16> to tensor<?x2x64xbf16>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %o, %l = moba.attention q(%qt : tensor<?x8x64xbf16>) k(%kt : tensor<?x2x64xbf16>)
      v(%vt : tensor<?x2x64xbf16>) cu_seqlens(%cut : tensor<?xi32>) {block_size = 64, top_k = 3}
      -> tensor<?x8x64xbf16>, tensor<?x8xf32>
  bufferization.materialize_in_destination %o in restrict writable %out
      : (tensor<?x8x64xbf16>, memref<?x8x64xbf16>) -> ()
  bufferization.materialize_in_destination %l in restrict writable %lse
      : (tensor<?x8xf32>, memref<?x8xf32>) -> ()
  return
}
