// RUN: moba-opt %s -emit-bytecode | moba-opt | FileCheck %s

// The ops survive MLIR bytecode, optional operands and default attributes
// included.

// CHECK-LABEL: func @bytecode
// CHECK: moba.attention {{.+}} {block_size = 32 : i64, causal = false, scale = 1.250000e-01 : f32, top_k = 2 : i64}
// CHECK: moba.topk cu_seqlens
// CHECK: moba.sparse_attention
// CHECK-NOT: selected
// CHECK-SAME: outs
func.func @bytecode(%q: tensor<2x64x4x32xbf16>, %qp: tensor<128x4x32xbf16>, %cu: tensor<3xi32>,
                    %sel0: tensor<128x4x1xi32>, %o0: tensor<128x4x32xbf16>, %l0: tensor<128x4xf32>)
    -> (tensor<2x64x4x32xbf16>, tensor<128x4x1xi32>, tensor<128x4x32xbf16>) {
  %o = moba.attention q(%q : tensor<2x64x4x32xbf16>) k(%q : tensor<2x64x4x32xbf16>) v(%q : tensor<2x64x4x32xbf16>)
      {block_size = 32, top_k = 2, causal = false, scale = 0.125 : f32} -> tensor<2x64x4x32xbf16>
  %sel = moba.topk cu_seqlens(%cu : tensor<3xi32>) outs(%sel0 : tensor<128x4x1xi32>) {block_size = 32}
  %po, %pl = moba.sparse_attention q(%qp : tensor<128x4x32xbf16>) k(%qp : tensor<128x4x32xbf16>) v(%qp : tensor<128x4x32xbf16>)
      cu_seqlens(%cu : tensor<3xi32>) outs(%o0 : tensor<128x4x32xbf16>, %l0 : tensor<128x4xf32>) {block_size = 32, scale = 0.125 : f32}
  return %o, %sel, %po : tensor<2x64x4x32xbf16>, tensor<128x4x1xi32>, tensor<128x4x32xbf16>
}
