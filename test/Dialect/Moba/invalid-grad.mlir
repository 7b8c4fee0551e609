// RUN: moba-opt %s -split-input-file -verify-diagnostics

// The verifiers of the backward ops: each message names the operands and
// values that disagree.

func.func @grad_out_shape(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x8xf32>) {
  // expected-error @+1 {{shape of q [64, 4, 16] and of grad_out [64, 4, 8] disagree}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x8xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @out_type(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>) {
  // expected-error @+1 {{element types disagree: q has 'f32', out has 'bf16'}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xbf16>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @lse_heads(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x2xf32>, %do: tensor<64x4x16xf32>) {
  // expected-error @+1 {{number of query heads of q (4) and lse (2) disagree}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x2xf32>) grad_out(%do : tensor<64x4x16xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @grad_lse_shape(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>, %dlse: tensor<32x4xf32>) {
  // expected-error @+1 {{shape of lse [64, 4] and of grad_lse [32, 4] disagree}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) grad_lse(%dlse : tensor<32x4xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @grad_k_type(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>) {
  // expected-error @+1 {{shape of k [64, 1, 16] and of grad_k [64, 4, 16] disagree}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x4x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @selected_width(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>, %sel: tensor<64x4x3xi32>) {
  // expected-error @+1 {{selected holds 3 blocks per token and head (dim 2), but top_k is 2}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) selected(%sel : tensor<64x4x3xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @top_k_zero(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>) {
  // expected-error @+1 {{top_k must be at least 1, got 0}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) {block_size = 16, top_k = 0} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @heads_not_multiple(%q: tensor<64x4x16xf32>, %k: tensor<64x3x16xf32>, %v: tensor<64x3x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>) {
  // expected-error @+1 {{number of query heads (Hq = 4 in q) is not a multiple of the number of key/value heads (Hkv = 3 in k)}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x3x16xf32>) v(%v : tensor<64x3x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xf32>, tensor<64x3x16xf32>, tensor<64x3x16xf32>
  return
}

// -----

func.func @dynamic_head_dim_no_scale(%q: tensor<64x4x?xf32>, %k: tensor<64x1x?xf32>, %v: tensor<64x1x?xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x?xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x?xf32>) {
  // expected-error @+1 {{needs an explicit scale when head_dim is dynamic}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x?xf32>) k(%k : tensor<64x1x?xf32>) v(%v : tensor<64x1x?xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x?xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x?xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x?xf32>, tensor<64x1x?xf32>, tensor<64x1x?xf32>
  return
}

// -----

func.func @max_seqlen_too_long(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %do: tensor<64x4x16xf32>) {
  // expected-error @+1 {{max_seqlen (128) exceeds the token count (64)}}
  %r:3 = moba.attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) grad_out(%do : tensor<64x4x16xf32>) {block_size = 16, top_k = 2, max_seqlen = 128} -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return
}

// -----

func.func @row_term_shape(%do: tensor<64x8x32xf32>, %o: tensor<64x4x32xf32>, %init: tensor<64x8xf32>) {
  // expected-error @+1 {{shape of grad_out [64, 8, 32] and of out [64, 4, 32] disagree}}
  %d = moba.attention_row_term grad_out(%do : tensor<64x8x32xf32>) out(%o : tensor<64x4x32xf32>) outs(%init : tensor<64x8xf32>)
  return
}

// -----

func.func @row_term_init(%do: tensor<64x8x32xf32>, %o: tensor<64x8x32xf32>, %init: tensor<64x4xf32>) {
  // expected-error @+1 {{number of query heads of grad_out (8) and init (4) disagree}}
  %d = moba.attention_row_term grad_out(%do : tensor<64x8x32xf32>) out(%o : tensor<64x8x32xf32>) outs(%init : tensor<64x4xf32>)
  return
}

// -----

func.func @row_term_grad_lse(%do: tensor<64x8x32xf32>, %o: tensor<64x8x32xf32>, %dlse: tensor<32x8xf32>, %init: tensor<64x8xf32>) {
  // expected-error @+1 {{shape of grad_lse [32, 8] and of init [64, 8] disagree}}
  %d = moba.attention_row_term grad_out(%do : tensor<64x8x32xf32>) out(%o : tensor<64x8x32xf32>) grad_lse(%dlse : tensor<32x8xf32>) outs(%init : tensor<64x8xf32>)
  return
}

// -----

func.func @grouped_grad_partials_k(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>, %e: tensor<4x128xi32>, %do: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %d: tensor<64x4xf32>, %p: tensor<3x64x4x16xf32>, %dk: tensor<64x1x16xf32>, %dv: tensor<64x1x16xf32>) {
  // expected-error @+1 {{K of selected (2) and dq_partials_init (3) disagree}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) grad_out(%do : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) row_term(%d : tensor<64x4xf32>) outs(%p : tensor<3x64x4x16xf32>, %dk : tensor<64x1x16xf32>, %dv : tensor<64x1x16xf32>) {block_size = 16, scale = 0.25 : f32}
  return
}

// -----

func.func @grouped_grad_dk_type(%q: tensor<64x4x16xbf16>, %k: tensor<64x1x16xbf16>, %v: tensor<64x1x16xbf16>, %cu: tensor<2xi32>, %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>, %e: tensor<4x128xi32>, %do: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>, %d: tensor<64x4xf32>, %p: tensor<2x64x4x16xf32>, %dk: tensor<64x1x16xf16>, %dv: tensor<64x1x16xbf16>) {
  // expected-error @+1 {{dk_init must hold f32 or the element type of k ('bf16'), got 'f16'}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<64x4x16xbf16>) k(%k : tensor<64x1x16xbf16>) v(%v : tensor<64x1x16xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) grad_out(%do : tensor<64x4x16xbf16>) lse(%lse : tensor<64x4xf32>) row_term(%d : tensor<64x4xf32>) outs(%p : tensor<2x64x4x16xf32>, %dk : tensor<64x1x16xf16>, %dv : tensor<64x1x16xbf16>) {block_size = 16, scale = 0.25 : f32}
  return
}

// -----

func.func @grouped_grad_dv_shape(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>, %e: tensor<4x128xi32>, %do: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %d: tensor<64x4xf32>, %p: tensor<2x64x4x16xf32>, %dk: tensor<64x1x16xf32>, %dv: tensor<64x2x16xf32>) {
  // expected-error @+1 {{shape of k [64, 1, 16] and of dv_init [64, 2, 16] disagree}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) grad_out(%do : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) row_term(%d : tensor<64x4xf32>) outs(%p : tensor<2x64x4x16xf32>, %dk : tensor<64x1x16xf32>, %dv : tensor<64x2x16xf32>) {block_size = 16, scale = 0.25 : f32}
  return
}

// -----

func.func @grouped_grad_row_term(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>, %e: tensor<4x128xi32>, %do: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %d: tensor<64x2xf32>, %p: tensor<2x64x4x16xf32>, %dk: tensor<64x1x16xf32>, %dv: tensor<64x1x16xf32>) {
  // expected-error @+1 {{shape of lse [64, 4] and of row_term [64, 2] disagree}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) grad_out(%do : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) row_term(%d : tensor<64x2xf32>) outs(%p : tensor<2x64x4x16xf32>, %dk : tensor<64x1x16xf32>, %dv : tensor<64x1x16xf32>) {block_size = 16, scale = 0.25 : f32}
  return
}

// -----

func.func @grouped_grad_entries(%q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>, %cu: tensor<2xi32>, %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>, %e: tensor<4x64xi32>, %do: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>, %d: tensor<64x4xf32>, %p: tensor<2x64x4x16xf32>, %dk: tensor<64x1x16xf32>, %dv: tensor<64x1x16xf32>) {
  // expected-error @+1 {{entries must hold tokens * K = 64 * 2 = 128 slots per head, got 64}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<64x4x16xf32>) k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x64xi32>) grad_out(%do : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>) row_term(%d : tensor<64x4xf32>) outs(%p : tensor<2x64x4x16xf32>, %dk : tensor<64x1x16xf32>, %dv : tensor<64x1x16xf32>) {block_size = 16, scale = 0.25 : f32}
  return
}

// -----

func.func @sum_slots_dims(%p: tensor<3x64x8x32xf32>, %init: tensor<64x4x32xbf16>) {
  // expected-error @+1 {{dim 1 of init (4) and partials (8) disagree}}
  %dq = moba.sum_slots partials(%p : tensor<3x64x8x32xf32>) outs(%init : tensor<64x4x32xbf16>)
  return
}

// -----

func.func @sum_slots_rank(%p: tensor<64x8x32xf32>, %init: tensor<64x8x32xbf16>) {
  // expected-error @+1 {{expects partials of rank 4 ([K, tokens, query heads, head_dim]), got rank 3 ([64, 8, 32])}}
  %dq = moba.sum_slots partials(%p : tensor<64x8x32xf32>) outs(%init : tensor<64x8x32xbf16>)
  return
}

// -----

func.func @sum_slots_no_slots(%p: tensor<0x64x8x32xf32>, %init: tensor<64x8x32xbf16>) {
  // expected-error @+1 {{K (dim 0 of partials) must be at least 1, got 0}}
  %dq = moba.sum_slots partials(%p : tensor<0x64x8x32xf32>) outs(%init : tensor<64x8x32xbf16>)
  return
}

// -----

// The grouped backward exists on tensors or on memrefs, not both at once.
func.func @grouped_grad_mixed_forms(%q: tensor<64x4x32xbf16>, %k: tensor<64x2x32xbf16>, %cu: tensor<3xi32>, %sel: tensor<64x4x2xi32>, %g: tensor<4x5xi32>, %e: tensor<4x128xi32>, %lse: tensor<64x4xf32>, %dqp: tensor<2x64x4x32xf32>, %dk: tensor<64x2x32xbf16>, %row: memref<64x4xf32>) {
  // expected-error @+1 {{operands must be all tensors or all memrefs}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x2x32xbf16>) v(%k : tensor<64x2x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%g : tensor<4x5xi32>, %g : tensor<4x5xi32>, %e : tensor<4x128xi32>) grad_out(%q : tensor<64x4x32xbf16>) lse(%lse : tensor<64x4xf32>) row_term(%row : memref<64x4xf32>) outs(%dqp : tensor<2x64x4x32xf32>, %dk : tensor<64x2x32xbf16>, %dk : tensor<64x2x32xbf16>) {block_size = 16, scale = 0.25 : f32}
  return
}
