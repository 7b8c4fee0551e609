// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @keys_rank(%k: tensor<64x32xbf16>, %cu: tensor<2xi32>, %m: tensor<4x4x32xf32>) {
  // expected-error @+1 {{expects keys of rank 3 ([tokens, key/value heads, head_dim]), got rank 2 ([64, 32])}}
  %r = moba.block_pool keys(%k : tensor<64x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m : tensor<4x4x32xf32>) {block_size = 16}
  return
}

// -----

func.func @heads(%k: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %m: tensor<4x2x32xf32>) {
  // expected-error @+1 {{number of key/value heads of keys (4) and init (2) disagree}}
  %r = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m : tensor<4x2x32xf32>) {block_size = 16}
  return
}

// -----

func.func @head_dim(%k: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %m: tensor<4x4x64xf32>) {
  // expected-error @+1 {{head_dim of keys (32) and init (64) disagree}}
  %r = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m : tensor<4x4x64xf32>) {block_size = 16}
  return
}

// -----

func.func @block_size(%k: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %m: tensor<4x4x32xf32>) {
  // expected-error @+1 {{block_size must be at least 1, got -16}}
  %r = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m : tensor<4x4x32xf32>) {block_size = -16}
  return
}

// -----

func.func @means_are_f32(%k: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %m: tensor<4x4x32xbf16>) {
  // expected-error @+1 {{operand #2 must be ranked tensor of 32-bit float values}}
  %r = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m : tensor<4x4x32xbf16>) {block_size = 16}
  return
}
