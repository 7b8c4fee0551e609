// RUN: moba-opt %s --moba-decompose | FileCheck %s
// RUN: moba-opt %s --moba-decompose --cse | FileCheck %s --check-prefix=SHARED

// moba.attention_grad: the selection as the forward builds it, then the
// row term, the groups, the grouped backward and the sum over the slots.
// CHECK-LABEL: func @recomputed_selection
// CHECK-SAME: %[[Q:[^:]+]]: tensor<64x4x16xbf16>, %[[K:[^:]+]]: tensor<64x2x16xbf16>, %[[V:[^:]+]]: tensor<64x2x16xbf16>, %[[CU:[^:]+]]: tensor<3xi32>, %[[O:[^:]+]]: tensor<64x4x16xbf16>, %[[LSE:[^:]+]]: tensor<64x4xf32>, %[[DO:[^:]+]]: tensor<64x4x16xbf16>
// CHECK: %[[MEANS:.+]] = moba.block_pool keys(%[[K]] : {{[^)]+}}) cu_seqlens(%[[CU]] : {{[^)]+}}) outs(%{{.+}} : tensor<4x2x16xf32>) {block_size = 16
// CHECK: %[[SCORES:.+]] = moba.gate queries(%[[Q]] : {{[^)]+}}) means(%[[MEANS]] : {{[^)]+}}) {{.+}} outs(%{{.+}} : tensor<64x4x2xf32>)
// CHECK: %[[SEL:.+]] = moba.topk scores(%[[SCORES]] : {{[^)]+}}) {{.+}} outs(%{{.+}} : tensor<64x4x3xi32>) {block_size = 16 : i64, causal = false}
// CHECK: %[[DELTA:.+]] = moba.attention_row_term grad_out(%[[DO]] : {{[^)]+}}) out(%[[O]] : {{[^)]+}}) outs(%{{.+}} : tensor<64x4xf32>)
// CHECK: %[[STARTS:.+]], %[[COUNTS:.+]], %[[ENTRIES:.+]] = moba.group_queries selected(%[[SEL]] : {{[^)]+}}) {{.+}} outs(%{{.+}} : tensor<4x4xi32>, %{{.+}} : tensor<4x4xi32>, %{{.+}} : tensor<4x192xi32>)
// CHECK: %[[DQP:[a-z_0-9]+]], %[[DK:[a-z_0-9]+]], %[[DV:[a-z_0-9]+]] = moba.grouped_block_attention_grad q(%[[Q]] : {{[^)]+}}) k(%[[K]] : {{[^)]+}}) v(%[[V]] : {{[^)]+}}) cu_seqlens(%[[CU]] : {{[^)]+}}) selected(%[[SEL]] : {{[^)]+}}) groups(%[[STARTS]] : {{[^)]+}}, %[[COUNTS]] : {{[^)]+}}, %[[ENTRIES]] : {{[^)]+}}) grad_out(%[[DO]] : {{[^)]+}}) lse(%[[LSE]] : {{[^)]+}}) row_term(%[[DELTA]] : {{[^)]+}}) outs(%{{.+}} : tensor<3x64x4x16xf32>, %{{.+}} : tensor<64x2x16xbf16>, %{{.+}} : tensor<64x2x16xbf16>) {block_size = 16 : i64, causal = false, scale = 2.500000e-01 : f32}
// CHECK: %[[DQ:.+]] = moba.sum_slots partials(%[[DQP]] : tensor<3x64x4x16xf32>) outs(%{{.+}} : tensor<64x4x16xbf16>)
// CHECK: return %[[DQ]], %[[DK]], %[[DV]]
func.func @recomputed_selection(
    %q: tensor<64x4x16xbf16>, %k: tensor<64x2x16xbf16>,
    %v: tensor<64x2x16xbf16>, %cu: tensor<3xi32>, %o: tensor<64x4x16xbf16>,
    %lse: tensor<64x4xf32>, %do: tensor<64x4x16xbf16>)
    -> (tensor<64x4x16xbf16>, tensor<64x2x16xbf16>, tensor<64x2x16xbf16>) {
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<64x4x16xbf16>)
      k(%k : tensor<64x2x16xbf16>) v(%v : tensor<64x2x16xbf16>)
      cu_seqlens(%cu : tensor<3xi32>)
      out(%o : tensor<64x4x16xbf16>) lse(%lse : tensor<64x4xf32>)
      grad_out(%do : tensor<64x4x16xbf16>)
      {block_size = 16, top_k = 3, causal = false, max_seqlen = 32}
      -> tensor<64x4x16xbf16>, tensor<64x2x16xbf16>, tensor<64x2x16xbf16>
  return %dq, %dk, %dv
      : tensor<64x4x16xbf16>, tensor<64x2x16xbf16>, tensor<64x2x16xbf16>
}

// A caller's selection is used as given: no gate; grad_lse reaches the row
// term.
// CHECK-LABEL: func @given_selection
// CHECK-SAME: %[[DLSE:[^:]+]]: tensor<?x4xf32>, %[[SEL:[^:]+]]: tensor<?x4x2xi32>
// CHECK-NOT: moba.block_pool
// CHECK-NOT: moba.gate
// CHECK-NOT: moba.topk
// CHECK: moba.attention_row_term {{.+}} grad_lse(%[[DLSE]] : tensor<?x4xf32>)
// CHECK: moba.group_queries selected(%[[SEL]] : tensor<?x4x2xi32>)
// CHECK: moba.grouped_block_attention_grad {{.+}} selected(%[[SEL]] : tensor<?x4x2xi32>)
// CHECK-SAME: scale = 1.250000e-01 : f32
// CHECK: moba.sum_slots partials(%{{.+}} : tensor<2x?x4x16xf32>) outs(%{{.+}} : tensor<?x4x16xf32>)
func.func @given_selection(
    %q: tensor<?x4x16xf32>, %k: tensor<?x1x16xf32>, %v: tensor<?x1x16xf32>,
    %cu: tensor<?xi32>, %o: tensor<?x4x16xf32>, %lse: tensor<?x4xf32>,
    %do: tensor<?x4x16xf32>, %dlse: tensor<?x4xf32>, %sel: tensor<?x4x2xi32>)
    -> (tensor<?x4x16xf32>, tensor<?x1x16xf32>, tensor<?x1x16xf32>) {
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x4x16xf32>)
      k(%k : tensor<?x1x16xf32>) v(%v : tensor<?x1x16xf32>)
      cu_seqlens(%cu : tensor<?xi32>)
      out(%o : tensor<?x4x16xf32>) lse(%lse : tensor<?x4xf32>)
      grad_out(%do : tensor<?x4x16xf32>) grad_lse(%dlse : tensor<?x4xf32>)
      selected(%sel : tensor<?x4x2xi32>)
      {block_size = 8, top_k = 2, scale = 0.125 : f32}
      -> tensor<?x4x16xf32>, tensor<?x1x16xf32>, tensor<?x1x16xf32>
  return %dq, %dk, %dv
      : tensor<?x4x16xf32>, tensor<?x1x16xf32>, tensor<?x1x16xf32>
}

// The forward and the backward of the same inputs build the same selection
// ops, operand for operand: CSE leaves one block_pool, gate and topk, whose
// selection feeds both the forward's attention and the backward's groups.
// SHARED-LABEL: func @forward_and_backward
// SHARED: moba.block_pool
// SHARED-NOT: moba.block_pool
// SHARED: moba.gate
// SHARED-NOT: moba.gate
// SHARED: %[[SEL:.+]] = moba.topk
// SHARED-NOT: moba.topk
// SHARED: moba.sparse_attention {{.+}} selected(%[[SEL]] :
// SHARED: moba.group_queries selected(%[[SEL]] :
// SHARED: moba.grouped_block_attention_grad {{.+}} selected(%[[SEL]] :
func.func @forward_and_backward(
    %q: tensor<?x32x128xbf16>, %k: tensor<?x8x128xbf16>,
    %v: tensor<?x8x128xbf16>, %cu: tensor<?xi32>,
    %do: tensor<?x32x128xbf16>)
    -> (tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>) {
  %o, %lse = moba.attention q(%q : tensor<?x32x128xbf16>)
      k(%k : tensor<?x8x128xbf16>) v(%v : tensor<?x8x128xbf16>)
      cu_seqlens(%cu : tensor<?xi32>)
      {block_size = 512, top_k = 3, max_seqlen = 4096}
      -> tensor<?x32x128xbf16>, tensor<?x32xf32>
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x32x128xbf16>)
      k(%k : tensor<?x8x128xbf16>) v(%v : tensor<?x8x128xbf16>)
      cu_seqlens(%cu : tensor<?xi32>)
      out(%o : tensor<?x32x128xbf16>) lse(%lse : tensor<?x32xf32>)
      grad_out(%do : tensor<?x32x128xbf16>)
      {block_size = 512, top_k = 3, max_seqlen = 4096}
      -> tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>
  return %dq, %dk, %dv
      : tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>
}
