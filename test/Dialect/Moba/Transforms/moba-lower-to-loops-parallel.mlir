// RUN: moba-opt %s --moba-lower-to-loops="parallel=true" --canonicalize --cse | FileCheck %s

// The parallel form: one scf.forall over (head, token) -- heads outer, so
// that neighbouring iterations (a GPU warp) read the same block means; each
// iteration finds its sequence (start, end, block offset) by a select-only
// scan of cu_seqlens, computes its row like the serial form, and writes it
// with a parallel_insert_slice of a 1x1xK slice.

// CHECK-LABEL: func @gate_topk
// CHECK-SAME: (%{{[^:]+}}: tensor<?x4x16xf32>, %{{[^:]+}}: tensor<?x2x16xf32>, %[[CU:[^:]+]]: tensor<?xi32>, %[[I:[^:]+]]: tensor<?x4x3xi32>)
// CHECK: %[[T:.+]] = tensor.dim %[[I]], %{{.+}} : tensor<?x4x3xi32>
// CHECK: scf.forall (%[[H:.+]], %[[TOK:.+]]) in (4, %[[T]]) shared_outs(%[[OUT:.+]] = %[[I]]) -> (tensor<?x4x3xi32>)
// CHECK:   %[[SEQ:.+]]:4 = scf.for {{.+}} -> (index, index, index, index)
// CHECK:     %[[INSIDE:.+]] = arith.andi
// CHECK:     arith.select %[[INSIDE]]
// CHECK:   %[[SLICE:.+]] = tensor.extract_slice %[[OUT]][%[[TOK]], %[[H]], 0] [1, 1, 3] [1, 1, 1]
// CHECK:   %[[ROW:.+]] = vector.transfer_write %{{.+}}, %[[SLICE]][%{{.+}}, %{{.+}}, %{{.+}}] {in_bounds = [true]} : vector<3xi32>, tensor<1x1x3xi32>
// CHECK:   scf.forall.in_parallel {
// CHECK:     tensor.parallel_insert_slice %[[ROW]] into %[[OUT]][%[[TOK]], %[[H]], 0] [1, 1, 3] [1, 1, 1]
func.func @gate_topk(%q: tensor<?x4x16xf32>, %means: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %i0: tensor<?x4x3xi32>) -> tensor<?x4x3xi32> {
  %sel = moba.gate_topk queries(%q : tensor<?x4x16xf32>) means(%means : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%i0 : tensor<?x4x3xi32>) {block_size = 16}
  return %sel : tensor<?x4x3xi32>
}

// Pooling: one iteration per (packed block row, key/value head, dim), so
// that neighbouring iterations read neighbouring elements; rows past the
// batch's last block keep their init values.
// CHECK-LABEL: func @block_pool
// CHECK: scf.forall (%[[ROWI:.+]], %[[G:.+]], %[[D:.+]]) in (%{{.+}}, 2, 16) shared_outs(%[[M:.+]] = %{{.+}})
// CHECK:   %[[FOUND:.+]]:5 = scf.for {{.+}} -> (index, index, index, i1, index)
// CHECK:   %[[MSLICE:.+]] = tensor.extract_slice %[[M]][%[[ROWI]], %[[G]], %[[D]]] [1, 1, 1] [1, 1, 1]
// CHECK:   %[[NEW:.+]] = scf.if %[[FOUND]]#3 -> (tensor<1x1x1xf32>)
// CHECK:   } else {
// CHECK:     scf.yield %[[MSLICE]] : tensor<1x1x1xf32>
// CHECK:   tensor.parallel_insert_slice %[[NEW]] into %[[M]][%[[ROWI]], %[[G]], %[[D]]] [1, 1, 1] [1, 1, 1]
func.func @block_pool(%k: tensor<?x2x16xbf16>, %cu: tensor<?xi32>, %m0: tensor<?x2x16xf32>) -> tensor<?x2x16xf32> {
  %m = moba.block_pool keys(%k : tensor<?x2x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) outs(%m0 : tensor<?x2x16xf32>) {block_size = 16}
  return %m : tensor<?x2x16xf32>
}


// Blocks of more than 256 keys: a first forall over (block row x chunk of
// 256 keys, head, dim) sums each chunk into partial sums (a row past the
// last block sums nothing), and the forall above adds a row's 4 chunks
// (1000 keys) before dividing by its key count.
// CHECK-LABEL: func @block_pool_long
// CHECK: %[[ITEMS:.+]] = arith.muli %{{.+}}, %c4 : index
// CHECK: %[[EMPTY:.+]] = tensor.empty(%[[ITEMS]]) : tensor<?x2x16xf32>
// CHECK: %[[PARTIALS:.+]] = scf.forall (%[[I:.+]], %{{.+}}, %{{.+}}) in (%[[ITEMS]], 2, 16) shared_outs(%{{.+}} = %[[EMPTY]])
// CHECK:   arith.divui %[[I]], %c4
// CHECK:   %[[CHUNK:.+]] = arith.remui %[[I]], %c4
// CHECK:   arith.muli %[[CHUNK]], %c256
// CHECK:   scf.for {{.+}} -> (f32) {
// CHECK:     tensor.extract %arg0
// CHECK: scf.forall (%[[ROW:.+]], %[[G:.+]], %[[D:.+]]) in (%{{.+}}, 2, 16) shared_outs(%{{.+}} = %arg2)
// CHECK:   %[[BASE:.+]] = arith.muli %[[ROW]], %c4
// CHECK:   scf.for %[[C:.+]] = %c0 to %c4 step %c1 iter_args(%{{.+}} = %{{.+}}) -> (f32) {
// CHECK:     %[[AT:.+]] = arith.addi %[[BASE]], %[[C]]
// CHECK:     tensor.extract %[[PARTIALS]][%[[AT]], %[[G]], %[[D]]]
// CHECK:   arith.divf
func.func @block_pool_long(%k: tensor<?x2x16xbf16>, %cu: tensor<?xi32>, %m0: tensor<?x2x16xf32>) -> tensor<?x2x16xf32> {
  %m = moba.block_pool keys(%k : tensor<?x2x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) outs(%m0 : tensor<?x2x16xf32>) {block_size = 1000}
  return %m : tensor<?x2x16xf32>
}
