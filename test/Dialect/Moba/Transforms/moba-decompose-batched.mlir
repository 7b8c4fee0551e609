// RUN: moba-opt %s --moba-decompose | FileCheck %s

// The batched layout is collapsed to the packed one with uniform offsets, and
// the output and log-sum-exp are expanded back. Static sizes:
//   blocks per sequence: ceil(300 / 128) = 3; in the batch: 2 * 3 = 6.

// CHECK-LABEL: func @batched
// CHECK-SAME: (%[[Q:.+]]: tensor<2x300x8x64xf16>, %[[K:.+]]: tensor<2x300x2x64xf16>, %[[V:.+]]: tensor<2x300x2x64xf16>)
// CHECK-DAG: %[[CU:.+]] = arith.constant dense<[0, 300, 600]> : tensor<3xi32>
// CHECK-DAG: %[[QP:.+]] = tensor.collapse_shape %[[Q]] {{\[\[}}0, 1], [2], [3]] : tensor<2x300x8x64xf16> into tensor<600x8x64xf16>
// CHECK-DAG: %[[KP:.+]] = tensor.collapse_shape %[[K]] {{\[\[}}0, 1], [2], [3]] : tensor<2x300x2x64xf16> into tensor<600x2x64xf16>
// CHECK-DAG: %[[VP:.+]] = tensor.collapse_shape %[[V]] {{\[\[}}0, 1], [2], [3]] : tensor<2x300x2x64xf16> into tensor<600x2x64xf16>
// CHECK: %[[MEANS:.+]] = moba.block_pool keys(%[[KP]] : tensor<600x2x64xf16>) cu_seqlens(%[[CU]] : tensor<3xi32>) outs(%{{.+}} : tensor<6x2x64xf32>)
// CHECK: %[[SCORES:.+]] = moba.gate queries(%[[QP]] : tensor<600x8x64xf16>) means(%[[MEANS]] : tensor<6x2x64xf32>) cu_seqlens(%[[CU]] : tensor<3xi32>) outs(%{{.+}} : tensor<600x8x3xf32>)
// CHECK: %[[SEL:.+]] = moba.topk scores(%[[SCORES]] : tensor<600x8x3xf32>) cu_seqlens(%[[CU]] : tensor<3xi32>) outs(%{{.+}} : tensor<600x8x2xi32>)
// CHECK: %[[OUT:.+]], %[[LSE:.+]] = moba.sparse_attention q(%[[QP]] : tensor<600x8x64xf16>) k(%[[KP]] : tensor<600x2x64xf16>) v(%[[VP]] : tensor<600x2x64xf16>) cu_seqlens(%[[CU]] : tensor<3xi32>) selected(%[[SEL]] : tensor<600x8x2xi32>)
// CHECK-SAME: scale = 1.250000e-01 : f32
// CHECK: %[[O4:.+]] = tensor.expand_shape %[[OUT]] {{\[\[}}0, 1], [2], [3]] output_shape [2, 300, 8, 64] : tensor<600x8x64xf16> into tensor<2x300x8x64xf16>
// CHECK: %[[L3:.+]] = tensor.expand_shape %[[LSE]] {{\[\[}}0, 1], [2]] output_shape [2, 300, 8] : tensor<600x8xf32> into tensor<2x300x8xf32>
// CHECK: return %[[O4]], %[[L3]]
func.func @batched(%q: tensor<2x300x8x64xf16>, %k: tensor<2x300x2x64xf16>, %v: tensor<2x300x2x64xf16>)
    -> (tensor<2x300x8x64xf16>, tensor<2x300x8xf32>) {
  %o, %lse = moba.attention q(%q : tensor<2x300x8x64xf16>) k(%k : tensor<2x300x2x64xf16>) v(%v : tensor<2x300x2x64xf16>)
      {block_size = 128, top_k = 2} -> tensor<2x300x8x64xf16>, tensor<2x300x8xf32>
  return %o, %lse : tensor<2x300x8x64xf16>, tensor<2x300x8xf32>
}

// No log-sum-exp asked for: none is expanded.

// CHECK-LABEL: func @batched_output_only
// CHECK: moba.sparse_attention
// CHECK: tensor.expand_shape
// CHECK-NOT: tensor.expand_shape
// CHECK: return
func.func @batched_output_only(%q: tensor<1x64x2x16xbf16>, %k: tensor<1x64x2x16xbf16>, %v: tensor<1x64x2x16xbf16>)
    -> tensor<1x64x2x16xbf16> {
  %o = moba.attention q(%q : tensor<1x64x2x16xbf16>) k(%k : tensor<1x64x2x16xbf16>) v(%v : tensor<1x64x2x16xbf16>)
      {block_size = 16, top_k = 2} -> tensor<1x64x2x16xbf16>
  return %o : tensor<1x64x2x16xbf16>
}
