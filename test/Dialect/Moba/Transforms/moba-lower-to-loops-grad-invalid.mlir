// The backward's loop lowerings need static heads and head_dim too (rows
// are vectors of head_dim elements); each op names itself and the dim.
// RUN: moba-opt %s -split-input-file --moba-lower-to-loops -verify-diagnostics
// With dynamic head counts, a bf16 grouped backward is no tensor-core one:
// keep-mma-compatible-attention does not keep it, and the loops refuse it.
// RUN: moba-opt %s -split-input-file --moba-lower-to-loops="parallel=true keep-mma-compatible-attention=true" -verify-diagnostics

func.func @row_term(%do: tensor<?x4x?xf32>, %init: tensor<?x4xf32>) -> tensor<?x4xf32> {
  // expected-error @+1 {{'moba.attention_row_term' op lowering to loops needs static heads and head_dim; dim 2 of 'tensor<?x4x?xf32>' is dynamic}}
  %d = moba.attention_row_term grad_out(%do : tensor<?x4x?xf32>) out(%do : tensor<?x4x?xf32>) outs(%init : tensor<?x4xf32>)
  return %d : tensor<?x4xf32>
}

// -----

func.func @grouped_grad(%q: tensor<?x?x16xf32>, %k: tensor<?x1x16xf32>, %cu: tensor<?xi32>, %sel: tensor<?x?x2xi32>, %s: tensor<?x?xi32>, %e: tensor<?x?xi32>, %lse: tensor<?x?xf32>, %p: tensor<2x?x?x16xf32>) -> tensor<2x?x?x16xf32> {
  // expected-error @+1 {{'moba.grouped_block_attention_grad' op lowering to loops needs static heads and head_dim; dim 1 of 'tensor<?x?x16xf32>' is dynamic}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<?x?x16xf32>) k(%k : tensor<?x1x16xf32>) v(%k : tensor<?x1x16xf32>) cu_seqlens(%cu : tensor<?xi32>) selected(%sel : tensor<?x?x2xi32>) groups(%s : tensor<?x?xi32>, %s : tensor<?x?xi32>, %e : tensor<?x?xi32>) grad_out(%q : tensor<?x?x16xf32>) lse(%lse : tensor<?x?xf32>) row_term(%lse : tensor<?x?xf32>) outs(%p : tensor<2x?x?x16xf32>, %k : tensor<?x1x16xf32>, %k : tensor<?x1x16xf32>) {block_size = 16, scale = 0.25 : f32}
  return %r#0 : tensor<2x?x?x16xf32>
}

// -----

func.func @sum_slots(%p: tensor<2x?x4x?xf32>, %init: tensor<?x4x16xbf16>) -> tensor<?x4x16xbf16> {
  // expected-error @+1 {{'moba.sum_slots' op lowering to loops needs static heads and head_dim; dims 2 and 3 of 'tensor<2x?x4x?xf32>' must be static}}
  %dq = moba.sum_slots partials(%p : tensor<2x?x4x?xf32>) outs(%init : tensor<?x4x16xbf16>)
  return %dq : tensor<?x4x16xbf16>
}

// -----

func.func @grouped_grad_dynamic_heads(%q: tensor<?x?x16xbf16>, %k: tensor<?x1x16xbf16>, %cu: tensor<?xi32>, %sel: tensor<?x?x2xi32>, %s: tensor<?x?xi32>, %e: tensor<?x?xi32>, %lse: tensor<?x?xf32>, %p: tensor<2x?x?x16xf32>) -> tensor<2x?x?x16xf32> {
  // expected-error @+1 {{'moba.grouped_block_attention_grad' op lowering to loops needs static heads and head_dim; dim 1 of 'tensor<?x?x16xbf16>' is dynamic}}
  %r:3 = moba.grouped_block_attention_grad q(%q : tensor<?x?x16xbf16>) k(%k : tensor<?x1x16xbf16>) v(%k : tensor<?x1x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) selected(%sel : tensor<?x?x2xi32>) groups(%s : tensor<?x?xi32>, %s : tensor<?x?xi32>, %e : tensor<?x?xi32>) grad_out(%q : tensor<?x?x16xbf16>) lse(%lse : tensor<?x?xf32>) row_term(%lse : tensor<?x?xf32>) outs(%p : tensor<2x?x?x16xf32>, %k : tensor<?x1x16xbf16>, %k : tensor<?x1x16xbf16>) {block_size = 16, scale = 0.25 : f32}
  return %r#0 : tensor<2x?x?x16xf32>
}
