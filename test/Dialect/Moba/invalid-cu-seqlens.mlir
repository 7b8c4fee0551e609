// RUN: moba-opt %s -split-input-file -verify-diagnostics

// A constant cu_seqlens is checked against the rules of docs/semantics.md.

func.func @start(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>) {
  %cu = arith.constant dense<[1, 64]> : tensor<2xi32>
  // expected-error @+1 {{cu_seqlens must start at 0, got 1}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @decreasing(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>) {
  %cu = arith.constant dense<[0, 40, 30, 64]> : tensor<4xi64>
  // expected-error @+1 {{cu_seqlens must not decrease, got 40 then 30 at index 2}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<4xi64>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @end(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>) {
  %cu = arith.constant dense<[0, 32, 63]> : tensor<3xi32>
  // expected-error @+1 {{cu_seqlens must end at the token count (64), got 63}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @decomposed_op_too(%k: tensor<64x4x32xbf16>, %m: tensor<8x4x32xf32>) {
  %cu = arith.constant dense<[0, 70]> : tensor<2xi32>
  // expected-error @+1 {{cu_seqlens must end at the token count (64), got 70}}
  %r = moba.block_pool keys(%k : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%m : tensor<8x4x32xf32>) {block_size = 16}
  return
}
