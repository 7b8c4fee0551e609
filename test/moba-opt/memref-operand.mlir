// The moba ops work on tensors; a buffer gets a type error naming the operand.
// RUN: not moba-opt %s 2>&1 | FileCheck %s
// CHECK: error: 'moba.attention' op operand #0 must be ranked tensor of 16-bit float or bfloat16 type or 32-bit float values, but got 'memref<64x4x32xbf16>'
// CHECK-NOT: Stack dump
func.func @buffers(%q: memref<64x4x32xbf16>, %t: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  %o = "moba.attention"(%q, %t, %t, %cu) {block_size = 16 : i64, top_k = 2 : i64} : (memref<64x4x32xbf16>, tensor<64x4x32xbf16>, tensor<64x4x32xbf16>, tensor<2xi32>) -> tensor<64x4x32xbf16>
  return
}
