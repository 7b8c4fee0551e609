// Each operand is introduced by its keyword; leaving one out says which.
// RUN: not moba-opt %s 2>&1 | FileCheck %s
// CHECK: error: custom op 'moba.attention' expected 'k'
// CHECK-NOT: Stack dump
func.func @no_k(%q: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) v(%q : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}
