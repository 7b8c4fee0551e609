// RUN: not moba-opt %s 2>&1 | FileCheck %s
// CHECK: error: custom op 'moba.attentoin' is unknown
// CHECK-NOT: Stack dump
func.func @typo(%q: tensor<64x4x32xbf16>) {
  %o = moba.attentoin q(%q : tensor<64x4x32xbf16>) k(%q : tensor<64x4x32xbf16>) v(%q : tensor<64x4x32xbf16>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}
