// The warp-specialized schedule (schedule=warp-specialized): a producer
// warpgroup after the consumer warps (threads 256..383 of 384), which
// owns the TMA ring; the consumers run the in-order chunk with no CTA
// barrier between chunks. Per slot a full barrier of K and of V (one
// arrival: the producer's expect_tx) and a release barrier (one arrival per
// consumer thread). The kernel states its size and one CTA an SM
// (nvvm.maxntid, nvvm.minctasm) so that ptxas knows every warp's registers
// at entry (168) and honours setmaxnreg: the producer gives back all but
// 40, the consumers take (65536 - 40 x 128) / 256 = 236, 232 in steps of
// 8. With 4 warps and 4 stages one consumer warpgroup already has the
// registers it can use (248 at entry): no setmaxnreg.
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=3 warps=8 schedule=warp-specialized" | FileCheck %s
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=4 warps=4 schedule=warp-specialized" | FileCheck %s --check-prefix=WIDE
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=3 warps=8 schedule=warp-specialized-overlapped" | FileCheck %s --check-prefix=OVERLAP
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=3 warps=8 schedule=ping-pong" | FileCheck %s --check-prefix=TURNS
// RUN: moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma stages=3 warps=8 schedule=persistent" | FileCheck %s --check-prefix=PERSIST
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma-multicast schedule=warp-specialized" 2>&1 | FileCheck %s --check-prefix=PAIRS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma-multicast schedule=persistent" 2>&1 | FileCheck %s --check-prefix=PERSIST-PAIRS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=cp.async schedule=warp-specialized-overlapped" 2>&1 | FileCheck %s --check-prefix=OVERLAP-LOADS
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="schedule=warp-specialized key-value-loads=tma" 2>&1 | FileCheck %s --check-prefix=SYNC
// RUN: not moba-opt %s --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-value-loads=tma warps=16 schedule=warp-specialized" 2>&1 | FileCheck %s --check-prefix=WARPS

// 384 threads; the bounds (64 bytes), nine mbarriers (72), the slack, Q of
// two warpgroups (32768), three K and three V buffers (6 x 16384).
// CHECK: gpu.launch {{.+}} threads({{.+}}) in ({{.+}} = %c384{{.*}}, {{.+}}) dynamic_shared_memory_size %c132232_i32 {
// CHECK-COUNT-6: nvvm.mbarrier.init %{{.+}}, %c1_i32
// CHECK-COUNT-3: nvvm.mbarrier.init %{{.+}}, %c256_i32
// CHECK: nvvm.fence.mbarrier.init
// Chunk 0's K and V start with the CTA, as in the other TMA loops.
// CHECK-COUNT-2: nvvm.mbarrier.arrive.expect_tx
// The causal bounds' barrier, then one that publishes the mbarriers to the
// producer of a CTA without causal bounds too; then the roles.
// CHECK: gpu.barrier
// CHECK: gpu.barrier
// CHECK-NEXT: %[[CONSUMERS:.+]] = arith.constant 256 : index
// CHECK-NEXT: %[[ROLE:.+]] = arith.cmpi ult, %{{.+}}, %[[CONSUMERS]] : index
// CHECK-NEXT: scf.if %[[ROLE]] {
// CHECK-NEXT: nvvm.setmaxregister increase 232
// The queries published to the consumers alone (barrier 3: 1 and 2 are the
// warpgroups').
// CHECK: nvvm.barrier id = %c3_i32 number_of_threads = %c256_i32
// CHECK-NOT: gpu.barrier
// The chunk: K's full barrier, S, the softmax, V's full barrier, P V, the
// slot released by every consumer thread.
// CHECK: scf.for
// CHECK: nvvm.mbarrier.try_wait.parity
// CHECK: nvvm.wgmma.mma_async
// CHECK: nvvm.mbarrier.try_wait.parity
// CHECK: nvvm.inline_ptx
// CHECK: nvvm.wgmma.wait.group.sync.aligned 0
// CHECK: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// CHECK: scf.yield
// The masked loop zeroes V past the last key and publishes it to the
// consumers, not the CTA.
// CHECK: scf.for
// CHECK: nvvm.barrier id = %c3_i32{{.*}} number_of_threads = %c256_i32
// CHECK: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// CHECK-NOT: gpu.barrier
// CHECK: } else {
// CHECK-NEXT: nvvm.setmaxregister decrease 40
// The producer's one thread (256): chunks 1 .. chunks - 1, each into slot
// c mod 3 once fill c div 3 - 1 of it is released (release barriers 6..8,
// after the K and V barriers), then K's and V's copies.
// CHECK: %[[ISSUER:.+]] = arith.cmpi eq, %{{.+}}, %c256{{.*}} : index
// CHECK-NEXT: scf.if %[[ISSUER]] {
// CHECK: scf.for %[[C:.+]] = %c1{{.*}} to
// CHECK: %[[SLOT:.+]] = arith.remui %[[C]], %c3{{.*}} : index
// CHECK: %[[FILL:.+]] = arith.divui %[[C]], %c3{{.*}} : index
// CHECK: %[[REFILL:.+]] = arith.cmpi ult, %c0{{.*}}, %[[FILL]] : index
// CHECK: scf.if %[[REFILL]] {
// CHECK: %[[BEFORE:.+]] = arith.subi %[[FILL]], %c1{{.*}} : index
// CHECK: %[[PHASE:.+]] = arith.remui %[[BEFORE]], %c2{{.*}} : index
// CHECK: %[[PARITY:.+]] = arith.index_castui %[[PHASE]] : index to i32
// CHECK: %[[RELEASE:.+]] = arith.addi %c6{{.*}}, %[[SLOT]] : index
// CHECK: nvvm.mbarrier.try_wait.parity %{{.+}}, %[[PARITY]]
// CHECK: nvvm.mbarrier.arrive.expect_tx
// CHECK-COUNT-2: nvvm.cp.async.bulk.tensor.shared.cluster.global
// CHECK: nvvm.mbarrier.arrive.expect_tx
// CHECK-COUNT-2: nvvm.cp.async.bulk.tensor.shared.cluster.global
// CHECK: } {nvvm.maxntid = array<i32: 384, 1, 1>, nvvm.minctasm = 1 : i32}

// 256 threads, one CTA an SM (4 x 2 buffers of 16384): every warp keeps
// what it starts with.
// WIDE: gpu.launch {{.+}} in ({{.+}} = %c256{{.*}}, {{.+}}) dynamic_shared_memory_size
// WIDE-COUNT-8: nvvm.mbarrier.init %{{.+}}, %c1_i32
// WIDE-COUNT-4: nvvm.mbarrier.init %{{.+}}, %c128_i32
// WIDE-NOT: nvvm.setmaxregister
// WIDE: arith.remui %{{.+}}, %c4{{.*}} : index
// WIDE-NOT: nvvm.setmaxregister
// WIDE: } {nvvm.maxntid = array<i32: 256, 1, 1>, nvvm.minctasm = 1 : i32}

// The overlapped consumers: chunk 0's S and softmax where the tile has a
// chunk (its probabilities carried out with max, sums and O: 4 + 64 + 32
// values), then per chunk c from 1: K_c's and V_(c-1)'s full barriers,
// S_c's eight k-steps, P_(c-1) V_(c-1) from registers, S_c alone waited
// for (wait_group 1), the softmax, P V waited for, the slot of c - 1
// released; the last P V after the loops, where the tile has a chunk.
// OVERLAP: nvvm.setmaxregister increase 232
// OVERLAP: %[[HAS:.+]] = arith.cmpi ult, %c0{{.*}}, %[[CHUNKS:.+]] : index
// OVERLAP: scf.if %[[HAS]] -> (f32, {{.*}}) {
// OVERLAP: nvvm.mbarrier.try_wait.parity
// OVERLAP-COUNT-8: nvvm.wgmma.mma_async
// OVERLAP: nvvm.wgmma.wait.group.sync.aligned 0
// OVERLAP: scf.for %{{.+}} = %c1{{.*}} to
// OVERLAP: nvvm.mbarrier.try_wait.parity
// OVERLAP: nvvm.mbarrier.try_wait.parity
// OVERLAP-COUNT-8: nvvm.wgmma.mma_async
// OVERLAP: nvvm.inline_ptx
// OVERLAP: nvvm.wgmma.wait.group.sync.aligned 1
// OVERLAP: nvvm.wgmma.wait.group.sync.aligned 0
// OVERLAP-NEXT: %{{.+}} = arith.constant
// OVERLAP: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// OVERLAP: scf.for
// OVERLAP: nvvm.wgmma.wait.group.sync.aligned 1
// OVERLAP: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// OVERLAP: scf.if %[[HAS]] -> (f32, {{.*}}) {
// OVERLAP: nvvm.mbarrier.try_wait.parity
// OVERLAP: nvvm.inline_ptx
// OVERLAP: nvvm.wgmma.wait.group.sync.aligned 0
// OVERLAP: nvvm.setmaxregister decrease 40

// Ping-pong, two consumer warpgroups: barriers 4 (warpgroup 0's turn) and
// 5 (warpgroup 1's), 256 threads each (the one taking its turn, the one
// passing it). Warpgroup 1 lets 0 go first; each product is issued between
// the warpgroup's own barrier and an arrival on the other's; warpgroup 0
// takes the ring's one left-over arrival at the end.
// TURNS: nvvm.setmaxregister increase 232
// TURNS: nvvm.barrier.arrive id = %c4_i32{{.*}} number_of_threads = %c256_i32
// TURNS: nvvm.barrier id = %c4_i32{{.*}} number_of_threads = %c256_i32
// TURNS: nvvm.barrier id = %c5_i32{{.*}} number_of_threads = %c256_i32
// TURNS-COUNT-8: nvvm.wgmma.mma_async
// TURNS: nvvm.barrier.arrive id = %c5_i32{{.*}} number_of_threads = %c256_i32
// TURNS: nvvm.barrier.arrive id = %c4_i32{{.*}} number_of_threads = %c256_i32
// TURNS: scf.for %{{.+}} = %c1{{.*}} to
// TURNS: nvvm.barrier id = %c4_i32{{.*}}
// TURNS: nvvm.barrier id = %c5_i32{{.*}}
// TURNS: nvvm.wgmma.mma_async
// TURNS: nvvm.inline_ptx
// TURNS: nvvm.barrier.arrive id = %c5_i32{{.*}}
// TURNS: nvvm.barrier.arrive id = %c4_i32{{.*}}
// TURNS: nvvm.wgmma.wait.group.sync.aligned 1
// TURNS: nvvm.inline_ptx
// TURNS: nvvm.barrier.arrive id = %c5_i32{{.*}}
// TURNS: nvvm.barrier.arrive id = %c4_i32{{.*}}
// TURNS: nvvm.wgmma.wait.group.sync.aligned 0
// TURNS: nvvm.barrier id = %c4_i32{{.*}} number_of_threads = %c256_i32
// TURNS: nvvm.setmaxregister decrease 40

// Persistent CTAs: one wave (the device's SMs, from the runtime, x 1 CTA
// an SM: the tiles, at most that many);
// two query buffers (2 x 32768 bytes more: 165032); the barriers
// initialized once (the ring's, then each query buffer's landed barrier,
// 96 gatherer arrivals, and its release barrier, 256 consumer arrivals)
// and published by the CTA's only barrier. Every role walks tiles cta,
// cta + grid, ... carrying the ring's chunks and the tiles taken. A
// consumer waits for the tile's queries, runs the chunks and releases the
// query buffer after its last S; the producer's lane 0 copies every chunk
// of a tile from 0 into ring chunk base + c; its other warps gather the
// queries (cp.async) once the consumers released the buffer's fill before,
// and arrive on the buffer's barrier after their copies and a proxy fence.
// PERSIST: func.func private @mobaMultiprocessorCount() -> index
// PERSIST: %[[TILES:.+]] = arith.muli %{{.+}}, %c8{{.*}} : index
// PERSIST: %[[SOME:.+]] = arith.maxui %[[TILES]], %c1{{.*}} : index
// PERSIST: %[[SMS:.+]] = call @mobaMultiprocessorCount() : () -> index
// PERSIST: %[[SLOTS:.+]] = arith.muli %[[SMS]], %c1{{.*}} : index
// PERSIST: %[[WAVE:.+]] = arith.minui %[[SOME]], %[[SLOTS]] : index
// PERSIST: gpu.launch blocks(%[[CTA:.+]], %{{.+}}, %{{.+}}) in (%[[GRID:.+]] = %[[WAVE]], {{.+}} = %c384{{.*}}, {{.+}}) dynamic_shared_memory_size %c165032_i32 {
// PERSIST-COUNT-6: nvvm.mbarrier.init %{{.+}}, %c1_i32
// PERSIST-COUNT-3: nvvm.mbarrier.init %{{.+}}, %c256_i32
// PERSIST: nvvm.mbarrier.init %{{.+}}, %c96_i32
// PERSIST: nvvm.mbarrier.init %{{.+}}, %c256_i32
// PERSIST: nvvm.mbarrier.init %{{.+}}, %c96_i32
// PERSIST: nvvm.mbarrier.init %{{.+}}, %c256_i32
// PERSIST: nvvm.fence.mbarrier.init
// PERSIST: gpu.barrier
// PERSIST-NOT: gpu.barrier
// PERSIST: scf.if
// PERSIST-NEXT: nvvm.setmaxregister increase 232
// The consumers' walk: the tile's first and last token from its first
// and last entries (the causal bounds, no CTA reduction), the query
// buffer's landed barrier (9 + buffer) waited for at parity fill mod 2,
// each chunk c in ring chunk base + c (slot and fill mod 3), the zeroed V
// rows fenced for the async proxy before the consumers' barrier, and the
// query buffer released (11 + buffer) after the loops.
// PERSIST: scf.for %{{.+}} = %[[CTA]] to %[[TILES]] step %[[GRID]] iter_args(%[[CBASE:.+]] = %c0{{.*}}, %[[CTAKEN:.+]] = %c0{{.*}}) -> (index, index) {
// PERSIST: scf.if %{{.+}} -> (index, index) {
// PERSIST: %[[FIRST:.+]] = arith.addi %{{.+}}, %{{.+}} : index
// PERSIST: %[[END:.+]] = arith.addi %[[FIRST]], %{{.+}} : index
// PERSIST-NEXT: %[[LASTAT:.+]] = arith.subi %[[END]], %c1{{.*}} : index
// PERSIST: memref.load %arg6[%{{.+}}, %[[FIRST]]] : memref<8x?xi32>
// PERSIST: memref.load %arg6[%{{.+}}, %[[LASTAT]]] : memref<8x?xi32>
// PERSIST: %[[CQBUF:.+]] = arith.remui %[[CTAKEN]], %c2{{.*}} : index
// PERSIST: %[[CQFILL:.+]] = arith.divui %[[CTAKEN]], %c2{{.*}} : index
// PERSIST-NOT: nvgpu.device_async_copy
// PERSIST-NOT: scf.for
// PERSIST: %[[CQPHASE:.+]] = arith.remui %[[CQFILL]], %c2{{.*}} : index
// PERSIST-NEXT: %[[CQPARITY:.+]] = arith.index_castui %[[CQPHASE]] : index to i32
// PERSIST-NEXT: %[[C9:.+]] = arith.constant 9 : index
// PERSIST-NEXT: arith.addi %[[C9]], %[[CQBUF]] : index
// PERSIST-NOT: scf.for
// PERSIST: nvvm.mbarrier.try_wait.parity %{{.+}}, %[[CQPARITY]]
// PERSIST: scf.for %[[CC:.+]] = %c0{{.*}} to
// PERSIST-NEXT: %[[CAT:.+]] = arith.addi %[[CBASE]], %[[CC]] : index
// PERSIST: arith.remui %[[CAT]], %c3{{.*}} : index
// PERSIST: %[[CAT2:.+]] = arith.addi %[[CBASE]], %[[CC]] : index
// PERSIST: arith.divui %[[CAT2]], %c3{{.*}} : index
// PERSIST: nvvm.mbarrier.try_wait.parity
// PERSIST: nvvm.wgmma.mma_async
// PERSIST: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// PERSIST: scf.for
// PERSIST: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>
// PERSIST-NOT: nvvm.barrier
// PERSIST: nvvm.barrier id = %c3_i32{{.*}} number_of_threads = %c256_i32
// PERSIST: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// PERSIST: scf.yield
// PERSIST-NEXT: }
// PERSIST-NEXT: %[[C11:.+]] = arith.constant 11 : index
// PERSIST-NEXT: arith.addi %[[C11]], %[[CQBUF]] : index
// PERSIST: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// PERSIST-NOT: gpu.barrier
// PERSIST: nvvm.setmaxregister decrease 40
// PERSIST: scf.for %{{.+}} = %[[CTA]] to %[[TILES]] step %[[GRID]] iter_args(%[[BASE:.+]] = %c0{{.*}}, %{{.+}} = %c0{{.*}}) -> (index, index) {
// PERSIST: scf.for %[[C:.+]] = %c0{{.*}} to
// PERSIST-NEXT: %[[AT:.+]] = arith.addi %[[BASE]], %[[C]] : index
// PERSIST: %[[SLOT:.+]] = arith.remui %[[AT]], %c3{{.*}} : index
// PERSIST: %[[FILL:.+]] = arith.divui %[[AT]], %c3{{.*}} : index
// PERSIST: nvvm.mbarrier.try_wait.parity
// PERSIST-COUNT-2: nvvm.cp.async.bulk.tensor.shared.cluster.global
// PERSIST: nvvm.mbarrier.arrive.expect_tx
// PERSIST-COUNT-2: nvvm.cp.async.bulk.tensor.shared.cluster.global
// PERSIST: scf.for %{{.+}} = %[[CTA]] to %[[TILES]] step %[[GRID]] iter_args(%{{.+}} = %c0{{.*}}, %[[TAKEN:.+]] = %c0{{.*}}) -> (index, index) {
// PERSIST: %[[QBUF:.+]] = arith.remui %[[TAKEN]], %c2{{.*}} : index
// PERSIST: %[[QFILL:.+]] = arith.divui %[[TAKEN]], %c2{{.*}} : index
// PERSIST: arith.addi %c11{{.*}}, %[[QBUF]] : index
// PERSIST: nvvm.mbarrier.try_wait.parity
// PERSIST: scf.for %{{.+}} = %{{.+}} to %c2048{{.*}} step %c96{{.*}} {
// PERSIST: nvgpu.device_async_copy %arg0[{{.+}}], %{{.+}}[{{.+}}], 8 {bypassL1} : memref<?x8x128xbf16> to memref<2x2x64x64xbf16, #gpu.address_space<workgroup>>
// PERSIST: nvvm.cp.async.commit.group
// PERSIST-NEXT: nvvm.cp.async.wait.group 0
// PERSIST-NEXT: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>
// PERSIST: arith.addi %c9{{.*}}, %[[QBUF]] : index
// PERSIST: nvvm.mbarrier.arrive %{{.+}} : !llvm.ptr<3>
// PERSIST: } {nvvm.maxntid = array<i32: 384, 1, 1>, nvvm.minctasm = 1 : i32}

// PERSIST-PAIRS: schedule=persistent needs key-value-loads=tma (its producer owns one CTA's ring), got 'tma-multicast'
// PAIRS: schedule=warp-specialized needs key-value-loads=tma (its producer owns one CTA's ring), got 'tma-multicast'
// OVERLAP-LOADS: schedule=warp-specialized-overlapped needs key-value-loads=tma (its producer owns one CTA's ring), got 'cp.async'
// SYNC: schedule=warp-specialized needs instruction=wgmma, got 'mma.sync'
// WARPS: schedule=warp-specialized needs warps at most 12 (three consumer warpgroups beside the producer's), got 16
func.func @producer(%q: memref<?x8x128xbf16>, %k: memref<?x2x128xbf16>,
                    %v: memref<?x2x128xbf16>, %cu: memref<?xi32>,
                    %sel: memref<?x8x3xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                    %o: memref<3x?x8x128xbf16>, %l: memref<3x?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x128xbf16>) k(%k : memref<?x2x128xbf16>)
      v(%v : memref<?x2x128xbf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x3xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<3x?x8x128xbf16>, %l : memref<3x?x8xf32>) {block_size = 512, scale = 0.088 : f32}
  return
}
