// RUN: moba-opt %s --moba-decompose | FileCheck %s

// Sizes at the edges: sequences shorter than one block, one token, a block
// size of 1.

// One block covers the whole 100-token sequence: one block per sequence,
// three in the batch.
// CHECK-LABEL: func @block_longer_than_sequence
// CHECK: moba.block_pool {{.+}} outs(%{{.+}} : tensor<3x2x16xf32>) {block_size = 512 : i64}
// CHECK: moba.gate {{.+}} outs(%{{.+}} : tensor<300x2x1xf32>)
func.func @block_longer_than_sequence(%q: tensor<3x100x2x16xf32>) -> tensor<3x100x2x16xf32> {
  %o = moba.attention q(%q : tensor<3x100x2x16xf32>) k(%q : tensor<3x100x2x16xf32>) v(%q : tensor<3x100x2x16xf32>)
      {block_size = 512, top_k = 2} -> tensor<3x100x2x16xf32>
  return %o : tensor<3x100x2x16xf32>
}

// One token: one block.
// CHECK-LABEL: func @one_token
// CHECK: moba.block_pool {{.+}} outs(%{{.+}} : tensor<1x1x16xf32>)
// CHECK: moba.gate {{.+}} outs(%{{.+}} : tensor<1x1x1xf32>)
// CHECK: moba.topk {{.+}} outs(%{{.+}} : tensor<1x1x1xi32>)
func.func @one_token(%q: tensor<1x1x16xf32>, %cu: tensor<2xi32>) -> tensor<1x1x16xf32> {
  %o = moba.attention q(%q : tensor<1x1x16xf32>) k(%q : tensor<1x1x16xf32>) v(%q : tensor<1x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>)
      {block_size = 64, top_k = 1} -> tensor<1x1x16xf32>
  return %o : tensor<1x1x16xf32>
}

// Blocks of one token: as many blocks as tokens; 5 sequences of 40 tokens
// give at most min(5 * 40, 200 / 1 + 5) = 200 blocks.
// CHECK-LABEL: func @block_of_one
// CHECK: moba.block_pool {{.+}} outs(%{{.+}} : tensor<200x1x8xf32>) {block_size = 1 : i64}
// CHECK: moba.gate {{.+}} outs(%{{.+}} : tensor<200x1x40xf32>)
func.func @block_of_one(%q: tensor<200x1x8xbf16>, %cu: tensor<6xi32>) -> tensor<200x1x8xbf16> {
  %o = moba.attention q(%q : tensor<200x1x8xbf16>) k(%q : tensor<200x1x8xbf16>) v(%q : tensor<200x1x8xbf16>) cu_seqlens(%cu : tensor<6xi32>)
      {block_size = 1, top_k = 4, max_seqlen = 40} -> tensor<200x1x8xbf16>
  return %o : tensor<200x1x8xbf16>
}

// Zero tokens: still well-formed tensors of at least one block.
// CHECK-LABEL: func @no_tokens
// CHECK: moba.block_pool {{.+}} outs(%{{.+}} : tensor<1x1x8xf32>)
// CHECK: moba.gate {{.+}} outs(%{{.+}} : tensor<0x1x1xf32>)
func.func @no_tokens(%q: tensor<0x1x8xbf16>, %cu: tensor<2xi32>) -> tensor<0x1x8xbf16> {
  %o = moba.attention q(%q : tensor<0x1x8xbf16>) k(%q : tensor<0x1x8xbf16>) v(%q : tensor<0x1x8xbf16>) cu_seqlens(%cu : tensor<2xi32>)
      {block_size = 16, top_k = 4} -> tensor<0x1x8xbf16>
  return %o : tensor<0x1x8xbf16>
}
