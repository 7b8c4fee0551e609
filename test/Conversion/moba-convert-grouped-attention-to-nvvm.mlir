// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm --verify-diagnostics | FileCheck %s

// Two launches: every slot's partial cleared to -inf, then the attention,
// one warp per 16-entry tile of a group: the group found by a scan of the
// counts, the block's keys by a scan of cu_seqlens, Q loaded once as A
// fragments, then per 16 keys S = Q K^T (two n-halves x head_dim / 16
// k-steps of mma.sync), the online softmax reduced over each quad by xor
// shuffles, and P V (head_dim / 8 mma.sync).

// CHECK-LABEL: func.func @bf16
// CHECK: gpu.launch
// CHECK:   memref.store %{{.+}}, %{{.+}}[%{{.+}}, %{{.+}}, %{{.+}}] : memref<2x?x8xf32>
// CHECK: gpu.launch
// CHECK:   scf.for {{.+}} -> (index, index, index)
// CHECK:   scf.if
// CHECK:     scf.for {{.+}} -> (index, index, index, index)
// CHECK-COUNT-8: vector.load {{.+}} : memref<?x8x64xbf16>, vector<2xbf16>
// CHECK:     scf.for
// CHECK-COUNT-8: nvvm.mma.sync A[{{.+}}] B[{{.+}}] C[{{.+}}] {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (i32, i32, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// CHECK:       gpu.shuffle  xor %{{.+}}, %c1_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK:       gpu.shuffle  xor %{{.+}}, %c2_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK-COUNT-8: nvvm.mma.sync
// CHECK:       scf.yield
// CHECK:     scf.if
// CHECK:       math.log
// CHECK:       memref.store {{.+}} : memref<2x?x8x64xf32>
// CHECK-NOT: moba.grouped_block_attention
func.func @bf16(%q: memref<?x8x64xbf16>, %kv: memref<?x2x64xbf16>, %cu: memref<?xi32>,
                %sel: memref<?x8x2xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                %o: memref<2x?x8x64xf32>, %l: memref<2x?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x64xbf16>) k(%kv : memref<?x2x64xbf16>)
      v(%kv : memref<?x2x64xbf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x2xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<2x?x8x64xf32>, %l : memref<2x?x8xf32>) {block_size = 16, scale = 0.125 : f32}
  return
}

// -----

// f16 operands are vector<2xf16> registers (the type is implied by them).
// CHECK-LABEL: func.func @f16
// CHECK: nvvm.mma.sync {{.+}} {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (vector<2xf16>, vector<2xf16>, f32)
func.func @f16(%q: memref<?x4x16xf16>, %kv: memref<?x4x16xf16>, %cu: memref<?xi32>,
               %sel: memref<?x4x3xi32>, %s: memref<4x?xi32>, %e: memref<4x?xi32>,
               %o: memref<3x?x4x16xf32>, %l: memref<3x?x4xf32>) {
  moba.grouped_block_attention q(%q : memref<?x4x16xf16>) k(%kv : memref<?x4x16xf16>)
      v(%kv : memref<?x4x16xf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x3xi32>)
      groups(%s : memref<4x?xi32>, %s : memref<4x?xi32>, %e : memref<4x?xi32>)
      outs(%o : memref<3x?x4x16xf32>, %l : memref<3x?x4xf32>) {block_size = 64, scale = 0.25 : f32}
  return
}

// -----

// f32 has no mma.sync form here: the pipeline lowers it to loops first.
func.func @f32(%q: memref<?x4x16xf32>, %kv: memref<?x4x16xf32>, %cu: memref<?xi32>,
               %sel: memref<?x4x3xi32>, %s: memref<4x?xi32>, %e: memref<4x?xi32>,
               %o: memref<3x?x4x16xf32>, %l: memref<3x?x4xf32>) {
  // expected-error @+1 {{has no mma.sync lowering: it needs f16 or bf16 and head_dim a static multiple of 16 up to 128}}
  moba.grouped_block_attention q(%q : memref<?x4x16xf32>) k(%kv : memref<?x4x16xf32>)
      v(%kv : memref<?x4x16xf32>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x3xi32>)
      groups(%s : memref<4x?xi32>, %s : memref<4x?xi32>, %e : memref<4x?xi32>)
      outs(%o : memref<3x?x4x16xf32>, %l : memref<3x?x4xf32>) {block_size = 64, scale = 0.25 : f32}
  return
}
