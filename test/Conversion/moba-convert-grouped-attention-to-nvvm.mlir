// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm --verify-diagnostics | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="warps=2 key-chunk=32" --verify-diagnostics | FileCheck %s --check-prefix=SHAPE
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="key-chunk=24" 2>&1 | FileCheck %s --check-prefix=BADCHUNK
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="warps=0" 2>&1 | FileCheck %s --check-prefix=BADWARPS

// The tile shape options: 2 warps (64 threads), 32 keys per stage.
// SHAPE-LABEL: func.func @bf16
// SHAPE: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c64{{.*}}, {{.+}}) dynamic_shared_memory_size %c18448_i32
// SHAPE: memref.view {{.+}} to memref<2x2x32x72xbf16, #gpu.address_space<workgroup>>
// BADCHUNK: key-chunk must be a multiple of 16 in [16, 256], got 24
// BADWARPS: warps must be in [1, 16], got 0

// Three launches: every slot's partial cleared to -inf; the tile list (one
// warp per head: prefix sums of the groups' CTA tiles by shuffles, each
// tile's block row, tile of the row and keys); then the attention, a CTA
// of four warps per 64-entry tile of a group. K and V pass through two
// shared-memory buffers (dynamic shared memory, 2 x 2 x key-chunk x
// (head_dim + 8) elements) filled by cp.async, one group per chunk, so that
// chunk c + 1 is copied while chunk c is multiplied: ldmatrix for K,
// ldmatrix.trans for V, mma.sync for S = Q K^T and P V. Causally the CTA
// finds its first and last query (shuffles, then shared memory) to skip
// the chunks past the last and to mask only the chunks that reach a query
// or the block's end (a second loop).

// CHECK-LABEL: func.func @bf16
// CHECK: gpu.launch
// CHECK:   memref.store %{{.+}}, %{{.+}}[%{{.+}}, %{{.+}}, %{{.+}}] : memref<2x?x8xf32>
// CHECK: %[[LIST:.+]] = memref.alloc(%{{.+}}) : memref<8x?x4xi32>
// CHECK: gpu.launch blocks({{.+}}) in (%{{.+}} = %c8{{.*}}, {{.+}}) threads({{.+}}) in (%{{.+}} = %c32{{.*}}, {{.+}})
// CHECK-COUNT-5: gpu.shuffle  up
// CHECK:   gpu.shuffle  idx
// CHECK:   memref.store {{.+}}, %[[LIST]]
// All shared memory is one dynamic region: the stages, then each warp's
// first and last token (a static buffer would overlap the region).
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128{{.*}}, {{.+}}) dynamic_shared_memory_size %c36896_i32 {
// CHECK:   %[[RAW:.+]] = gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>
// CHECK:   %[[REDUCE:.+]] = memref.view %[[RAW]][%c36864{{.*}}][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<8xi32, #gpu.address_space<workgroup>>
// CHECK:   memref.load %[[LIST]]
// CHECK:   scf.if
// CHECK-COUNT-10: gpu.shuffle  xor
// CHECK:     memref.store {{.+}}, %[[REDUCE]]
// CHECK:     gpu.barrier
// CHECK:     %[[STAGE:.+]] = memref.view %[[RAW]][%c0{{.*}}][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<2x2x64x72xbf16, #gpu.address_space<workgroup>>
// CHECK-COUNT-8: vector.load {{.+}} : memref<?x8x64xbf16>, vector<2xbf16>
// CHECK:     nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]][{{.+}}], 8 {bypassL1}
// CHECK:     nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]][{{.+}}], 8 {bypassL1}
// CHECK:     nvvm.cp.async.commit.group
// The loop without masks, then the one with. One barrier a chunk: after
// every copy has landed, it publishes this chunk's K and V and frees the
// last chunk's buffer, which the next chunk's copies then refill.
// CHECK:     scf.for
// CHECK:       arith.addi
// CHECK:       nvvm.cp.async.wait.group 0
// CHECK-NEXT:  gpu.barrier
// CHECK-NEXT:  arith.cmpi ult
// CHECK-NEXT:  scf.if
// CHECK:         nvgpu.device_async_copy %arg1
// CHECK:       nvvm.cp.async.commit.group
// CHECK-NOT:   gpu.barrier
// CHECK:       nvgpu.ldmatrix %[[STAGE]][{{.+}}] {numTiles = 4 : i32, transpose = false}
// CHECK:       nvvm.mma.sync A[{{.+}}] B[{{.+}}] C[{{.+}}] {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (i32, i32, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// CHECK-NOT:   arith.select {{.+}} : f32
// CHECK:       llvm.intr.maxnum
// CHECK:       gpu.shuffle  xor %{{.+}}, %c1_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK:       gpu.shuffle  xor %{{.+}}, %c2_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK:       math.fma
// CHECK:       llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK:       nvgpu.ldmatrix %[[STAGE]][{{.+}}] {numTiles = 4 : i32, transpose = true}
// CHECK:       nvvm.mma.sync
// CHECK-NOT:   gpu.barrier
// CHECK:       scf.yield
// CHECK:     scf.for
// CHECK:       nvvm.mma.sync
// CHECK:       arith.select {{.+}} : f32
// CHECK:       llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK:       scf.yield
// CHECK:     nvvm.cp.async.wait.group 0
// A row's partial is written when l != 0 (une, so a NaN row stays NaN),
// else zeros and lse -inf.
// CHECK:     scf.if
// CHECK:       %[[ATTENDED:.+]] = arith.cmpf une, %[[L:.+]], %{{.+}} : f32
// CHECK:       math.log2 %[[L]]
// CHECK:       vector.store {{.+}} : memref<2x?x8x64xf32>, vector<2xf32>
// CHECK: memref.dealloc %[[LIST]]
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
