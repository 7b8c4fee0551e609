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

