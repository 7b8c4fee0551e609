// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @head_dim(%q: tensor<64x8x32xbf16>, %m: tensor<4x4x64xf32>, %cu: tensor<2xi32>, %s: tensor<64x8x4xf32>) {
  // expected-error @+1 {{head_dim of queries (32) and means (64) disagree}}
  %r = moba.gate queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x4x64xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<64x8x4xf32>) {block_size = 16}
  return
}

// -----

func.func @head_groups(%q: tensor<64x6x32xbf16>, %m: tensor<4x4x32xf32>, %cu: tensor<2xi32>, %s: tensor<64x6x4xf32>) {
  // expected-error @+1 {{number of query heads (Hq = 6 in queries) is not a multiple of the number of key/value heads (Hkv = 4 in means)}}
  %r = moba.gate queries(%q : tensor<64x6x32xbf16>) means(%m : tensor<4x4x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<64x6x4xf32>) {block_size = 16}
  return
}

// -----

func.func @tokens(%q: tensor<64x8x32xbf16>, %m: tensor<4x4x32xf32>, %cu: tensor<2xi32>, %s: tensor<32x8x4xf32>) {
  // expected-error @+1 {{token count of queries (64) and init (32) disagree}}
  %r = moba.gate queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x4x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<32x8x4xf32>) {block_size = 16}
  return
}

// -----

func.func @query_heads(%q: tensor<64x8x32xbf16>, %m: tensor<4x4x32xf32>, %cu: tensor<2xi32>, %s: tensor<64x4x4xf32>) {
  // expected-error @+1 {{number of query heads of queries (8) and init (4) disagree}}
  %r = moba.gate queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x4x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<64x4x4xf32>) {block_size = 16}
  return
}

// -----

func.func @no_blocks(%q: tensor<64x8x32xbf16>, %m: tensor<4x4x32xf32>, %cu: tensor<2xi32>, %s: tensor<64x8x0xf32>) {
  // expected-error @+1 {{blocks per sequence (dim 2 of init) must be at least 1, got 0}}
  %r = moba.gate queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x4x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<64x8x0xf32>) {block_size = 16}
  return
}

// -----

func.func @cu_seqlens(%q: tensor<64x8x32xbf16>, %m: tensor<4x4x32xf32>, %cu: tensor<2xindex>, %s: tensor<64x8x4xf32>) {
  // expected-error @+1 {{expects cu_seqlens to be a rank-1 tensor of integers (sequence offsets), got 'tensor<2xindex>'}}
  %r = moba.gate queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x4x32xf32>) cu_seqlens(%cu : tensor<2xindex>) outs(%s : tensor<64x8x4xf32>) {block_size = 16}
  return
}
