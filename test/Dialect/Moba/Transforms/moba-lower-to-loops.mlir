// RUN: moba-opt %s --moba-lower-to-loops --canonicalize --cse | FileCheck %s

// moba.gate_topk: loops over sequences, tokens and heads; per head the
// query row is read once, and a running top-2 of past blocks (K - 1 = 2:
// the own block is forced) is updated per block with a compare, a shift and
// a select. The result is written as one K-wide vector, own block first.

// CHECK-LABEL: func @gate_topk
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x4x16xf32>, %[[M:[^:]+]]: tensor<?x2x16xf32>, %[[CU:[^:]+]]: tensor<?xi32>, %[[I:[^:]+]]: tensor<?x4x3xi32>)
// CHECK-DAG: %[[NEG_INF:.+]] = arith.constant dense<0xFF800000> : vector<2xf32>
// CHECK-DAG: %[[NONE:.+]] = arith.constant dense<-1> : vector<2xi32>
// CHECK: scf.for %[[SEQ:.+]] = {{.+}} iter_args(%{{.+}} = %[[I]], %[[OFF:.+]] = %{{.+}})
// CHECK:   scf.for %[[T:.+]] = {{.+}} iter_args
// CHECK:     scf.for %[[H:.+]] = {{.+}} iter_args
// CHECK-DAG:   %[[G:.+]] = arith.divui %[[H]], %{{.+}} : index
// CHECK-DAG:   %[[QROW:.+]] = vector.transfer_read %[[Q]][%[[T]], %[[H]], %{{.+}}], {{.+}} : tensor<?x4x16xf32>, vector<16xf32>
// CHECK-DAG:   %[[OWN:.+]] = arith.index_cast %{{.+}} : index to i32
// CHECK:       %[[LIST:.+]]:2 = scf.for %[[J:.+]] = %{{.+}} to %{{.+}} step %{{.+}} iter_args(%[[S:.+]] = %[[NEG_INF]], %[[B:.+]] = %[[NONE]]) -> (vector<2xf32>, vector<2xi32>)
// CHECK:         %[[ROW:.+]] = arith.addi %[[OFF]], %[[J]] : index
// CHECK:         %[[MEAN:.+]] = vector.transfer_read %[[M]][%[[ROW]], %[[G]], %{{.+}}]
// The dot product in eight interleaved partial sums: lanes 0-7 multiplied,
// lanes 8-15 fused in, then the eight sums added.
// CHECK:         %[[QLO:.+]] = vector.shuffle %[[QROW]], %[[QROW]] [0, 1, 2, 3, 4, 5, 6, 7] : vector<16xf32>, vector<16xf32>
// CHECK:         %[[MLO:.+]] = vector.shuffle %[[MEAN]], %[[MEAN]] [0, 1, 2, 3, 4, 5, 6, 7] : vector<16xf32>, vector<16xf32>
// CHECK:         %[[PROD:.+]] = arith.mulf %[[QLO]], %[[MLO]] : vector<8xf32>
// CHECK:         %[[QHI:.+]] = vector.shuffle %[[QROW]], %[[QROW]] [8, 9, 10, 11, 12, 13, 14, 15] : vector<16xf32>, vector<16xf32>
// CHECK:         %[[MHI:.+]] = vector.shuffle %[[MEAN]], %[[MEAN]] [8, 9, 10, 11, 12, 13, 14, 15] : vector<16xf32>, vector<16xf32>
// CHECK:         %[[SUMS:.+]] = vector.fma %[[QHI]], %[[MHI]], %[[PROD]] : vector<8xf32>
// CHECK:         %[[SCORE:.+]] = vector.reduction <add>, %[[SUMS]] : vector<8xf32> into f32
// A NaN score ranks as +inf (docs/semantics.md, "NaN and infinity").
// CHECK:         %[[ISNAN:.+]] = arith.cmpf uno, %[[SCORE]], %[[SCORE]] : f32
// CHECK:         %[[RANKED:.+]] = arith.select %[[ISNAN]], %{{.+}}, %[[SCORE]] : f32
// CHECK:         %[[RANKEDV:.+]] = vector.broadcast %[[RANKED]] : f32 to vector<2xf32>
// CHECK:         arith.cmpf ogt, %[[S]], %[[RANKEDV]] : vector<2xf32>
// CHECK:         vector.reduction <add>, %{{.+}} : vector<2xi32> into i32
// CHECK:         vector.shuffle %[[S]], %[[S]] [0, 0] : vector<2xf32>, vector<2xf32>
// CHECK:         arith.select
// CHECK:         scf.yield %{{.+}}, %{{.+}} : vector<2xf32>, vector<2xi32>
// CHECK:       %[[OWNV:.+]] = vector.broadcast %[[OWN]] : i32 to vector<1xi32>
// CHECK:       %[[ALL:.+]] = vector.shuffle %[[OWNV]], %[[LIST]]#1 [0, 1, 2] : vector<1xi32>, vector<2xi32>
// CHECK:       vector.transfer_write %[[ALL]], %{{.+}}[%[[T]], %[[H]], %{{.+}}] {in_bounds = [true]} : vector<3xi32>, tensor<?x4x3xi32>
// CHECK-NOT: moba.
func.func @gate_topk(%q: tensor<?x4x16xf32>, %means: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %i0: tensor<?x4x3xi32>) -> tensor<?x4x3xi32> {
  %sel = moba.gate_topk queries(%q : tensor<?x4x16xf32>) means(%means : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%i0 : tensor<?x4x3xi32>) {block_size = 16}
  return %sel : tensor<?x4x3xi32>
}

// moba.block_pool: per sequence, block and key/value head, the f32 sum of
// the block's key rows divided by its length, written at the block's packed
// row (the sequence's block offset plus the block index).

// CHECK-LABEL: func @block_pool
// CHECK-SAME: (%[[K:[^:]+]]: tensor<?x2x16xbf16>
// CHECK: scf.for {{.+}} iter_args(%{{.+}} = %{{.+}}, %[[OFF:.+]] = %{{.+}})
// CHECK:   scf.for %[[J:.+]] = {{.+}} iter_args
// CHECK:     %[[ROW:.+]] = arith.addi %[[OFF]], %[[J]] : index
// CHECK:     scf.for %[[G:.+]] = {{.+}} iter_args
// CHECK:       %[[COUNT:.+]] = arith.uitofp %{{.+}} : i64 to f32
// CHECK:       %[[SUM:.+]] = scf.for %[[S:.+]] = {{.+}} iter_args(%[[ACC:.+]] = %{{.+}}) -> (vector<16xf32>)
// CHECK:         %[[KROW:.+]] = vector.transfer_read %[[K]][%[[S]], %[[G]], %{{.+}}], {{.+}} : tensor<?x2x16xbf16>, vector<16xbf16>
// CHECK:         %[[KF:.+]] = arith.extf %[[KROW]] : vector<16xbf16> to vector<16xf32>
// CHECK:         arith.addf %[[ACC]], %[[KF]] : vector<16xf32>
// CHECK:       %[[DIV:.+]] = vector.broadcast %[[COUNT]] : f32 to vector<16xf32>
// CHECK:       %[[MEAN:.+]] = arith.divf %[[SUM]], %[[DIV]] : vector<16xf32>
// CHECK:       vector.transfer_write %[[MEAN]], %{{.+}}[%[[ROW]], %[[G]], %{{.+}}]
func.func @block_pool(%k: tensor<?x2x16xbf16>, %cu: tensor<?xi32>, %m0: tensor<?x2x16xf32>) -> tensor<?x2x16xf32> {
  %m = moba.block_pool keys(%k : tensor<?x2x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) outs(%m0 : tensor<?x2x16xf32>) {block_size = 16}
  return %m : tensor<?x2x16xf32>
}

// Untiled sparse attention: an exact two-pass softmax per query (maximum
// first, then sum and weighted values), over the selected blocks with repeats
// skipped; a query that attends nothing gets 0 and -inf.

// CHECK-LABEL: func @sparse_attention
// CHECK: %[[MAX:.+]] = scf.for {{.+}} -> (f32)
// CHECK:   arith.maximumf
// CHECK: scf.for {{.+}} -> (f32, vector<16xf32>)
// CHECK:   arith.subf %{{.+}}, %[[MAX]] : f32
// CHECK:   math.exp
// CHECK:   vector.fma
// CHECK: math.log
// CHECK-NOT: moba.
func.func @sparse_attention(%q: tensor<?x4x16xf32>, %k: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %sel: tensor<?x4x3xi32>, %o0: tensor<?x4x16xf32>, %l0: tensor<?x4xf32>) -> (tensor<?x4x16xf32>, tensor<?x4xf32>) {
  %o, %l = moba.sparse_attention q(%q : tensor<?x4x16xf32>) k(%k : tensor<?x2x16xf32>) v(%k : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) selected(%sel : tensor<?x4x3xi32>) outs(%o0 : tensor<?x4x16xf32>, %l0 : tensor<?x4xf32>) {block_size = 16, scale = 0.25 : f32}
  return %o, %l : tensor<?x4x16xf32>, tensor<?x4xf32>
}
