// RUN: moba-opt %s --split-input-file --moba-convert-gate-topk-to-nvvm --verify-diagnostics | FileCheck %s

// Two launches. The split: every f32 mean, four at a time, becomes a bf16
// high half and the bf16 rounding of what it missed. The gate: a CTA of
// four warps per 64 tokens of a head; a warp past the last token does
// nothing; each lane finds its rows' sequences by a scan of cu_seqlens, and
// loads its two query rows once, 16 bytes (8 elements) per 32-wide slice.
// Then per step of eight blocks: the same loads of hi and lo, eight
// mma.sync (4 k-steps of head_dim 64, times hi and lo) in four chains (the
// first k-steps start from zero), the candidate mask, a warp vote that
// skips the insertion, and at the end each row's quad merge (two rounds for
// top_k 3 causal, by xor shuffles 1 and 2 of score and block) and the
// writes: own block, then the two best.

// CHECK-LABEL: func.func @bf16
// CHECK: %[[HI:.+]] = memref.alloc(%{{.+}}) : memref<?x2x64xbf16>
// CHECK: %[[LO:.+]] = memref.alloc(%{{.+}}) : memref<?x2x64xbf16>
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c256
// CHECK:   %[[MEAN:.+]] = vector.load %{{.+}} {alignment = 16 : i64} : memref<?x2x64xf32>, vector<4xf32>
// CHECK:   %[[HIGH:.+]] = arith.truncf %[[MEAN]] : vector<4xf32> to vector<4xbf16>
// CHECK:   %[[BACK:.+]] = arith.extf %[[HIGH]]
// CHECK:   %[[REST:.+]] = arith.subf %[[MEAN]], %[[BACK]]
// CHECK:   %[[LOW:.+]] = arith.truncf %[[REST]]
// CHECK:   vector.store %[[HIGH]], %[[HI]]
// CHECK:   vector.store %[[LOW]], %[[LO]]
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK:   scf.if
// CHECK:     scf.for {{.+}} -> (index, index, index, index, index, index, index, index, index, index, index, index, index)
// CHECK-COUNT-4: vector.load %{{.+}} {alignment = 16 : i64} : memref<?x8x64xbf16>, vector<8xbf16>
// CHECK:     scf.for {{.+}} -> (f32, f32, i32, i32, f32, f32, i32, i32)
// CHECK-COUNT-2: vector.load %[[HI]]{{.+}} {alignment = 16 : i64} : memref<?x2x64xbf16>, vector<8xbf16>
// CHECK-COUNT-2: vector.load %[[LO]]{{.+}} {alignment = 16 : i64} : memref<?x2x64xbf16>, vector<8xbf16>
// CHECK-COUNT-4: nvvm.mma.sync {{.+}} C[%cst{{.*}}, %cst{{.*}}, %cst{{.*}}, %cst{{.*}}]
// CHECK-COUNT-4: nvvm.mma.sync {{.+}} C[%{{[0-9]+}}, %{{[0-9]+}}, %{{[0-9]+}}, %{{[0-9]+}}]
// A NaN score ranks as +inf (docs/semantics.md, "NaN and infinity").
// CHECK-COUNT-4: arith.cmpf uno
// CHECK:       %[[ANY:.+]] = nvvm.vote.sync  any %c-1_i32{{.*}}, %{{.+}} -> i1
// CHECK:       scf.if %[[ANY]] -> (f32, f32, i32, i32, f32, f32, i32, i32)
// CHECK:         arith.cmpf oge
// CHECK:       } else {
// CHECK-NEXT:    scf.yield %arg
// CHECK-COUNT-8: gpu.shuffle  xor
// CHECK:     scf.if
// CHECK-COUNT-3: memref.store %{{.+}}, %{{.+}} : memref<?x8x3xi32>
// CHECK:     scf.if
// CHECK-COUNT-3: memref.store %{{.+}}, %{{.+}} : memref<?x8x3xi32>
// CHECK: memref.dealloc %[[HI]]
// CHECK: memref.dealloc %[[LO]]
func.func @bf16(%q: memref<?x8x64xbf16>, %means: memref<?x2x64xf32>,
                %cu: memref<?xi32>, %sel: memref<?x8x3xi32>) {
  moba.gate_topk queries(%q : memref<?x8x64xbf16>)
      means(%means : memref<?x2x64xf32>) cu_seqlens(%cu : memref<?xi32>)
      outs(%sel : memref<?x8x3xi32>) {block_size = 64}
  return
}

// -----

// Non-causal, f16, head_dim 48: a 32-wide slice (16-byte loads) and a
// 16-wide one (8-byte loads: elements 4c .. 4c+3); K = 2 blocks by score,
// no own block.
// CHECK-LABEL: func.func @f16_noncausal
// CHECK: arith.truncf %{{.+}} : vector<4xf32> to vector<4xf16>
// CHECK: vector.load %{{.+}} {alignment = 16 : i64} : memref<?x4x48xf16>, vector<8xf16>
// CHECK: vector.load %{{.+}} {alignment = 8 : i64} : memref<?x4x48xf16>, vector<4xf16>
// CHECK: nvvm.mma.sync {{.+}} {{.+}} : (vector<2xf16>, vector<2xf16>, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// CHECK: gpu.shuffle
// CHECK: scf.if
// CHECK-COUNT-2: memref.store %{{.+}}, %{{.+}} : memref<?x4x2xi32>
// CHECK: scf.if
// CHECK-COUNT-2: memref.store %{{.+}}, %{{.+}} : memref<?x4x2xi32>
// CHECK-NOT: memref.store
func.func @f16_noncausal(%q: memref<?x4x48xf16>, %means: memref<?x4x48xf32>,
                         %cu: memref<?xi64>, %sel: memref<?x4x2xi32>) {
  moba.gate_topk queries(%q : memref<?x4x48xf16>)
      means(%means : memref<?x4x48xf32>) cu_seqlens(%cu : memref<?xi64>)
      outs(%sel : memref<?x4x2xi32>) {block_size = 32, causal = false}
  return
}

// -----

// The tensor form is the loop lowering's.
// CHECK-LABEL: func.func @tensors
// CHECK: moba.gate_topk
func.func @tensors(%q: tensor<?x8x64xbf16>, %means: tensor<?x2x64xf32>,
                   %cu: tensor<?xi32>, %sel: tensor<?x8x3xi32>)
    -> tensor<?x8x3xi32> {
  %0 = moba.gate_topk queries(%q : tensor<?x8x64xbf16>)
      means(%means : tensor<?x2x64xf32>) cu_seqlens(%cu : tensor<?xi32>)
      outs(%sel : tensor<?x8x3xi32>) {block_size = 64}
  return %0 : tensor<?x8x3xi32>
}

// -----

func.func @f32_queries(%q: memref<?x8x64xf32>, %means: memref<?x2x64xf32>,
                       %cu: memref<?xi32>, %sel: memref<?x8x3xi32>) {
  // expected-error @below {{has no tensor-core lowering: it needs f16 or bf16 queries, head_dim a static multiple of 16 up to 128 and at most 16 blocks kept by score, got K = 3}}
  moba.gate_topk queries(%q : memref<?x8x64xf32>)
      means(%means : memref<?x2x64xf32>) cu_seqlens(%cu : memref<?xi32>)
      outs(%sel : memref<?x8x3xi32>) {block_size = 64}
  return
}

// -----

func.func @too_many_kept(%q: memref<?x8x64xbf16>, %means: memref<?x2x64xf32>,
                         %cu: memref<?xi32>, %sel: memref<?x8x18xi32>) {
  // expected-error @below {{has no tensor-core lowering: it needs f16 or bf16 queries, head_dim a static multiple of 16 up to 128 and at most 16 blocks kept by score, got K = 18}}
  moba.gate_topk queries(%q : memref<?x8x64xbf16>)
      means(%means : memref<?x2x64xf32>) cu_seqlens(%cu : memref<?xi32>)
      outs(%sel : memref<?x8x18xi32>) {block_size = 64}
  return
}
