// RUN: moba-opt %s | moba-opt | FileCheck %s
// RUN: moba-opt %s --mlir-print-op-generic | moba-opt | FileCheck %s

// The densified form of block-sparse attention: the selection grouped by
// key block, the per-(query, block) partials, and their merge.

// CHECK-LABEL: func.func @densified
// CHECK: %[[S:.*]], %[[C:.*]], %[[E:.*]] = moba.group_queries selected(%{{.*}} : tensor<4096x32x3xi32>) cu_seqlens(%{{.*}} : tensor<3xi32>) outs(%{{.*}} : tensor<32x10xi32>, %{{.*}} : tensor<32x10xi32>, %{{.*}} : tensor<32x12288xi32>) {block_size = 512 : i64}
// CHECK: moba.grouped_block_attention q(%{{.*}} : tensor<4096x32x128xbf16>) k(%{{.*}} : tensor<4096x8x128xbf16>) v(%{{.*}} : tensor<4096x8x128xbf16>) cu_seqlens(%{{.*}} : tensor<3xi32>) selected(%{{.*}} : tensor<4096x32x3xi32>) groups(%[[S]] : tensor<32x10xi32>, %[[C]] : tensor<32x10xi32>, %[[E]] : tensor<32x12288xi32>) outs(%{{.*}} : tensor<3x4096x32x128xf32>, %{{.*}} : tensor<3x4096x32xf32>) {block_size = 512 : i64, causal = false, scale = 0.0883883461 : f32}
func.func @densified(%q: tensor<4096x32x128xbf16>, %k: tensor<4096x8x128xbf16>,
                     %v: tensor<4096x8x128xbf16>, %cu: tensor<3xi32>,
                     %sel: tensor<4096x32x3xi32>)
    -> (tensor<3x4096x32x128xf32>, tensor<3x4096x32xf32>) {
  %s = tensor.empty() : tensor<32x10xi32>
  %c = tensor.empty() : tensor<32x10xi32>
  %e = tensor.empty() : tensor<32x12288xi32>
  %g:3 = moba.group_queries selected(%sel : tensor<4096x32x3xi32>)
      cu_seqlens(%cu : tensor<3xi32>)
      outs(%s : tensor<32x10xi32>, %c : tensor<32x10xi32>, %e : tensor<32x12288xi32>)
      {block_size = 512}
  %o = tensor.empty() : tensor<3x4096x32x128xf32>
  %l = tensor.empty() : tensor<3x4096x32xf32>
  %p:2 = moba.grouped_block_attention q(%q : tensor<4096x32x128xbf16>)
      k(%k : tensor<4096x8x128xbf16>) v(%v : tensor<4096x8x128xbf16>)
      cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<4096x32x3xi32>)
      groups(%g#0 : tensor<32x10xi32>, %g#1 : tensor<32x10xi32>, %g#2 : tensor<32x12288xi32>)
      outs(%o : tensor<3x4096x32x128xf32>, %l : tensor<3x4096x32xf32>)
      {block_size = 512, scale = 0.0883883461 : f32, causal = false} -> tensor<3x4096x32x128xf32>, tensor<3x4096x32xf32>
  return %p#0, %p#1 : tensor<3x4096x32x128xf32>, tensor<3x4096x32xf32>
}

// Dynamic tokens and block rows.
// CHECK-LABEL: func.func @dynamic
// CHECK: moba.group_queries selected(%{{.*}} : tensor<?x8x2xi32>)
func.func @dynamic(%sel: tensor<?x8x2xi32>, %cu: tensor<?xi32>,
                   %s: tensor<8x?xi32>, %c: tensor<8x?xi32>, %e: tensor<8x?xi32>)
    -> tensor<8x?xi32> {
  %g:3 = moba.group_queries selected(%sel : tensor<?x8x2xi32>)
      cu_seqlens(%cu : tensor<?xi32>)
      outs(%s : tensor<8x?xi32>, %c : tensor<8x?xi32>, %e : tensor<8x?xi32>)
      {block_size = 64}
  return %g#2 : tensor<8x?xi32>
}

// The memref form (after bufferization): no results, the inits written.
// CHECK-LABEL: func.func @on_buffers
// CHECK: moba.grouped_block_attention q(%{{.*}} : memref<?x8x64xf16>) {{.*}} outs(%{{.*}} : memref<2x?x8x64xf32>, %{{.*}} : memref<2x?x8xf32>) {block_size = 16 : i64, scale = 1.250000e-01 : f32}
// CHECK-NEXT: return
func.func @on_buffers(%q: memref<?x8x64xf16>, %kv: memref<?x2x64xf16>, %cu: memref<?xi32>,
                      %sel: memref<?x8x2xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                      %o: memref<2x?x8x64xf32>, %l: memref<2x?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x64xf16>) k(%kv : memref<?x2x64xf16>)
      v(%kv : memref<?x2x64xf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x2xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<2x?x8x64xf32>, %l : memref<2x?x8xf32>) {block_size = 16, scale = 0.125 : f32}
  return
}

// The grouping's memref form: no results, the inits written.
// CHECK-LABEL: func.func @grouping_on_buffers
// CHECK: moba.group_queries selected(%{{.*}} : memref<?x8x2xi32>) cu_seqlens(%{{.*}} : memref<?xi32>) outs(%{{.*}} : memref<8x?xi32>, %{{.*}} : memref<8x?xi32>, %{{.*}} : memref<8x?xi32>) {block_size = 64 : i64}
// CHECK-NEXT: return
func.func @grouping_on_buffers(%sel: memref<?x8x2xi32>, %cu: memref<?xi32>,
                               %s: memref<8x?xi32>, %c: memref<8x?xi32>,
                               %e: memref<8x?xi32>) {
  moba.group_queries selected(%sel : memref<?x8x2xi32>)
      cu_seqlens(%cu : memref<?xi32>)
      outs(%s : memref<8x?xi32>, %c : memref<8x?xi32>, %e : memref<8x?xi32>)
      {block_size = 64}
  return
}

// With the merge fused (moba-fuse-lse-merge): four results on tensors, the
// merged output and lse after the partials.
// CHECK-LABEL: func.func @merged
// CHECK: %{{.*}}:4 = moba.grouped_block_attention {{.*}} outs(%{{.*}} : tensor<2x64x4x16xbf16>, %{{.*}} : tensor<2x64x4xf32>) merge(%{{.*}} : tensor<64x4x16xbf16>, %{{.*}} : tensor<64x4xf32>) {block_size = 16 : i64, scale = 2.500000e-01 : f32} -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>, tensor<64x4x16xbf16>, tensor<64x4xf32>
func.func @merged(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                  %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                  %e: tensor<4x128xi32>, %po: tensor<2x64x4x16xbf16>, %pl: tensor<2x64x4xf32>,
                  %out: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>)
    -> (tensor<64x4x16xbf16>, tensor<64x4xf32>) {
  %p:4 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>)
      k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>)
      cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>)
      outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>)
      merge(%out : tensor<64x4x16xbf16>, %lse : tensor<64x4xf32>)
      {block_size = 16, scale = 0.25 : f32}
      -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>, tensor<64x4x16xbf16>, tensor<64x4xf32>
  return %p#2, %p#3 : tensor<64x4x16xbf16>, tensor<64x4xf32>
}

// CHECK-LABEL: func.func @merged_on_buffers
// CHECK: moba.grouped_block_attention {{.*}} merge(%{{.*}} : memref<?x8x64xf16>, %{{.*}} : memref<?x8xf32>) {block_size = 16 : i64, scale = 1.250000e-01 : f32}
// CHECK-NEXT: return
func.func @merged_on_buffers(%q: memref<?x8x64xf16>, %kv: memref<?x2x64xf16>, %cu: memref<?xi32>,
                             %sel: memref<?x8x2xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                             %o: memref<2x?x8x64xf16>, %l: memref<2x?x8xf32>,
                             %out: memref<?x8x64xf16>, %lse: memref<?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x64xf16>) k(%kv : memref<?x2x64xf16>)
      v(%kv : memref<?x2x64xf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x2xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<2x?x8x64xf16>, %l : memref<2x?x8xf32>)
      merge(%out : memref<?x8x64xf16>, %lse : memref<?x8xf32>) {block_size = 16, scale = 0.125 : f32}
  return
}
