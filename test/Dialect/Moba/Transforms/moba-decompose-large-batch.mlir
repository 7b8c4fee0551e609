// RUN: moba-opt %s --moba-decompose | FileCheck %s

// When B * S does not fit in i32, the generated offsets are i64.

// CHECK-LABEL: func @large
// CHECK: arith.constant dense<[0, 2147483648, 4294967296]> : tensor<3xi64>
// CHECK: moba.block_pool {{.+}} cu_seqlens(%{{.+}} : tensor<3xi64>) outs(%{{.+}} : tensor<33554432x1x8xf32>)
func.func @large(%q: tensor<2x2147483648x1x8xbf16>) -> tensor<2x2147483648x1x8xbf16> {
  %o = moba.attention q(%q : tensor<2x2147483648x1x8xbf16>) k(%q : tensor<2x2147483648x1x8xbf16>) v(%q : tensor<2x2147483648x1x8xbf16>)
      {block_size = 128, top_k = 8} -> tensor<2x2147483648x1x8xbf16>
  return %o : tensor<2x2147483648x1x8xbf16>
}

// Right at the limit the offsets stay i32.

// CHECK-LABEL: func @at_limit
// CHECK: arith.constant dense<[0, 2147483647]> : tensor<2xi32>
func.func @at_limit(%q: tensor<1x2147483647x1x8xbf16>) -> tensor<1x2147483647x1x8xbf16> {
  %o = moba.attention q(%q : tensor<1x2147483647x1x8xbf16>) k(%q : tensor<1x2147483647x1x8xbf16>) v(%q : tensor<1x2147483647x1x8xbf16>)
      {block_size = 128, top_k = 8} -> tensor<1x2147483647x1x8xbf16>
  return %o : tensor<1x2147483647x1x8xbf16>
}

// A batch too large for a constant (B + 1 values in the IR): the offsets are
// generated, with the static count.

// CHECK-LABEL: func @huge_batch
// CHECK-NOT: arith.constant dense
// CHECK: %[[OFFSETS:.+]] = tensor.generate
// CHECK: arith.index_cast %{{.+}} : index to i64
// CHECK: } : tensor<8589934593xi64>
// CHECK: moba.block_pool {{.+}} cu_seqlens(%[[OFFSETS]] : tensor<8589934593xi64>)
func.func @huge_batch(%q: tensor<8589934592x1x1x8xbf16>) -> tensor<8589934592x1x1x8xbf16> {
  %o = moba.attention q(%q : tensor<8589934592x1x1x8xbf16>) k(%q : tensor<8589934592x1x1x8xbf16>) v(%q : tensor<8589934592x1x1x8xbf16>)
      {block_size = 128, top_k = 8} -> tensor<8589934592x1x1x8xbf16>
  return %o : tensor<8589934592x1x1x8xbf16>
}
