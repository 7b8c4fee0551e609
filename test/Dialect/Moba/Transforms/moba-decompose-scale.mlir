// RUN: moba-opt %s --moba-decompose | FileCheck %s

// The softmax scale is applied once, in moba.sparse_attention: the gate has
// none (it only ranks blocks, and a positive scale never changes a ranking).

// The default 1/sqrt(head_dim) is 1/sqrt(64) = 0.125.
// CHECK-LABEL: func @default_scale
// CHECK: moba.gate
// CHECK-NOT: scale
// CHECK-SAME: {block_size = 16 : i64}
// CHECK: moba.sparse_attention {{.+}} scale = 1.250000e-01 : f32
func.func @default_scale(%q: tensor<64x2x64xf32>, %cu: tensor<2xi32>) -> tensor<64x2x64xf32> {
  %o = moba.attention q(%q : tensor<64x2x64xf32>) k(%q : tensor<64x2x64xf32>) v(%q : tensor<64x2x64xf32>) cu_seqlens(%cu : tensor<2xi32>)
      {block_size = 16, top_k = 2} -> tensor<64x2x64xf32>
  return %o : tensor<64x2x64xf32>
}

// head_dim dynamic in q but static in k: the default still follows from it.
// CHECK-LABEL: func @head_dim_from_k
// CHECK: moba.sparse_attention {{.+}} scale = 0.0883883461 : f32
func.func @head_dim_from_k(%q: tensor<64x2x?xf32>, %k: tensor<64x2x128xf32>, %cu: tensor<2xi32>) -> tensor<64x2x?xf32> {
  %o = moba.attention q(%q : tensor<64x2x?xf32>) k(%k : tensor<64x2x128xf32>) v(%k : tensor<64x2x128xf32>) cu_seqlens(%cu : tensor<2xi32>)
      {block_size = 16, top_k = 2} -> tensor<64x2x?xf32>
  return %o : tensor<64x2x?xf32>
}

// An explicit scale wins over the default.
// CHECK-LABEL: func @explicit_scale
// CHECK: moba.sparse_attention {{.+}} scale = 3.000000e+00 : f32
func.func @explicit_scale(%q: tensor<64x2x64xf32>, %cu: tensor<2xi32>) -> tensor<64x2x64xf32> {
  %o = moba.attention q(%q : tensor<64x2x64xf32>) k(%q : tensor<64x2x64xf32>) v(%q : tensor<64x2x64xf32>) cu_seqlens(%cu : tensor<2xi32>)
      {block_size = 16, top_k = 2, scale = 3.0 : f32} -> tensor<64x2x64xf32>
  return %o : tensor<64x2x64xf32>
}
