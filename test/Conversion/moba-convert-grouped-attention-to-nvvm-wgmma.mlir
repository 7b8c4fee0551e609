// The wgmma form of the grouped attention kernel (sm_90a).
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma warps=8 key-chunk=128" | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma" | FileCheck %s --check-prefix=ONE
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma warps=8 key-chunk=128 schedule=in-order" | FileCheck %s --check-prefix=INORDER --implicit-check-not="nvvm.wgmma.wait.group.sync.aligned 1"
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma schedule=overlapped" | FileCheck %s --check-prefix=OVERLAP
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma warps=2" 2>&1 | FileCheck %s --check-prefix=BADWARPS
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=wgmma key-chunk=96" 2>&1 | FileCheck %s --check-prefix=BADCHUNK
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-to-nvvm="instruction=hgmma" 2>&1 | FileCheck %s --check-prefix=BADINSTR

// The schedule decides what the shape would (Auto: overlapped for two
// warpgroups, in order for one). In order: each chunk's products waited for
// at once (no wait.group 1), P in registers (no P in shared memory: 83008
// bytes instead of 115776). Overlapped for one warpgroup: the S of the
// next chunk in flight under the softmax (wait.group 1), P in shared memory
// and two V buffers (91168 bytes instead of 66592), two CTAs per SM.
// INORDER: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c256{{.*}}, {{.+}}) dynamic_shared_memory_size %c83008_i32 {
// INORDER: nvvm.wgmma.wait.group.sync.aligned 0
// OVERLAP: gpu.launch {{.+}} dynamic_shared_memory_size %c91168_i32 {
// OVERLAP: nvvm.wgmma.wait.group.sync.aligned 1
// OVERLAP: nvvm.minctasm = 2

// BADWARPS: instruction=wgmma needs warps a multiple of 4 (whole warpgroups), got 2
// BADCHUNK: instruction=wgmma needs key-chunk a multiple of 64 (whole 64-column panels), got 96
// BADINSTR: for the --instruction option: Cannot find option named 'hgmma'!

// Two warpgroups of 64 entries, 128 keys per stage. Shared memory: the
// causal bounds (16 x i32) first, then, from the next 1 KiB boundary
// (found at run time: 1024 bytes of slack), Q (2 warpgroups x 1 panel x
// 64 x 64), the K then V buffers (2 + 2 x 1 panel x 128 x 64) and P (2
// warpgroups x 2 key panels x 64 x 64): 64 + 1024 + 16384 + 65536 + 32768
// = 115776 bytes.
// CHECK-LABEL: func.func @bf16
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c256{{.*}}, {{.+}}) dynamic_shared_memory_size %c115776_i32 {
// CHECK:   %[[RAW:.+]] = gpu.dynamic_shared_memory
// CHECK:   memref.view %[[RAW]][%c0{{.*}}][] : {{.+}} to memref<16xi32, #gpu.address_space<workgroup>>
// CHECK:   memref.extract_aligned_pointer_as_index %[[RAW]]
// CHECK:   %[[Q:.+]] = memref.view %[[RAW]][%{{.+}}][] : {{.+}} to memref<2x1x64x64xbf16, #gpu.address_space<workgroup>>
// CHECK:   %[[STAGE:.+]] = memref.view %[[RAW]][%{{.+}}][] : {{.+}} to memref<4x1x128x64xbf16, #gpu.address_space<workgroup>>
// CHECK:   %[[P:.+]] = memref.view %[[RAW]][%{{.+}}][] : {{.+}} to memref<2x2x64x64xbf16, #gpu.address_space<workgroup>>
// The queries gathered by cp.async into 128-byte-swizzled rows (the 16-byte
// chunk xor the row); P and the V buffer that the first chunk's P V reads
// set to zeros; then the first K chunk.
// CHECK:   arith.xori
// CHECK:   nvgpu.device_async_copy %arg0[{{.+}}], %[[Q]][{{.+}}], 8 {bypassL1}
// CHECK:   %[[ZEROS:.+]] = arith.constant dense<0.000000e+00> : vector<8xbf16>
// CHECK:   scf.for
// CHECK:     vector.store %[[ZEROS]]
// CHECK:   scf.for
// CHECK:     vector.store %[[ZEROS]]
// CHECK:   nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]][{{.+}}], 8 {bypassL1}
// CHECK:   nvvm.cp.async.commit.group
// Per chunk: every copy has landed (K of this chunk, V of the last), and
// one barrier publishes them to the async proxy and frees the buffers the
// last chunk used; K of the next chunk and V of this one start copying
// into those (V lands one chunk late). S = Q K^T as 4 k-steps of m64n128k16 (the
// first without accumulating) is issued, then O += P V of the last chunk as
// 8 k-steps of m64n64k16 with V transposed (MN-major: layout row), each its
// own group; the softmax waits for S only, and runs while the tensor cores
// multiply P V. Then O is rescaled and P stored to shared memory for the
// next chunk, fenced for the async proxy; the next chunk's barrier
// publishes it.
// CHECK:   scf.for
// CHECK:     nvvm.cp.async.wait.group 0
// CHECK-NEXT: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
// CHECK-NEXT: gpu.barrier
// CHECK:     scf.if
// CHECK:       nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]]
// CHECK:     nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]]
// CHECK:     nvvm.cp.async.commit.group
// CHECK:     nvvm.wgmma.fence.aligned
// CHECK:     llvm.mlir.zero
// CHECK:     nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 128, k = 16>, D[<f32>, <zero>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <col>]
// CHECK-COUNT-3: nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 128, k = 16>, D[<f32>, <one>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <col>]
// CHECK-NEXT: nvvm.wgmma.commit.group.sync.aligned
// CHECK-NOT: nvvm.wgmma.wait
// CHECK-COUNT-8: nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 64, k = 16>, D[<f32>, <one>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <row>]
// CHECK-NEXT: nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT: nvvm.wgmma.wait.group.sync.aligned 1
// CHECK:     llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK:     nvvm.wgmma.wait.group.sync.aligned 0
// The rescale runs only when a lane of the warp moved its row's max (by
// more than the 2^8 slack).
// CHECK:     %[[MOVED:.+]] = nvvm.vote.sync any %{{.+}}, %{{.+}} -> i1
// CHECK:     scf.if %[[MOVED]] -> (f32,
// CHECK:       arith.mulf
// CHECK:     } else {
// CHECK:     vector.store {{.+}}, %[[P]][{{.+}}] {alignment = 4 : i64} : memref<2x2x64x64xbf16, #gpu.address_space<workgroup>>, vector<2xbf16>
// CHECK:     nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
// CHECK-NOT: gpu.barrier
// CHECK:     scf.yield
// CHECK:   scf.for
// CHECK:     nvvm.wgmma.mma_async
// After the loops: the last V landed and published, the last P V.
// CHECK:   nvvm.cp.async.wait.group 0
// CHECK-NEXT: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
// CHECK-NEXT: gpu.barrier
// CHECK:   nvvm.wgmma.fence.aligned
// CHECK-COUNT-8: nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 64, k = 16>
// CHECK-NEXT: nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT: nvvm.wgmma.wait.group.sync.aligned 0
// One CTA fills an SM: no occupancy is stated.
// CHECK-NOT: nvvm.minctasm
// CHECK-NOT: moba.grouped_block_attention

// One warpgroup (the default 4 warps, 64 keys): no named barrier (an id
// in a register would make ptxas reserve all 16 and allow one CTA per SM).
// ONE-LABEL: func.func @bf16
// ONE: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128{{.*}}, {{.+}}) dynamic_shared_memory_size
// ONE-NOT: nvvm.barrier
// ONE: nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 64, k = 16>
// ONE-NOT: nvvm.barrier
// Four CTAs of 49 KiB fit an SM, but would leave 128 registers a thread,
// too few for the kernel: no occupancy is stated, and V keeps two buffers.
// ONE-NOT: nvvm.minctasm
// ONE-LABEL: func.func @f16
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

// head_dim 16 is no whole 64-column panel: the op keeps mma.sync.
// CHECK-LABEL: func.func @f16
// CHECK-NOT: nvvm.wgmma
// CHECK: nvvm.mma.sync {{.+}} shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (vector<2xf16>, vector<2xf16>, f32)
// CHECK-NOT: nvvm.wgmma
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

// head_dim 128, one warpgroup: K keeps two buffers and V gets one, so that
// three CTAs of 73 KiB share an SM (two buffers of V: two CTAs of 89 KiB),
// and the launch states that occupancy for ptxas (at most 168 registers).
// Shared memory: 32 (bounds) + 1024 (slack) + 16384 (Q) + 3 x 16384 (K, K,
// V) = 66592 bytes (P stays in registers). The cp.async groups, in order:
// K_0 (with the queries), then per chunk c, after its barrier, V_c and
// K_(c+1).
// CHECK-LABEL: func.func @single_value_buffer
// ONE-LABEL: func.func @single_value_buffer
// ONE: gpu.launch {{.+}} dynamic_shared_memory_size %c66592_i32 {
// ONE: %[[STAGE:.+]] = memref.view {{.+}} to memref<3x2x64x64xbf16, #gpu.address_space<workgroup>>
// ONE: nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]]
// ONE: nvvm.cp.async.commit.group
// ONE-NOT: nvgpu.device_async_copy %arg2
// Chunk c: K_c has landed (every group has); the barrier publishes it and
// certifies that chunk c - 1's P V is done with the V buffer; V_c and
// K_(c+1) start.
// ONE: scf.for
// ONE:   nvvm.cp.async.wait.group 0
// ONE-NEXT: nvvm.fence.proxy
// ONE-NEXT: gpu.barrier
// A chunk inside the block's keys is copied at constant offsets from its
// first row; one that reaches past the last key clamps each row to it.
// ONE:   arith.cmpi ule
// ONE-NEXT: scf.if
// ONE-NOT:  arith.minui
// ONE:     nvgpu.device_async_copy %arg2[{{.+}}], %[[STAGE]]
// ONE:   } else {
// ONE:     arith.minui
// ONE:     nvgpu.device_async_copy %arg2[{{.+}}], %[[STAGE]]
// ONE:   nvvm.cp.async.commit.group
// ONE:   nvgpu.device_async_copy %arg1[{{.+}}], %[[STAGE]]
// ONE:   nvvm.cp.async.commit.group
// ONE:   nvvm.wgmma.mma_async {{.+}}, <m = 64, n = 64, k = 16>, D[<f32>, <zero>]
// ONE:   llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// V_c has landed once all groups but K_(c+1) have; a proxy fence and the
// barrier publish it to the async proxy. P stays in registers: P V is
// wgmma's register-A form (the one nvvm.inline_ptx), four k-steps of
// m64n128k16 on the probabilities packed in bf16 pairs, the accumulators
// moved into the results first, V's descriptor transposed (trans-b 1).
// ONE:   nvvm.cp.async.wait.group 1
// ONE-NOT: vector.store
// ONE:   nvvm.fence.proxy
// ONE-NEXT: gpu.barrier
// ONE-NEXT: nvvm.wgmma.fence.aligned
// ONE:   nvvm.inline_ptx "{\0A.reg .pred p;\0Asetp.eq.u32 p, 1, 1;\0Amov.f32 $0, $64;
// ONE-SAME: mov.f32 $63, $127;
// ONE-SAME: wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {$0, $1, {{.+}}, $63}, {$128, $129, $130, $131}, $144, p, 1, 1, 1;
// ONE-SAME: wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {{.+}}, {$140, $141, $142, $143}, $147, p, 1, 1, 1;\0A}"
// ONE-SAME: ro({{.+}} : f32, {{.+}}, f32, i32, {{.+}}, i32, i64, i64, i64, i64) -> f32,
// ONE-NEXT: nvvm.wgmma.commit.group.sync.aligned
// ONE-NEXT: nvvm.wgmma.wait.group.sync.aligned 0
// ONE-NOT: gpu.barrier
// ONE:   scf.yield
// ONE: } {nvvm.minctasm = 3 : i32}
func.func @single_value_buffer(%q: memref<?x8x128xbf16>, %k: memref<?x2x128xbf16>,
                               %v: memref<?x2x128xbf16>, %cu: memref<?xi32>,
                               %sel: memref<?x8x3xi32>, %s: memref<8x?xi32>, %e: memref<8x?xi32>,
                               %o: memref<3x?x8x128xbf16>, %l: memref<3x?x8xf32>) {
  moba.grouped_block_attention q(%q : memref<?x8x128xbf16>) k(%k : memref<?x2x128xbf16>)
      v(%v : memref<?x2x128xbf16>) cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x8x3xi32>)
      groups(%s : memref<8x?xi32>, %s : memref<8x?xi32>, %e : memref<8x?xi32>)
      outs(%o : memref<3x?x8x128xbf16>, %l : memref<3x?x8xf32>) {block_size = 512, scale = 0.088 : f32}
  return
}
