// RUN: moba-opt %s | moba-opt | FileCheck %s
// RUN: moba-opt %s --mlir-print-op-generic | moba-opt | FileCheck %s

// Every op in its custom form, printed, parsed back and printed again. The
// second run goes through the generic form.

// CHECK-LABEL: func @attention_varlen
func.func @attention_varlen(%q: tensor<1024x32x128xbf16>, %k: tensor<1024x8x128xbf16>,
                            %v: tensor<1024x8x128xbf16>, %cu: tensor<3xi32>)
    -> (tensor<1024x32x128xbf16>, tensor<1024x32xf32>) {
  // CHECK: %{{.+}}, %{{.+}} = moba.attention q(%{{.+}} : tensor<1024x32x128xbf16>)
  // CHECK-SAME: k(%{{.+}} : tensor<1024x8x128xbf16>) v(%{{.+}} : tensor<1024x8x128xbf16>)
  // CHECK-SAME: cu_seqlens(%{{.+}} : tensor<3xi32>)
  // CHECK-SAME: block_size = 64
  // CHECK-SAME: max_seqlen = 512
  // CHECK-SAME: top_k = 3
  // CHECK-SAME: -> tensor<1024x32x128xbf16>, tensor<1024x32xf32>
  %o, %lse = moba.attention q(%q : tensor<1024x32x128xbf16>) k(%k : tensor<1024x8x128xbf16>)
      v(%v : tensor<1024x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
      {block_size = 64, top_k = 3, max_seqlen = 512}
      -> tensor<1024x32x128xbf16>, tensor<1024x32xf32>
  return %o, %lse : tensor<1024x32x128xbf16>, tensor<1024x32xf32>
}

// CHECK-LABEL: func @attention_batched_no_lse
func.func @attention_batched_no_lse(%q: tensor<2x256x4x64xf16>, %k: tensor<2x256x1x64xf16>,
                                    %v: tensor<2x256x1x64xf16>) -> tensor<2x256x4x64xf16> {
  // CHECK: moba.attention
  // CHECK-NOT: cu_seqlens
  // CHECK-SAME: causal = false
  // CHECK-SAME: scale = 2.500000e-01 : f32
  // CHECK-SAME: -> tensor<2x256x4x64xf16>
  // CHECK-NOT: ,
  %o = moba.attention q(%q : tensor<2x256x4x64xf16>) k(%k : tensor<2x256x1x64xf16>)
      v(%v : tensor<2x256x1x64xf16>)
      {block_size = 128, top_k = 2, causal = false, scale = 0.25 : f32}
      -> tensor<2x256x4x64xf16>
  return %o : tensor<2x256x4x64xf16>
}

// CHECK-LABEL: func @decomposed
func.func @decomposed(%q: tensor<1024x32x128xbf16>, %k: tensor<1024x8x128xbf16>,
                      %v: tensor<1024x8x128xbf16>, %cu: tensor<3xi32>,
                      %means0: tensor<18x8x128xf32>, %scores0: tensor<1024x32x16xf32>,
                      %sel0: tensor<1024x32x3xi32>, %o0: tensor<1024x32x128xbf16>,
                      %l0: tensor<1024x32xf32>)
    -> (tensor<1024x32x128xbf16>, tensor<1024x32xf32>) {
  // CHECK: %[[MEANS:.+]] = moba.block_pool keys(%{{.+}} : tensor<1024x8x128xbf16>)
  // CHECK-SAME: cu_seqlens(%{{.+}} : tensor<3xi32>) outs(%{{.+}} : tensor<18x8x128xf32>)
  // CHECK-SAME: {block_size = 64 : i64}
  %means = moba.block_pool keys(%k : tensor<1024x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
      outs(%means0 : tensor<18x8x128xf32>) {block_size = 64}
  // CHECK: %[[SCORES:.+]] = moba.gate queries(%{{.+}} : tensor<1024x32x128xbf16>)
  // CHECK-SAME: means(%[[MEANS]] : tensor<18x8x128xf32>)
  // CHECK-SAME: outs(%{{.+}} : tensor<1024x32x16xf32>)
  %scores = moba.gate queries(%q : tensor<1024x32x128xbf16>) means(%means : tensor<18x8x128xf32>)
      cu_seqlens(%cu : tensor<3xi32>) outs(%scores0 : tensor<1024x32x16xf32>) {block_size = 64}
  // CHECK: %[[SEL:.+]] = moba.topk scores(%[[SCORES]] : tensor<1024x32x16xf32>)
  // CHECK-SAME: outs(%{{.+}} : tensor<1024x32x3xi32>)
  %sel = moba.topk scores(%scores : tensor<1024x32x16xf32>) cu_seqlens(%cu : tensor<3xi32>)
      outs(%sel0 : tensor<1024x32x3xi32>) {block_size = 64}
  // CHECK: moba.sparse_attention q(%{{.+}} : tensor<1024x32x128xbf16>)
  // CHECK-SAME: selected(%[[SEL]] : tensor<1024x32x3xi32>)
  // CHECK-SAME: outs(%{{.+}} : tensor<1024x32x128xbf16>, %{{.+}} : tensor<1024x32xf32>)
  %o, %l = moba.sparse_attention q(%q : tensor<1024x32x128xbf16>) k(%k : tensor<1024x8x128xbf16>)
      v(%v : tensor<1024x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
      selected(%sel : tensor<1024x32x3xi32>)
      outs(%o0 : tensor<1024x32x128xbf16>, %l0 : tensor<1024x32xf32>)
      {block_size = 64, scale = 0.125 : f32}
  return %o, %l : tensor<1024x32x128xbf16>, tensor<1024x32xf32>
}

// CHECK-LABEL: func @own_block_and_dense
func.func @own_block_and_dense(%q: tensor<100x2x16xf32>, %k: tensor<100x2x16xf32>,
                               %v: tensor<100x2x16xf32>, %cu: tensor<?xi64>,
                               %sel0: tensor<100x2x1xi32>, %o0: tensor<100x2x16xf32>,
                               %l0: tensor<100x2xf32>)
    -> (tensor<100x2x1xi32>, tensor<100x2x16xf32>) {
  // CHECK: moba.topk cu_seqlens(%{{.+}} : tensor<?xi64>) outs
  %sel = moba.topk cu_seqlens(%cu : tensor<?xi64>) outs(%sel0 : tensor<100x2x1xi32>)
      {block_size = 16}
  // CHECK: moba.sparse_attention
  // CHECK-NOT: selected
  // CHECK-SAME: causal = false
  %o, %l = moba.sparse_attention q(%q : tensor<100x2x16xf32>) k(%k : tensor<100x2x16xf32>)
      v(%v : tensor<100x2x16xf32>) cu_seqlens(%cu : tensor<?xi64>)
      outs(%o0 : tensor<100x2x16xf32>, %l0 : tensor<100x2xf32>)
      {block_size = 16, scale = 0.25 : f32, causal = false}
  return %sel, %o : tensor<100x2x1xi32>, tensor<100x2x16xf32>
}

// CHECK-LABEL: func @merge
func.func @merge(%parts: tensor<2x64x4x32xf32>, %plse: tensor<2x64x4xf32>,
                 %o0: tensor<64x4x32xbf16>, %l0: tensor<64x4xf32>)
    -> tensor<64x4x32xbf16> {
  // CHECK: moba.lse_merge partials(%{{.+}} : tensor<2x64x4x32xf32>)
  // CHECK-SAME: partial_lse(%{{.+}} : tensor<2x64x4xf32>)
  // CHECK-SAME: outs(%{{.+}} : tensor<64x4x32xbf16>, %{{.+}} : tensor<64x4xf32>)
  %o, %l = moba.lse_merge partials(%parts : tensor<2x64x4x32xf32>)
      partial_lse(%plse : tensor<2x64x4xf32>)
      outs(%o0 : tensor<64x4x32xbf16>, %l0 : tensor<64x4xf32>)
  return %o : tensor<64x4x32xbf16>
}

// CHECK-LABEL: func @fused_selection
func.func @fused_selection(%q: tensor<?x8x64xbf16>, %m: tensor<?x2x64xf32>, %cu: tensor<?xi32>,
                           %i0: tensor<?x8x4xi32>) -> tensor<?x8x4xi32> {
  // CHECK: moba.gate_topk queries(%{{.+}} : tensor<?x8x64xbf16>) means(%{{.+}} : tensor<?x2x64xf32>)
  // CHECK-SAME: cu_seqlens(%{{.+}} : tensor<?xi32>) outs(%{{.+}} : tensor<?x8x4xi32>) {block_size = 64 : i64, causal = false}
  %sel = moba.gate_topk queries(%q : tensor<?x8x64xbf16>) means(%m : tensor<?x2x64xf32>)
      cu_seqlens(%cu : tensor<?xi32>) outs(%i0 : tensor<?x8x4xi32>) {block_size = 64, causal = false}
  return %sel : tensor<?x8x4xi32>
}

// After bufferization: on memrefs, no result, the selection written in place.
// CHECK-LABEL: func.func @fused_selection_on_buffers
func.func @fused_selection_on_buffers(%q: memref<?x8x64xbf16>, %m: memref<?x2x64xf32>,
                                      %cu: memref<?xi32>, %i0: memref<?x8x4xi32>) {
  // CHECK: moba.gate_topk queries(%{{.+}} : memref<?x8x64xbf16>) means(%{{.+}} : memref<?x2x64xf32>)
  // CHECK-SAME: cu_seqlens(%{{.+}} : memref<?xi32>) outs(%{{.+}} : memref<?x8x4xi32>) {block_size = 64 : i64}
  // CHECK-NEXT: return
  moba.gate_topk queries(%q : memref<?x8x64xbf16>) means(%m : memref<?x2x64xf32>)
      cu_seqlens(%cu : memref<?xi32>) outs(%i0 : memref<?x8x4xi32>) {block_size = 64}
  return
}
