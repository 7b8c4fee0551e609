// RUN: moba-opt %s | moba-opt | FileCheck %s
// RUN: moba-opt %s --mlir-print-op-generic | moba-opt | FileCheck %s

// The ops of the attention backward in their custom form, printed, parsed
// back and printed again; the second run goes through the generic form.

// The front-end op with every optional operand and attribute, on the
// dynamic token counts the runner compiles.
// CHECK-LABEL: func @attention_grad_full
func.func @attention_grad_full(
    %q: tensor<?x32x128xbf16>, %k: tensor<?x8x128xbf16>,
    %v: tensor<?x8x128xbf16>, %cu: tensor<?xi32>, %o: tensor<?x32x128xbf16>,
    %lse: tensor<?x32xf32>, %do: tensor<?x32x128xbf16>,
    %dlse: tensor<?x32xf32>, %sel: tensor<?x32x3xi32>)
    -> (tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>) {
  // CHECK: %grad_q, %grad_k, %grad_v = moba.attention_grad q(%{{[a-z0-9_]+}} : tensor<?x32x128xbf16>)
  // CHECK-SAME: k(%{{[a-z0-9_]+}} : tensor<?x8x128xbf16>) v(%{{[a-z0-9_]+}} : tensor<?x8x128xbf16>)
  // CHECK-SAME: cu_seqlens(%{{[a-z0-9_]+}} : tensor<?xi32>)
  // CHECK-SAME: out(%{{[a-z0-9_]+}} : tensor<?x32x128xbf16>) lse(%{{[a-z0-9_]+}} : tensor<?x32xf32>)
  // CHECK-SAME: grad_out(%{{[a-z0-9_]+}} : tensor<?x32x128xbf16>)
  // CHECK-SAME: grad_lse(%{{[a-z0-9_]+}} : tensor<?x32xf32>)
  // CHECK-SAME: selected(%{{[a-z0-9_]+}} : tensor<?x32x3xi32>)
  // CHECK-SAME: block_size = 512
  // CHECK-SAME: max_seqlen = 4096
  // CHECK-SAME: scale = 0.0879999995 : f32
  // CHECK-SAME: top_k = 3
  // CHECK-SAME: -> tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x32x128xbf16>)
      k(%k : tensor<?x8x128xbf16>) v(%v : tensor<?x8x128xbf16>)
      cu_seqlens(%cu : tensor<?xi32>)
      out(%o : tensor<?x32x128xbf16>) lse(%lse : tensor<?x32xf32>)
      grad_out(%do : tensor<?x32x128xbf16>)
      grad_lse(%dlse : tensor<?x32xf32>)
      selected(%sel : tensor<?x32x3xi32>)
      {block_size = 512, top_k = 3, causal = true, scale = 0.088 : f32,
       max_seqlen = 4096}
      -> tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>
  return %dq, %dk, %dv
      : tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>
}

// Without the optional operands: no grad_lse, the selection recomputed.
// CHECK-LABEL: func @attention_grad_minimal
func.func @attention_grad_minimal(
    %q: tensor<64x4x16xf32>, %k: tensor<64x1x16xf32>, %v: tensor<64x1x16xf32>,
    %cu: tensor<2xi32>, %o: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>,
    %do: tensor<64x4x16xf32>)
    -> (tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>) {
  // CHECK: moba.attention_grad
  // CHECK-SAME: grad_out(%{{[a-z0-9_]+}} : tensor<64x4x16xf32>) {
  // CHECK-NOT: grad_lse
  // CHECK-NOT: selected
  // CHECK-SAME: causal = false
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<64x4x16xf32>)
      k(%k : tensor<64x1x16xf32>) v(%v : tensor<64x1x16xf32>)
      cu_seqlens(%cu : tensor<2xi32>)
      out(%o : tensor<64x4x16xf32>) lse(%lse : tensor<64x4xf32>)
      grad_out(%do : tensor<64x4x16xf32>)
      {block_size = 16, top_k = 2, causal = false}
      -> tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
  return %dq, %dk, %dv
      : tensor<64x4x16xf32>, tensor<64x1x16xf32>, tensor<64x1x16xf32>
}

// CHECK-LABEL: func @row_term
func.func @row_term(%do: tensor<?x8x64xbf16>, %o: tensor<?x8x64xbf16>,
                    %dlse: tensor<?x8xf32>, %init: tensor<?x8xf32>)
    -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  // CHECK: moba.attention_row_term grad_out(%{{[a-z0-9_]+}} : tensor<?x8x64xbf16>)
  // CHECK-SAME: out(%{{[a-z0-9_]+}} : tensor<?x8x64xbf16>)
  // CHECK-SAME: grad_lse(%{{[a-z0-9_]+}} : tensor<?x8xf32>)
  // CHECK-SAME: outs(%{{[a-z0-9_]+}} : tensor<?x8xf32>)
  %d = moba.attention_row_term grad_out(%do : tensor<?x8x64xbf16>)
      out(%o : tensor<?x8x64xbf16>) grad_lse(%dlse : tensor<?x8xf32>)
      outs(%init : tensor<?x8xf32>)
  // CHECK: moba.attention_row_term
  // CHECK-NOT: grad_lse
  // CHECK-SAME: outs(
  %d2 = moba.attention_row_term grad_out(%do : tensor<?x8x64xbf16>)
      out(%o : tensor<?x8x64xbf16>) outs(%init : tensor<?x8xf32>)
  return %d, %d2 : tensor<?x8xf32>, tensor<?x8xf32>
}

// CHECK-LABEL: func @grouped_grad
func.func @grouped_grad(
    %q: tensor<4096x32x128xbf16>, %k: tensor<4096x8x128xbf16>,
    %v: tensor<4096x8x128xbf16>, %cu: tensor<3xi32>,
    %sel: tensor<4096x32x3xi32>, %starts: tensor<32x10xi32>,
    %counts: tensor<32x10xi32>, %entries: tensor<32x12288xi32>,
    %do: tensor<4096x32x128xbf16>, %lse: tensor<4096x32xf32>,
    %delta: tensor<4096x32xf32>, %dqp0: tensor<3x4096x32x128xf32>,
    %dk0: tensor<4096x8x128xbf16>, %dv0: tensor<4096x8x128xf32>)
    -> (tensor<3x4096x32x128xf32>, tensor<4096x8x128xbf16>,
        tensor<4096x8x128xf32>) {
  // CHECK: %dq_partials, %dk, %dv = moba.grouped_block_attention_grad
  // CHECK-SAME: q(%{{[a-z0-9_]+}} : tensor<4096x32x128xbf16>)
  // CHECK-SAME: selected(%{{[a-z0-9_]+}} : tensor<4096x32x3xi32>)
  // CHECK-SAME: groups(%{{[a-z0-9_]+}} : tensor<32x10xi32>, %{{[a-z0-9_]+}} : tensor<32x10xi32>, %{{[a-z0-9_]+}} : tensor<32x12288xi32>)
  // CHECK-SAME: grad_out(%{{[a-z0-9_]+}} : tensor<4096x32x128xbf16>)
  // CHECK-SAME: lse(%{{[a-z0-9_]+}} : tensor<4096x32xf32>) row_term(%{{[a-z0-9_]+}} : tensor<4096x32xf32>)
  // CHECK-SAME: outs(%{{[a-z0-9_]+}} : tensor<3x4096x32x128xf32>, %{{[a-z0-9_]+}} : tensor<4096x8x128xbf16>, %{{[a-z0-9_]+}} : tensor<4096x8x128xf32>)
  // CHECK-SAME: block_size = 512
  // CHECK-SAME: causal = false
  // CHECK-SAME: scale = 0.0883883461 : f32
  %dqp, %dk, %dv = moba.grouped_block_attention_grad
      q(%q : tensor<4096x32x128xbf16>) k(%k : tensor<4096x8x128xbf16>)
      v(%v : tensor<4096x8x128xbf16>) cu_seqlens(%cu : tensor<3xi32>)
      selected(%sel : tensor<4096x32x3xi32>)
      groups(%starts : tensor<32x10xi32>, %counts : tensor<32x10xi32>,
             %entries : tensor<32x12288xi32>)
      grad_out(%do : tensor<4096x32x128xbf16>)
      lse(%lse : tensor<4096x32xf32>) row_term(%delta : tensor<4096x32xf32>)
      outs(%dqp0 : tensor<3x4096x32x128xf32>,
           %dk0 : tensor<4096x8x128xbf16>, %dv0 : tensor<4096x8x128xf32>)
      {block_size = 512, scale = 0.0883883461 : f32, causal = false}
  return %dqp, %dk, %dv : tensor<3x4096x32x128xf32>, tensor<4096x8x128xbf16>,
                          tensor<4096x8x128xf32>
}

// The memref form (after bufferization): no results, the inits written in
// place.
// CHECK-LABEL: func @grouped_grad_on_buffers
func.func @grouped_grad_on_buffers(
    %q: memref<64x4x32xbf16>, %k: memref<64x2x32xbf16>, %cu: memref<3xi32>,
    %sel: memref<64x4x2xi32>, %g: memref<4x5xi32>, %e: memref<4x128xi32>,
    %lse: memref<64x4xf32>, %dqp: memref<2x64x4x32xf32>,
    %dk: memref<64x2x32xbf16>, %dv: memref<64x2x32xbf16>) {
  // CHECK: moba.grouped_block_attention_grad q(%{{[a-z0-9_]+}} : memref<64x4x32xbf16>)
  // CHECK-SAME: outs(%{{[a-z0-9_]+}} : memref<2x64x4x32xf32>, %{{[a-z0-9_]+}} : memref<64x2x32xbf16>, %{{[a-z0-9_]+}} : memref<64x2x32xbf16>)
  // CHECK-SAME: block_size = 16
  // CHECK-NOT: ->
  moba.grouped_block_attention_grad
      q(%q : memref<64x4x32xbf16>) k(%k : memref<64x2x32xbf16>) v(%k : memref<64x2x32xbf16>)
      cu_seqlens(%cu : memref<3xi32>) selected(%sel : memref<64x4x2xi32>)
      groups(%g : memref<4x5xi32>, %g : memref<4x5xi32>, %e : memref<4x128xi32>)
      grad_out(%q : memref<64x4x32xbf16>) lse(%lse : memref<64x4xf32>) row_term(%lse : memref<64x4xf32>)
      outs(%dqp : memref<2x64x4x32xf32>, %dk : memref<64x2x32xbf16>, %dv : memref<64x2x32xbf16>)
      {block_size = 16, scale = 0.25 : f32}
  return
}

// CHECK-LABEL: func @sum_slots
func.func @sum_slots(%p: tensor<3x?x32x128xf32>, %init: tensor<?x32x128xbf16>)
    -> tensor<?x32x128xbf16> {
  // CHECK: moba.sum_slots partials(%{{[a-z0-9_]+}} : tensor<3x?x32x128xf32>)
  // CHECK-SAME: outs(%{{[a-z0-9_]+}} : tensor<?x32x128xbf16>)
  %dq = moba.sum_slots partials(%p : tensor<3x?x32x128xf32>)
      outs(%init : tensor<?x32x128xbf16>)
  return %dq : tensor<?x32x128xbf16>
}
