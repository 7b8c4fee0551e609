// Text cut off in the middle of an op is a parse error at the cut.
// RUN: not moba-opt %s --moba-decompose 2>&1 | FileCheck %s
// CHECK: truncated.mlir:{{[0-9]+}}:{{[0-9]+}}: error: expected
// CHECK-NOT: Stack dump
func.func @cut(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>) {
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(
