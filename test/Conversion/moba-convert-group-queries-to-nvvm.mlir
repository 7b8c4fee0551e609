// RUN: moba-opt %s --split-input-file --moba-convert-group-queries-to-nvvm --verify-diagnostics | FileCheck %s

// Three launches around a scratch buffer of cursors [heads, rows, chunks].
// Count: a warp per (head, chunk) zeroes its cursor column, then walks the
// chunk 32 / K = 10 tokens a step (lane = token x slot): the selection
// read, the lanes of equal block rows found twice by match.sync (once for
// the repeats within a token, once for the row's attending lanes), and one
// atomic add of the lanes' number (ctpop) by the row's lowest lane (cttz).
// It writes no entry. Scan: a CTA of 512 threads per head, 4 cursors a
// thread, prefix sums over its lanes and over its 16 warps (shuffles up)
// through 33 words of shared memory, then starts, counts and the -1 tail.
// Place: the same walk, the old cursor handed to the row's lanes (shuffle
// idx), each entry written at it plus its rank, a warp barrier per step.

// CHECK-LABEL: func.func @grouping
// CHECK: %[[CURSORS:.+]] = memref.alloc(%{{.+}}, %{{.+}}) : memref<4x?x?xi32>
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK:   memref.store %c0_i32{{.*}}, %[[CURSORS]]
// CHECK:   nvvm.bar.warp.sync
// CHECK:   arith.divui %{{.+}}, %c3
// CHECK:   scf.for
// CHECK:     arith.muli %{{.+}}, %c10
// CHECK:     memref.load %{{.+}} : memref<?x4x3xi32>
// CHECK:     nvvm.match.sync any
// CHECK:     nvvm.match.sync any
// CHECK:     llvm.intr.cttz
// CHECK:     llvm.intr.ctpop
// CHECK:     memref.atomic_rmw addi %{{.+}}, %[[CURSORS]]
// CHECK-NOT: memref.store {{.+}} : memref<4x?xi32>
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c512{{.*}}) workgroup(%[[TOTALS:.+]] : memref<33xi32, #gpu.address_space<workgroup>>)
// CHECK:   scf.for {{.+}} step %c2048 iter_args
// CHECK-COUNT-4: memref.load %[[CURSORS]]
// CHECK-COUNT-5: gpu.shuffle  up
// CHECK:     memref.store %{{.+}}, %[[TOTALS]]
// CHECK:     gpu.barrier
// CHECK-COUNT-5: gpu.shuffle  up
// CHECK:     gpu.barrier
// CHECK-COUNT-4: memref.store %{{.+}}, %[[CURSORS]]
// CHECK:     gpu.barrier
// CHECK:   gpu.barrier
// CHECK:   scf.for
// CHECK:     memref.store %{{.+}}, %arg2
// CHECK:     memref.store %{{.+}}, %arg3
// CHECK:   scf.for
// CHECK:     memref.store %c-1_i32{{.*}}, %arg4
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK-NOT: memref.store %c0_i32{{.*}}, %[[CURSORS]]
// CHECK:   scf.for
// CHECK:     nvvm.match.sync any
// CHECK:     nvvm.match.sync any
// CHECK:     memref.atomic_rmw addi %{{.+}}, %[[CURSORS]]
// CHECK:     gpu.shuffle  idx
// CHECK:     memref.store %{{.+}}, %arg4
// CHECK:     nvvm.bar.warp.sync
// CHECK: memref.dealloc %[[CURSORS]]
// CHECK-NOT: moba.group_queries
func.func @grouping(%sel: memref<?x4x3xi32>, %cu: memref<?xi32>,
                    %starts: memref<4x?xi32>, %counts: memref<4x?xi32>,
                    %entries: memref<4x?xi32>) {
  moba.group_queries selected(%sel : memref<?x4x3xi32>)
      cu_seqlens(%cu : memref<?xi32>)
      outs(%starts : memref<4x?xi32>, %counts : memref<4x?xi32>,
           %entries : memref<4x?xi32>) {block_size = 64}
  return
}

// -----

// K = 32: one token a step, every lane a slot.
// CHECK-LABEL: func.func @one_token_a_step
// CHECK: arith.divui %{{.+}}, %c32
// CHECK: nvvm.match.sync any
func.func @one_token_a_step(%sel: memref<?x2x32xi32>, %cu: memref<?xi32>,
                            %starts: memref<2x?xi32>, %counts: memref<2x?xi32>,
                            %entries: memref<2x?xi32>) {
  moba.group_queries selected(%sel : memref<?x2x32xi32>)
      cu_seqlens(%cu : memref<?xi32>)
      outs(%starts : memref<2x?xi32>, %counts : memref<2x?xi32>,
           %entries : memref<2x?xi32>) {block_size = 16}
  return
}

// -----

// More slots than lanes: no warp lowering (moba-lower-to-loops keeps the
// op only when K <= 32, so this is a pipeline out of order).
func.func @too_many_slots(%sel: memref<?x2x33xi32>, %cu: memref<?xi32>,
                          %starts: memref<2x?xi32>, %counts: memref<2x?xi32>,
                          %entries: memref<2x?xi32>) {
  // expected-error @+1 {{has no warp lowering: it needs static query heads and a static K of at most 32, got 'memref<?x2x33xi32>'}}
  moba.group_queries selected(%sel : memref<?x2x33xi32>)
      cu_seqlens(%cu : memref<?xi32>)
      outs(%starts : memref<2x?xi32>, %counts : memref<2x?xi32>,
           %entries : memref<2x?xi32>) {block_size = 16}
  return
}

// -----

// On tensors the op is left to moba-lower-to-loops.
// CHECK-LABEL: func.func @tensors
// CHECK: moba.group_queries
func.func @tensors(%sel: tensor<64x2x3xi32>, %cu: tensor<2xi32>)
    -> (tensor<2x2xi32>, tensor<2x2xi32>, tensor<2x192xi32>) {
  %s = tensor.empty() : tensor<2x2xi32>
  %c = tensor.empty() : tensor<2x2xi32>
  %e = tensor.empty() : tensor<2x192xi32>
  %g:3 = moba.group_queries selected(%sel : tensor<64x2x3xi32>)
      cu_seqlens(%cu : tensor<2xi32>)
      outs(%s : tensor<2x2xi32>, %c : tensor<2x2xi32>, %e : tensor<2x192xi32>)
      {block_size = 32}
  return %g#0, %g#1, %g#2 : tensor<2x2xi32>, tensor<2x2xi32>, tensor<2x192xi32>
}
