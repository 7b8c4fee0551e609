// The type written in the op must be the type of the value.
// RUN: not moba-opt %s 2>&1 | FileCheck %s
// CHECK: error: use of value '%q' expects different type than prior uses: 'tensor<64x4x16xbf16>' vs 'tensor<64x4x32xbf16>'
// CHECK-NOT: Stack dump
func.func @mismatch(%q: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  %o = moba.attention q(%q : tensor<64x4x16xbf16>) k(%q : tensor<64x4x32xbf16>) v(%q : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xbf16>
  return
}
