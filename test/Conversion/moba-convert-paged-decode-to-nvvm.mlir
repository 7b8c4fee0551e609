// RUN: moba-opt %s --split-input-file --moba-convert-paged-decode-to-nvvm="rows-per-tile=2 key-steps=2" --verify-diagnostics | FileCheck %s
// RUN: not moba-opt %s --moba-convert-paged-decode-to-nvvm="rows-per-tile=0" 2>&1 | FileCheck %s --check-prefix=OPTION

// RUN: not moba-opt %s --moba-convert-paged-decode-to-nvvm="chunk-keys=1" 2>&1 | FileCheck %s --check-prefix=CHUNK

// OPTION: rows-per-tile must be in [1, 32], got 0

// bf16, head_dim 64 (8 lanes a key row, four keys a load), page_size 16,
// block 32 (one chunk of 512 keys, capped at the block), top_k 3; two rows a
// tile and two keys a lane group a step.
//
// The check: one thread per sequence, walking its pages, into an i32 flag.
// CHECK-LABEL: func.func @bf16
// CHECK: %[[FLAGS:.+]] = memref.alloc(%{{.+}}) : memref<?xi32>
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK:   scf.for {{.+}} -> (i1)
// CHECK:   memref.store %{{.+}}, %[[FLAGS]][%{{.+}}] : memref<?xi32>
// Scratch of one slab: the selection, the token's sequence, the partials
// (row, slot, chunk) and their max and sum.
// CHECK: %[[SEL:.+]] = memref.alloc(%[[ROWS:.+]]) : memref<?x8x3xi32>
// CHECK: %[[SEQ:.+]] = memref.alloc(%[[ROWS]]) : memref<?xi32>
// CHECK: %[[PART:.+]] = memref.alloc(%[[ROWS]]) : memref<?x8x3x1x64xf32>
// CHECK: %[[STATS:.+]] = memref.alloc(%[[ROWS]]) : memref<?x8x3x1x2xf32>
// CHECK: scf.for %[[T0:.+]] = %{{.+}} to %{{.+}} step %c64
//
// The selection: a warp per (token, head); the sequence scan; the gate
// over finished blocks (mean = sum / block_size, four f32 a lane, a
// five-step xor reduction), NaN ranked as +inf, two kept by score.
// CHECK:   gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK:     scf.for {{.+}} -> (index, i1)
// CHECK:     memref.store %{{.+}}, %[[SEQ]]
// CHECK:     scf.for {{.+}} -> (f32, f32, i32, i32)
// CHECK:       vector.load %{{.+}} {alignment = 16 : i64} : memref<?x?x2x64xf32>, vector<4xf32>
// CHECK:       arith.divf
// CHECK-COUNT-5: gpu.shuffle  xor
// CHECK:       arith.cmpf uno
// CHECK-COUNT-2: arith.cmpf ogt
// CHECK-COUNT-3: memref.store %{{.+}}, %[[SEL]]
// A row that failed (or lies in no sequence): -1 in every slot.
// CHECK:     } else {
// CHECK-COUNT-3: memref.store %c-1_i32{{.*}}, %[[SEL]]
//
// The attention: one warp a CTA here (one chunk a block); the candidate
// rows of the sequence and key/value group, gathered by a ballot, two a
// tile, their query rows loaded once (16 bytes a lane).
// CHECK:   gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c32
// CHECK:     memref.load %[[FLAGS]]
// CHECK:     scf.for {{.+}} step %c32
// CHECK:       memref.load %[[SEQ]]
// CHECK-COUNT-3: memref.load %[[SEL]]
// CHECK:       %[[MASK:.+]] = nvvm.vote.sync  ballot %c-1_i32{{.*}}, %{{.+}} -> i32
// CHECK:       llvm.intr.ctpop(%[[MASK]])
// CHECK:       scf.for {{.+}} iter_args(%{{.+}} = %[[MASK]]) -> (i32)
// CHECK:         llvm.intr.cttz
// CHECK-COUNT-3: gpu.shuffle  idx
// CHECK:         llvm.intr.cttz
// CHECK-COUNT-3: gpu.shuffle  idx
// CHECK-COUNT-2: vector.load %{{.+}} {alignment = 16 : i64} : memref<?x8x64xbf16>, vector<8xbf16>
// The key loop: per step, the pages through the block table and all loads
// first (two keys: K then V of each), then per row and key an 8-term dot,
// a 3-step xor reduction (8 lanes a key) and the causal mask, and one
// online-softmax update per row (ex2, f32 accumulators).
// CHECK:         scf.for {{.+}} -> (f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32)
// CHECK:           memref.load %{{.+}} : memref<?x?xi32>
// CHECK:           vector.load %{{.+}} {alignment = 16 : i64} : memref<?x16x2x64xbf16>, vector<8xbf16>
// CHECK:           vector.load %{{.+}} {alignment = 16 : i64} : memref<?x16x2x64xbf16>, vector<8xbf16>
// CHECK:           memref.load %{{.+}} : memref<?x?xi32>
// CHECK:           vector.load %{{.+}} {alignment = 16 : i64} : memref<?x16x2x64xbf16>, vector<8xbf16>
// CHECK:           vector.load %{{.+}} {alignment = 16 : i64} : memref<?x16x2x64xbf16>, vector<8xbf16>
// CHECK-COUNT-7: math.fma
// CHECK-COUNT-3: gpu.shuffle  xor
// CHECK:           arith.cmpi ule
// CHECK:           llvm.intr.maxnum
// CHECK:           llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK-COUNT-8: math.fma
// CHECK:           scf.yield
// The four lane groups (keys of one load) merge: xor 8, then 16.
// CHECK:         gpu.shuffle  xor %{{.+}}, %c8_i32
// CHECK:         gpu.shuffle  xor %{{.+}}, %c16_i32
// The first lane group writes a row's partial, lane 0 its max and sum.
// CHECK:         vector.store %{{.+}}, %[[PART]][{{.+}}] {alignment = 16 : i64} : memref<?x8x3x1x64xf32>, vector<8xf32>
// CHECK:         memref.store %{{.+}}, %[[STATS]]
// CHECK:         memref.store %{{.+}}, %[[STATS]]
//
// The merge: per (row, 4 elements), the max over the listed slots' chunks,
// then the weighted sums in slot order; NaN for a row with slot 0 unset.
// CHECK:   gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK:     memref.load %[[SEL]]
// CHECK:     scf.if
// CHECK-COUNT-3: scf.for {{.+}} -> (f32)
// CHECK-COUNT-3: scf.for {{.+}} -> (f32, vector<4xf32>)
// CHECK:       arith.divf {{.+}} : vector<4xf32>
// CHECK:       arith.truncf {{.+}} : vector<4xf32> to vector<4xbf16>
// CHECK:       vector.store %{{.+}}, %arg7
// CHECK:       math.log2
// CHECK:       memref.store %{{.+}}, %arg8
// CHECK:     } else {
// CHECK:       vector.store %{{.+}}, %arg7
// CHECK:       memref.store %cst{{.*}}, %arg8
// CHECK: memref.dealloc %[[FLAGS]]
// CHECK: memref.dealloc %[[SEL]]
// CHECK: memref.dealloc %[[SEQ]]
// CHECK: memref.dealloc %[[PART]]
// CHECK: memref.dealloc %[[STATS]]
// CHECK-NOT: moba.paged_decode_attention
func.func @bf16(%q: memref<?x8x64xbf16>, %cuq: memref<?xi32>,
                %kc: memref<?x16x2x64xbf16>, %vc: memref<?x16x2x64xbf16>,
                %table: memref<?x?xi32>, %lens: memref<?xi32>,
                %sums: memref<?x?x2x64xf32>, %o: memref<?x8x64xbf16>,
                %l: memref<?x8xf32>) {
  moba.paged_decode_attention q(%q : memref<?x8x64xbf16>)
      cu_seqlens_q(%cuq : memref<?xi32>) k_cache(%kc : memref<?x16x2x64xbf16>)
      v_cache(%vc : memref<?x16x2x64xbf16>) block_table(%table : memref<?x?xi32>)
      cache_lens(%lens : memref<?xi32>) block_key_sums(%sums : memref<?x?x2x64xf32>)
      outs(%o : memref<?x8x64xbf16>, %l : memref<?x8xf32>)
      {block_size = 32, top_k = 3}
  return
}

// -----

// selection = "kv_head": the gate sums the dots of the group's two heads
// (two reductions a block); block 2048 in chunks of 512 keys, four warps a
// CTA.
// CHECK-LABEL: func.func @kv_head
// CHECK: memref.alloc(%{{.+}}) : memref<?x4x2x4x64xf32>
// CHECK: scf.for {{.+}} -> (f32, i32)
// CHECK-COUNT-10: gpu.shuffle  xor
// CHECK: arith.cmpf uno
// CHECK: gpu.launch {{.+}} threads({{.+}}) in (%{{.+}} = %c128
// CHECK: nvvm.vote.sync  ballot
func.func @kv_head(%q: memref<?x4x64xf16>, %cuq: memref<?xi32>,
                   %kc: memref<?x16x2x64xf16>, %vc: memref<?x16x2x64xf16>,
                   %table: memref<?x?xi32>, %lens: memref<?xi32>,
                   %sums: memref<?x?x2x64xf32>, %o: memref<?x4x64xf16>,
                   %l: memref<?x4xf32>) {
  moba.paged_decode_attention q(%q : memref<?x4x64xf16>)
      cu_seqlens_q(%cuq : memref<?xi32>) k_cache(%kc : memref<?x16x2x64xf16>)
      v_cache(%vc : memref<?x16x2x64xf16>) block_table(%table : memref<?x?xi32>)
      cache_lens(%lens : memref<?xi32>) block_key_sums(%sums : memref<?x?x2x64xf32>)
      outs(%o : memref<?x4x64xf16>, %l : memref<?x4xf32>)
      {block_size = 2048, top_k = 2, selection = "kv_head"}
  return
}

// -----

// Blocks of 2^20 keys: 2048 chunks of 512, 13 MB of partials a token. With
// chunk-keys=1 that would be 6.6 GB a token: refused.
// CHECK-LABEL: func.func @long_blocks
// CHECK: memref.alloc(%{{.+}}) : memref<?x8x3x2048x64xf32>
// CHUNK: needs more than 268435456 bytes of split-K partials a query token with chunk-keys = 1
func.func @long_blocks(%q: memref<?x8x64xbf16>, %cuq: memref<?xi32>,
                       %kc: memref<?x16x2x64xbf16>, %vc: memref<?x16x2x64xbf16>,
                       %table: memref<?x?xi32>, %lens: memref<?xi32>,
                       %sums: memref<?x?x2x64xf32>, %o: memref<?x8x64xbf16>,
                       %l: memref<?x8xf32>) {
  moba.paged_decode_attention q(%q : memref<?x8x64xbf16>)
      cu_seqlens_q(%cuq : memref<?xi32>) k_cache(%kc : memref<?x16x2x64xbf16>)
      v_cache(%vc : memref<?x16x2x64xbf16>) block_table(%table : memref<?x?xi32>)
      cache_lens(%lens : memref<?xi32>) block_key_sums(%sums : memref<?x?x2x64xf32>)
      outs(%o : memref<?x8x64xbf16>, %l : memref<?x8xf32>)
      {block_size = 1048576, top_k = 3}
  return
}

// -----

// head_dim 48 (six 16-byte pieces, not a power of two): no split-K form.
func.func @odd_head_dim(%q: memref<?x4x48xbf16>, %cuq: memref<?xi32>,
                        %kc: memref<?x16x2x48xbf16>, %vc: memref<?x16x2x48xbf16>,
                        %table: memref<?x?xi32>, %lens: memref<?xi32>,
                        %sums: memref<?x?x2x48xf32>, %o: memref<?x4x48xbf16>,
                        %l: memref<?x4xf32>) {
  // expected-error @+1 {{has no split-K lowering}}
  moba.paged_decode_attention q(%q : memref<?x4x48xbf16>)
      cu_seqlens_q(%cuq : memref<?xi32>) k_cache(%kc : memref<?x16x2x48xbf16>)
      v_cache(%vc : memref<?x16x2x48xbf16>) block_table(%table : memref<?x?xi32>)
      cache_lens(%lens : memref<?xi32>) block_key_sums(%sums : memref<?x?x2x48xf32>)
      outs(%o : memref<?x4x48xbf16>, %l : memref<?x4xf32>)
      {block_size = 32, top_k = 3}
  return
}
