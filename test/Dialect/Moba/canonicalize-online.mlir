// RUN: moba-opt %s -canonicalize | FileCheck %s

// The online form folds a selection of every block to dense attention just as
// moba.sparse_attention does: a tiled attention keeps the special case.

// CHECK-LABEL: func @online_dense
// CHECK-NOT: moba.topk
// CHECK: moba.online_sparse_attention
// CHECK-NOT: selected
// CHECK-SAME: outs
func.func @online_dense(%q: tensor<256x4x32xf32>, %cu: tensor<3xi32>, %scores: tensor<256x4x4xf32>,
                        %a0: tensor<256x4x32xf32>, %m0: tensor<256x4xf32>, %s0: tensor<256x4xf32>) -> tensor<256x4x32xf32> {
  %i0 = tensor.empty() : tensor<256x4x5xi32>
  %sel = moba.topk scores(%scores : tensor<256x4x4xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%i0 : tensor<256x4x5xi32>) {block_size = 64, causal = false}
  %a, %m, %s = moba.online_sparse_attention q(%q : tensor<256x4x32xf32>) k(%q : tensor<256x4x32xf32>) v(%q : tensor<256x4x32xf32>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<256x4x5xi32>) outs(%a0 : tensor<256x4x32xf32>, %m0 : tensor<256x4xf32>, %s0 : tensor<256x4xf32>) {block_size = 64, scale = 0.17677669 : f32, causal = false}
  return %a : tensor<256x4x32xf32>
}

// A selection made over other sequences (another cu_seqlens value) says
// nothing about these blocks: it stays.

// CHECK-LABEL: func @other_sequences
// CHECK: moba.online_sparse_attention {{.+}} selected
func.func @other_sequences(%q: tensor<256x4x32xf32>, %cu: tensor<3xi32>, %cu2: tensor<3xi32>, %scores: tensor<256x4x4xf32>,
                           %a0: tensor<256x4x32xf32>, %m0: tensor<256x4xf32>, %s0: tensor<256x4xf32>) -> tensor<256x4x32xf32> {
  %i0 = tensor.empty() : tensor<256x4x4xi32>
  %sel = moba.topk scores(%scores : tensor<256x4x4xf32>) cu_seqlens(%cu2 : tensor<3xi32>) outs(%i0 : tensor<256x4x4xi32>) {block_size = 64}
  %a, %m, %s = moba.online_sparse_attention q(%q : tensor<256x4x32xf32>) k(%q : tensor<256x4x32xf32>) v(%q : tensor<256x4x32xf32>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<256x4x4xi32>) outs(%a0 : tensor<256x4x32xf32>, %m0 : tensor<256x4xf32>, %s0 : tensor<256x4xf32>) {block_size = 64, scale = 0.17677669 : f32}
  return %a : tensor<256x4x32xf32>
}
