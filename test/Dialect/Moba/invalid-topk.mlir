// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @k_zero(%s: tensor<64x8x4xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x0xi32>) {
  // expected-error @+1 {{K, the last dim of init, must be at least 1, got 0}}
  %r = moba.topk scores(%s : tensor<64x8x4xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x0xi32>) {block_size = 16}
  return
}

// -----

func.func @k_dynamic(%s: tensor<64x8x4xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x?xi32>) {
  // expected-error @+1 {{K, the last dim of init, must be static}}
  %r = moba.topk scores(%s : tensor<64x8x4xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x?xi32>) {block_size = 16}
  return
}

// -----

func.func @scores_needed(%cu: tensor<2xi32>, %i: tensor<64x8x2xi32>) {
  // expected-error @+1 {{scores may be omitted only for causal selection of one block, got K = 2 and causal = 1}}
  %r = moba.topk cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2xi32>) {block_size = 16}
  return
}

// -----

func.func @scores_needed_noncausal(%cu: tensor<2xi32>, %i: tensor<64x8x1xi32>) {
  // expected-error @+1 {{scores may be omitted only for causal selection of one block, got K = 1 and causal = 0}}
  %r = moba.topk cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x1xi32>) {block_size = 16, causal = false}
  return
}

// -----

func.func @tokens(%s: tensor<32x8x4xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2xi32>) {
  // expected-error @+1 {{token count of scores (32) and init (64) disagree}}
  %r = moba.topk scores(%s : tensor<32x8x4xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2xi32>) {block_size = 16}
  return
}

// -----

func.func @scores_rank(%s: tensor<64x4xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2xi32>) {
  // expected-error @+1 {{expects scores of rank 3 ([tokens, query heads, blocks per sequence]), got rank 2 ([64, 4])}}
  %r = moba.topk scores(%s : tensor<64x4xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2xi32>) {block_size = 16}
  return
}

// -----

func.func @indices_i32(%s: tensor<64x8x4xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2xi64>) {
  // expected-error @+1 {{operand #2 must be ranked tensor of 32-bit signless integer values}}
  %r = moba.topk scores(%s : tensor<64x8x4xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2xi64>) {block_size = 16}
  return
}
