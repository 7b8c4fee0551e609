// REQUIRES: ptxas
// The tensor-core form of the GPU pipeline: densify, lower all but the
// grouped attention to parallel loops, bufferize, then the grouped attention
// to mma.sync kernels. ptxas assembles every kernel for sm_80 and sm_90a.
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=bin densify=true mma=true" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" | FileCheck %s --check-prefix=PTX
// RUN: not moba-opt %s --moba-gpu-pipeline="mma=true" 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: not moba-opt %s --moba-gpu-pipeline="densify=true mma=true mma-key-chunk=40" 2>&1 | FileCheck %s --check-prefix=BADCHUNK
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-warps=8 mma-key-chunk=128" | FileCheck %s --check-prefix=SHAPE
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=wgmma mma-warps=8" | FileCheck %s --check-prefix=WGMMA
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_80 densify=true mma=true mma-instruction=wgmma" 2>&1 | FileCheck %s --check-prefix=BADCHIP
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-instruction=wgmma mma-warps=6" 2>&1 | FileCheck %s --check-prefix=BADWG
// RUN: not moba-opt %s --moba-gpu-pipeline="densify=true mma=true mma-instruction=tcgen05" 2>&1 | FileCheck %s --check-prefix=BADINSTR
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" --mlir-print-ir-after=moba-gpu-kernel-outlining -o /dev/null 2>&1 | FileCheck %s --check-prefix=OUTLINED
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" --mlir-print-ir-after=moba-convert-gate-topk-to-nvvm -o /dev/null 2>&1 | FileCheck %s --check-prefix=GATE
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-gate=false" --mlir-print-ir-after=moba-lower-to-loops -o /dev/null 2>&1 | FileCheck %s --check-prefix=SIMTGATE
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma features=+ptx80" | FileCheck %s --check-prefix=TMA
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma-multicast features=+ptx80" | FileCheck %s --check-prefix=PAIRS
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-instruction=wgmma mma-key-value-loads=ldg" 2>&1 | FileCheck %s --check-prefix=BADLOADS
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-key-value-loads=tma" 2>&1 | FileCheck %s --check-prefix=TMASYNC
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-stages=3" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma-multicast mma-stages=4" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-stages=4 mma-warps=12" | FileCheck %s --check-prefix=TMABIN
// The warp-specialized schedule, assembled by ptxas at each depth and with
// one, two and three consumer warpgroups:
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=warp-specialized mma-warps=8 mma-stages=2" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=warp-specialized mma-warps=8 mma-stages=3" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=warp-specialized mma-warps=4 mma-stages=4" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=warp-specialized mma-warps=12 mma-stages=2" | FileCheck %s --check-prefix=TMABIN
// The persistent schedule, likewise:
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=persistent mma-warps=4 mma-stages=2" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=persistent mma-warps=8 mma-stages=3" | FileCheck %s --check-prefix=TMABIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-instruction=wgmma mma-key-value-loads=tma mma-schedule=persistent mma-warps=12 mma-stages=2" | FileCheck %s --check-prefix=TMABIN
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a densify=true mma=true mma-instruction=wgmma mma-stages=3" 2>&1 | FileCheck %s --check-prefix=BADSTAGES
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" --mlir-print-ir-after=moba-convert-group-queries-to-nvvm -o /dev/null 2>&1 | FileCheck %s --check-prefix=GROUPING
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin densify=true mma=true mma-fused-merge=true" | FileCheck %s --check-prefix=FUSEDBIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-fused-merge=true" --mlir-print-ir-after=moba-fuse-lse-merge -o /dev/null 2>&1 | FileCheck %s --check-prefix=FUSED
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=wgmma mma-fused-merge=true" | FileCheck %s --check-prefix=FUSEDPTX
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" --mlir-print-ir-after=moba-lower-to-loops -o /dev/null 2>&1 | FileCheck %s --check-prefix=SEPARATE

// The grouping reaches its warp lowering on buffers: three launches, the
// rows' lanes found by match.sync, one atomic per row and step.
// GROUPING-NOT: moba.group_queries
// GROUPING: nvvm.match.sync any
// GROUPING: memref.atomic_rmw addi
// GROUPING: gpu.shuffle  up
// GROUPING: nvvm.match.sync any
// GROUPING: gpu.shuffle  idx
// GROUPING-NOT: moba.group_queries

// Constants are sunk into the launches before outlining, so that no kernel
// takes one as a parameter (the backend could not fold it): every launch's
// arguments are function arguments, buffers, dims and computed values, none
// a %c... or %cst... constant.
// OUTLINED-COUNT-11: gpu.launch_func {{.+}} args({{(%(arg|memref|dim|[0-9])[_0-9]* : ([^,(]|\([^)]*\))+(, )?)+}}){{$}}

// Eleven kernels: pooling, the means split into hi + lo halves, gate +
// top-k, the grouping's count, scan and place
// (moba-convert-group-queries-to-nvvm), partials cleared, the attention's
// tile list, attention, merged log-sum-exp, merged output.
// BIN-COUNT-11: gpu.launch_func
// BIN-NOT: gpu.launch_func
// BIN-COUNT-11: gpu.binary @moba_attention_kernel{{.*}}chip = "{{sm_80|sm_90a}}"

// By default the merge stays separate: moba.lse_merge reaches the loop
// lowering.
// SEPARATE: scf.forall
// SEPARATE-NOT: moba.lse_merge
// SEPARATE-NOT: merge(

// mma-fused-merge=true: nine kernels, the merge's two gone and the
// partials' clearing counting each row's arrivals too.
// FUSEDBIN-COUNT-9: gpu.launch_func
// FUSEDBIN-NOT: gpu.launch_func

// The merge is fused into the grouped attention before the loop lowering,
// which leaves it to the tensor-core lowering.
// FUSED-NOT: moba.lse_merge
// FUSED: moba.grouped_block_attention {{.*}} merge(%{{.*}} : tensor<?x8x64xbf16>, %{{.*}} : tensor<?x8xf32>)
// FUSED-NOT: moba.lse_merge

// In the attention kernel: the release fence before the rows' arrivals
// (an atomic each), the ballot of the rows finished last, and the acquire
// fence before their merge.
// FUSEDPTX: gpu.binary @moba_attention_kernel_7
// FUSEDPTX-SAME: wgmma.mma_async
// FUSEDPTX-SAME: fence.acq_rel.gpu
// FUSEDPTX-SAME: atom.global.add.u32
// FUSEDPTX-SAME: vote.sync.ballot.b32
// FUSEDPTX-SAME: fence.acq_rel.gpu

// The attention kernel: K and V staged by cp.async, operands by ldmatrix
// (.trans for V), bf16 mma.sync m16n8k16 with f32 accumulators, quad
// shuffles for the softmax rows.
// PTX: cp.async.cg.shared.global
// PTX: ldmatrix.sync.aligned.m8n8.x4.shared.b16
// PTX: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
// PTX: ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
// PTX: shfl.sync.bfly.b32

// The gate + top-k is left to its tensor-core lowering by the loop
// lowering (on buffers after bufferization) and becomes two launches: the
// split, then the gate on mma.sync; mma-gate=false keeps the SIMT gate.
// GATE-NOT: moba.gate_topk
// GATE: gpu.launch
// GATE: arith.truncf {{.*}} : vector<4xf32> to vector<4xbf16>
// GATE: gpu.launch
// GATE: nvvm.mma.sync
// GATE: nvvm.vote.sync  any
// SIMTGATE-NOT: moba.gate_topk

// The wgmma form, assembled by ptxas above (BIN): gathered queries and K/V
// by cp.async, fences between the generic and async proxies, the
// warpgroup MMAs (bf16, f32 accumulators; S = Q K^T with n = 64 keys, P V
// with n = 64 = head_dim), the warpgroups' own barriers for P (8 warps: 2).
// WGMMA: maxntid 256, 1, 1
// WGMMA: cp.async.cg.shared.global
// WGMMA: fence.proxy.async.shared::cta
// WGMMA: wgmma.fence.sync.aligned
// WGMMA: wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16
// WGMMA: wgmma.commit_group.sync.aligned
// WGMMA: wgmma.wait_group.sync.aligned
// WGMMA: bar.sync
// WGMMA: wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16
// WGMMA-NOT: mma.sync.aligned.m16n8k16

// BADCHIP: error: moba-gpu-pipeline: mma-instruction=wgmma needs chip sm_90a, got 'sm_80'
// BADWG: error: moba-gpu-pipeline: mma-instruction=wgmma needs mma-warps a multiple of 4 (whole warpgroups), got 6 (plan wgmma,cp.async,auto,separate,warps=6,key-chunk=64,stages=2)
// BADLOADS: for the --mma-key-value-loads option: Cannot find option named 'ldg'!
// TMASYNC: error: moba-gpu-pipeline: mma-key-value-loads=tma needs mma-instruction=wgmma (TMA is sm_90's), got 'mma.sync'
// BADINSTR: for the --mma-instruction option: Cannot find option named 'tcgen05'!
// Deeper rings of the TMA loop (mma-stages), assembled by ptxas: the
// eleven launches and the one that stores the tensor maps.
// TMABIN-COUNT-12: gpu.launch_func
// TMABIN-NOT: gpu.launch_func
// TMABIN-COUNT-12: gpu.binary @moba_attention_kernel{{.*}}chip = "sm_90a"
// BADSTAGES: error: moba-gpu-pipeline: mma-stages=3 needs mma-key-value-loads tma or tma-multicast (the cp.async loops are double-buffered), got 'cp.async'
// BAD: error: moba-gpu-pipeline: mma needs densify
// K and V loaded by TMA, where the host code calls the runtime's encoder (the signature
// lib/Runtime/GpuRuntime.cpp implements: ten i64) for K and for V, one more
// kernel puts the maps on the device (twelve in all), and the attention
// kernel's PTX, raised to ISA 8.3 whatever the features say (the
// tensormap proxy fences need it), loads K and V by bulk tensor copies
// completing on mbarriers and multiplies P V from registers.
// TMA: llvm.func @mobaEncodeTensorMap(i64, i64, i64, i64, i64, i64, i64, i64, i64, i64)
// TMA: llvm.call @mobaEncodeTensorMap(
// TMA: llvm.call @mobaEncodeTensorMap(
// TMA: gpu.binary @moba_attention_kernel_8
// TMA-SAME: .version 8.3
// TMA-SAME: fence.proxy.tensormap::generic.acquire.gpu
// TMA-SAME: cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes
// TMA-SAME: mbarrier.try_wait.parity
// TMA-SAME: wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {
// TMA-NOT: gpu.binary @moba_attention_kernel_11
// tma-multicast: the attention kernel asks for clusters of two CTAs
// (cuLaunchKernel then launches it in pairs), publishes its barriers to
// the cluster, and its copies multicast to both CTAs (mask in a 16-bit
// register) or stay its own.
// PAIRS: gpu.binary @moba_attention_kernel_8
// PAIRS-SAME: .version 8.3
// PAIRS-SAME: .explicitcluster
// PAIRS-SAME: .reqnctapercluster 2, 1, 1
// PAIRS-SAME: fence.mbarrier_init.release.cluster
// PAIRS-SAME: %cluster_ctarank
// PAIRS-SAME: barrier.cluster.arrive.aligned
// PAIRS-SAME: barrier.cluster.wait.aligned
// PAIRS-SAME: cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%{{[^]]+}}], [%{{[^]]+}}, {%{{[^}]+}}}], [{{[^]]+}}], %rs{{[0-9]+}};
// PAIRS-SAME: wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {
// BADCHUNK: error: moba-gpu-pipeline: mma-key-chunk must be a multiple of 16 in [16, 256], got 40

// The tile shape options reach the kernel: 8 warps (256 threads), 128 keys
// per stage (2 x 2 x 128 x 72 bf16 = 73728 bytes of shared memory, then 64
// for the warps' first and last tokens).
// SHAPE: llvm.mlir.constant(73792 : i32)
// SHAPE: maxntid 256, 1, 1

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
