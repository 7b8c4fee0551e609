// RUN: moba-opt %s --moba-decompose | FileCheck %s

// Packed layout, static shapes, GQA (32 query heads on 8 key/value heads):
// every stage, its sizes and its attributes.
//   blocks per sequence: ceil(max_seqlen 2560 / 512) = 5
//   blocks in the batch: min(2 * 5, 4096 / 512 + 2) = 10
//   scale: 1 / sqrt(128)

// CHECK-LABEL: func @varlen_gqa
// CHECK-SAME: (%[[Q:.+]]: tensor<4096x32x128xbf16>, %[[K:.+]]: tensor<4096x8x128xbf16>, %[[V:.+]]: tensor<4096x8x128xbf16>, %[[CU:.+]]: tensor<3xi32>)
// CHECK: %[[MEANS_INIT:.+]] = tensor.empty() : tensor<10x8x128xf32>
// CHECK: %[[MEANS:.+]] = moba.block_pool keys(%[[K]] : tensor<4096x8x128xbf16>)
// CHECK-SAME: cu_seqlens(%[[CU]] : tensor<3xi32>) outs(%[[MEANS_INIT]] : tensor<10x8x128xf32>) {block_size = 512 : i64}
// CHECK: %[[SCORES_INIT:.+]] = tensor.empty() : tensor<4096x32x5xf32>
// CHECK: %[[SCORES:.+]] = moba.gate queries(%[[Q]] : tensor<4096x32x128xbf16>)
// CHECK-SAME: means(%[[MEANS]] : tensor<10x8x128xf32>) cu_seqlens(%[[CU]] : tensor<3xi32>)
// CHECK-SAME: outs(%[[SCORES_INIT]] : tensor<4096x32x5xf32>) {block_size = 512 : i64}
// CHECK: %[[SEL_INIT:.+]] = tensor.empty() : tensor<4096x32x3xi32>
// CHECK: %[[SEL:.+]] = moba.topk scores(%[[SCORES]] : tensor<4096x32x5xf32>)
// CHECK-SAME: cu_seqlens(%[[CU]] : tensor<3xi32>) outs(%[[SEL_INIT]] : tensor<4096x32x3xi32>) {block_size = 512 : i64}
// CHECK: %[[OUT_INIT:.+]] = tensor.empty() : tensor<4096x32x128xbf16>
// CHECK: %[[LSE_INIT:.+]] = tensor.empty() : tensor<4096x32xf32>
// CHECK: %[[OUT:.+]], %[[LSE:.+]] = moba.sparse_attention q(%[[Q]] : tensor<4096x32x128xbf16>)
// CHECK-SAME: k(%[[K]] : tensor<4096x8x128xbf16>) v(%[[V]] : tensor<4096x8x128xbf16>)
// CHECK-SAME: cu_seqlens(%[[CU]] : tensor<3xi32>) selected(%[[SEL]] : tensor<4096x32x3xi32>)
// CHECK-SAME: outs(%[[OUT_INIT]] : tensor<4096x32x128xbf16>, %[[LSE_INIT]] : tensor<4096x32xf32>)
// CHECK-SAME: {block_size = 512 : i64, scale = 0.0883883461 : f32}
// CHECK: return %[[OUT]], %[[LSE]]
// CHECK-NOT: moba.attention
func.func @varlen_gqa(%q: tensor<4096x32x128xbf16>, %k: tensor<4096x8x128xbf16>,
                      %v: tensor<4096x8x128xbf16>, %cu: tensor<3xi32>)
    -> (tensor<4096x32x128xbf16>, tensor<4096x32xf32>) {
  %o, %lse = moba.attention q(%q : tensor<4096x32x128xbf16>) k(%k : tensor<4096x8x128xbf16>)
      v(%v : tensor<4096x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
      {block_size = 512, top_k = 3, max_seqlen = 2560}
      -> tensor<4096x32x128xbf16>, tensor<4096x32xf32>
  return %o, %lse : tensor<4096x32x128xbf16>, tensor<4096x32xf32>
}

// Without max_seqlen a sequence may hold every token: ceil(1000 / 64) = 16
// blocks; the batch at most min(3 * 16, 1000 / 64 + 3) = 18. The explicit
// scale is kept, the causal flag goes through to selection and attention, and
// an unused log-sum-exp is simply not returned.

// CHECK-LABEL: func @varlen_mqa_noncausal
// CHECK: tensor.empty() : tensor<18x1x64xf32>
// CHECK: moba.block_pool
// CHECK: tensor.empty() : tensor<1000x4x16xf32>
// CHECK: moba.gate
// CHECK: tensor.empty() : tensor<1000x4x2xi32>
// CHECK: moba.topk
// CHECK-SAME: {block_size = 64 : i64, causal = false}
// CHECK: %[[OUT:.+]], %{{.+}} = moba.sparse_attention
// CHECK-SAME: {block_size = 64 : i64, causal = false, scale = 5.000000e-01 : f32}
// CHECK: return %[[OUT]] : tensor<1000x4x64xf32>
func.func @varlen_mqa_noncausal(%q: tensor<1000x4x64xf32>, %k: tensor<1000x1x64xf32>,
                                %v: tensor<1000x1x64xf32>, %cu: tensor<4xi64>)
    -> tensor<1000x4x64xf32> {
  %o = moba.attention q(%q : tensor<1000x4x64xf32>) k(%k : tensor<1000x1x64xf32>)
      v(%v : tensor<1000x1x64xf32>) cu_seqlens(%cu : tensor<4xi64>)
      {block_size = 64, top_k = 2, causal = false, scale = 0.5 : f32}
      -> tensor<1000x4x64xf32>
  return %o : tensor<1000x4x64xf32>
}
