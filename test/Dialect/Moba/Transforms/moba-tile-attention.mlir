// RUN: moba-opt %s --split-input-file --moba-tile-attention="tile-q=8 tile-k=4" --canonicalize --cse | FileCheck %s
// RUN: not moba-opt %s --moba-tile-attention="tile-k=0" 2>&1 | FileCheck %s --check-prefix=BAD-TILE
// RUN: not moba-opt %s --moba-tile-attention="tile-k=4294967301" 2>&1 | FileCheck %s --check-prefix=HUGE-TILE
// RUN: not moba-opt %s --moba-tile-attention="tile-q=9223372036854775807" 2>&1 | FileCheck %s --check-prefix=HUGE-TILE

// BAD-TILE: error: moba-tile-attention: tile-q and tile-k must be at least 1, got tile-q=32 tile-k=0
// Past these a tile of keys is a vector wider than any lowering can build
// (LLVM aborts), and tile starts plus tile-q wrap.
// HUGE-TILE: error: moba-tile-attention: tile-q must be at most 2147483647 and tile-k at most 1024

// The flash-attention loop nest: sequences, query tiles of 8 tokens, heads,
// queries of the tile, the selected blocks (repeats and invalid entries
// skipped, the own block cut at the query), key tiles of 4 keys with one
// online-softmax update each, then out = acc / l and lse = m + log(l).

// CHECK-LABEL: func @tile
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x4x16xbf16>, %[[K:[^:]+]]: tensor<?x2x16xbf16>, %[[CU:[^:]+]]: tensor<?xi32>, %[[SEL:[^:]+]]: tensor<?x4x3xi32>, %[[O0:[^:]+]]: tensor<?x4x16xbf16>, %[[L0:[^:]+]]: tensor<?x4xf32>)
// CHECK-DAG: %[[C8:.+]] = arith.constant 8 : index
// CHECK-DAG: %[[C4:.+]] = arith.constant 4 : index
// CHECK-DAG: %[[NEG_INF_TILE:.+]] = arith.constant dense<0xFF800000> : vector<4xf32>
// CHECK-DAG: %[[SCALE:.+]] = arith.constant 2.500000e-01 : f32
// CHECK: scf.for %{{.+}} = {{.+}} iter_args(%{{.+}} = %[[O0]], %{{.+}} = %[[L0]], %{{.+}} = %{{.+}})
// CHECK:   scf.for %[[TILE:[^ ]+]] = %{{.+}} to %[[END:[^ ]+]] step %[[C8]]
// CHECK:     %[[TILE_END:.+]] = arith.minui %{{.+}}, %[[END]] : index
// CHECK:     scf.for %[[H:[^ ]+]] = %{{.+}} to %[[C4]]
// CHECK:       scf.for %[[T:[^ ]+]] = %[[TILE]] to %[[TILE_END]]
// CHECK:         %[[QROW:.+]] = vector.transfer_read %[[Q]][%[[T]], %[[H]], %{{.+}}]
// CHECK:         %[[SELROW:.+]] = vector.transfer_read %[[SEL]][%[[T]], %[[H]], %{{.+}}], %{{.+}} {in_bounds = [true]} : tensor<?x4x3xi32>, vector<3xi32>
// CHECK:         %[[STATE:.+]]:3 = scf.for %[[SLOT:[^ ]+]] = {{.+}} -> (f32, f32, vector<16xf32>)
// CHECK:           %[[BLOCK:.+]] = vector.extract %[[SELROW]][%[[SLOT]]] : i32 from vector<3xi32>
// CHECK:           vector.reduction <or>
// CHECK:           scf.if
// CHECK:             %[[BLOCK_END:.+]] = arith.minui %{{.+}}, %{{.+}} : index
// CHECK:             %[[CAUSAL_END:.+]] = arith.minui %[[BLOCK_END]], %{{.+}} : index
// CHECK:             scf.for %[[KT:[^ ]+]] = %{{.+}} to %[[CAUSAL_END]] step %[[C4]] iter_args(%[[M:[^ ]+]] = %{{[^,]+}}, %[[L:[^ ]+]] = %{{[^,]+}}, %[[ACC:[^ ]+]] = %{{[^)]+}})
// CHECK:               %[[SCORES:.+]] = scf.for {{.+}} iter_args(%[[TILE_SCORES:[^ ]+]] = %[[NEG_INF_TILE]]) -> (vector<4xf32>)
// CHECK:                 vector.transfer_read %[[K]]
// CHECK:                 %[[X:.+]] = arith.mulf %{{.+}}, %[[SCALE]] : f32
// CHECK:                 vector.insert %[[X]], %[[TILE_SCORES]] [%{{.+}}] : f32 into vector<4xf32>
// CHECK:               %[[TILE_MAX:.+]] = vector.reduction <maximumf>, %[[SCORES]] : vector<4xf32> into f32
// CHECK:               %[[M_NEW:.+]] = arith.maximumf %[[M]], %[[TILE_MAX]] : f32
// CHECK:               %[[ALPHA:.+]] = math.exp %{{.+}} : f32
// CHECK:               %[[P:.+]] = math.exp %{{.+}} : vector<4xf32>
// CHECK:               %[[PSUM:.+]] = vector.reduction <add>, %[[P]] : vector<4xf32> into f32
// CHECK:               %[[L_SCALED:.+]] = arith.mulf %[[L]], %[[ALPHA]] : f32
// CHECK:               %[[L_NEW:.+]] = arith.addf %[[L_SCALED]], %[[PSUM]] : f32
// CHECK:               %[[ACC_SCALED:.+]] = arith.mulf %[[ACC]], %{{.+}} : vector<16xf32>
// CHECK:               %[[ACC_NEW:.+]] = scf.for {{.+}} iter_args(%[[A:[^ ]+]] = %[[ACC_SCALED]]) -> (vector<16xf32>)
// CHECK:                 vector.fma %{{.+}}, %{{.+}}, %[[A]] : vector<16xf32>
// CHECK:               scf.yield %[[M_NEW]], %[[L_NEW]], %[[ACC_NEW]]
// CHECK:         math.log %{{.+}} : f32
// CHECK:         %[[OUT_ROW:.+]] = arith.truncf %{{.+}} : vector<16xf32> to vector<16xbf16>
// CHECK:         vector.transfer_write %[[OUT_ROW]], %{{.+}}[%[[T]], %[[H]], %{{.+}}]
// CHECK:         tensor.insert %{{.+}} into %{{.+}}[%[[T]], %[[H]]] : tensor<?x4xf32>
// CHECK-NOT: moba.sparse_attention
func.func @tile(%q: tensor<?x4x16xbf16>, %k: tensor<?x2x16xbf16>, %cu: tensor<?xi32>, %sel: tensor<?x4x3xi32>, %o0: tensor<?x4x16xbf16>, %l0: tensor<?x4xf32>) -> (tensor<?x4x16xbf16>, tensor<?x4xf32>) {
  %o, %l = moba.sparse_attention q(%q : tensor<?x4x16xbf16>) k(%k : tensor<?x2x16xbf16>) v(%k : tensor<?x2x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) selected(%sel : tensor<?x4x3xi32>) outs(%o0 : tensor<?x4x16xbf16>, %l0 : tensor<?x4xf32>) {block_size = 16, scale = 0.25 : f32}
  return %o, %l : tensor<?x4x16xbf16>, tensor<?x4xf32>
}

// -----

// Dense (no selection): one key range per query, the whole sequence cut at
// the query.
// CHECK-LABEL: func @dense
// CHECK-NOT: vector.reduction <or>
// CHECK: vector.reduction <maximumf>
func.func @dense(%q: tensor<?x4x16xf32>, %cu: tensor<?xi32>, %o0: tensor<?x4x16xf32>, %l0: tensor<?x4xf32>) -> tensor<?x4x16xf32> {
  %o, %l = moba.sparse_attention q(%q : tensor<?x4x16xf32>) k(%q : tensor<?x4x16xf32>) v(%q : tensor<?x4x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%o0 : tensor<?x4x16xf32>, %l0 : tensor<?x4xf32>) {block_size = 16, scale = 0.25 : f32}
  return %o : tensor<?x4x16xf32>
}

