// RUN: moba-opt %s --moba-decompose | FileCheck %s

// Dynamic shapes: the sizes of the intermediate tensors are computed from
// tensor.dim at run time with the same formulas as the static case.

// CHECK-LABEL: func @varlen_dynamic
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x8x?xbf16>, %{{.+}}: tensor<?x1x?xbf16>, %{{.+}}: tensor<?x1x?xbf16>, %[[CU:[^:]+]]: tensor<?xi32>)
// CHECK-DAG: %[[T:.+]] = tensor.dim %[[Q]], %{{.+}} : tensor<?x8x?xbf16>
// CHECK-DAG: %[[NCU:.+]] = tensor.dim %[[CU]], %{{.+}} : tensor<?xi32>
// CHECK-DAG: %[[B:.+]] = arith.subi %[[NCU]], %{{.+}} : index
// CHECK-DAG: %[[D:.+]] = tensor.dim %[[Q]], %{{.+}} : tensor<?x8x?xbf16>
// CHECK: %[[MB0:.+]] = arith.ceildivui %[[T]], %{{.+}} : index
// CHECK: %[[MB:.+]] = arith.maxui %[[MB0]], %{{.+}} : index
// CHECK: %[[FULL:.+]] = arith.divui %[[T]], %{{.+}} : index
// CHECK: %[[BOUND1:.+]] = arith.addi %[[FULL]], %[[B]] : index
// CHECK: %[[BOUND2:.+]] = arith.muli %[[B]], %[[MB]] : index
// CHECK: %[[NB0:.+]] = arith.minui %[[BOUND2]], %[[BOUND1]] : index
// CHECK: %[[NB:.+]] = arith.maxui %[[NB0]], %{{.+}} : index
// CHECK: %[[MEANS_INIT:.+]] = tensor.empty(%[[NB]], %[[D]]) : tensor<?x1x?xf32>
// CHECK: moba.block_pool {{.+}} outs(%[[MEANS_INIT]] : tensor<?x1x?xf32>)
// CHECK: %[[SCORES_INIT:.+]] = tensor.empty(%[[T]], %[[MB]]) : tensor<?x8x?xf32>
// CHECK: moba.gate {{.+}} outs(%[[SCORES_INIT]] : tensor<?x8x?xf32>)
// CHECK: %[[SEL_INIT:.+]] = tensor.empty(%[[T]]) : tensor<?x8x4xi32>
// CHECK: moba.topk {{.+}} outs(%[[SEL_INIT]] : tensor<?x8x4xi32>)
// CHECK: moba.sparse_attention
// CHECK-SAME: scale = 1.000000e-01 : f32
func.func @varlen_dynamic(%q: tensor<?x8x?xbf16>, %k: tensor<?x1x?xbf16>, %v: tensor<?x1x?xbf16>, %cu: tensor<?xi32>)
    -> tensor<?x8x?xbf16> {
  %o = moba.attention q(%q : tensor<?x8x?xbf16>) k(%k : tensor<?x1x?xbf16>) v(%v : tensor<?x1x?xbf16>) cu_seqlens(%cu : tensor<?xi32>)
      {block_size = 64, top_k = 4, scale = 0.1 : f32} -> tensor<?x8x?xbf16>
  return %o : tensor<?x8x?xbf16>
}

// Dynamic batch and sequence length: the offsets [0, S, ..., B*S] are
// generated (i64, as B*S is unknown), and the results expanded with the
// run-time sizes.

// CHECK-LABEL: func @batched_dynamic
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x?x4x16xf32>
// CHECK: %[[B:.+]] = tensor.dim %[[Q]], %{{.+}} : tensor<?x?x4x16xf32>
// CHECK: %[[S:.+]] = tensor.dim %[[Q]], %{{.+}} : tensor<?x?x4x16xf32>
// CHECK: %[[N:.+]] = arith.addi %[[B]], %{{.+}} : index
// CHECK: %[[CU:.+]] = tensor.generate %[[N]] {
// CHECK: ^bb0(%[[I:.+]]: index):
// CHECK:   %[[OFF:.+]] = arith.muli %[[I]], %[[S]] : index
// CHECK:   %[[OFF64:.+]] = arith.index_cast %[[OFF]] : index to i64
// CHECK:   tensor.yield %[[OFF64]] : i64
// CHECK: } : tensor<?xi64>
// CHECK: %[[OUT:.+]], %[[LSE:.+]] = moba.sparse_attention {{.+}} cu_seqlens(%[[CU]] : tensor<?xi64>)
// CHECK: tensor.expand_shape %[[OUT]] {{\[\[}}0, 1], [2], [3]] output_shape [%[[B]], %[[S]], 4, 16]
// CHECK: tensor.expand_shape %[[LSE]] {{\[\[}}0, 1], [2]] output_shape [%[[B]], %[[S]], 4]
func.func @batched_dynamic(%q: tensor<?x?x4x16xf32>, %k: tensor<?x?x4x16xf32>, %v: tensor<?x?x4x16xf32>)
    -> (tensor<?x?x4x16xf32>, tensor<?x?x4xf32>) {
  %o, %l = moba.attention q(%q : tensor<?x?x4x16xf32>) k(%k : tensor<?x?x4x16xf32>) v(%v : tensor<?x?x4x16xf32>)
      {block_size = 16, top_k = 3} -> tensor<?x?x4x16xf32>, tensor<?x?x4xf32>
  return %o, %l : tensor<?x?x4x16xf32>, tensor<?x?x4xf32>
}
