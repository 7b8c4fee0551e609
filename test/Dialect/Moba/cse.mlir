// RUN: moba-opt %s -cse -canonicalize | FileCheck %s

// The moba ops are pure: equal ones are computed once (cse), unused ones
// disappear (canonicalize).

// CHECK-LABEL: func @pure
// CHECK: %[[A:.+]] = moba.block_pool
// CHECK-NOT: moba.block_pool
// CHECK-NOT: moba.lse_merge
// CHECK: return %[[A]], %[[A]]
func.func @pure(%k: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %m0: tensor<4x4x32xf32>,
                %p: tensor<2x64x4x32xf32>, %pl: tensor<2x64x4xf32>, %o0: tensor<64x4x32xbf16>, %l0: tensor<64x4xf32>)
    -> (tensor<4x4x32xf32>, tensor<4x4x32xf32>) {
  %a = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m0 : tensor<4x4x32xf32>) {block_size = 16}
  %b = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m0 : tensor<4x4x32xf32>) {block_size = 16}
  %unused:2 = moba.lse_merge partials(%p : tensor<2x64x4x32xf32>) partial_lse(%pl : tensor<2x64x4xf32>) outs(%o0 : tensor<64x4x32xbf16>, %l0 : tensor<64x4xf32>)
  return %a, %b : tensor<4x4x32xf32>, tensor<4x4x32xf32>
}

// A different block size is a different computation.

// CHECK-LABEL: func @not_equal
// CHECK: moba.block_pool
// CHECK: moba.block_pool
func.func @not_equal(%k: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %m0: tensor<4x4x32xf32>)
    -> (tensor<4x4x32xf32>, tensor<4x4x32xf32>) {
  %a = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m0 : tensor<4x4x32xf32>) {block_size = 16}
  %b = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m0 : tensor<4x4x32xf32>) {block_size = 32}
  return %a, %b : tensor<4x4x32xf32>, tensor<4x4x32xf32>
}
