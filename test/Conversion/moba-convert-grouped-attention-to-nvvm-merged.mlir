// The merged form of the grouped attention (merge(...), from
// moba-fuse-lse-merge): the initializing kernel counts each row's
// attending slots, and the attention kernel's CTAs merge the rows whose
// last slot they finish.
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma" | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm | FileCheck %s --check-prefix=SYNC

// Arrivals [tokens, heads] (i32). One thread per (token, head): every
// slot's partial marked empty; a slot attends when its block lies in the
// token's sequence and no lower slot holds it; the count goes to the
// arrivals, and a row with none gets the merge of no partials.
// CHECK-LABEL: func.func @merged
// CHECK-SAME: %[[SEL:[^:]+]]: memref<?x8x40xi32>
// CHECK-SAME: %[[PLSE:[^:]+]]: memref<40x?x8xf32>, %[[OUT:[^:]+]]: memref<?x8x64xbf16>, %[[LSE:[^:]+]]: memref<?x8xf32>
// CHECK: %[[ARRIVALS:.+]] = memref.alloc(%{{.+}}) : memref<?x8xi32>
// CHECK: gpu.launch
// CHECK:   %[[COUNT:.+]] = scf.for %[[S:.+]] = %{{.+}} to %c40 step %{{.+}} iter_args(%{{.+}} = %c0_i32) -> (i32) {
// CHECK:     memref.store %{{.+}}, %[[PLSE]][%[[S]], %{{.+}}, %{{.+}}] : memref<40x?x8xf32>
// CHECK:     %[[BLOCK:.+]] = memref.load %[[SEL]][%{{.+}}, %{{.+}}, %[[S]]]
// CHECK:     arith.cmpi slt, %[[BLOCK]]
// CHECK:     arith.cmpi sge, %[[BLOCK]]
// CHECK:     %[[HELD:.+]] = scf.for %{{.+}} = %{{.+}} to %[[S]]
// CHECK:       arith.cmpi eq, %{{.+}}, %[[BLOCK]] : i32
// CHECK:     %[[FREE:.+]] = arith.xori %[[HELD]], %true
// CHECK:     %[[ATTENDS:.+]] = arith.andi %{{.+}}, %[[FREE]] : i1
// CHECK:     arith.select %[[ATTENDS]], %c1_i32, %c0_i32
// CHECK:   memref.store %[[COUNT]], %[[ARRIVALS]]
// CHECK:   arith.cmpi eq, %[[COUNT]], %c0_i32
// CHECK:   scf.if
// CHECK:     memref.store %{{.+}}, %[[OUT]]
// CHECK:     memref.store %{{.+}}, %[[LSE]]
// The attention kernel: after the partials, every lane's release fence,
// the warp's sync, one atomic decrement per row by its quad's first lane,
// and a ballot of the rows that reached zero.
// CHECK: gpu.launch
// CHECK:   nvvm.wgmma.mma_async
// CHECK:   memref.store %{{.+}}, %[[PLSE]]
// CHECK:   llvm.fence syncscope("device") acq_rel
// CHECK:   nvvm.bar.warp.sync
// CHECK:   memref.atomic_rmw addi %c-1_i32{{.*}}, %[[ARRIVALS]]
// CHECK:   nvvm.vote.sync  ballot
// CHECK:   memref.atomic_rmw addi %c-1_i32{{.*}}, %[[ARRIVALS]]
// CHECK:   nvvm.vote.sync  ballot
// Rows finished last: the acquire fence, then four rows at a time, eight
// lanes a row: the (4 round + lane / 8)-th set bit of the warp's 16, its
// token handed round from its quad's first lane (both halves' tokens).
// CHECK:   llvm.fence syncscope("device") acq_rel
// CHECK:   llvm.intr.ctpop
// CHECK:   scf.for
// CHECK:     scf.for %{{.+}} = %{{.+}} to %c16
// CHECK:     gpu.shuffle  idx
// CHECK:     gpu.shuffle  idx
// CHECK:     scf.if
// K = 40 slots in steps of eight: the max lse and a slot that holds it,
// its loads in flight together.
// CHECK:       scf.for %{{.+}} = %{{.+}} to %c5
// CHECK-COUNT-8: memref.load %[[PLSE]]
// CHECK:       scf.yield
// Then each slot's share; one that does not attend reads the best slot's
// row and adds nothing; 8 columns (16 bytes) of the lane's chunk.
// CHECK:       scf.for %{{.+}} = %{{.+}} to %c5
// CHECK:         llvm.nvvm.ex2.approx.ftz.f32
// CHECK:         arith.cmpf une
// CHECK:         vector.load {{.+}} {alignment = 16 : i64} : memref<40x?x8x64xbf16>, vector<8xbf16>
// CHECK:         vector.fma
// CHECK:       arith.truncf {{.+}} : vector<8xf32> to vector<8xbf16>
// CHECK:       vector.store %{{.+}}, %[[OUT]]{{.+}} {alignment = 16 : i64}
// CHECK:       math.log2
// CHECK:       memref.store %{{.+}}, %[[LSE]]
// CHECK: memref.dealloc %[[ARRIVALS]]
func.func @merged(%q: memref<?x8x64xbf16>, %kv: memref<?x2x64xbf16>, %cu: memref<?xi32>,
                  %sel: memref<?x8x40xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                  %o: memref<40x?x8x64xbf16>, %l: memref<40x?x8xf32>,
                  %out: memref<?x8x64xbf16>, %lse: memref<?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x64xbf16>) k(%kv : memref<?x2x64xbf16>)
      v(%kv : memref<?x2x64xbf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x40xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<40x?x8x64xbf16>, %l : memref<40x?x8xf32>)
      merge(%out : memref<?x8x64xbf16>, %lse : memref<?x8xf32>) {block_size = 16, scale = 0.125 : f32}
  return
}

// -----

// mma.sync, head_dim 48: 6 chunks of 8 columns a row, so lanes 6 and 7 of
// a row's eight read a clamped chunk and store nothing.
// SYNC-LABEL: func.func @head_dim_48
// SYNC: nvvm.mma.sync
// SYNC: memref.atomic_rmw addi
// SYNC: arith.cmpi ult, %{{.+}}, %c6
// SYNC: arith.minui %{{.+}}, %c5
// SYNC: vector.load {{.+}} : memref<3x?x4x48xf16>, vector<8xf16>
// SYNC: scf.if
// SYNC:   vector.store {{.+}} : memref<?x4x48xf16>, vector<8xf16>
func.func @head_dim_48(%q: memref<?x4x48xf16>, %kv: memref<?x4x48xf16>, %cu: memref<?xi32>,
                       %sel: memref<?x4x3xi32>, %s: memref<4x?xi32>, %e: memref<4x?xi32>,
                       %o: memref<3x?x4x48xf16>, %l: memref<3x?x4xf32>,
                       %out: memref<?x4x48xf16>, %lse: memref<?x4xf32>) {
  moba.grouped_block_attention q(%q : memref<?x4x48xf16>) k(%kv : memref<?x4x48xf16>)
      v(%kv : memref<?x4x48xf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x3xi32>)
      groups(%s : memref<4x?xi32>, %s : memref<4x?xi32>, %e : memref<4x?xi32>)
      outs(%o : memref<3x?x4x48xf16>, %l : memref<3x?x4xf32>)
      merge(%out : memref<?x4x48xf16>, %lse : memref<?x4xf32>) {block_size = 16, scale = 0.125 : f32}
  return
}
