// RUN: moba-opt %s --eliminate-empty-tensors --one-shot-bufferize="bufferize-function-boundaries" --canonicalize | FileCheck %s

// One-shot bufferization turns moba.grouped_block_attention into its memref
// form, writing the partials in place: inits are never read (every slot is
// written), so fresh buffers need no copy.

// CHECK-LABEL: func.func @bufferize
// CHECK-SAME: (%[[Q:.+]]: memref<64x8x32xbf16{{.*}}>, %{{.+}}, %{{.+}}, %{{.+}}, %{{.+}}, %{{.+}}: memref<3x64x8x32xf32{{.*}}>) -> memref<3x64x8xf32>
// CHECK: %[[L:.+]] = memref.alloc() {{.*}} : memref<3x64x8xf32>
// CHECK-NOT: memref.copy
// CHECK: moba.grouped_block_attention q(%[[Q]] : {{.+}}) {{.+}} outs(%{{.+}} : memref<3x64x8x32xf32{{.*}}>, %[[L]] : memref<3x64x8xf32>)
// CHECK-NOT: memref.copy
// CHECK: return %[[L]]
func.func @bufferize(%q: tensor<64x8x32xbf16>, %kv: tensor<64x2x32xbf16>, %cu: tensor<2xi32>,
                     %sel: tensor<64x8x3xi32>, %e: tensor<8x192xi32>,
                     %o: tensor<3x64x8x32xf32>) -> tensor<3x64x8xf32> {
  %s = tensor.empty() : tensor<8x4xi32>
  %l = tensor.empty() : tensor<3x64x8xf32>
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x8x32xbf16>) k(%kv : tensor<64x2x32xbf16>)
      v(%kv : tensor<64x2x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x8x3xi32>)
      groups(%s : tensor<8x4xi32>, %s : tensor<8x4xi32>, %e : tensor<8x192xi32>)
      outs(%o : tensor<3x64x8x32xf32>, %l : tensor<3x64x8xf32>) {block_size = 16, scale = 0.5 : f32}
      -> tensor<3x64x8x32xf32>, tensor<3x64x8xf32>
  return %p#1 : tensor<3x64x8xf32>
}
