// RUN: moba-opt %s -split-input-file -verify-diagnostics

// The limits every lowering depends on (MobaDialect.h, docs/semantics.md
// "Limits"), rejected where sizes are static, before any pass sees them.

// Zero query heads: the GPU gate divides by the heads per key/value head.
func.func @gate_topk_zero_query_heads(%q: tensor<64x0x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x0x2xi32>) {
  // expected-error @+1 {{number of query heads (dim 1 of queries) must be at least 1, got 0}}
  %r = moba.gate_topk queries(%q : tensor<64x0x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x0x2xi32>) {block_size = 16}
  return
}

// -----

func.func @gate_zero_query_heads(%q: tensor<64x0x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %s: tensor<64x0x4xf32>) {
  // expected-error @+1 {{number of query heads (dim 1 of queries) must be at least 1, got 0}}
  %r = moba.gate queries(%q : tensor<64x0x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<64x0x4xf32>) {block_size = 16}
  return
}

// -----

func.func @sparse_attention_zero_query_heads(%q: tensor<64x0x32xbf16>, %k: tensor<64x2x32xbf16>, %cu: tensor<2xi32>, %sel: tensor<64x0x2xi32>, %o: tensor<64x0x32xbf16>, %l: tensor<64x0xf32>) {
  // expected-error @+1 {{number of query heads (dim 1 of q) must be at least 1, got 0}}
  %r:2 = moba.sparse_attention q(%q : tensor<64x0x32xbf16>) k(%k : tensor<64x2x32xbf16>) v(%k : tensor<64x2x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x0x2xi32>) outs(%o : tensor<64x0x32xbf16>, %l : tensor<64x0xf32>) {block_size = 16, scale = 0.125 : f32}
  return
}

// -----

func.func @topk_zero_query_heads(%s: tensor<64x0x4xf32>, %cu: tensor<2xi32>, %i: tensor<64x0x2xi32>) {
  // expected-error @+1 {{number of query heads (dim 1 of init) must be at least 1, got 0}}
  %r = moba.topk scores(%s : tensor<64x0x4xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x0x2xi32>) {block_size = 16}
  return
}

// -----

func.func @attention_top_k(%q: tensor<?x8x64xbf16>, %k: tensor<?x2x64xbf16>, %cu: tensor<?xi32>) {
  // expected-error @+1 {{top_k must be at most 1024, got 1025}}
  %o = moba.attention q(%q : tensor<?x8x64xbf16>) k(%k : tensor<?x2x64xbf16>) v(%k : tensor<?x2x64xbf16>) cu_seqlens(%cu : tensor<?xi32>) {block_size = 64, top_k = 1025} -> tensor<?x8x64xbf16>
  return
}

// -----

func.func @attention_head_dim(%q: tensor<?x8x1032xbf16>, %k: tensor<?x2x1032xbf16>, %cu: tensor<?xi32>) {
  // expected-error @+1 {{head_dim (dim 2 of q) must be at most 1024, got 1032}}
  %o = moba.attention q(%q : tensor<?x8x1032xbf16>) k(%k : tensor<?x2x1032xbf16>) v(%k : tensor<?x2x1032xbf16>) cu_seqlens(%cu : tensor<?xi32>) {block_size = 64, top_k = 3} -> tensor<?x8x1032xbf16>
  return
}

// -----

func.func @gate_topk_wide_selection(%q: tensor<64x8x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2048xi32>) {
  // expected-error @+1 {{K (dim 2 of init) must be at most 1024, got 2048}}
  %r = moba.gate_topk queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2048xi32>) {block_size = 16}
  return
}

// -----

func.func @lse_merge_many_partials(%p: tensor<2000x?x8x64xbf16>, %pl: tensor<2000x?x8xf32>, %o: tensor<?x8x64xbf16>, %l: tensor<?x8xf32>) {
  // expected-error @+1 {{number of partials (dim 0 of partials) must be at most 1024, got 2000}}
  %r:2 = moba.lse_merge partials(%p : tensor<2000x?x8x64xbf16>) partial_lse(%pl : tensor<2000x?x8xf32>) outs(%o : tensor<?x8x64xbf16>, %l : tensor<?x8xf32>)
  return
}

// -----

// 2^33 * 2^30 * 2 bytes: the product wraps a signed 64-bit index.
func.func @attention_static_bytes(%q: tensor<8589934592x1073741824x1x1xbf16>) {
  // expected-error @+1 {{operand #0 of type 'tensor<8589934592x1073741824x1x1xbf16>' is too large: its static sizes multiply to 2^62 bytes or more}}
  %o = moba.attention q(%q : tensor<8589934592x1073741824x1x1xbf16>) k(%q : tensor<8589934592x1073741824x1x1xbf16>) v(%q : tensor<8589934592x1073741824x1x1xbf16>) {block_size = 128, top_k = 8} -> tensor<8589934592x1073741824x1x1xbf16>
  return
}

// -----

func.func @block_pool_static_bytes(%k: tensor<?x2x64xbf16>, %cu: tensor<?xi32>, %m: tensor<36028797018963968x2x64xf32>) {
  // expected-error @+1 {{operand #2 of type 'tensor<36028797018963968x2x64xf32>' is too large}}
  %r = moba.block_pool keys(%k : tensor<?x2x64xbf16>) cu_seqlens(%cu : tensor<?xi32>) outs(%m : tensor<36028797018963968x2x64xf32>) {block_size = 16}
  return
}
