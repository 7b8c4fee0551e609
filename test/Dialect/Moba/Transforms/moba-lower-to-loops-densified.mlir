// RUN: moba-opt %s --moba-lower-to-loops --canonicalize --cse | FileCheck %s --check-prefix=SERIAL
// RUN: moba-opt %s --moba-lower-to-loops="parallel=true" --canonicalize --cse | FileCheck %s --check-prefix=PARALLEL

// moba.group_queries, serially: counts by one pass over the slots, starts
// by a prefix sum, entries by a second pass with one cursor per group.
// SERIAL-LABEL: func.func @group_queries
// SERIAL: linalg.fill ins(%c0_i32 : i32) outs(%{{.+}} : tensor<4x?xi32>)
// SERIAL: linalg.fill ins(%c-1_i32 : i32) outs(%{{.+}} : tensor<4x?xi32>)
// SERIAL-COUNT-3: scf.for

// In parallel, linear in the slots: counts per (head, chunk of 64 tokens)
// for every block row at once; per (head, row) the sum over the chunks and
// each chunk's offset in the group; starts by a prefix sum over the head's
// rows; each (head, chunk)'s entries sorted by row into a local list of
// 64 x K (a counting sort, one cursor per row); entries cleared (-1); then
// each (head, row, chunk) part copied from its local list to the group.
// PARALLEL-LABEL: func.func @group_queries
// PARALLEL: %[[CHUNKS:.+]] = arith.ceildivui %{{.+}}, %c64
// PARALLEL: %[[PER_CHUNK:.+]] = scf.forall (%[[H0:.+]], %[[C0:.+]]) in (4, %[[CHUNKS]])
// PARALLEL:   tensor.extract_slice %{{.+}}[%[[H0]], %[[C0]], 0] [1, 1, %[[ROWS:.+]]] [1, 1, 1] : tensor<4x?x?xi32> to tensor<?xi32>
// PARALLEL:   tensor.extract %arg0[%{{.+}}, %[[H0]], %{{.+}}] : tensor<?x4x2xi32>
// PARALLEL: %[[SUMMED:.+]]:2 = scf.forall (%[[H1:.+]], %[[R1:.+]]) in (4, %[[ROWS]])
// The sum over the chunks reads four counts before placing them.
// PARALLEL:   %[[WHOLE:.+]] = arith.muli %{{.+}}, %c4
// PARALLEL:   %[[PARTS:.+]]:2 = scf.for %[[C1:.+]] = %c0 to %[[WHOLE]] step %c4
// PARALLEL-COUNT-4: tensor.extract %[[PER_CHUNK]][%[[H1]], %{{.+}}, %[[R1]]]
// PARALLEL-COUNT-4: tensor.insert
// PARALLEL:   scf.for %{{.+}} = %[[WHOLE]] to %[[CHUNKS]] step %c1 iter_args(%{{.+}} = %[[PARTS]]#0, %{{.+}} = %[[PARTS]]#1)
// PARALLEL:     tensor.parallel_insert_slice %{{.+}} into %{{.+}}[%[[H1]], 0, %[[R1]]] [1, %[[CHUNKS]], 1] [1, 1, 1] : tensor<?xi32> into tensor<4x?x?xi32>
// PARALLEL: %[[STARTS:.+]] = scf.forall (%[[H:.+]], %[[R:.+]]) in (4, %[[ROWS]])
// PARALLEL:   scf.for %[[RR:.+]] = %c0 to %[[R]]
// PARALLEL:     tensor.extract %[[SUMMED]]#0[%[[H]], %[[RR]]]
// PARALLEL: %[[SORTED:.+]]:2 = scf.forall (%{{.+}}, %{{.+}}) in (4, %[[CHUNKS]]) {{.+}} -> (tensor<4x?x128xi32>, tensor<4x?x?xi32>)
// PARALLEL:     tensor.parallel_insert_slice %{{.+}} : tensor<128xi32> into tensor<4x?x128xi32>
// PARALLEL: %[[EMPTY:.+]] = scf.forall (%{{.+}}, %{{.+}}) in (4, %{{.+}})
// PARALLEL:   tensor.insert %c-1_i32
// PARALLEL: scf.forall (%[[H2:.+]], %[[R2:.+]], %[[C2:.+]]) in (4, %[[ROWS]], %[[CHUNKS]]) shared_outs(%[[E:.+]] = %[[EMPTY]])
// PARALLEL:   tensor.extract %[[PER_CHUNK]][%[[H2]], %[[C2]], %[[R2]]]
// PARALLEL:   tensor.extract %[[SUMMED]]#1[%[[H2]], %[[C2]], %[[R2]]]
// PARALLEL:   tensor.extract %[[STARTS]][%[[H2]], %[[R2]]]
// PARALLEL:   tensor.extract %[[SORTED]]#1[%[[H2]], %[[C2]], %[[R2]]]
// PARALLEL:   tensor.extract_slice %[[E]][%[[H2]], %{{.+}}] [1, %{{.+}}] [1, 1] : tensor<4x?xi32> to tensor<?xi32>
// PARALLEL:     tensor.extract %[[SORTED]]#0[%[[H2]], %[[C2]], %{{.+}}] : tensor<4x?x128xi32>
// PARALLEL:   scf.forall.in_parallel
// PARALLEL:     tensor.parallel_insert_slice %{{.+}} into %[[E]][%[[H2]], %{{.+}}] [1, %{{.+}}] [1, 1] : tensor<?xi32> into tensor<4x?xi32>

func.func @group_queries(%sel: tensor<?x4x2xi32>, %cu: tensor<?xi32>, %s: tensor<4x?xi32>,
                         %c: tensor<4x?xi32>, %e: tensor<4x?xi32>)
    -> (tensor<4x?xi32>, tensor<4x?xi32>, tensor<4x?xi32>) {
  %g:3 = moba.group_queries selected(%sel : tensor<?x4x2xi32>) cu_seqlens(%cu : tensor<?xi32>)
      outs(%s : tensor<4x?xi32>, %c : tensor<4x?xi32>, %e : tensor<4x?xi32>) {block_size = 16}
  return %g#0, %g#1, %g#2 : tensor<4x?xi32>, tensor<4x?xi32>, tensor<4x?xi32>
}

// moba.grouped_block_attention, serially: every slot starts empty (0,
// -inf), then per (head, block row) the group's entries t * K + s are
// decoded and attended.
// SERIAL-LABEL: func.func @grouped_block_attention
// SERIAL: linalg.fill ins(%cst{{.*}} : f32) outs(%{{.+}} : tensor<2x?x4x16xf32>)
// SERIAL: linalg.fill ins(%cst{{.*}} : f32) outs(%{{.+}} : tensor<2x?x4xf32>)
// SERIAL: arith.divui %{{.+}}, %c2
// SERIAL: arith.remui %{{.+}}, %c2
// In parallel: one iteration per (slot, token, head), reading the selection.
// PARALLEL-LABEL: func.func @grouped_block_attention
// PARALLEL: scf.forall (%[[S:.+]], %[[T:.+]], %[[H:.+]]) in (2, %{{.+}}, 4)
// PARALLEL:   tensor.parallel_insert_slice %{{.+}} into %{{.+}}[%[[S]], %[[T]], %[[H]], 0] [1, 1, 1, 16] [1, 1, 1, 1]
// PARALLEL:   tensor.parallel_insert_slice %{{.+}} into %{{.+}}[%[[S]], %[[T]], %[[H]]] [1, 1, 1] [1, 1, 1]
func.func @grouped_block_attention(%q: tensor<?x4x16xf32>, %kv: tensor<?x2x16xf32>, %cu: tensor<?xi32>,
                                   %sel: tensor<?x4x2xi32>, %s: tensor<4x?xi32>, %e: tensor<4x?xi32>,
                                   %o: tensor<2x?x4x16xf32>, %l: tensor<2x?x4xf32>)
    -> (tensor<2x?x4x16xf32>, tensor<2x?x4xf32>) {
  %p:2 = moba.grouped_block_attention q(%q : tensor<?x4x16xf32>) k(%kv : tensor<?x2x16xf32>)
      v(%kv : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) selected(%sel : tensor<?x4x2xi32>)
      groups(%s : tensor<4x?xi32>, %s : tensor<4x?xi32>, %e : tensor<4x?xi32>)
      outs(%o : tensor<2x?x4x16xf32>, %l : tensor<2x?x4xf32>) {block_size = 16, scale = 0.25 : f32} -> tensor<2x?x4x16xf32>, tensor<2x?x4xf32>
  return %p#0, %p#1 : tensor<2x?x4x16xf32>, tensor<2x?x4xf32>
}

// moba.lse_merge in parallel: the log-sum-exp per (token, head), then the
// output per (token, head, 4 dims: 16 bytes of each f32 partial), each
// partial's elements weighted by exp(lse_p - max) unless its lse is -inf.
// PARALLEL-LABEL: func.func @lse_merge
// PARALLEL: %[[LSE:.+]] = scf.forall (%[[T:.+]], %[[H:.+]]) in (%{{.+}}, 4)
// PARALLEL-COUNT-2: tensor.extract %{{.+}}[%c{{[01]}}, %[[T]], %[[H]]] : tensor<2x?x4xf32>
// PARALLEL: math.log
// PARALLEL: %[[OUT:.+]] = scf.forall (%[[T2:.+]], %[[H2:.+]], %[[D4:.+]]) in (%{{.+}}, 4, 4)
// PARALLEL:   %[[D:.+]] = arith.muli %[[D4]], %c4
// PARALLEL:   vector.transfer_read %{{.+}}[%c0, %[[T2]], %[[H2]], %[[D]]], %{{.+}} {in_bounds = [true]} : tensor<2x?x4x16xf32>, vector<4xf32>
// PARALLEL:   vector.fma {{.+}} : vector<4xf32>
// PARALLEL:   vector.transfer_read %{{.+}}[%c1, %[[T2]], %[[H2]], %[[D]]], %{{.+}} {in_bounds = [true]} : tensor<2x?x4x16xf32>, vector<4xf32>
// PARALLEL:   vector.fma {{.+}} : vector<4xf32>
// PARALLEL:   arith.truncf %{{.+}} : vector<4xf32> to vector<4xbf16>
// PARALLEL:   vector.transfer_write {{.+}} : vector<4xbf16>, tensor<1x1x4xbf16>
// PARALLEL:   tensor.parallel_insert_slice %{{.+}} into %{{.+}}[%[[T2]], %[[H2]], %[[D]]] [1, 1, 4] [1, 1, 1] : tensor<1x1x4xbf16> into tensor<?x4x16xbf16>
// PARALLEL: return %[[OUT]], %[[LSE]]
func.func @lse_merge(%po: tensor<2x?x4x16xf32>, %pl: tensor<2x?x4xf32>, %o: tensor<?x4x16xbf16>,
                     %l: tensor<?x4xf32>) -> (tensor<?x4x16xbf16>, tensor<?x4xf32>) {
  %r:2 = moba.lse_merge partials(%po : tensor<2x?x4x16xf32>) partial_lse(%pl : tensor<2x?x4xf32>)
      outs(%o : tensor<?x4x16xbf16>, %l : tensor<?x4xf32>)
  return %r#0, %r#1 : tensor<?x4x16xbf16>, tensor<?x4xf32>
}
