// RUN: moba-opt %s -split-input-file -verify-diagnostics

// One case per rule of the moba.attention verifier.

func.func @q_rank(%q: tensor<32x128xbf16>, %k: tensor<32x128xbf16>, %v: tensor<32x128xbf16>) {
  // expected-error @+1 {{expects q of rank 3 ([tokens, heads, head_dim] with cu_seqlens) or 4 ([batch, seq, heads, head_dim]), got rank 2 ([32, 128])}}
  %o = moba.attention q(%q : tensor<32x128xbf16>) k(%k : tensor<32x128xbf16>) v(%v : tensor<32x128xbf16>) {block_size = 16, top_k = 2} -> tensor<32x128xbf16>
  return
}

// -----

func.func @k_rank(%q: tensor<2x64x4x32xbf16>, %k: tensor<128x4x32xbf16>, %v: tensor<128x4x32xbf16>) {
  // expected-error @+1 {{expects k of rank 4 ([batch, seq, key/value heads, head_dim]), got rank 3 ([128, 4, 32])}}
  %o = moba.attention q(%q : tensor<2x64x4x32xbf16>) k(%k : tensor<128x4x32xbf16>) v(%v : tensor<128x4x32xbf16>) {block_size = 16, top_k = 2} -> tensor<2x64x4x32xbf16>
  return
}

// -----

func.func @element_types(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{element types disagree: q has 'bf16', k has 'f16'}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @output_element_type(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{element types disagree: q has 'bf16', output has 'f32'}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xf32>
  return
}

// -----

func.func @kv_shapes(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x2x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{shape of k [64, 4, 32] and of v [64, 2, 32] disagree}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x2x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @output_shape(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{shape of q [64, 4, 32] and of output [64, 4, 16] disagree}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x16xbf16>
  return
}

// -----

func.func @token_count(%q: tensor<64x4x32xbf16>, %k: tensor<48x4x32xbf16>, %v: tensor<48x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{token count of q (64) and k (48) disagree}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<48x4x32xbf16>) v(%v : tensor<48x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @batch_size(%q: tensor<2x64x4x32xbf16>, %k: tensor<3x64x4x32xbf16>, %v: tensor<3x64x4x32xbf16>) {
  // expected-error @+1 {{batch size of q (2) and k (3) disagree}}
  %o = moba.attention q(%q : tensor<2x64x4x32xbf16>) k(%k : tensor<3x64x4x32xbf16>) v(%v : tensor<3x64x4x32xbf16>) {block_size = 16, top_k = 2} -> tensor<2x64x4x32xbf16>
  return
}

// -----

func.func @sequence_length(%q: tensor<2x64x4x32xbf16>, %k: tensor<2x32x4x32xbf16>, %v: tensor<2x32x4x32xbf16>) {
  // expected-error @+1 {{sequence length of q (64) and k (32) disagree}}
  %o = moba.attention q(%q : tensor<2x64x4x32xbf16>) k(%k : tensor<2x32x4x32xbf16>) v(%v : tensor<2x32x4x32xbf16>) {block_size = 16, top_k = 2} -> tensor<2x64x4x32xbf16>
  return
}

// -----

func.func @head_dim(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x64xbf16>, %v: tensor<64x4x64xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{head_dim of q (32) and k (64) disagree}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x64xbf16>) v(%v : tensor<64x4x64xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @head_groups(%q: tensor<64x6x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{number of query heads (Hq = 6 in q) is not a multiple of the number of key/value heads (Hkv = 4 in k)}}
  %o = moba.attention q(%q : tensor<64x6x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x6x32xbf16>
  return
}

// -----

func.func @zero_kv_heads(%q: tensor<64x4x32xbf16>, %k: tensor<64x0x32xbf16>, %v: tensor<64x0x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{number of key/value heads (dim 1 of k) must be at least 1, got 0}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x0x32xbf16>) v(%v : tensor<64x0x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @zero_head_dim(%q: tensor<64x4x0xbf16>, %k: tensor<64x4x0xbf16>, %v: tensor<64x4x0xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{head_dim (dim 2 of q) must be at least 1, got 0}}
  %o = moba.attention q(%q : tensor<64x4x0xbf16>) k(%k : tensor<64x4x0xbf16>) v(%v : tensor<64x4x0xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x0xbf16>
  return
}

// -----

func.func @block_size(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{block_size must be at least 1, got 0}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 0, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @top_k(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{top_k must be at least 1, got -3}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = -3} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @scale(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{scale must be a positive finite number, got -1}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2, scale = -1.0 : f32} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @scale_nan(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{scale must be a positive finite number, got nan}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2, scale = 0x7FC00000 : f32} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @dynamic_head_dim_needs_scale(%q: tensor<64x4x?xbf16>, %k: tensor<64x4x?xbf16>, %v: tensor<64x4x?xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{needs an explicit scale when head_dim is dynamic}}
  %o = moba.attention q(%q : tensor<64x4x?xbf16>) k(%k : tensor<64x4x?xbf16>) v(%v : tensor<64x4x?xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x?xbf16>
  return
}

// -----

func.func @varlen_needs_cu_seqlens(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>) {
  // expected-error @+1 {{the packed layout (q of rank 3) needs cu_seqlens}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @batched_takes_no_cu_seqlens(%q: tensor<2x64x4x32xbf16>, %k: tensor<2x64x4x32xbf16>, %v: tensor<2x64x4x32xbf16>, %cu: tensor<3xi32>) {
  // expected-error @+1 {{the batched layout (q of rank 4) takes no cu_seqlens}}
  %o = moba.attention q(%q : tensor<2x64x4x32xbf16>) k(%k : tensor<2x64x4x32xbf16>) v(%v : tensor<2x64x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) {block_size = 16, top_k = 2} -> tensor<2x64x4x32xbf16>
  return
}

// -----

func.func @cu_seqlens_float(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xf32>) {
  // expected-error @+1 {{expects cu_seqlens to be a rank-1 tensor of integers (sequence offsets), got 'tensor<2xf32>'}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xf32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @cu_seqlens_rank(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<1x2xi32>) {
  // expected-error @+1 {{expects cu_seqlens to be a rank-1 tensor of integers (sequence offsets), got 'tensor<1x2xi32>'}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<1x2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @cu_seqlens_unranked(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<*xi32>) {
  // expected-error @+1 {{expects cu_seqlens to be a rank-1 tensor of integers (sequence offsets), got 'tensor<*xi32>'}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<*xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @cu_seqlens_too_short(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<1xi32>) {
  // expected-error @+1 {{expects cu_seqlens to hold at least 2 offsets (one sequence), got 1}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<1xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @max_seqlen_batched(%q: tensor<2x64x4x32xbf16>, %k: tensor<2x64x4x32xbf16>, %v: tensor<2x64x4x32xbf16>) {
  // expected-error @+1 {{max_seqlen is only for the packed layout}}
  %o = moba.attention q(%q : tensor<2x64x4x32xbf16>) k(%k : tensor<2x64x4x32xbf16>) v(%v : tensor<2x64x4x32xbf16>) {block_size = 16, top_k = 2, max_seqlen = 64} -> tensor<2x64x4x32xbf16>
  return
}

// -----

func.func @max_seqlen_too_long(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{max_seqlen (65) exceeds the token count (64)}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2, max_seqlen = 65} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @max_seqlen_zero(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{max_seqlen must be at least 1, got 0}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2, max_seqlen = 0} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @lse_shape(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{expects lse of shape [64, 4] (q's shape without head_dim), got [4, 64]}}
  %o, %l = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>, tensor<4x64xf32>
  return
}

// -----

func.func @lse_element_type(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{result #1 must be ranked tensor of 32-bit float values}}
  %o, %l = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xbf16>, tensor<64x4xbf16>
  return
}

// -----

func.func @f64_inputs(%q: tensor<64x4x32xf64>, %k: tensor<64x4x32xf64>, %v: tensor<64x4x32xf64>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of 16-bit float or bfloat16 type or 32-bit float values, but got 'tensor<64x4x32xf64>'}}
  %o = moba.attention q(%q : tensor<64x4x32xf64>) k(%k : tensor<64x4x32xf64>) v(%v : tensor<64x4x32xf64>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16, top_k = 2} -> tensor<64x4x32xf64>
  return
}

// -----

func.func @missing_top_k(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{requires attribute 'top_k'}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 16} -> tensor<64x4x32xbf16>
  return
}

// -----

func.func @block_size_not_integer(%q: tensor<64x4x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>) {
  // expected-error @+1 {{attribute 'block_size' failed to satisfy constraint: 64-bit signless integer attribute}}
  %o = moba.attention q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) {block_size = 1.5 : f32, top_k = 2} -> tensor<64x4x32xbf16>
  return
}
