// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @selected_tokens(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %sel: tensor<32x8x2xi32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{token count of q (64) and selected (32) disagree}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<32x8x2xi32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @selected_heads(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %sel: tensor<64x4x2xi32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{number of query heads of q (8) and selected (4) disagree}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @head_groups(%q: tensor<64x6x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %o: tensor<64x6x32xbf16>, %l: tensor<64x6xf32>) {
  // expected-error @+1 {{number of query heads (Hq = 6 in q) is not a multiple of the number of key/value heads (Hkv = 4 in k)}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x6x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%o : tensor<64x6x32xbf16>, %l : tensor<64x6xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @output_type(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %o: tensor<64x8x32xf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{element types disagree: q has 'bf16', out_init has 'f16'}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%o : tensor<64x8x32xf16>, %l : tensor<64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @lse_rank(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8x1xf32>) {
  // expected-error @+1 {{expects lse_init of rank 2 ([tokens, query heads]), got rank 3 ([64, 8, 1])}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8x1xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @scale_zero(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{scale must be a positive finite number, got 0}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>) {block_size = 16, scale = 0.0 : f32}
  return
}

// -----

func.func @missing_scale(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %o: tensor<64x8x32xbf16>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{requires attribute 'scale'}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%o : tensor<64x8x32xbf16>, %l : tensor<64x8xf32>) {block_size = 16}
  return
}
