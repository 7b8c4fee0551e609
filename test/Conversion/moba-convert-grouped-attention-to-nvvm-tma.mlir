// The wgmma form with K and V loaded by TMA (key-value-loads=tma), and the
// options' diagnostics.
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma" | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma warps=12" | FileCheck %s --check-prefix=THREE
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma-multicast" | FileCheck %s --check-prefix=PAIRS
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="stages=3 key-value-loads=tma instruction=wgmma" | FileCheck %s --check-prefix=STAGES
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tmx" 2>&1 | FileCheck %s --check-prefix=BADLOADS
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="key-value-loads=tma" 2>&1 | FileCheck %s --check-prefix=NOWGMMA

// Three warpgroups (192 entries) share each K/V chunk, in order (TMA
// never takes the overlapped form): 384 threads; the bounds of 12 warps
// (96 bytes), four mbarriers (32), the slack (1024), Q of three
// warpgroups (3 x 16384), K and V two buffers each (4 x 16384): 115840
// bytes, one CTA an SM, so no stated occupancy; no P, each warpgroup
// multiplies P V from its registers; no K/V by cp.async.
// THREE-LABEL: func.func @single_value_buffer
// THREE: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c384{{.*}}) dynamic_shared_memory_size %c115840_i32 {
// THREE-NOT: nvvm.minctasm
// THREE: nvvm.mbarrier.try_wait.parity
// THREE: nvvm.inline_ptx {{.+}}wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16
// THREE-NOT: nvgpu.device_async_copy %arg1
// THREE-LABEL: func.func @no_wgmma

// Pairs of CTAs sharing their copies (key-value-loads=tma-multicast): the
// tiles per head rounded up to even, so that the clusters of two (tiles 2i
// and 2i + 1 of a head) never straddle heads.
// PAIRS-LABEL: func.func @single_value_buffer
// PAIRS: %[[WIDTH:.+]] = memref.dim %arg6
// PAIRS: %[[PER:.+]] = arith.ceildivui %[[WIDTH]], %c64 : index
// PAIRS: %[[TILES:.+]] = arith.addi %[[PER]], %{{.+}} : index
// PAIRS: %[[HALF:.+]] = arith.ceildivui %[[TILES]], %c2{{.*}} : index
// PAIRS: arith.muli %[[HALF]], %c2{{.*}} : index
// The CTA pairs with tile ^ 1 where that tile has the same block row and,
// causally, both tiles' first tokens (entry / K) come at or after the
// block's end, so that neither tile bounds the keys: the same chunks.
// PAIRS: gpu.launch {{.+}} dynamic_shared_memory_size %c66624_i32 {
// PAIRS: %[[PARTNER:.+]] = arith.xori %[[TILE:.+]], %c1{{.*}} : index
// PAIRS: %[[PROW:.+]] = memref.load %[[LIST:.+]][%{{.+}}, %[[PARTNER]], %c0{{.*}}]
// PAIRS: %[[PROWI:.+]] = arith.index_cast %[[PROW]]
// PAIRS: %[[SAME:.+]] = arith.cmpi eq, %{{.+}}, %[[PROWI]] : index
// PAIRS: arith.divui %{{.+}}, %c3{{.*}} : index
// PAIRS: %[[PAST1:.+]] = arith.cmpi uge, %{{.+}}, %[[END:.+]] : index
// PAIRS: arith.divui %{{.+}}, %c3{{.*}} : index
// PAIRS: %[[PAST2:.+]] = arith.cmpi uge, %{{.+}}, %[[END]] : index
// PAIRS: %[[PAST:.+]] = arith.andi %[[PAST2]], %[[PAST1]] : i1
// PAIRS: %[[PAIRED:.+]] = arith.andi %[[SAME]], %[[PAST]] : i1
// PAIRS: %[[RANK:.+]] = nvvm.read.ptx.sreg.cluster.ctarank : i32
// Thread 0 initializes the barriers; a cluster barrier publishes them to
// the other CTA before either starts a copy that completes on them.
// PAIRS: nvvm.fence.mbarrier.init
// PAIRS: scf.if %[[PAIRED]] {
// PAIRS-NEXT: nvvm.cluster.arrive {aligned}
// PAIRS-NEXT: nvvm.cluster.wait {aligned}
// Each buffer's barrier expects the whole 16384 bytes; paired, this CTA
// copies panel p of operand o when its rank is (p + o) % 2, multicast to
// both CTAs (mask 0b11); alone, it copies both panels.
// PAIRS: nvvm.mbarrier.arrive.expect_tx %[[K0:.+]], %c16384_i32
// PAIRS: scf.if %[[PAIRED]] {
// PAIRS: arith.cmpi eq, %[[RANK]], %c0_i32
// PAIRS: nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %{{.+}}, %[[K0]], box[%c0_i32{{.*}}, %{{.+}}, %{{.+}}] multicast_mask = %c3_i16
// PAIRS: arith.cmpi eq, %[[RANK]], %c1_i32
// PAIRS: nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %{{.+}}, %[[K0]], box[%c64_i32, %{{.+}}, %{{.+}}] multicast_mask = %c3_i16
// PAIRS: } else {
// PAIRS: nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %{{.+}}, %[[K0]], box[%c0_i32
// PAIRS-NOT: multicast_mask
// PAIRS: nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %{{.+}}, %[[K0]], box[%c64_i32
// PAIRS: nvvm.mbarrier.arrive.expect_tx %[[V0:.+]], %c16384_i32
// PAIRS: arith.cmpi eq, %[[RANK]], %c1_i32
// PAIRS: box[%c0_i32{{.*}}, %{{.+}}, %{{.+}}] multicast_mask = %c3_i16
// PAIRS: arith.cmpi eq, %[[RANK]], %c0_i32
// PAIRS: box[%c64_i32, %{{.+}}, %{{.+}}] multicast_mask = %c3_i16
// Each chunk starts with the cluster's barrier when paired (a copy refills
// both CTAs' buffers), relaxed: it orders reads already finished, so no
// fence; the CTA's barrier alone otherwise.
// PAIRS: scf.for
// PAIRS: scf.if %[[PAIRED]] {
// PAIRS-NEXT: nvvm.cluster.arrive.relaxed {aligned}
// PAIRS-NEXT: nvvm.cluster.wait {aligned}
// PAIRS-NEXT: } else {
// PAIRS-NEXT: gpu.barrier
// PAIRS: multicast_mask = %c3_i16
// PAIRS: scf.for
// PAIRS: scf.if %[[PAIRED]] {
// PAIRS-NEXT: nvvm.cluster.arrive.relaxed {aligned}
// PAIRS-NEXT: nvvm.cluster.wait {aligned}
// PAIRS-NEXT: } else {
// PAIRS-NEXT: gpu.barrier
// Neither CTA of a pair exits before both have all their bytes: after the
// drain of a tile with no chunk, a last cluster barrier.
// PAIRS: %[[NONE:.+]] = arith.cmpi eq, %{{[0-9]+}}, %c0_{{[0-9]+}} : index
// PAIRS-NEXT: scf.if %[[NONE]] {
// PAIRS: nvvm.mbarrier.try_wait.parity
// PAIRS: nvvm.mbarrier.try_wait.parity
// PAIRS-NEXT: }
// PAIRS-NEXT: scf.if %[[PAIRED]] {
// PAIRS-NEXT: nvvm.cluster.arrive {aligned}
// PAIRS-NEXT: nvvm.cluster.wait {aligned}
// PAIRS: } {nvvm.cluster_dim = array<i32: 2, 1, 1>, nvvm.minctasm = 3 : i32}
// mma.sync (head_dim 16) has no TMA, so no clusters.
// PAIRS-LABEL: func.func @no_wgmma
// PAIRS-NOT: nvvm.cluster_dim
// PAIRS-NOT: multicast_mask
// A ring of three stages is a plan the pass takes (what it emits for it is
// checked with the TMA pipeline's emitter).
// STAGES: nvvm.cp.async.bulk.tensor.shared.cluster.global
// BADLOADS: for the --key-value-loads option: Cannot find option named 'tmx'!
// NOWGMMA: key-value-loads=tma needs instruction=wgmma (TMA is sm_90's)

// The host code: the runtime encodes K's and V's tensor maps into host
// memory (address, sizes, strides, element kind 1 = bf16, boxes of 64 keys,
// operand 0 = K, 1 = V), and a one-thread launch takes their 32 words as
// arguments and stores them to device memory, released to the tensormap
// proxy.
// CHECK-LABEL: func.func private @mobaEncodeTensorMap(index, index, index, index, index, index, index, index, index, index)
// CHECK-LABEL: func.func @single_value_buffer
// CHECK: %[[HOST:.+]] = memref.alloca() : memref<32xi64>
// CHECK: %[[KMETA:.+]], %{{.+}}, %[[KSIZES:.+]]:3, %[[KSTRIDES:.+]]:3 = memref.extract_strided_metadata %arg1
// CHECK: call @mobaEncodeTensorMap(%{{.+}}, %{{.+}}, %[[KSIZES]]#0, %[[KSIZES]]#1, %[[KSIZES]]#2, %[[KSTRIDES]]#0, %[[KSTRIDES]]#1, %[[BF16:.+]], %[[BOX:.+]], %[[K:.+]])
// CHECK: memref.extract_strided_metadata %arg2
// CHECK: call @mobaEncodeTensorMap(
// CHECK-COUNT-32: memref.load %[[HOST]]
// CHECK: %[[MAPS:.+]] = memref.alloc() : memref<32xi64>
// CHECK: gpu.launch {{.+}} in (%{{.+}} = %c1{{.*}}, %{{.+}} = %c1{{.*}}, %{{.+}} = %c1{{.*}}) threads
// CHECK-COUNT-32: memref.store %{{.+}}, %[[MAPS]]
// CHECK: nvvm.fence.proxy.release <gpu>
// The attention kernel: 32 (bounds) + 32 (four mbarriers) + 1024 (slack) +
// 16384 (Q) + 3 x 16384 (K, K, V) bytes, no P (registers).
// CHECK: gpu.launch {{.+}} dynamic_shared_memory_size %c66624_i32 {
// As soon as the CTA knows its block, thread 0 initializes the barriers
// (count 1), acquires the maps and starts K_0 and V_0: per operand one
// arrive.expect_tx of the buffer's 16384 bytes and a copy per 64-column
// panel (columns 0 and 64, the KV head, the chunk's first key).
// CHECK:   scf.if
// CHECK-COUNT-4: nvvm.mbarrier.init %{{.+}}, %c1_i32{{.*}} : !llvm.ptr<3>, i32
// CHECK:     nvvm.fence.mbarrier.init
// CHECK:     nvvm.fence.proxy.acquire <gpu> %[[KMAP:.+]], %c128_i32
// CHECK:     nvvm.fence.proxy.acquire <gpu> %[[VMAP:.+]], %c128_i32
// CHECK:     nvvm.mbarrier.arrive.expect_tx %[[K0:.+]], %c16384_i32
// CHECK:     nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %[[KMAP]], %[[K0]], box[%c0_i32, %[[HEAD:.+]], %[[KEY:.+]]] : !llvm.ptr<7>, !llvm.ptr
// CHECK:     nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %[[KMAP]], %[[K0]], box[%c64_i32, %[[HEAD]], %[[KEY]]]
// CHECK:     nvvm.mbarrier.arrive.expect_tx %[[V0:.+]], %c16384_i32
// CHECK:     nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %[[VMAP]], %[[V0]], box[%c0_i32
// CHECK:     nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.+}}, %[[VMAP]], %[[V0]], box[%c64_i32
// The queries still come by cp.async (gathered rows); one barrier publishes
// them and the barriers. K and V are never copied by cp.async.
// CHECK-NOT: nvgpu.device_async_copy %arg1
// CHECK-NOT: nvgpu.device_async_copy %arg2
// CHECK:   nvgpu.device_async_copy %arg0
// CHECK:   nvvm.cp.async.wait.group 0
// CHECK-NEXT: nvvm.fence.proxy
// CHECK-NEXT: gpu.barrier
// Chunk c: after the barrier (every warp done with chunk c - 1), the warps
// wait on K's barrier and issue Q K^T; while the tensor cores multiply,
// thread 0 starts V_c (c > 0) and K_(c+1); then the warps wait for S, run
// the softmax, wait on V's barrier and multiply P V from registers with no
// barrier in between.
// CHECK:   scf.for
// CHECK:     gpu.barrier
// CHECK:     nvvm.mbarrier.try_wait.parity
// CHECK:     nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 64, k = 16>
// CHECK:     nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT: scf.if
// CHECK:       nvvm.mbarrier.arrive.expect_tx
// CHECK:       nvvm.cp.async.bulk.tensor.shared.cluster.global
// CHECK:       nvvm.mbarrier.arrive.expect_tx
// CHECK:       nvvm.cp.async.bulk.tensor.shared.cluster.global
// CHECK:     nvvm.wgmma.wait.group.sync.aligned 0
// CHECK:     llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK:     nvvm.mbarrier.try_wait.parity
// CHECK-NOT: gpu.barrier
// CHECK:     nvvm.inline_ptx
// CHECK:     scf.yield
// The masked loop: a chunk reaching past the block's last key zeroes V's
// rows past it (TMA copied the next keys there), fenced and published by a
// barrier of its own.
// CHECK:   scf.for
// CHECK:     nvvm.mbarrier.try_wait.parity
// CHECK:     scf.if
// CHECK:       vector.store %{{.+}}, %{{.+}} {alignment = 16 : i64} : memref<3x2x64x64xbf16, #gpu.address_space<workgroup>>, vector<8xbf16>
// CHECK:       nvvm.fence.proxy
// CHECK-NEXT:  gpu.barrier
// CHECK:     nvvm.inline_ptx
// A tile with no chunk drains chunk 0's copies before it exits.
// CHECK:   arith.cmpi eq
// CHECK:   scf.if
// CHECK:     nvvm.mbarrier.try_wait.parity
// CHECK:     nvvm.mbarrier.try_wait.parity
// CHECK: } {nvvm.minctasm = 3 : i32}
// CHECK: memref.dealloc %[[MAPS]] : memref<32xi64>
func.func @single_value_buffer(%q: memref<?x8x128xbf16>, %k: memref<?x2x128xbf16>,
                               %v: memref<?x2x128xbf16>, %cu: memref<?xi32>,
                               %sel: memref<?x8x3xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                               %o: memref<3x?x8x128xbf16>, %l: memref<3x?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x128xbf16>) k(%k : memref<?x2x128xbf16>)
      v(%v : memref<?x2x128xbf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x3xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<3x?x8x128xbf16>, %l : memref<3x?x8xf32>) {block_size = 512, scale = 0.088 : f32}
  return
}

// -----

// head_dim 16 has no wgmma form: mma.sync, and so cp.async, whatever is
// asked; no tensor maps.
// CHECK-LABEL: func.func @no_wgmma
// CHECK-NOT: mobaEncodeTensorMap
// CHECK-NOT: nvvm.cp.async.bulk.tensor
// CHECK: nvgpu.device_async_copy %arg1
func.func @no_wgmma(%q: memref<?x4x16xf16>, %kv: memref<?x4x16xf16>, %cu: memref<?xi32>,
                    %sel: memref<?x4x3xi32>, %s: memref<4x?xi32>, %e: memref<4x?xi32>,
                    %o: memref<3x?x4x16xf32>, %l: memref<3x?x4xf32>) {
  moba.grouped_block_attention q(%q : memref<?x4x16xf16>) k(%kv : memref<?x4x16xf16>)
      v(%kv : memref<?x4x16xf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x3xi32>)
      groups(%s : memref<4x?xi32>, %s : memref<4x?xi32>, %e : memref<4x?xi32>)
      outs(%o : memref<3x?x4x16xf32>, %l : memref<3x?x4xf32>) {block_size = 16, scale = 0.25 : f32}
  return
}
