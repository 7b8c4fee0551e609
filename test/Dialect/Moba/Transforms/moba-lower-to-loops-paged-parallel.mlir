// RUN: moba-opt %s --moba-lower-to-loops=parallel=true --canonicalize --cse | FileCheck %s

// The parallel forms of the paged ops (the GPU pipeline's; the equivalence
// with the serial loops is tested in python/tests/test_paged_decode.py).
// Both first check every sequence once, into an i8 flag per sequence: its
// token range within the packed tokens and its (grown) length and page ids
// within the cache.

// moba.paged_kv_append: the check, then one iteration per (new token, kv
// head) that writes its key and value rows to a slice of one row, or of
// none when its sequence failed (or it lies in no sequence), then one
// iteration per (sequence, block, kv head), the only writer of its block's
// sum, adding the block's new keys in position order to its old sum or,
// when the block starts among them, to zero.

// CHECK-LABEL: func @append
// CHECK-SAME: (%[[K:[^:]+]]: tensor<?x2x16xbf16>, %[[V:[^:]+]]: tensor<?x2x16xbf16>, %[[CU:[^:]+]]: tensor<?xi32>, %[[TABLE:[^:]+]]: tensor<?x?xi32>, %[[LENS:[^:]+]]: tensor<?xi32>, %[[KC:[^:]+]]: tensor<?x16x2x16xbf16>, %[[VC:[^:]+]]: tensor<?x16x2x16xbf16>, %[[SUMS:[^:]+]]: tensor<?x?x2x16xf32>)
// CHECK-DAG: %[[ZEROS:.+]] = arith.constant dense<0.000000e+00> : vector<16xf32>
// CHECK-DAG: %[[TOKENS:.+]] = tensor.dim %[[K]], %c0
// CHECK-DAG: %[[B:.+]] = tensor.dim %[[LENS]], %c0
// CHECK: %[[EMPTY:.+]] = tensor.empty(%[[B]]) : tensor<?xi8>
// CHECK: %[[TOKENS64:.+]] = arith.index_cast %[[TOKENS]] : index to i64
// CHECK: %[[FLAGS:.+]] = scf.forall (%[[S:.+]]) in (%[[B]]) shared_outs(%{{.+}} = %[[EMPTY]]) -> (tensor<?xi8>)
// CHECK:   %[[FIRST:.+]] = arith.extsi
// CHECK:   %[[LAST:.+]] = arith.extsi
// CHECK:   %[[OLD:.+]] = arith.extsi
// CHECK:   %[[FRESH:.+]] = arith.subi %[[LAST]], %[[FIRST]] : i64
// CHECK:   %[[GROWN:.+]] = arith.addi %[[OLD]], %[[FRESH]] : i64
// CHECK:   scf.for {{.+}} -> (i1)
// CHECK:     tensor.extract %[[TABLE]][%[[S]], %{{.+}}]
// CHECK:   arith.cmpi sge, %[[FIRST]], %c0_i64
// CHECK:   arith.cmpi sle, %[[LAST]], %[[TOKENS64]]
// CHECK:   arith.extui %{{.+}} : i1 to i8
// CHECK:   tensor.parallel_insert_slice
// CHECK: %[[ROWS:.+]]:2 = scf.forall (%[[T:.+]], %[[G:.+]]) in (%[[TOKENS]], 2) shared_outs(%[[KCO:.+]] = %[[KC]], %[[VCO:.+]] = %[[VC]])
// CHECK:   %[[SEQ:.+]]:2 = scf.for {{.+}} -> (index, i1)
// CHECK:   %[[OK:.+]] = scf.if %[[SEQ]]#1 -> (i1)
// CHECK:     tensor.extract %[[FLAGS]][%[[SEQ]]#0] : tensor<?xi8>
// CHECK:   %[[WHERE:.+]]:2 = scf.if %[[OK]] -> (index, index)
// CHECK:   %[[COUNT:.+]] = arith.select %[[OK]], %c1, %c0 : index
// CHECK:   %[[KSLICE:.+]] = tensor.extract_slice %[[KCO]][%[[WHERE]]#0, %[[WHERE]]#1, %[[G]], 0] [%[[COUNT]], 1, 1, 16]
// CHECK:   %[[KROW:.+]] = scf.if %[[OK]]
// CHECK:     vector.transfer_read %[[K]][%[[T]], %[[G]], %c0]
// CHECK:   %[[VSLICE:.+]] = tensor.extract_slice %[[VCO]][%[[WHERE]]#0, %[[WHERE]]#1, %[[G]], 0] [%[[COUNT]], 1, 1, 16]
// CHECK:   scf.forall.in_parallel
// CHECK:     tensor.parallel_insert_slice %[[KROW]] into %[[KCO]][%[[WHERE]]#0, %[[WHERE]]#1, %[[G]], 0] [%[[COUNT]], 1, 1, 16]
// CHECK:     tensor.parallel_insert_slice %{{.+}} into %[[VCO]][%[[WHERE]]#0, %[[WHERE]]#1, %[[G]], 0] [%[[COUNT]], 1, 1, 16]
// CHECK: %[[NEWSUMS:.+]] = scf.forall (%[[S2:.+]], %[[J:.+]], %[[G2:.+]]) in (%{{.+}}, %{{.+}}, 2) shared_outs(%[[SUMSO:.+]] = %[[SUMS]])
// CHECK:   %[[OLDSUM:.+]] = vector.transfer_read %[[SUMSO]][%[[S2]], %[[J]], %[[G2]], %c0]
// CHECK:   tensor.extract %[[FLAGS]][%[[S2]]]
// CHECK:   %[[BFIRST:.+]] = arith.muli %{{.+}}, %c32_i64 : i64
// CHECK:   %[[FROM:.+]] = arith.maxsi %{{.+}}, %[[BFIRST]] : i64
// CHECK:   %[[TO:.+]] = arith.minsi %{{.+}}, %{{.+}} : i64
// CHECK:   %[[TOUCHED:.+]] = arith.cmpi slt, %[[FROM]], %[[TO]] : i64
// CHECK:   scf.if %[[TOUCHED]]
// CHECK:     %[[STARTS:.+]] = arith.cmpi sge, %[[BFIRST]], %{{.+}} : i64
// CHECK:     %[[START:.+]] = arith.select %[[STARTS]], %[[ZEROS]], %[[OLDSUM]]
// CHECK:     scf.for {{.+}} iter_args(%[[ACC:.+]] = %[[START]])
// CHECK:       %[[KEY:.+]] = vector.transfer_read %[[K]]
// CHECK:       %[[KEY32:.+]] = arith.extf %[[KEY]]
// CHECK:       arith.addf %[[ACC]], %[[KEY32]] : vector<16xf32>
// CHECK:   tensor.parallel_insert_slice %{{.+}} into %[[SUMSO]][%[[S2]], %[[J]], %[[G2]], 0] [1, 1, 1, 16]
// CHECK: return %[[ROWS]]#0, %[[ROWS]]#1, %[[NEWSUMS]]
// CHECK-NOT: moba.
func.func @append(%k: tensor<?x2x16xbf16>, %v: tensor<?x2x16xbf16>, %cu: tensor<?xi32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %kc: tensor<?x16x2x16xbf16>, %vc: tensor<?x16x2x16xbf16>, %sums: tensor<?x?x2x16xf32>) -> (tensor<?x16x2x16xbf16>, tensor<?x16x2x16xbf16>, tensor<?x?x2x16xf32>) {
  %a, %b, %c = moba.paged_kv_append k(%k : tensor<?x2x16xbf16>) v(%v : tensor<?x2x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) outs(%kc : tensor<?x16x2x16xbf16>, %vc : tensor<?x16x2x16xbf16>, %sums : tensor<?x?x2x16xf32>) {block_size = 32}
  return %a, %b, %c : tensor<?x16x2x16xbf16>, tensor<?x16x2x16xbf16>, tensor<?x?x2x16xf32>
}

// moba.paged_decode_attention: the check (of the length as given), then
// one iteration per (query token, query head) that finds its sequence,
// computes its row under the sequence's flag and NaN otherwise, and
// writes its output row and log-sum-exp.

// CHECK-LABEL: func @decode
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x4x16xf32>, %[[CUQ:[^:]+]]: tensor<?xi32>
// CHECK-DAG: %[[NAN:.+]] = arith.constant 0x7FC00000 : f32
// CHECK-DAG: %[[NANROW:.+]] = arith.constant dense<0x7FC00000> : vector<16xf32>
// CHECK: %[[FLAGS:.+]] = scf.forall
// CHECK-NOT: arith.addi %{{.+}}, %{{.+}} : i64
// CHECK:   arith.subi
// CHECK-NOT: arith.addi %{{.+}}, %{{.+}} : i64
// CHECK:   scf.for {{.+}} -> (i1)
// CHECK: scf.forall (%[[T:.+]], %[[H:.+]]) in (%{{.+}}, 4) shared_outs(%[[OUT:.+]] = %{{.+}}, %[[LSE:.+]] = %{{.+}})
// CHECK:   %[[SEQ:.+]]:2 = scf.for {{.+}} -> (index, i1)
// CHECK:   %[[OK:.+]] = scf.if %[[SEQ]]#1 -> (i1)
// CHECK:     tensor.extract %[[FLAGS]][%[[SEQ]]#0] : tensor<?xi8>
// CHECK:   %[[ROW:.+]]:2 = scf.if %[[OK]] -> (vector<16xf32>, f32)
// CHECK:     vector.transfer_read %[[Q]][%[[T]], %[[H]], %c0]
// CHECK:     scf.yield %[[NANROW]], %[[NAN]] : vector<16xf32>, f32
// CHECK:   scf.forall.in_parallel
// CHECK:     tensor.parallel_insert_slice %{{.+}} into %[[OUT]][%[[T]], %[[H]], 0] [1, 1, 16]
// CHECK:     tensor.parallel_insert_slice %{{.+}} into %[[LSE]][%[[T]], %[[H]]] [1, 1]
// CHECK-NOT: moba.
func.func @decode(%q: tensor<?x4x16xf32>, %cuq: tensor<?xi32>, %kc: tensor<?x16x2x16xf32>, %vc: tensor<?x16x2x16xf32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %sums: tensor<?x?x2x16xf32>, %o: tensor<?x4x16xf32>, %l: tensor<?x4xf32>) -> (tensor<?x4x16xf32>, tensor<?x4xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x4x16xf32>) cu_seqlens_q(%cuq : tensor<?xi32>) k_cache(%kc : tensor<?x16x2x16xf32>) v_cache(%vc : tensor<?x16x2x16xf32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) block_key_sums(%sums : tensor<?x?x2x16xf32>) outs(%o : tensor<?x4x16xf32>, %l : tensor<?x4xf32>) {block_size = 32, top_k = 3}
  return %out, %lse : tensor<?x4x16xf32>, tensor<?x4xf32>
}
