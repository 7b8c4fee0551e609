// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @partials_count(%p: tensor<2x64x8x32xf32>, %pl: tensor<3x64x8xf32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{number of partials of partials (2) and partial_lse (3) disagree}}
  %r:2 = moba.lse_merge partials(%p : tensor<2x64x8x32xf32>) partial_lse(%pl : tensor<3x64x8xf32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>)
  return
}

// -----

func.func @no_partials(%p: tensor<0x64x8x32xf32>, %pl: tensor<0x64x8xf32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{number of partials (dim 0 of partials) must be at least 1, got 0}}
  %r:2 = moba.lse_merge partials(%p : tensor<0x64x8x32xf32>) partial_lse(%pl : tensor<0x64x8xf32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>)
  return
}

// -----

func.func @output_dims(%p: tensor<2x64x8x32xf32>, %pl: tensor<2x64x8xf32>, %o: tensor<64x4x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{dim 2 of partials (8) and out_init (4) disagree}}
  %r:2 = moba.lse_merge partials(%p : tensor<2x64x8x32xf32>) partial_lse(%pl : tensor<2x64x8xf32>) outs(%o : tensor<64x4x32xbf16>, %l : tensor<64x8xf32>)
  return
}

// -----

func.func @lse_dims(%p: tensor<2x64x8x32xf32>, %pl: tensor<2x64x8xf32>, %o: tensor<64x8x32xbf16>, %l: tensor<32x8xf32>) {
  // expected-error @+1 {{dim 1 of partial_lse (64) and lse_init (32) disagree}}
  %r:2 = moba.lse_merge partials(%p : tensor<2x64x8x32xf32>) partial_lse(%pl : tensor<2x64x8xf32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<32x8xf32>)
  return
}

// -----

func.func @partials_rank(%p: tensor<64x8x32xf32>, %pl: tensor<2x64x8xf32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{expects partials of rank 4 ([partials, tokens, heads, head_dim]), got rank 3 ([64, 8, 32])}}
  %r:2 = moba.lse_merge partials(%p : tensor<64x8x32xf32>) partial_lse(%pl : tensor<2x64x8xf32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>)
  return
}
