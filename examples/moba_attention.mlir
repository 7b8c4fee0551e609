// MoBA attention over a packed batch of two sequences (1536 + 2560 tokens),
// 32 query heads sharing 8 key/value heads (GQA), head_dim 128, blocks of
// 512 tokens, each query keeping its own block and the 2 best past blocks.
//
//   build/bin/moba-opt examples/moba_attention.mlir --moba-decompose
func.func @moba_varlen(%q: tensor<4096x32x128xbf16>,
                       %k: tensor<4096x8x128xbf16>,
                       %v: tensor<4096x8x128xbf16>)
    -> (tensor<4096x32x128xbf16>, tensor<4096x32xf32>) {
  %cu_seqlens = arith.constant dense<[0, 1536, 4096]> : tensor<3xi32>
  %out, %lse = moba.attention q(%q : tensor<4096x32x128xbf16>)
      k(%k : tensor<4096x8x128xbf16>) v(%v : tensor<4096x8x128xbf16>)
      cu_seqlens(%cu_seqlens : tensor<3xi32>)
      {block_size = 512, top_k = 3, max_seqlen = 2560}
      -> tensor<4096x32x128xbf16>, tensor<4096x32xf32>
  return %out, %lse : tensor<4096x32x128xbf16>, tensor<4096x32xf32>
}
