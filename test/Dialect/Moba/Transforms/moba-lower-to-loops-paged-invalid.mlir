// The paged ops' loop lowerings read rows of head_dim elements as vectors:
// a dynamic head_dim of the block sums (which the verifier lets agree with
// a static one of the cache) is an error naming the op and the dim, and
// the pass fails rather than leave the op behind.
// RUN: not moba-opt %s --moba-lower-to-loops 2>&1 | FileCheck %s

// CHECK: error: 'moba.paged_decode_attention' op lowering to loops needs static heads and head_dim; dim 3 of 'tensor<?x?x2x?xf32>' is dynamic
func.func @dynamic_sums_head_dim(%q: tensor<?x4x16xf32>, %cuq: tensor<?xi32>, %kc: tensor<?x16x2x16xf32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %sums: tensor<?x?x2x?xf32>, %o: tensor<?x4x16xf32>, %l: tensor<?x4xf32>) -> tensor<?x4x16xf32> {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x4x16xf32>) cu_seqlens_q(%cuq : tensor<?xi32>) k_cache(%kc : tensor<?x16x2x16xf32>) v_cache(%kc : tensor<?x16x2x16xf32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) block_key_sums(%sums : tensor<?x?x2x?xf32>) outs(%o : tensor<?x4x16xf32>, %l : tensor<?x4xf32>) {block_size = 32, top_k = 2}
  return %out : tensor<?x4x16xf32>
}
