// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @entries_size(%sel: tensor<64x8x3xi32>, %cu: tensor<2xi32>, %s: tensor<8x4xi32>, %c: tensor<8x4xi32>, %e: tensor<8x100xi32>) {
  // expected-error @+1 {{entries must hold tokens * K = 64 * 3 = 192 slots per head, got 100}}
  %g:3 = moba.group_queries selected(%sel : tensor<64x8x3xi32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<8x4xi32>, %c : tensor<8x4xi32>, %e : tensor<8x100xi32>) {block_size = 16}
  return
}

// -----

func.func @starts_counts(%sel: tensor<64x8x3xi32>, %cu: tensor<2xi32>, %s: tensor<8x4xi32>, %c: tensor<8x5xi32>, %e: tensor<8x192xi32>) {
  // expected-error @+1 {{shape of starts [8, 4] and of counts [8, 5] disagree}}
  %g:3 = moba.group_queries selected(%sel : tensor<64x8x3xi32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<8x4xi32>, %c : tensor<8x5xi32>, %e : tensor<8x192xi32>) {block_size = 16}
  return
}

// -----

func.func @group_heads(%sel: tensor<64x8x3xi32>, %cu: tensor<2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>, %e: tensor<8x192xi32>) {
  // expected-error @+1 {{number of query heads of selected (8) and starts (4) disagree}}
  %g:3 = moba.group_queries selected(%sel : tensor<64x8x3xi32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<8x192xi32>) {block_size = 16}
  return
}

// -----

func.func @group_block_size(%sel: tensor<64x8x3xi32>, %cu: tensor<2xi32>, %s: tensor<8x4xi32>, %c: tensor<8x4xi32>, %e: tensor<8x192xi32>) {
  // expected-error @+1 {{block_size must be at least 1, got 0}}
  %g:3 = moba.group_queries selected(%sel : tensor<64x8x3xi32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<8x4xi32>, %c : tensor<8x4xi32>, %e : tensor<8x192xi32>) {block_size = 0}
  return
}

// -----

func.func @group_cu_end() {
  %sel = tensor.empty() : tensor<64x8x3xi32>
  %cu = arith.constant dense<[0, 60]> : tensor<2xi32>
  %s = tensor.empty() : tensor<8x4xi32>
  %e = tensor.empty() : tensor<8x192xi32>
  // expected-error @+1 {{cu_seqlens must end at the token count (64), got 60}}
  %g:3 = moba.group_queries selected(%sel : tensor<64x8x3xi32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) {block_size = 16}
  return
}

// -----

func.func @partials_k(%q: tensor<64x8x32xf16>, %kv: tensor<64x2x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<2x64x8x32xf32>, %l: tensor<3x64x8xf32>) {
  // expected-error @+1 {{K of selected (3) and partial_out_init (2) disagree}}
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x8x32xf16>) k(%kv : tensor<64x2x32xf16>) v(%kv : tensor<64x2x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<2x64x8x32xf32>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32} -> tensor<2x64x8x32xf32>, tensor<3x64x8xf32>
  return
}

// -----

func.func @partials_dims(%q: tensor<64x8x32xf16>, %kv: tensor<64x2x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<3x64x8x16xf32>, %l: tensor<3x64x8xf32>) {
  // expected-error @+1 {{dim 2 of q (32) and partial_out_init (16) disagree}}
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x8x32xf16>) k(%kv : tensor<64x2x32xf16>) v(%kv : tensor<64x2x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<3x64x8x16xf32>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32} -> tensor<3x64x8x16xf32>, tensor<3x64x8xf32>
  return
}

// -----

func.func @partial_lse_rank(%q: tensor<64x8x32xf16>, %kv: tensor<64x2x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<3x64x8x32xf32>, %l: tensor<64x8xf32>) {
  // expected-error @+1 {{expects partial_lse_init of rank 3 ([K, tokens, query heads]), got rank 2 ([64, 8])}}
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x8x32xf16>) k(%kv : tensor<64x2x32xf16>) v(%kv : tensor<64x2x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<3x64x8x32xf32>, %l : tensor<64x8xf32>) {block_size = 16, scale = 0.5 : f32} -> tensor<3x64x8x32xf32>, tensor<64x8xf32>
  return
}

// -----

func.func @grouped_heads(%q: tensor<64x8x32xf16>, %kv: tensor<64x3x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<3x64x8x32xf32>, %l: tensor<3x64x8xf32>) {
  // expected-error @+1 {{number of query heads (Hq = 8 in q) is not a multiple of the number of key/value heads (Hkv = 3 in k)}}
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x8x32xf16>) k(%kv : tensor<64x3x32xf16>) v(%kv : tensor<64x3x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<3x64x8x32xf32>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32} -> tensor<3x64x8x32xf32>, tensor<3x64x8xf32>
  return
}

// -----

func.func @mixed_forms(%q: memref<64x8x32xf16>, %kv: tensor<64x2x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<3x64x8x32xf32>, %l: tensor<3x64x8xf32>) {
  // expected-error @+1 {{operands must be all tensors or all memrefs}}
  moba.grouped_block_attention q(%q : memref<64x8x32xf16>) k(%kv : tensor<64x2x32xf16>) v(%kv : tensor<64x2x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<3x64x8x32xf32>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @tensor_form_without_results(%q: tensor<64x8x32xf16>, %kv: tensor<64x2x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<3x64x8x32xf32>, %l: tensor<3x64x8xf32>) {
  // expected-error @+1 {{on tensors, expects two results of the types of partial_out_init and partial_lse_init}}
  moba.grouped_block_attention q(%q : tensor<64x8x32xf16>) k(%kv : tensor<64x2x32xf16>) v(%kv : tensor<64x2x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<3x64x8x32xf32>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

// Partial rows are f32 or q's element type, never a third type.
func.func @partials_type(%q: tensor<64x8x32xf16>, %kv: tensor<64x2x32xf16>, %cu: tensor<2xi32>, %sel: tensor<64x8x3xi32>, %s: tensor<8x4xi32>, %e: tensor<8x192xi32>, %o: tensor<3x64x8x32xbf16>, %l: tensor<3x64x8xf32>) {
  // expected-error @+1 {{partial_out_init must hold f32 or the element type of q ('f16'), got 'bf16'}}
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x8x32xf16>) k(%kv : tensor<64x2x32xf16>) v(%kv : tensor<64x2x32xf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>) groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>) outs(%o : tensor<3x64x8x32xbf16>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32} -> tensor<3x64x8x32xbf16>, tensor<3x64x8xf32>
  return
}

// -----

func.func @grouping_mixed(%sel: memref<64x8x3xi32>, %cu: tensor<2xi32>, %s: memref<8x4xi32>, %c: memref<8x4xi32>, %e: memref<8x192xi32>) {
  // expected-error @+1 {{operands must be all tensors or all memrefs}}
  moba.group_queries selected(%sel : memref<64x8x3xi32>) cu_seqlens(%cu : tensor<2xi32>) outs(%s : memref<8x4xi32>, %c : memref<8x4xi32>, %e : memref<8x192xi32>) {block_size = 16}
  return
}

// -----

func.func @grouping_result_types(%sel: tensor<64x8x3xi32>, %cu: tensor<2xi32>, %s: tensor<8x4xi32>, %c: tensor<8x4xi32>, %e: tensor<8x192xi32>) {
  // expected-error @+1 {{on tensors, expects three results of the types of starts_init, counts_init and entries_init}}
  %g:3 = "moba.group_queries"(%sel, %cu, %s, %c, %e) {block_size = 16 : i64} : (tensor<64x8x3xi32>, tensor<2xi32>, tensor<8x4xi32>, tensor<8x4xi32>, tensor<8x192xi32>) -> (tensor<8x4xi32>, tensor<8x5xi32>, tensor<8x192xi32>)
  return
}

// -----

func.func @merge_type(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                      %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                      %e: tensor<4x128xi32>, %po: tensor<2x64x4x16xbf16>, %pl: tensor<2x64x4xf32>,
                      %out: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>) {
  // expected-error @+1 {{out_init must hold the element type of q ('bf16'), got 'f32'}}
  %p:4 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>) k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>) merge(%out : tensor<64x4x16xf32>, %lse : tensor<64x4xf32>) {block_size = 16, scale = 0.25 : f32} -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>, tensor<64x4x16xf32>, tensor<64x4xf32>
  return
}

// -----

func.func @merge_tokens(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                        %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                        %e: tensor<4x128xi32>, %po: tensor<2x64x4x16xbf16>, %pl: tensor<2x64x4xf32>,
                        %out: tensor<64x4x16xbf16>, %lse: tensor<32x4xf32>) {
  // expected-error @+1 {{dim 0 of q (64) and lse_init (32) disagree}}
  %p:4 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>) k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>) merge(%out : tensor<64x4x16xbf16>, %lse : tensor<32x4xf32>) {block_size = 16, scale = 0.25 : f32} -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>, tensor<64x4x16xbf16>, tensor<32x4xf32>
  return
}

// -----

func.func @merge_rank(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                      %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                      %e: tensor<4x128xi32>, %po: tensor<2x64x4x16xbf16>, %pl: tensor<2x64x4xf32>,
                      %out: tensor<64x64xbf16>, %lse: tensor<64x4xf32>) {
  // expected-error @+1 {{expects out_init of rank 3 ([tokens, query heads, head_dim]), got rank 2 ([64, 64])}}
  %p:4 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>) k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>) merge(%out : tensor<64x64xbf16>, %lse : tensor<64x4xf32>) {block_size = 16, scale = 0.25 : f32} -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>, tensor<64x64xbf16>, tensor<64x4xf32>
  return
}

// -----

func.func @merge_results(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                         %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                         %e: tensor<4x128xi32>, %po: tensor<2x64x4x16xbf16>, %pl: tensor<2x64x4xf32>,
                         %out: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>) {
  // expected-error @+1 {{on tensors, expects four results of the types of partial_out_init, partial_lse_init, out_init and lse_init}}
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>) k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>) groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>) outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>) merge(%out : tensor<64x4x16xbf16>, %lse : tensor<64x4xf32>) {block_size = 16, scale = 0.25 : f32} -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>
  return
}
