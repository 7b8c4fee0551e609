// The depth of the K/V ring (stages) of the TMA loop: one mbarrier per slot
// of each ring, chunks 1 .. stages - 2 copied ahead of the loop, chunk c in
// slot c mod stages behind phase (c div stages) mod 2, and chunk
// c + stages - 1 copied into the slot chunk c - 1 freed; the shared memory
// grows by a buffer of K (and of V, in a ring) per stage.
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=3" | FileCheck %s --check-prefix=THREE
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=4 warps=12" | FileCheck %s --check-prefix=FOUR
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma-multicast stages=3" | FileCheck %s --check-prefix=PAIRS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma stages=3" 2>&1 | FileCheck %s --check-prefix=CPASYNC
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=5" 2>&1 | FileCheck %s --check-prefix=DEEP
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=1" 2>&1 | FileCheck %s --check-prefix=SHALLOW

// Three stages, one warpgroup: a ring of three K buffers and one V buffer
// (three of each would leave the CTA alone on its SM; one V lets a second
// in): the bounds (32 bytes), six mbarriers (48), the slack (1024), Q
// (16384), four buffers of 16384: 83024 bytes, two CTAs an SM.
// THREE: gpu.launch {{.+}} dynamic_shared_memory_size %c83024_i32 {
// THREE-COUNT-6: nvvm.mbarrier.init
// THREE-NOT: nvvm.mbarrier.init
// THREE: nvvm.fence.mbarrier.init
// Chunk 0's K and V start with the CTA; chunk 1's K ahead of the loop,
// when the tile has a chunk 1.
// THREE: nvvm.mbarrier.arrive.expect_tx
// THREE: nvvm.mbarrier.arrive.expect_tx
// THREE: %[[HAS1:.+]] = arith.cmpi ult, %c1{{.*}}, %[[CHUNKS:.+]] : index
// THREE-NEXT: scf.if %[[HAS1]] {
// THREE: nvvm.mbarrier.arrive.expect_tx
// THREE-NOT: nvvm.mbarrier.arrive.expect_tx
// THREE: scf.for %[[C:.+]] = %c0{{.*}} to
// THREE: %[[SLOT:.+]] = arith.remui %[[C]], %c3{{.*}} : index
// THREE: gpu.barrier
// THREE: %[[FILL:.+]] = arith.divui %[[C]], %c3{{.*}} : index
// THREE: %[[PHASE:.+]] = arith.remui %[[FILL]], %c2{{.*}} : index
// THREE: %[[PARITY:.+]] = arith.index_castui %[[PHASE]] : index to i32
// THREE: nvvm.mbarrier.try_wait.parity %{{.+}}, %[[PARITY]]
// THREE: nvvm.wgmma.mma_async
// While S multiplies: V of this chunk into the one V buffer, and K of
// chunk c + 2 into slot (c + 2) mod 3.
// THREE: nvvm.mbarrier.arrive.expect_tx
// THREE: %[[AHEAD:.+]] = arith.addi %[[C]], %c2{{.*}} : index
// THREE: arith.cmpi ult, %[[AHEAD]], %[[CHUNKS]] : index
// THREE: arith.remui %[[AHEAD]], %c3{{.*}} : index
// THREE: nvvm.mbarrier.arrive.expect_tx
// THREE: } {nvvm.minctasm = 2 : i32}

// Four stages, three warpgroups: rings of four K and four V buffers (no
// single V with several warpgroups): 96 + 64 + 1024 + 3 x 16384 Q +
// 8 x 16384 = 181408 bytes; chunks 1 and 2 ahead of the loop, K and V each;
// chunk c + 3 in the loop.
// FOUR: gpu.launch {{.+}} dynamic_shared_memory_size %c181408_i32 {
// FOUR-COUNT-8: nvvm.mbarrier.init
// FOUR-NOT: nvvm.mbarrier.init
// FOUR: arith.cmpi ult, %c1{{.*}}, %[[CHUNKS:.+]] : index
// FOUR-COUNT-2: nvvm.mbarrier.arrive.expect_tx
// FOUR: arith.cmpi ult, %c2{{.*}}, %[[CHUNKS]] : index
// FOUR-COUNT-2: nvvm.mbarrier.arrive.expect_tx
// FOUR: scf.for %[[C:.+]] = %c0{{.*}} to
// FOUR: arith.remui %[[C]], %c4{{.*}} : index
// FOUR: arith.divui %[[C]], %c4{{.*}} : index
// FOUR: nvvm.mbarrier.try_wait.parity
// FOUR: arith.addi %[[C]], %c3{{.*}} : index
// FOUR-COUNT-2: nvvm.mbarrier.arrive.expect_tx
// FOUR-NOT: nvvm.minctasm

// Pairs of CTAs: the ring is the same in both, each copying half of every
// chunk ahead of the loop as in it.
// PAIRS: gpu.launch {{.+}} dynamic_shared_memory_size %c83024_i32 {
// PAIRS-COUNT-6: nvvm.mbarrier.init
// PAIRS: nvvm.cluster.arrive {aligned}
// PAIRS: arith.cmpi ult, %c1{{.*}}, %{{.+}} : index
// PAIRS: multicast_mask
// PAIRS: scf.for
// PAIRS: arith.divui %{{.+}}, %c3{{.*}} : index

// CPASYNC: stages=3 needs key-value-loads tma or tma-multicast (the cp.async loops are double-buffered), got 'cp.async'
// DEEP: stages must be in [2, 4], got 5
// SHALLOW: stages must be in [2, 4], got 1
func.func @ring(%q: memref<?x8x128xbf16>, %k: memref<?x2x128xbf16>,
                %v: memref<?x2x128xbf16>, %cu: memref<?xi32>,
                %sel: memref<?x8x3xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                %o: memref<3x?x8x128xbf16>, %l: memref<3x?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x128xbf16>) k(%k : memref<?x2x128xbf16>)
      v(%v : memref<?x2x128xbf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x3xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<3x?x8x128xbf16>, %l : memref<3x?x8xf32>) {block_size = 512, scale = 0.088 : f32}
  return
}
