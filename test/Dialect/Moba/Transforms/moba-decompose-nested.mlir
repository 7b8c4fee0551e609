// RUN: moba-opt %s --pass-pipeline='builtin.module(func.func(moba-decompose))' | FileCheck %s

// The pass runs on any op: here nested on functions, with attention ops in
// a loop body and several in one function (as in a layer stack).

// CHECK-LABEL: func @layers
// CHECK: scf.for
// CHECK:   moba.block_pool
// CHECK:   moba.sparse_attention
// CHECK:   moba.block_pool
// CHECK:   moba.sparse_attention
// CHECK:   scf.yield
// CHECK-NOT: moba.attention
func.func @layers(%x: tensor<256x4x32xbf16>, %cu: tensor<3xi32>, %n: index) -> tensor<256x4x32xbf16> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %r = scf.for %i = %c0 to %n step %c1 iter_args(%h = %x) -> tensor<256x4x32xbf16> {
    %a = moba.attention q(%h : tensor<256x4x32xbf16>) k(%h : tensor<256x4x32xbf16>) v(%h : tensor<256x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>)
        {block_size = 64, top_k = 2} -> tensor<256x4x32xbf16>
    %b = moba.attention q(%a : tensor<256x4x32xbf16>) k(%a : tensor<256x4x32xbf16>) v(%a : tensor<256x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>)
        {block_size = 32, top_k = 3} -> tensor<256x4x32xbf16>
    scf.yield %b : tensor<256x4x32xbf16>
  }
  return %r : tensor<256x4x32xbf16>
}
