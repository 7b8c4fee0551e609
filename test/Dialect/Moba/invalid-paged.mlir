// RUN: moba-opt %s -split-input-file -verify-diagnostics

// One case per verifier rule of moba.paged_kv_append and
// moba.paged_decode_attention.

func.func @block_splits_pages(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x16x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{block_size (24) must be a multiple of page_size (16): a MoBA block is a whole number of pages}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x16x2x8xf32>, %kc : tensor<8x16x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 24}
  return
}

// -----

func.func @dynamic_page_size(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x?x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{page_size (dim 1 of k_cache) must be static}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x?x2x8xf32>, %kc : tensor<8x?x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @zero_page_size(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x0x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{page_size (dim 1 of k_cache) must be at least 1, got 0}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x0x2x8xf32>, %kc : tensor<8x0x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @cache_rank(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<128x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{expects k_cache of rank 4 ([pages, page_size, key/value heads, head_dim]), got rank 3 ([128, 2, 8])}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<128x2x8xf32>, %kc : tensor<128x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @cache_heads(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x16x4x8xf32>, %s: tensor<2x4x4x8xf32>) {
  // expected-error @+1 {{number of key/value heads of k (2) and k_cache (4) disagree}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x16x4x8xf32>, %kc : tensor<8x16x4x8xf32>, %s : tensor<2x4x4x8xf32>) {block_size = 16}
  return
}

// -----

func.func @sums_head_dim(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x16x2x8xf32>, %s: tensor<2x4x2x4xf32>) {
  // expected-error @+1 {{head_dim of k_cache (8) and block_key_sums (4) disagree}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x16x2x8xf32>, %kc : tensor<8x16x2x8xf32>, %s : tensor<2x4x2x4xf32>) {block_size = 16}
  return
}

// -----

func.func @lens_batch(%k: tensor<4x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{batch of block_table (2) and cache_lens (3) disagree}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<3xi32>) outs(%kc : tensor<8x16x2x8xf32>, %kc : tensor<8x16x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @cu_count(%k: tensor<4x2x8xf32>, %cu: tensor<4xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x16x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{cu_seqlens holds 4 offsets, but block_table has 2 sequences (expected 3 offsets)}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%k : tensor<4x2x8xf32>) cu_seqlens(%cu : tensor<4xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x16x2x8xf32>, %kc : tensor<8x16x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @append_element_type(%k: tensor<4x2x8xbf16>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x16x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{element types disagree: k has 'bf16', k_cache has 'f32'}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xbf16>) v(%k : tensor<4x2x8xbf16>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x16x2x8xf32>, %kc : tensor<8x16x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @append_v_shape(%k: tensor<4x2x8xf32>, %v: tensor<5x2x8xf32>, %cu: tensor<3xi32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %kc: tensor<8x16x2x8xf32>, %s: tensor<2x4x2x8xf32>) {
  // expected-error @+1 {{shape of k [4, 2, 8] and of v [5, 2, 8] disagree}}
  %a:3 = moba.paged_kv_append k(%k : tensor<4x2x8xf32>) v(%v : tensor<5x2x8xf32>) cu_seqlens(%cu : tensor<3xi32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) outs(%kc : tensor<8x16x2x8xf32>, %kc : tensor<8x16x2x8xf32>, %s : tensor<2x4x2x8xf32>) {block_size = 16}
  return
}

// -----

func.func @decode_heads(%q: tensor<2x3x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x3x8xf32>, %l: tensor<2x3xf32>) {
  // expected-error @+1 {{number of query heads (Hq = 3 in q) is not a multiple of the number of key/value heads (Hkv = 2 in k_cache)}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x3x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x3x8xf32>, %l : tensor<2x3xf32>) {block_size = 16, top_k = 2}
  return
}

// -----

func.func @decode_selection(%q: tensor<2x4x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x4x8xf32>, %l: tensor<2x4xf32>) {
  // expected-error @+1 {{selection must be "query_head" or "kv_head", got "block"}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x4x8xf32>, %l : tensor<2x4xf32>) {block_size = 16, top_k = 2, selection = "block"}
  return
}

// -----

func.func @decode_top_k(%q: tensor<2x4x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x4x8xf32>, %l: tensor<2x4xf32>) {
  // expected-error @+1 {{top_k must be at least 1, got 0}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x4x8xf32>, %l : tensor<2x4xf32>) {block_size = 16, top_k = 0}
  return
}

// -----

func.func @decode_top_k_huge(%q: tensor<2x4x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x4x8xf32>, %l: tensor<2x4xf32>) {
  // expected-error @+1 {{top_k must be at most 1024, got 9223372036854775807}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x4x8xf32>, %l : tensor<2x4xf32>) {block_size = 16, top_k = 9223372036854775807}
  return
}

// -----

func.func @decode_lse(%q: tensor<2x4x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x4x8xf32>, %l: tensor<3x4xf32>) {
  // expected-error @+1 {{number of tokens of q (2) and lse_init (3) disagree}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x4x8xf32>, %l : tensor<3x4xf32>) {block_size = 16, top_k = 2}
  return
}

// -----

func.func @decode_cu_values(%q: tensor<2x4x8xf32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x4x8xf32>, %l: tensor<2x4xf32>) {
  %cu = arith.constant dense<[0, 1, 3]> : tensor<3xi32>
  // expected-error @+1 {{cu_seqlens must end at the token count (2), got 3}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x4x8xf32>, %l : tensor<2x4xf32>) {block_size = 16, top_k = 2}
  return
}

// -----

func.func @decode_scale(%q: tensor<2x4x?xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x?xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x?xf32>, %o: tensor<2x4x?xf32>, %l: tensor<2x4xf32>) {
  // expected-error @+1 {{needs an explicit scale when head_dim is dynamic (the default 1/sqrt(head_dim) must be static)}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x?xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x?xf32>) v_cache(%kc : tensor<8x16x2x?xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x?xf32>) outs(%o : tensor<2x4x?xf32>, %l : tensor<2x4xf32>) {block_size = 16, top_k = 2}
  return
}

// -----

func.func @decode_negative_scale(%q: tensor<2x4x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: tensor<2x4x8xf32>, %l: tensor<2x4xf32>) {
  // expected-error @+1 {{scale must be a positive finite number, got -1}}
  %r:2 = moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : tensor<2x4x8xf32>, %l : tensor<2x4xf32>) {block_size = 16, top_k = 2, scale = -1.0 : f32}
  return
}

// -----

func.func @decode_mixed_forms(%q: tensor<2x4x8xf32>, %cu: tensor<3xi32>, %kc: tensor<8x16x2x8xf32>, %t: tensor<2x4xi32>, %n: tensor<2xi32>, %s: tensor<2x4x2x8xf32>, %o: memref<2x4x8xf32>, %l: memref<2x4xf32>) {
  // expected-error @+1 {{operands must be all tensors or all memrefs}}
  moba.paged_decode_attention q(%q : tensor<2x4x8xf32>) cu_seqlens_q(%cu : tensor<3xi32>) k_cache(%kc : tensor<8x16x2x8xf32>) v_cache(%kc : tensor<8x16x2x8xf32>) block_table(%t : tensor<2x4xi32>) cache_lens(%n : tensor<2xi32>) block_key_sums(%s : tensor<2x4x2x8xf32>) outs(%o : memref<2x4x8xf32>, %l : memref<2x4xf32>) {block_size = 16, top_k = 2}
  return
}
