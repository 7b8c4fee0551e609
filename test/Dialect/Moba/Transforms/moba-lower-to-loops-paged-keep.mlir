// RUN: moba-opt %s --moba-lower-to-loops="parallel=true keep-split-k-decode=true" | FileCheck %s
// RUN: moba-opt %s --moba-lower-to-loops="parallel=true" | FileCheck %s --check-prefix=LOOPS

// keep-split-k-decode leaves the decode ops the split-K GPU lowering takes
// (moba-convert-paged-decode-to-nvvm, after bufferization) and lowers the
// others: head_dim 48 is six 16-byte pieces, not a power of two; blocks of
// 2^25 keys would need 415 MB of partials a query token (65536 chunks of
// 512 keys), past the split-K scratch budget of 256 MB.

// CHECK-LABEL: func.func @kept
// CHECK-NOT: scf.forall
// CHECK: moba.paged_decode_attention
// LOOPS-LABEL: func.func @kept
// LOOPS-NOT: moba.paged_decode_attention
// LOOPS: scf.forall
func.func @kept(%q: tensor<?x8x64xbf16>, %cuq: tensor<?xi32>,
                %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>,
                %table: tensor<?x?xi32>, %lens: tensor<?xi32>,
                %sums: tensor<?x?x2x64xf32>, %o: tensor<?x8x64xbf16>,
                %l: tensor<?x8xf32>) -> (tensor<?x8x64xbf16>, tensor<?x8xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x8x64xbf16>)
      cu_seqlens_q(%cuq : tensor<?xi32>)
      k_cache(%kc : tensor<?x16x2x64xbf16>) v_cache(%vc : tensor<?x16x2x64xbf16>)
      block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>)
      block_key_sums(%sums : tensor<?x?x2x64xf32>)
      outs(%o : tensor<?x8x64xbf16>, %l : tensor<?x8xf32>)
      {block_size = 32, top_k = 3}
  return %out, %lse : tensor<?x8x64xbf16>, tensor<?x8xf32>
}

// CHECK-LABEL: func.func @lowered
// CHECK-NOT: moba.paged_decode_attention
// CHECK: scf.forall
func.func @lowered(%q: tensor<?x8x48xbf16>, %cuq: tensor<?xi32>,
                   %kc: tensor<?x16x2x48xbf16>, %vc: tensor<?x16x2x48xbf16>,
                   %table: tensor<?x?xi32>, %lens: tensor<?xi32>,
                   %sums: tensor<?x?x2x48xf32>, %o: tensor<?x8x48xbf16>,
                   %l: tensor<?x8xf32>) -> (tensor<?x8x48xbf16>, tensor<?x8xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x8x48xbf16>)
      cu_seqlens_q(%cuq : tensor<?xi32>)
      k_cache(%kc : tensor<?x16x2x48xbf16>) v_cache(%vc : tensor<?x16x2x48xbf16>)
      block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>)
      block_key_sums(%sums : tensor<?x?x2x48xf32>)
      outs(%o : tensor<?x8x48xbf16>, %l : tensor<?x8xf32>)
      {block_size = 32, top_k = 3}
  return %out, %lse : tensor<?x8x48xbf16>, tensor<?x8xf32>
}

// CHECK-LABEL: func.func @huge_blocks
// CHECK-NOT: moba.paged_decode_attention
// CHECK: scf.forall
func.func @huge_blocks(%q: tensor<?x8x64xbf16>, %cuq: tensor<?xi32>,
                       %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>,
                       %table: tensor<?x?xi32>, %lens: tensor<?xi32>,
                       %sums: tensor<?x?x2x64xf32>, %o: tensor<?x8x64xbf16>,
                       %l: tensor<?x8xf32>) -> (tensor<?x8x64xbf16>, tensor<?x8xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x8x64xbf16>)
      cu_seqlens_q(%cuq : tensor<?xi32>)
      k_cache(%kc : tensor<?x16x2x64xbf16>) v_cache(%vc : tensor<?x16x2x64xbf16>)
      block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>)
      block_key_sums(%sums : tensor<?x?x2x64xf32>)
      outs(%o : tensor<?x8x64xbf16>, %l : tensor<?x8xf32>)
      {block_size = 33554432, top_k = 3}
  return %out, %lse : tensor<?x8x64xbf16>, tensor<?x8xf32>
}
