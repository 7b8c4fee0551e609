// RUN: moba-opt %s --moba-fuse-gate-topk | FileCheck %s

// CHECK-LABEL: func @fuse
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x4x16xf32>, %[[M:[^:]+]]: tensor<?x2x16xf32>, %[[CU:[^:]+]]: tensor<?xi32>, %{{[^:]+}}: tensor<?x4x8xf32>, %[[I:[^:]+]]: tensor<?x4x3xi32>)
// CHECK-NOT: moba.gate queries
// CHECK-NOT: moba.topk
// CHECK: %[[SEL:.+]] = moba.gate_topk queries(%[[Q]] : tensor<?x4x16xf32>) means(%[[M]] : tensor<?x2x16xf32>) cu_seqlens(%[[CU]] : tensor<?xi32>) outs(%[[I]] : tensor<?x4x3xi32>) {block_size = 16 : i64, causal = false}
// CHECK: return %[[SEL]]
func.func @fuse(%q: tensor<?x4x16xf32>, %means: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %s0: tensor<?x4x8xf32>, %i0: tensor<?x4x3xi32>) -> tensor<?x4x3xi32> {
  %scores = moba.gate queries(%q : tensor<?x4x16xf32>) means(%means : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%s0 : tensor<?x4x8xf32>) {block_size = 16}
  %sel = moba.topk scores(%scores : tensor<?x4x8xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%i0 : tensor<?x4x3xi32>) {block_size = 16, causal = false}
  return %sel : tensor<?x4x3xi32>
}

// Scores that are also returned must exist: no fusion.
// CHECK-LABEL: func @scores_used
// CHECK: moba.gate queries
// CHECK: moba.topk scores
// CHECK-NOT: moba.gate_topk
func.func @scores_used(%q: tensor<?x4x16xf32>, %means: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %s0: tensor<?x4x8xf32>, %i0: tensor<?x4x3xi32>) -> (tensor<?x4x3xi32>, tensor<?x4x8xf32>) {
  %scores = moba.gate queries(%q : tensor<?x4x16xf32>) means(%means : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%s0 : tensor<?x4x8xf32>) {block_size = 16}
  %sel = moba.topk scores(%scores : tensor<?x4x8xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%i0 : tensor<?x4x3xi32>) {block_size = 16}
  return %sel, %scores : tensor<?x4x3xi32>, tensor<?x4x8xf32>
}

// Scored with another block size: not the same blocks, no fusion.
// CHECK-LABEL: func @other_blocks
// CHECK: moba.topk scores
func.func @other_blocks(%q: tensor<?x4x16xf32>, %means: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %s0: tensor<?x4x8xf32>, %i0: tensor<?x4x3xi32>) -> tensor<?x4x3xi32> {
  %scores = moba.gate queries(%q : tensor<?x4x16xf32>) means(%means : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%s0 : tensor<?x4x8xf32>) {block_size = 32}
  %sel = moba.topk scores(%scores : tensor<?x4x8xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%i0 : tensor<?x4x3xi32>) {block_size = 16}
  return %sel : tensor<?x4x3xi32>
}
