// RUN: moba-opt %s --moba-lower-to-loops --canonicalize --cse | FileCheck %s

// moba.paged_kv_append: per sequence, the cache check first (lengths in
// i64 against the table's pages and the sums' blocks, then every page id
// of the grown sequence in [0, pages)); under it, per new token its
// (page, slot) from the block table, and per key/value head the key and
// value rows written there and the key added to its block's f32 sum, which
// the block's first key starts from zero.

// CHECK-LABEL: func @append
// CHECK-SAME: (%[[K:[^:]+]]: tensor<?x2x16xbf16>, %[[V:[^:]+]]: tensor<?x2x16xbf16>, %[[CU:[^:]+]]: tensor<?xi32>, %[[TABLE:[^:]+]]: tensor<?x?xi32>, %[[LENS:[^:]+]]: tensor<?xi32>, %[[KC:[^:]+]]: tensor<?x16x2x16xbf16>, %[[VC:[^:]+]]: tensor<?x16x2x16xbf16>, %[[SUMS:[^:]+]]: tensor<?x?x2x16xf32>)
// CHECK-DAG: %[[ZEROS:.+]] = arith.constant dense<0.000000e+00> : vector<16xf32>
// CHECK: scf.for %[[SEQ:.+]] = {{.+}} iter_args(%[[KC1:.+]] = %[[KC]], %[[VC1:.+]] = %[[VC]], %[[SUMS1:.+]] = %[[SUMS]])
// CHECK:   %[[OLD32:.+]] = tensor.extract %[[LENS]][%[[SEQ]]] : tensor<?xi32>
// CHECK:   %[[OLD:.+]] = arith.extsi %[[OLD32]] : i32 to i64
// CHECK:   %[[GROWN:.+]] = arith.addi %[[OLD]], %{{.+}} : i64
// CHECK:   arith.cmpi sle, %[[GROWN]], %{{.+}} : i64
// CHECK:   %[[FITS:.+]] = scf.for {{.+}} -> (i1) {
// CHECK:     %[[PAGEID:.+]] = tensor.extract %[[TABLE]][%[[SEQ]], %{{.+}}] : tensor<?x?xi32>
// CHECK-DAG: arith.cmpi slt, %[[PAGEID]], %{{.+}} : i32
// CHECK-DAG: arith.cmpi sge, %[[PAGEID]], %{{.+}} : i32
// CHECK:   scf.if %[[FITS]]
// CHECK:     scf.for %[[T:.+]] = {{.+}} iter_args
// CHECK:       %[[POS:.+]] = arith.addi
// CHECK:       %[[PAGE32:.+]] = tensor.extract %[[TABLE]][%[[SEQ]], %{{.+}}] : tensor<?x?xi32>
// CHECK:       %[[PAGE:.+]] = arith.index_cast %[[PAGE32]] : i32 to index
// CHECK:       %[[SLOT:.+]] = arith.remui %[[POS]], %c16 : index
// CHECK:       %[[BLOCK:.+]] = arith.divui %[[POS]], %c32 : index
// CHECK:       %[[INBLOCK:.+]] = arith.remui %[[POS]], %c32 : index
// CHECK:       %[[STARTS:.+]] = arith.cmpi eq, %[[INBLOCK]], %c0 : index
// CHECK:       scf.for %[[G:.+]] = {{.+}} iter_args(%[[KC2:.+]] = %{{.+}}, %[[VC2:.+]] = %{{.+}}, %[[SUMS2:.+]] = %{{.+}})
// CHECK:         %[[KEY:.+]] = vector.transfer_read %[[K]][%[[T]], %[[G]], %{{.+}}]
// CHECK:         %[[KEY32:.+]] = arith.extf %[[KEY]] : vector<16xbf16> to vector<16xf32>
// CHECK:         vector.transfer_write %[[KEY]], %[[KC2]][%[[PAGE]], %[[SLOT]], %[[G]], %{{.+}}]
// CHECK:         %[[VAL:.+]] = vector.transfer_read %[[V]][%[[T]], %[[G]], %{{.+}}]
// CHECK:         vector.transfer_write %[[VAL]], %[[VC2]][%[[PAGE]], %[[SLOT]], %[[G]], %{{.+}}]
// CHECK:         %[[OLDSUM:.+]] = vector.transfer_read %[[SUMS2]][%[[SEQ]], %[[BLOCK]], %[[G]], %{{.+}}]
// CHECK:         %[[FROM:.+]] = arith.select %[[STARTS]], %[[ZEROS]], %[[OLDSUM]] : vector<16xf32>
// CHECK:         %[[SUM:.+]] = arith.addf %[[FROM]], %[[KEY32]] : vector<16xf32>
// CHECK:         vector.transfer_write %[[SUM]], %[[SUMS2]][%[[SEQ]], %[[BLOCK]], %[[G]], %{{.+}}]
// CHECK:   } else {
// CHECK-NEXT: scf.yield %[[KC1]], %[[VC1]], %[[SUMS1]]
// CHECK-NOT: moba.
func.func @append(%k: tensor<?x2x16xbf16>, %v: tensor<?x2x16xbf16>, %cu: tensor<?xi32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %kc: tensor<?x16x2x16xbf16>, %vc: tensor<?x16x2x16xbf16>, %sums: tensor<?x?x2x16xf32>) -> (tensor<?x16x2x16xbf16>, tensor<?x16x2x16xbf16>, tensor<?x?x2x16xf32>) {
  %a, %b, %c = moba.paged_kv_append k(%k : tensor<?x2x16xbf16>) v(%v : tensor<?x2x16xbf16>) cu_seqlens(%cu : tensor<?xi32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) outs(%kc : tensor<?x16x2x16xbf16>, %vc : tensor<?x16x2x16xbf16>, %sums : tensor<?x?x2x16xf32>) {block_size = 32}
  return %a, %b, %c : tensor<?x16x2x16xbf16>, tensor<?x16x2x16xbf16>, tensor<?x?x2x16xf32>
}

// moba.paged_decode_attention, selection = "kv_head": per sequence the
// cache check, per query and head (under it) a running top-2 of the
// finished blocks before the own one, each scored by its cached f32 sum
// over the block length dotted with every query head of the group and
// summed; then the exact two-pass softmax over the own block up to the
// query's position and the listed blocks in full, keys read through the
// block table. A sequence that fails the check gets NaN rows.

// CHECK-LABEL: func @decode_kv_head
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<?x4x16xf32>, %{{[^:]+}}: tensor<?xi32>, %[[KC:[^:]+]]: tensor<?x16x2x16xf32>, %[[VC:[^:]+]]: tensor<?x16x2x16xf32>, %[[TABLE:[^:]+]]: tensor<?x?xi32>, %[[LENS:[^:]+]]: tensor<?xi32>, %[[SUMS:[^:]+]]: tensor<?x?x2x16xf32>
// CHECK-DAG: %[[BLOCKLEN:.+]] = arith.constant dense<3.200000e+01> : vector<16xf32>
// CHECK-DAG: %[[NAN:.+]] = arith.constant 0x7FC00000 : f32
// CHECK-DAG: %[[NANROW:.+]] = arith.constant dense<0x7FC00000> : vector<16xf32>
// CHECK: scf.for %[[SEQ:.+]] = {{.+}} iter_args
// CHECK:   %[[FITS:.+]] = scf.for {{.+}} -> (i1) {
// CHECK:   scf.for %[[T:.+]] = {{.+}} iter_args
// CHECK:     %[[POS:.+]] = arith.addi
// CHECK:     scf.for %[[H:.+]] = {{.+}} iter_args
// CHECK:       scf.if %[[FITS]]
// CHECK:         %[[G:.+]] = arith.divui %[[H]], %c2 : index
// CHECK:         %[[QROW:.+]] = vector.transfer_read %[[Q]][%[[T]], %[[H]], %{{.+}}]
// CHECK:         %[[OWN:.+]] = arith.divui %[[POS]], %c32 : index
// CHECK:         %[[LIST:.+]]:2 = scf.for %[[J:.+]] = %c0 to %[[OWN]] step %c1 iter_args({{.+}}) -> (vector<2xf32>, vector<2xi32>)
// CHECK:           %[[SUM:.+]] = vector.transfer_read %[[SUMS]][%[[SEQ]], %[[J]], %[[G]], %{{.+}}]
// CHECK:           %[[MEAN:.+]] = arith.divf %[[SUM]], %[[BLOCKLEN]] : vector<16xf32>
// CHECK:           %[[GROUPSCORE:.+]] = scf.for {{.+}} -> (f32)
// CHECK:             vector.transfer_read %[[Q]][%[[T]], %{{.+}}, %{{.+}}]
// CHECK:             vector.reduction <add>
// CHECK:             arith.addf
// CHECK:           arith.cmpf uno, %[[GROUPSCORE]], %[[GROUPSCORE]] : f32
// CHECK:         %[[END:.+]] = arith.addi %[[POS]], %c1 : index
// CHECK:         %[[OWNFIRST:.+]] = arith.muli %[[OWN]], %c32 : index
// Pass 1 over the own block, then the listed blocks.
// CHECK:         scf.for %[[S:.+]] = %[[OWNFIRST]] to %[[END]] step %c1 iter_args({{.+}}) -> (f32)
// CHECK:           %[[PAGE32:.+]] = tensor.extract %[[TABLE]][%[[SEQ]], %{{.+}}] : tensor<?x?xi32>
// CHECK:           %[[PAGE:.+]] = arith.index_cast %[[PAGE32]] : i32 to index
// CHECK:           %[[SLOT:.+]] = arith.remui %[[S]], %c16 : index
// CHECK:           vector.transfer_read %[[KC]][%[[PAGE]], %[[SLOT]], %[[G]], %{{.+}}]
// CHECK:           arith.maximumf
// CHECK:         scf.for %[[SLOTI:.+]] = %c0 to %c2 step %c1
// CHECK:           %[[CHOSEN:.+]] = vector.extract %[[LIST]]#1[%[[SLOTI]]] : i32 from vector<2xi32>
// CHECK:           %[[LISTED:.+]] = arith.cmpi sge, %[[CHOSEN]], %{{.+}} : i32
// CHECK:           scf.if %[[LISTED]]
// Pass 2: the weights and the values, read through the table too.
// CHECK:         vector.transfer_read %[[VC]]
// CHECK:         math.log
// CHECK:         vector.transfer_write
// CHECK:         tensor.insert
// CHECK:       } else {
// CHECK:         vector.transfer_write %[[NANROW]]
// CHECK:         tensor.insert %[[NAN]]
// CHECK-NOT: moba.
func.func @decode_kv_head(%q: tensor<?x4x16xf32>, %cuq: tensor<?xi32>, %kc: tensor<?x16x2x16xf32>, %vc: tensor<?x16x2x16xf32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %sums: tensor<?x?x2x16xf32>, %o: tensor<?x4x16xf32>, %l: tensor<?x4xf32>) -> (tensor<?x4x16xf32>, tensor<?x4xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x4x16xf32>) cu_seqlens_q(%cuq : tensor<?xi32>) k_cache(%kc : tensor<?x16x2x16xf32>) v_cache(%vc : tensor<?x16x2x16xf32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) block_key_sums(%sums : tensor<?x?x2x16xf32>) outs(%o : tensor<?x4x16xf32>, %l : tensor<?x4xf32>) {block_size = 32, top_k = 3, selection = "kv_head"}
  return %out, %lse : tensor<?x4x16xf32>, tensor<?x4xf32>
}

// Per query head (the default) and top_k = 1: no gate, no sums read; only
// the own block.

// CHECK-LABEL: func @decode_own_block_only
// CHECK-SAME: %[[SUMS:[^:]+]]: tensor<?x?x2x16xf32>, %{{[^:]+}}: tensor<?x4x16xf32>
// CHECK-NOT: vector.transfer_read %[[SUMS]]
// CHECK-NOT: vector.extract
// CHECK: return
func.func @decode_own_block_only(%q: tensor<?x4x16xf32>, %cuq: tensor<?xi32>, %kc: tensor<?x16x2x16xf32>, %vc: tensor<?x16x2x16xf32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %sums: tensor<?x?x2x16xf32>, %o: tensor<?x4x16xf32>, %l: tensor<?x4xf32>) -> (tensor<?x4x16xf32>, tensor<?x4xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x4x16xf32>) cu_seqlens_q(%cuq : tensor<?xi32>) k_cache(%kc : tensor<?x16x2x16xf32>) v_cache(%vc : tensor<?x16x2x16xf32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) block_key_sums(%sums : tensor<?x?x2x16xf32>) outs(%o : tensor<?x4x16xf32>, %l : tensor<?x4xf32>) {block_size = 32, top_k = 1}
  return %out, %lse : tensor<?x4x16xf32>, tensor<?x4xf32>
}
