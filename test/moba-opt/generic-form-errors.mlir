// The generic form reaches the verifiers too: wrong operand count, a
// top_k that is no integer.
// RUN: not moba-opt %s -split-input-file 2>&1 | FileCheck %s
// CHECK-NOT: Stack dump

// CHECK: error: 'moba.attention' op expected 3 or more operands, but found 2
func.func @operands(%q: tensor<64x4x32xbf16>) {
  %o = "moba.attention"(%q, %q) {block_size = 16 : i64, top_k = 2 : i64} : (tensor<64x4x32xbf16>, tensor<64x4x32xbf16>) -> tensor<64x4x32xbf16>
  return
}

// -----

// CHECK: error: 'moba.attention' op attribute 'top_k' failed to satisfy constraint: 64-bit signless integer attribute
func.func @top_k_string(%q: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  %o = "moba.attention"(%q, %q, %q, %cu) {block_size = 16 : i64, top_k = "three"} : (tensor<64x4x32xbf16>, tensor<64x4x32xbf16>, tensor<64x4x32xbf16>, tensor<2xi32>) -> tensor<64x4x32xbf16>
  return
}

// -----

// CHECK: error: 'moba.sparse_attention' op failed to verify that all of {out_init, output} have same type
func.func @result_type(%q: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %o: tensor<64x4x32xbf16>, %l: tensor<64x4xf32>) {
  %r:2 = "moba.sparse_attention"(%q, %q, %q, %cu, %o, %l) {block_size = 16 : i64, scale = 0.5 : f32} : (tensor<64x4x32xbf16>, tensor<64x4x32xbf16>, tensor<64x4x32xbf16>, tensor<2xi32>, tensor<64x4x32xbf16>, tensor<64x4xf32>) -> (tensor<32x4x32xbf16>, tensor<64x4xf32>)
  return
}
