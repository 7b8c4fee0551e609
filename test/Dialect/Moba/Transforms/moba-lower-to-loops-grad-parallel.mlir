// RUN: moba-opt %s --moba-lower-to-loops="parallel=true" --canonicalize --cse | FileCheck %s
// RUN: moba-opt %s --moba-lower-to-loops="parallel=true" --canonicalize --cse --eliminate-empty-tensors --one-shot-bufferize="bufferize-function-boundaries" --canonicalize --cse --canonicalize | FileCheck %s --check-prefix=BUF

// The parallel form of the backward's loops. The row term and the slot sum
// are one scf.forall over (token, head), each iteration writing its own
// element or row with a parallel_insert_slice: the form that
// moba-map-forall-to-gpu maps onto GPU threads.

// CHECK-LABEL: func @row_term
// CHECK-SAME: (%[[DO:[^:]+]]: tensor<?x4x16xbf16>, %{{[^:]+}}: tensor<?x4x16xbf16>, %[[DLSE:[^:]+]]: tensor<?x4xf32>, %[[INIT:[^:]+]]: tensor<?x4xf32>)
// CHECK: %[[T:.+]] = tensor.dim %[[DO]], %{{.+}} : tensor<?x4x16xbf16>
// CHECK: scf.forall (%[[TOK:.+]], %[[H:.+]]) in (%[[T]], 4) shared_outs(%[[OUT:.+]] = %[[INIT]]) -> (tensor<?x4xf32>)
// CHECK-NOT: scf.for
// CHECK:   tensor.extract %[[DLSE]][%[[TOK]], %[[H]]]
// CHECK:   %[[SLICE:.+]] = tensor.insert %{{.+}} into %{{.+}}[%{{.+}}, %{{.+}}] : tensor<1x1xf32>
// CHECK:   scf.forall.in_parallel {
// CHECK:     tensor.parallel_insert_slice %[[SLICE]] into %[[OUT]][%[[TOK]], %[[H]]] [1, 1] [1, 1]
func.func @row_term(%do: tensor<?x4x16xbf16>, %o: tensor<?x4x16xbf16>,
                    %dlse: tensor<?x4xf32>, %init: tensor<?x4xf32>) -> tensor<?x4xf32> {
  %d = moba.attention_row_term grad_out(%do : tensor<?x4x16xbf16>) out(%o : tensor<?x4x16xbf16>)
      grad_lse(%dlse : tensor<?x4xf32>) outs(%init : tensor<?x4xf32>)
  return %d : tensor<?x4xf32>
}

// The slots of one row summed in order in f32, rounded once as the row is
// written.
// CHECK-LABEL: func @sum_slots
// CHECK-SAME: (%[[P:[^:]+]]: tensor<3x?x4x16xf32>, %[[INIT:[^:]+]]: tensor<?x4x16xbf16>)
// CHECK: %[[T:.+]] = tensor.dim %[[INIT]], %{{.+}} : tensor<?x4x16xbf16>
// CHECK: scf.forall (%[[TOK:.+]], %[[H:.+]]) in (%[[T]], 4) shared_outs(%[[OUT:.+]] = %[[INIT]]) -> (tensor<?x4x16xbf16>)
// CHECK:   scf.for %[[S:.+]] = %{{.+}} to %{{.+}} step %{{.+}} iter_args
// CHECK:     vector.transfer_read %[[P]][%[[S]], %[[TOK]], %[[H]], %{{.+}}]
// CHECK:     arith.addf %{{.+}} : vector<16xf32>
// CHECK:   arith.truncf %{{.+}} : vector<16xf32> to vector<16xbf16>
// CHECK:   %[[ROW:.+]] = vector.transfer_write %{{.+}} : vector<16xbf16>, tensor<1x1x16xbf16>
// CHECK:   scf.forall.in_parallel {
// CHECK:     tensor.parallel_insert_slice %[[ROW]] into %[[OUT]][%[[TOK]], %[[H]], 0] [1, 1, 16] [1, 1, 1]
func.func @sum_slots(%p: tensor<3x?x4x16xf32>, %init: tensor<?x4x16xbf16>) -> tensor<?x4x16xbf16> {
  %dq = moba.sum_slots partials(%p : tensor<3x?x4x16xf32>) outs(%init : tensor<?x4x16xbf16>)
  return %dq : tensor<?x4x16xbf16>
}

// The grouped backward: one iteration per (key/value head, block row), over
// zeroed dq partials, dk and dv. Each iteration finds its block, sums its
// dk and dv rows in a scratch of its own, inserts the block's rows of head
// g as slices (empty past the batch's last block) and the partials whole:
// it wrote only its entries' rows of them.
// CHECK-LABEL: func @grouped_grad
// CHECK-SAME: %[[COUNTS:[^:]+]]: tensor<4x5xi32>
// CHECK: %[[DQP:.+]] = linalg.fill {{.+}} -> tensor<2x64x4x16xf32>
// CHECK: %[[DK:.+]] = linalg.fill {{.+}} -> tensor<64x2x16xbf16>
// CHECK: %[[DV:.+]] = linalg.fill {{.+}} -> tensor<64x2x16xf32>
// CHECK: %[[R:.+]]:3 = scf.forall (%[[G:.+]], %[[ROW:.+]]) in (2, 5) shared_outs(%[[P:.+]] = %[[DQP]], %[[K:.+]] = %[[DK]], %[[V:.+]] = %[[DV]])
// CHECK:   %[[SEQ:.+]]:5 = scf.for
// CHECK:   %[[FIRST:.+]] = arith.select %[[SEQ]]#3, %{{.+}}, %{{.+}} : index
// CHECK:   %[[LAST:.+]] = arith.select %[[SEQ]]#3, %{{.+}}, %{{.+}} : index
// CHECK:   %[[SUMS:.+]] = tensor.empty() : tensor<16x2x16xf32>
// CHECK:   %[[EMPTY:.+]] = tensor.cast %[[SUMS]]
// CHECK:   %[[DONE:.+]]:2 = scf.if %[[SEQ]]#3 -> (tensor<2x64x4x16xf32>, tensor<?x2x16xf32>)
// CHECK:     linalg.fill {{.+}} outs(%[[SUMS]] : tensor<16x2x16xf32>)
// CHECK:     math.exp
// CHECK:     vector.transfer_write %{{.+}} : vector<16xf32>, tensor<2x64x4x16xf32>
// CHECK:   } else {
// CHECK:     scf.yield %[[P]], %[[EMPTY]]
// CHECK:   %[[N:.+]] = arith.subi %[[LAST]], %[[FIRST]] : index
// CHECK:   %[[KROWS:.+]] = tensor.extract_slice %[[K]][%[[FIRST]], %[[G]], 0] [%[[N]], 1, 16] [1, 1, 1]
// CHECK:   %[[VROWS:.+]] = tensor.extract_slice %[[V]][%[[FIRST]], %[[G]], 0] [%[[N]], 1, 16] [1, 1, 1]
// CHECK:   %[[W:.+]]:2 = scf.for %{{.+}} = %[[FIRST]] to %[[LAST]] step %{{.+}} iter_args(%{{.+}} = %[[KROWS]], %{{.+}} = %[[VROWS]])
// CHECK:     arith.truncf %{{.+}} : vector<16xf32> to vector<16xbf16>
// CHECK:   scf.forall.in_parallel {
// CHECK:     tensor.parallel_insert_slice %[[DONE]]#0 into %[[P]][0, 0, 0, 0] [2, 64, 4, 16] [1, 1, 1, 1]
// CHECK:     tensor.parallel_insert_slice %[[W]]#0 into %[[K]][%[[FIRST]], %[[G]], 0] [%[[N]], 1, 16] [1, 1, 1]
// CHECK:     tensor.parallel_insert_slice %[[W]]#1 into %[[V]][%[[FIRST]], %[[G]], 0] [%[[N]], 1, 16] [1, 1, 1]
// CHECK: return %[[R]]#0, %[[R]]#1, %[[R]]#2

// Bufferized in place: the iterations store into the callers' buffers (no
// copy of the partials, dk or dv), each with a scratch of its own.
// BUF-LABEL: func @grouped_grad
// BUF-SAME: %[[DQP:[^:]+]]: memref<2x64x4x16xf32{{.*}}>, %[[DK:[^:]+]]: memref<64x2x16xbf16{{.*}}>, %[[DV:[^:]+]]: memref<64x2x16xf32{{.*}}>)
// BUF-NOT: memref.copy
// BUF: scf.forall (%{{.+}}, %{{.+}}) in (2, 5) {
// BUF:   %[[SUMS:.+]] = memref.alloc() {{.*}}: memref<16x2x16xf32>
// BUF:   scf.if
// BUF:     vector.transfer_write %{{.+}}, %[[DQP]]
// BUF:   memref.subview %[[DK]]
// BUF:   memref.subview %[[DV]]
// BUF-NOT: memref.copy
// BUF: return
func.func @grouped_grad(
    %q: tensor<64x4x16xbf16>, %k: tensor<64x2x16xbf16>, %v: tensor<64x2x16xbf16>,
    %cu: tensor<3xi32>, %sel: tensor<64x4x2xi32>, %starts: tensor<4x5xi32>,
    %counts: tensor<4x5xi32>, %entries: tensor<4x128xi32>,
    %do: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>, %delta: tensor<64x4xf32>,
    %dqp0: tensor<2x64x4x16xf32>, %dk0: tensor<64x2x16xbf16>, %dv0: tensor<64x2x16xf32>)
    -> (tensor<2x64x4x16xf32>, tensor<64x2x16xbf16>, tensor<64x2x16xf32>) {
  %dqp, %dk, %dv = moba.grouped_block_attention_grad
      q(%q : tensor<64x4x16xbf16>) k(%k : tensor<64x2x16xbf16>) v(%v : tensor<64x2x16xbf16>)
      cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%starts : tensor<4x5xi32>, %counts : tensor<4x5xi32>, %entries : tensor<4x128xi32>)
      grad_out(%do : tensor<64x4x16xbf16>) lse(%lse : tensor<64x4xf32>) row_term(%delta : tensor<64x4xf32>)
      outs(%dqp0 : tensor<2x64x4x16xf32>, %dk0 : tensor<64x2x16xbf16>, %dv0 : tensor<64x2x16xf32>)
      {block_size = 16, scale = 0.25 : f32}
  return %dqp, %dk, %dv : tensor<2x64x4x16xf32>, tensor<64x2x16xbf16>, tensor<64x2x16xf32>
}
