// RUN: moba-opt %s | moba-opt | FileCheck %s
// RUN: moba-opt %s --mlir-print-op-generic | moba-opt | FileCheck %s

// The paged KV cache ops in their custom form, printed, parsed back and
// printed again (the second run through the generic form).

// CHECK-LABEL: func @append
func.func @append(%k: tensor<?x2x64xbf16>, %v: tensor<?x2x64xbf16>,
                  %cu: tensor<5xi32>, %table: tensor<4x16xi32>,
                  %lens: tensor<4xi32>, %kc: tensor<64x16x2x64xbf16>,
                  %vc: tensor<64x16x2x64xbf16>, %sums: tensor<4x4x2x64xf32>)
    -> (tensor<64x16x2x64xbf16>, tensor<64x16x2x64xbf16>, tensor<4x4x2x64xf32>) {
  // CHECK: moba.paged_kv_append k(%{{[^ ]+}} : tensor<?x2x64xbf16>) v(%{{[^ ]+}} : tensor<?x2x64xbf16>)
  // CHECK-SAME: cu_seqlens(%{{[^ ]+}} : tensor<5xi32>) block_table(%{{[^ ]+}} : tensor<4x16xi32>)
  // CHECK-SAME: cache_lens(%{{[^ ]+}} : tensor<4xi32>)
  // CHECK-SAME: outs(%{{[^ ]+}} : tensor<64x16x2x64xbf16>, %{{[^ ]+}} : tensor<64x16x2x64xbf16>, %{{[^ ]+}} : tensor<4x4x2x64xf32>)
  // CHECK-SAME: {block_size = 64 : i64}
  %a, %b, %c = moba.paged_kv_append k(%k : tensor<?x2x64xbf16>)
      v(%v : tensor<?x2x64xbf16>) cu_seqlens(%cu : tensor<5xi32>)
      block_table(%table : tensor<4x16xi32>) cache_lens(%lens : tensor<4xi32>)
      outs(%kc : tensor<64x16x2x64xbf16>, %vc : tensor<64x16x2x64xbf16>,
           %sums : tensor<4x4x2x64xf32>) {block_size = 64}
  return %a, %b, %c : tensor<64x16x2x64xbf16>, tensor<64x16x2x64xbf16>, tensor<4x4x2x64xf32>
}

// CHECK-LABEL: func @decode
func.func @decode(%q: tensor<?x8x64xbf16>, %cuq: tensor<?xi32>,
                  %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>,
                  %table: tensor<?x?xi32>, %lens: tensor<?xi32>,
                  %sums: tensor<?x?x2x64xf32>, %o: tensor<?x8x64xbf16>,
                  %l: tensor<?x8xf32>) -> (tensor<?x8x64xbf16>, tensor<?x8xf32>) {
  // CHECK: moba.paged_decode_attention q(%{{[^ ]+}} : tensor<?x8x64xbf16>)
  // CHECK-SAME: cu_seqlens_q(%{{[^ ]+}} : tensor<?xi32>)
  // CHECK-SAME: k_cache(%{{[^ ]+}} : tensor<?x16x2x64xbf16>) v_cache(%{{[^ ]+}} : tensor<?x16x2x64xbf16>)
  // CHECK-SAME: block_table(%{{[^ ]+}} : tensor<?x?xi32>) cache_lens(%{{[^ ]+}} : tensor<?xi32>)
  // CHECK-SAME: block_key_sums(%{{[^ ]+}} : tensor<?x?x2x64xf32>)
  // CHECK-SAME: outs(%{{[^ ]+}} : tensor<?x8x64xbf16>, %{{[^ ]+}} : tensor<?x8xf32>)
  // CHECK-SAME: {block_size = 32 : i64, top_k = 3 : i64}
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x8x64xbf16>)
      cu_seqlens_q(%cuq : tensor<?xi32>)
      k_cache(%kc : tensor<?x16x2x64xbf16>) v_cache(%vc : tensor<?x16x2x64xbf16>)
      block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>)
      block_key_sums(%sums : tensor<?x?x2x64xf32>)
      outs(%o : tensor<?x8x64xbf16>, %l : tensor<?x8xf32>)
      {block_size = 32, top_k = 3}
  return %out, %lse : tensor<?x8x64xbf16>, tensor<?x8xf32>
}

// CHECK-LABEL: func @decode_kv_head
func.func @decode_kv_head(%q: tensor<4x8x64xf32>, %cuq: tensor<3xi32>,
                          %kc: tensor<10x16x2x64xf32>, %vc: tensor<10x16x2x64xf32>,
                          %table: tensor<2x5xi32>, %lens: tensor<2xi32>,
                          %sums: tensor<2x5x2x64xf32>, %o: tensor<4x8x64xf32>,
                          %l: tensor<4x8xf32>) -> tensor<4x8x64xf32> {
  // CHECK: moba.paged_decode_attention
  // CHECK-SAME: {block_size = 16 : i64, scale = 1.250000e-01 : f32, selection = "kv_head", top_k = 2 : i64}
  %out, %lse = moba.paged_decode_attention q(%q : tensor<4x8x64xf32>)
      cu_seqlens_q(%cuq : tensor<3xi32>)
      k_cache(%kc : tensor<10x16x2x64xf32>) v_cache(%vc : tensor<10x16x2x64xf32>)
      block_table(%table : tensor<2x5xi32>) cache_lens(%lens : tensor<2xi32>)
      block_key_sums(%sums : tensor<2x5x2x64xf32>)
      outs(%o : tensor<4x8x64xf32>, %l : tensor<4x8xf32>)
      {block_size = 16, top_k = 2, selection = "kv_head", scale = 0.125 : f32}
  return %out : tensor<4x8x64xf32>
}

// On buffers (after bufferization, for moba-convert-paged-decode-to-nvvm):
// no results.
// CHECK-LABEL: func @decode_on_buffers
// CHECK: moba.paged_decode_attention q(%{{[^ ]+}} : memref<?x8x64xbf16>)
// CHECK-SAME: outs(%{{[^ ]+}} : memref<?x8x64xbf16>, %{{[^ ]+}} : memref<?x8xf32>)
// CHECK-SAME: {block_size = 32 : i64, top_k = 3 : i64}
func.func @decode_on_buffers(%q: memref<?x8x64xbf16>, %cuq: memref<?xi32>,
                             %kc: memref<?x16x2x64xbf16>,
                             %vc: memref<?x16x2x64xbf16>,
                             %table: memref<?x?xi32>, %lens: memref<?xi32>,
                             %sums: memref<?x?x2x64xf32>,
                             %o: memref<?x8x64xbf16>, %l: memref<?x8xf32>) {
  moba.paged_decode_attention q(%q : memref<?x8x64xbf16>)
      cu_seqlens_q(%cuq : memref<?xi32>)
      k_cache(%kc : memref<?x16x2x64xbf16>) v_cache(%vc : memref<?x16x2x64xbf16>)
      block_table(%table : memref<?x?xi32>) cache_lens(%lens : memref<?xi32>)
      block_key_sums(%sums : memref<?x?x2x64xf32>)
      outs(%o : memref<?x8x64xbf16>, %l : memref<?x8xf32>)
      {block_size = 32, top_k = 3}
  return
}
