// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-grad-to-nvvm --verify-diagnostics | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-grad-to-nvvm="warps=2 key-chunk=32 query-chunk=16" --verify-diagnostics | FileCheck %s --check-prefix=SHAPE
// RUN: moba-opt %s --split-input-file --moba-convert-grouped-attention-grad-to-nvvm="warps=2 key-value-warps=8 key-chunk=32 query-chunk=16" --verify-diagnostics | FileCheck %s --check-prefix=KVWARPS
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-grad-to-nvvm="warps=3" 2>&1 | FileCheck %s --check-prefix=BADWARPS
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-grad-to-nvvm="key-value-warps=16" 2>&1 | FileCheck %s --check-prefix=BADKVWARPS
// RUN: not moba-opt %s --split-input-file --moba-convert-grouped-attention-grad-to-nvvm="query-chunk=24 key-chunk=256" 2>&1 | FileCheck %s --check-prefix=BADCHUNK

// BADWARPS: warps must be 1, 2, 4 or 8, got 3
// BADKVWARPS: key-value-warps must be 0, 1, 2, 4 or 8, got 16
// BADCHUNK: key-chunk must be a multiple of 16 in [16, 128] or 0, got 256
// BADCHUNK: query-chunk must be a multiple of 16 in [16, 128] or 0, got 24

// Four steps. The partials of the slots that attend nothing zeroed, four
// f32 a store.
// CHECK-LABEL: func.func @bf16
// CHECK: gpu.launch
// CHECK:   vector.store %{{.+}}, %arg11[{{.+}}] {alignment = 16 : i64} : memref<2x?x4x64xf32>, vector<4xf32>
// The forward's tile list, one warp per query head.
// CHECK: %[[LIST:.+]] = memref.alloc(%{{.+}}) : memref<4x?x4xi32>
// CHECK: gpu.launch blocks({{.+}}) in (%{{.+}} = %c4{{.*}}, {{.+}}) threads({{.+}}) in (%{{.+}} = %c32{{.*}}, {{.+}})
// CHECK:   memref.store {{.+}}, %[[LIST]]
// The dq kernel on the forward's frame: its shared memory (two stages of K
// and V, 64 x (64 + 8) bf16, then the causal bounds), Q and dO as A
// fragments from global memory, K and V by cp.async, S and dP by ldmatrix,
// dq += dS K by ldmatrix.trans of K; the partial of each valid row.
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128{{.*}}, {{.+}}) dynamic_shared_memory_size %c36896_i32 {
// CHECK:   memref.load %[[LIST]]
// CHECK-COUNT-8: vector.load %arg0{{.+}} : memref<?x4x64xbf16>, vector<2xbf16>
// CHECK-COUNT-8: vector.load %arg8{{.+}} : memref<?x4x64xbf16>, vector<2xbf16>
// CHECK:   memref.load %arg9
// CHECK:   memref.load %arg10
// CHECK:   nvgpu.device_async_copy %arg1
// CHECK:   nvgpu.device_async_copy %arg2
// CHECK:   scf.for
// CHECK:     nvvm.cp.async.wait.group 0
// CHECK:     gpu.barrier
// CHECK-COUNT-32: nvvm.mma.sync
// CHECK:     nvgpu.ldmatrix {{.+}} {numTiles = 4 : i32, transpose = true}
// CHECK:   scf.for
// CHECK:   vector.store %{{.+}}, %arg11[{{.+}}] {alignment = 8 : i64} : memref<2x?x4x64xf32>, vector<2xf32>
// The key/value kernel's plan: one warp per KV head takes the block rows
// 32 at a time, cuts each row's walk into parts of at most 128 steps, and
// numbers the parts and the scratch slots of split rows by prefix sums over
// the lanes.
// CHECK: %[[PLAN:.+]] = memref.alloc(%{{.+}}) : memref<2x?x4xi32>
// CHECK: %[[ITEMS:.+]] = memref.alloc(%{{.+}}) : memref<2x?x2xi32>
// CHECK: %[[PARTS:.+]] = memref.alloc(%{{.+}}) : memref<?x128x2x64xf32>
// CHECK: gpu.launch blocks({{.+}}) in (%{{.+}} = %c2{{.*}}, {{.+}}) threads({{.+}}) in (%{{.+}} = %c32{{.*}}, {{.+}})
// CHECK-COUNT-10: gpu.shuffle  up
// CHECK:   memref.store {{.+}}, %[[PLAN]]
// CHECK:   memref.store {{.+}}, %[[ITEMS]]
// CHECK-COUNT-2: gpu.shuffle  idx
// The key/value kernel: a CTA per (KV head, part, 64 keys); its K and V
// once, the head table (a bisection causally), then its part of the walk
// over the query steps with their gathers zero-filled past the group's end.
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128{{.*}}, {{.+}}) dynamic_shared_memory_size %c56856_i32 {
// CHECK:   memref.load %[[ITEMS]]
// CHECK:   memref.view {{.+}} to memref<2x64x72xbf16, #gpu.address_space<workgroup>>
// CHECK:   %[[QUERIES:.+]] = memref.view {{.+}} to memref<2x2x64x72xbf16, #gpu.address_space<workgroup>>
// CHECK:   nvgpu.device_async_copy %arg1
// CHECK:   nvgpu.device_async_copy %arg2
// CHECK:   scf.for %{{.+}} = %c0{{.*}} to %c32{{.*}}
// CHECK:   gpu.barrier
// CHECK:   nvgpu.device_async_copy %arg0{{.+}}, %[[QUERIES]]{{.+}}, 8, %{{.+}} {bypassL1}
// CHECK:   nvgpu.device_async_copy %arg8{{.+}}, %[[QUERIES]]{{.+}}, 8, %{{.+}} {bypassL1}
// CHECK:   scf.for
// CHECK:     nvvm.cp.async.wait.group 0
// CHECK:     gpu.barrier
// S^T and dP^T: 2 x (64 / 16 k-steps) x (64 / 8 query tiles); then dV and
// dK: 2 x (64 / 16) x (64 / 8).
// CHECK-COUNT-64: nvvm.mma.sync
// CHECK-COUNT-64: nvvm.mma.sync
// A part of a split walk writes f32 sums to its slot; an unsplit walk dK
// (scaled) and dV, rounded once.
// CHECK:   vector.store %{{.+}}, %[[PARTS]][{{.+}}] {alignment = 8 : i64} : memref<?x128x2x64xf32>, vector<2xf32>
// CHECK:   vector.store %{{.+}}, %arg12[{{.+}}] {alignment = 4 : i64} : memref<?x2x64xbf16>, vector<2xbf16>
// CHECK:   vector.store %{{.+}}, %arg13[{{.+}}] {alignment = 4 : i64} : memref<?x2x64xbf16>, vector<2xbf16>
// The split rows' sums in split order, four columns a thread.
// CHECK: gpu.launch
// CHECK:   scf.for
// CHECK:     vector.load %[[PARTS]][{{.+}}] {alignment = 16 : i64} : memref<?x128x2x64xf32>, vector<4xf32>
// CHECK:   vector.store %{{.+}}, %arg12[{{.+}}] {alignment = 8 : i64} : memref<?x2x64xbf16>, vector<4xbf16>
// CHECK:   vector.store %{{.+}}, %arg13[{{.+}}] {alignment = 8 : i64} : memref<?x2x64xbf16>, vector<4xbf16>
// CHECK: memref.dealloc %[[PLAN]]
// CHECK: memref.dealloc %[[ITEMS]]
// CHECK: memref.dealloc %[[PARTS]]
// CHECK-NOT: moba.grouped_block_attention_grad

// The key/value kernel's own warps: the dq kernel keeps 2 (64 threads,
// 18448 bytes), the key/value kernel takes 8 (256 threads; K and V of 128
// keys: 2 x 128 x 72 x 2 bytes + the query buffers, columns and table).
// KVWARPS-LABEL: func.func @bf16
// KVWARPS: threads({{.+}}) in (%{{.+}} = %c64{{.*}}, {{.+}}) dynamic_shared_memory_size %c18448_i32
// KVWARPS: threads({{.+}}) in (%{{.+}} = %c256{{.*}}, {{.+}}) dynamic_shared_memory_size %c46488_i32

// SHAPE-LABEL: func.func @bf16
// SHAPE: dynamic_shared_memory_size %c18448_i32
// SHAPE: threads({{.+}}) in (%{{.+}} = %c64{{.*}}, {{.+}}) dynamic_shared_memory_size %c18840_i32
// SHAPE:   memref.view {{.+}} to memref<2x2x16x72xbf16, #gpu.address_space<workgroup>>
func.func @bf16(%q: memref<?x4x64xbf16>, %k: memref<?x2x64xbf16>,
                %v: memref<?x2x64xbf16>, %cu: memref<?xi32>,
                %sel: memref<?x4x2xi32>, %starts: memref<4x?xi32>,
                %counts: memref<4x?xi32>, %entries: memref<4x?xi32>,
                %do: memref<?x4x64xbf16>, %lse: memref<?x4xf32>,
                %delta: memref<?x4xf32>, %dqp: memref<2x?x4x64xf32>,
                %dk: memref<?x2x64xbf16>, %dv: memref<?x2x64xbf16>) {
  moba.grouped_block_attention_grad q(%q : memref<?x4x64xbf16>)
      k(%k : memref<?x2x64xbf16>) v(%v : memref<?x2x64xbf16>)
      cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x2xi32>)
      groups(%starts : memref<4x?xi32>, %counts : memref<4x?xi32>,
             %entries : memref<4x?xi32>)
      grad_out(%do : memref<?x4x64xbf16>) lse(%lse : memref<?x4xf32>)
      row_term(%delta : memref<?x4xf32>)
      outs(%dqp : memref<2x?x4x64xf32>, %dk : memref<?x2x64xbf16>,
           %dv : memref<?x2x64xbf16>)
      {block_size = 128 : i64, scale = 0.125 : f32}
  return
}

// -----

// f32 operands have no tensor-core form.
func.func @f32(%q: memref<?x4x64xf32>, %k: memref<?x2x64xf32>,
               %v: memref<?x2x64xf32>, %cu: memref<?xi32>,
               %sel: memref<?x4x2xi32>, %starts: memref<4x?xi32>,
               %counts: memref<4x?xi32>, %entries: memref<4x?xi32>,
               %do: memref<?x4x64xf32>, %lse: memref<?x4xf32>,
               %delta: memref<?x4xf32>, %dqp: memref<2x?x4x64xf32>,
               %dk: memref<?x2x64xf32>, %dv: memref<?x2x64xf32>) {
  // expected-error @+1 {{has no mma.sync lowering: it needs f16 or bf16 operands}}
  moba.grouped_block_attention_grad q(%q : memref<?x4x64xf32>)
      k(%k : memref<?x2x64xf32>) v(%v : memref<?x2x64xf32>)
      cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x2xi32>)
      groups(%starts : memref<4x?xi32>, %counts : memref<4x?xi32>,
             %entries : memref<4x?xi32>)
      grad_out(%do : memref<?x4x64xf32>) lse(%lse : memref<?x4xf32>)
      row_term(%delta : memref<?x4xf32>)
      outs(%dqp : memref<2x?x4x64xf32>, %dk : memref<?x2x64xf32>,
           %dv : memref<?x2x64xf32>)
      {block_size = 128 : i64, scale = 0.125 : f32}
  return
}

// -----

// head_dim 128 with the defaults: the dq kernel stages 32 keys a step
// (2 x 2 buffers x 32 x 136 x 2 bytes = 34816, with the forward's bounds:
// 34848), the key/value kernel 64 queries (K and V of 64 keys, 34816
// bytes; two buffers of Q and dO of 64 queries, 69632; their columns,
// 1536; the group's table, 24: 106008).
// CHECK-LABEL: func.func @head_dim_128
// CHECK: threads({{.+}}) in (%{{.+}} = %c128{{.*}}, {{.+}}) dynamic_shared_memory_size %c34848_i32
// CHECK: threads({{.+}}) in (%{{.+}} = %c128{{.*}}, {{.+}}) dynamic_shared_memory_size %c106008_i32
// CHECK: memref.view {{.+}} to memref<2x2x64x136xbf16, #gpu.address_space<workgroup>>
func.func @head_dim_128(%q: memref<?x4x128xbf16>, %k: memref<?x2x128xbf16>,
                %v: memref<?x2x128xbf16>, %cu: memref<?xi32>,
                %sel: memref<?x4x2xi32>, %starts: memref<4x?xi32>,
                %counts: memref<4x?xi32>, %entries: memref<4x?xi32>,
                %do: memref<?x4x128xbf16>, %lse: memref<?x4xf32>,
                %delta: memref<?x4xf32>, %dqp: memref<2x?x4x128xf32>,
                %dk: memref<?x2x128xbf16>, %dv: memref<?x2x128xbf16>) {
  moba.grouped_block_attention_grad q(%q : memref<?x4x128xbf16>)
      k(%k : memref<?x2x128xbf16>) v(%v : memref<?x2x128xbf16>)
      cu_seqlens(%cu : memref<?xi32>) selected(%sel : memref<?x4x2xi32>)
      groups(%starts : memref<4x?xi32>, %counts : memref<4x?xi32>,
             %entries : memref<4x?xi32>)
      grad_out(%do : memref<?x4x128xbf16>) lse(%lse : memref<?x4xf32>)
      row_term(%delta : memref<?x4xf32>)
      outs(%dqp : memref<2x?x4x128xf32>, %dk : memref<?x2x128xbf16>,
           %dv : memref<?x2x128xbf16>)
      {block_size = 128 : i64, scale = 0.088 : f32}
  return
}
