// RUN: moba-opt %s --moba-decompose --canonicalize | FileCheck %s

// The special cases of the semantics, after decomposition.

// top_k = 1, causal: the own block only; no gate and no pooling remain.
// CHECK-LABEL: func @top1
// CHECK-NOT: moba.block_pool
// CHECK-NOT: moba.gate
// CHECK: %[[SEL:.+]] = moba.topk cu_seqlens
// CHECK: moba.sparse_attention {{.+}} selected(%[[SEL]] : tensor<256x4x1xi32>)
func.func @top1(%q: tensor<2x128x4x32xbf16>, %k: tensor<2x128x4x32xbf16>, %v: tensor<2x128x4x32xbf16>) -> tensor<2x128x4x32xbf16> {
  %o = moba.attention q(%q : tensor<2x128x4x32xbf16>) k(%k : tensor<2x128x4x32xbf16>) v(%v : tensor<2x128x4x32xbf16>) {block_size = 32, top_k = 1} -> tensor<2x128x4x32xbf16>
  return %o : tensor<2x128x4x32xbf16>
}

// top_k at or above the number of blocks (128 / 32 = 4): dense causal
// attention, with nothing of the routing left.
// CHECK-LABEL: func @dense
// CHECK-NOT: moba.block_pool
// CHECK-NOT: moba.gate
// CHECK-NOT: moba.topk
// CHECK: moba.sparse_attention
// CHECK-NOT: selected
// CHECK-SAME: outs
func.func @dense(%q: tensor<2x128x4x32xbf16>, %k: tensor<2x128x4x32xbf16>, %v: tensor<2x128x4x32xbf16>) -> tensor<2x128x4x32xbf16> {
  %o = moba.attention q(%q : tensor<2x128x4x32xbf16>) k(%k : tensor<2x128x4x32xbf16>) v(%v : tensor<2x128x4x32xbf16>) {block_size = 32, top_k = 9} -> tensor<2x128x4x32xbf16>
  return %o : tensor<2x128x4x32xbf16>
}

// In between, the whole chain stays.
// CHECK-LABEL: func @sparse
// CHECK: moba.block_pool
// CHECK: moba.gate
// CHECK: moba.topk scores
// CHECK: moba.sparse_attention {{.+}} selected
func.func @sparse(%q: tensor<2x128x4x32xbf16>, %k: tensor<2x128x4x32xbf16>, %v: tensor<2x128x4x32xbf16>) -> tensor<2x128x4x32xbf16> {
  %o = moba.attention q(%q : tensor<2x128x4x32xbf16>) k(%k : tensor<2x128x4x32xbf16>) v(%v : tensor<2x128x4x32xbf16>) {block_size = 32, top_k = 2} -> tensor<2x128x4x32xbf16>
  return %o : tensor<2x128x4x32xbf16>
}
