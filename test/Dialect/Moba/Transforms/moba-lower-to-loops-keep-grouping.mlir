// RUN: moba-opt %s --split-input-file --moba-lower-to-loops="parallel=true keep-warp-compatible-grouping=true" | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-lower-to-loops="parallel=true" | FileCheck %s --check-prefix=LOOPS

// keep-warp-compatible-grouping leaves the grouping (static K <= 32) for
// moba-convert-group-queries-to-nvvm, which runs after bufferization;
// without it, the parallel loops take it.
// CHECK-LABEL: func.func @kept
// CHECK: moba.group_queries
// CHECK-NOT: scf.forall
// LOOPS-LABEL: func.func @kept
// LOOPS-NOT: moba.group_queries
// LOOPS: scf.forall
func.func @kept(%sel: tensor<64x2x3xi32>, %cu: tensor<2xi32>)
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

// -----

// K = 33 has no warp lowering: the loops take it either way.
// CHECK-LABEL: func.func @too_many_slots
// CHECK-NOT: moba.group_queries
// CHECK: scf.forall
func.func @too_many_slots(%sel: tensor<64x2x33xi32>, %cu: tensor<2xi32>)
    -> tensor<2x2112xi32> {
  %s = tensor.empty() : tensor<2x2xi32>
  %c = tensor.empty() : tensor<2x2xi32>
  %e = tensor.empty() : tensor<2x2112xi32>
  %g:3 = moba.group_queries selected(%sel : tensor<64x2x33xi32>)
      cu_seqlens(%cu : tensor<2xi32>)
      outs(%s : tensor<2x2xi32>, %c : tensor<2x2xi32>, %e : tensor<2x2112xi32>)
      {block_size = 32}
  return %g#2 : tensor<2x2112xi32>
}
