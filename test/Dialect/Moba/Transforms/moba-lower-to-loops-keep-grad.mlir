// RUN: moba-opt %s --split-input-file --moba-lower-to-loops="parallel=true keep-mma-compatible-attention=true" | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-lower-to-loops="parallel=true" | FileCheck %s --check-prefix=LOOPS
// RUN: moba-opt %s --split-input-file --moba-lower-to-loops="parallel=true keep-mma-compatible-attention=true" --eliminate-empty-tensors --one-shot-bufferize="bufferize-function-boundaries" --canonicalize | FileCheck %s --check-prefix=BUF

// keep-mma-compatible-attention leaves a grouped backward of f16 or bf16 q,
// a head_dim that is a multiple of 16 up to 128 and static head counts for
// its tensor-core lowering, which runs after bufferization; without it, the
// parallel loops take it.
// CHECK-LABEL: func.func @kept
// CHECK: moba.grouped_block_attention_grad
// CHECK-NOT: scf.forall
// LOOPS-LABEL: func.func @kept
// LOOPS-NOT: moba.grouped_block_attention_grad
// LOOPS: scf.forall
// One-shot bufferization gives it its memref form, writing the callers'
// buffers in place: it writes every element of its inits, so a fresh
// buffer needs no copy.
// BUF-LABEL: func.func @kept
// BUF-SAME: %[[DQP:[^:]+]]: memref<2x64x4x32xf32{{.*}}>, %[[DK:[^:]+]]: memref<64x2x32xbf16{{.*}}>, %[[DV:[^:]+]]: memref<64x2x32xbf16{{.*}}>)
// BUF-NOT: memref.copy
// BUF: moba.grouped_block_attention_grad q(%{{.+}} : memref<64x4x32xbf16{{.*}}>) {{.+}} outs(%[[DQP]] : memref<2x64x4x32xf32{{.*}}>, %[[DK]] : memref<64x2x32xbf16{{.*}}>, %[[DV]] : memref<64x2x32xbf16{{.*}}>)
// BUF-NOT: memref.copy
// BUF: return
func.func @kept(
    %q: tensor<64x4x32xbf16>, %k: tensor<64x2x32xbf16>, %cu: tensor<3xi32>,
    %sel: tensor<64x4x2xi32>, %g: tensor<4x5xi32>, %e: tensor<4x128xi32>,
    %lse: tensor<64x4xf32>, %dqp0: tensor<2x64x4x32xf32>,
    %dk0: tensor<64x2x32xbf16>, %dv0: tensor<64x2x32xbf16>)
    -> (tensor<2x64x4x32xf32>, tensor<64x2x32xbf16>, tensor<64x2x32xbf16>) {
  %dqp, %dk, %dv = moba.grouped_block_attention_grad
      q(%q : tensor<64x4x32xbf16>) k(%k : tensor<64x2x32xbf16>) v(%k : tensor<64x2x32xbf16>)
      cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%g : tensor<4x5xi32>, %g : tensor<4x5xi32>, %e : tensor<4x128xi32>)
      grad_out(%q : tensor<64x4x32xbf16>) lse(%lse : tensor<64x4xf32>) row_term(%lse : tensor<64x4xf32>)
      outs(%dqp0 : tensor<2x64x4x32xf32>, %dk0 : tensor<64x2x32xbf16>, %dv0 : tensor<64x2x32xbf16>)
      {block_size = 16, scale = 0.25 : f32}
  return %dqp, %dk, %dv : tensor<2x64x4x32xf32>, tensor<64x2x32xbf16>, tensor<64x2x32xbf16>
}

// -----

// f32 q and a head_dim of 24 have no tensor-core form: loops either way.
// CHECK-LABEL: func.func @f32
// CHECK-NOT: moba.grouped_block_attention_grad
// CHECK: scf.forall
func.func @f32(
    %q: tensor<64x4x32xf32>, %cu: tensor<3xi32>, %sel: tensor<64x4x2xi32>,
    %g: tensor<4x5xi32>, %e: tensor<4x128xi32>, %lse: tensor<64x4xf32>,
    %dqp0: tensor<2x64x4x32xf32>, %dk0: tensor<64x2x32xf32>)
    -> tensor<64x2x32xf32> {
  %k = tensor.extract_slice %q[0, 0, 0] [64, 2, 32] [1, 1, 1] : tensor<64x4x32xf32> to tensor<64x2x32xf32>
  %dqp, %dk, %dv = moba.grouped_block_attention_grad
      q(%q : tensor<64x4x32xf32>) k(%k : tensor<64x2x32xf32>) v(%k : tensor<64x2x32xf32>)
      cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%g : tensor<4x5xi32>, %g : tensor<4x5xi32>, %e : tensor<4x128xi32>)
      grad_out(%q : tensor<64x4x32xf32>) lse(%lse : tensor<64x4xf32>) row_term(%lse : tensor<64x4xf32>)
      outs(%dqp0 : tensor<2x64x4x32xf32>, %dk0 : tensor<64x2x32xf32>, %dk0 : tensor<64x2x32xf32>)
      {block_size = 16, scale = 0.25 : f32}
  return %dv : tensor<64x2x32xf32>
}

// -----

// CHECK-LABEL: func.func @head_dim_24
// CHECK-NOT: moba.grouped_block_attention_grad
// CHECK: scf.forall
func.func @head_dim_24(
    %q: tensor<64x4x24xf16>, %k: tensor<64x2x24xf16>, %cu: tensor<3xi32>,
    %sel: tensor<64x4x2xi32>, %g: tensor<4x5xi32>, %e: tensor<4x128xi32>,
    %lse: tensor<64x4xf32>, %dqp0: tensor<2x64x4x24xf32>, %dk0: tensor<64x2x24xf16>)
    -> tensor<64x2x24xf16> {
  %dqp, %dk, %dv = moba.grouped_block_attention_grad
      q(%q : tensor<64x4x24xf16>) k(%k : tensor<64x2x24xf16>) v(%k : tensor<64x2x24xf16>)
      cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%g : tensor<4x5xi32>, %g : tensor<4x5xi32>, %e : tensor<4x128xi32>)
      grad_out(%q : tensor<64x4x24xf16>) lse(%lse : tensor<64x4xf32>) row_term(%lse : tensor<64x4xf32>)
      outs(%dqp0 : tensor<2x64x4x24xf32>, %dk0 : tensor<64x2x24xf16>, %dk0 : tensor<64x2x24xf16>)
      {block_size = 16, scale = 0.25 : f32}
  return %dv : tensor<64x2x24xf16>
}
