// RUN: moba-opt %s --moba-densify-attention --split-input-file | FileCheck %s

// Block-sparse attention becomes the selection grouped by key block, the
// per-slot partials, and their log-sum-exp merge. Block rows are bounded by
// tokens floordiv block_size + sequences = 4096 / 512 + 2 = 10.

// CHECK-LABEL: func.func @static_shapes
// CHECK-SAME: (%[[Q:[^:]+]]: tensor<4096x32x128xbf16>, %[[K:[^:]+]]: tensor<4096x8x128xbf16>, %[[V:[^:]+]]: tensor<4096x8x128xbf16>, %[[CU:[^:]+]]: tensor<3xi32>, %[[SEL:[^:]+]]: tensor<4096x32x3xi32>, %[[O:[^:]+]]: tensor<4096x32x128xbf16>, %[[L:[^:]+]]: tensor<4096x32xf32>)
// CHECK-DAG: %[[S0:.+]] = tensor.empty() : tensor<32x10xi32>
// CHECK-DAG: %[[E0:.+]] = tensor.empty() : tensor<32x12288xi32>
// CHECK: %[[S:.+]], %[[C:.+]], %[[E:.+]] = moba.group_queries selected(%[[SEL]] : tensor<4096x32x3xi32>) cu_seqlens(%[[CU]] : tensor<3xi32>) outs(%{{.+}} : tensor<32x10xi32>, %{{.+}} : tensor<32x10xi32>, %[[E0]] : tensor<32x12288xi32>) {block_size = 512 : i64}
// The partial rows take q's element type (bf16), the log-sum-exps f32.
// CHECK-DAG: %[[PO0:.+]] = tensor.empty() : tensor<3x4096x32x128xbf16>
// CHECK-DAG: %[[PL0:.+]] = tensor.empty() : tensor<3x4096x32xf32>
// CHECK: %[[P:.+]]:2 = moba.grouped_block_attention q(%[[Q]] : {{.+}}) k(%[[K]] : {{.+}}) v(%[[V]] : {{.+}}) cu_seqlens(%[[CU]] : {{.+}}) selected(%[[SEL]] : {{.+}}) groups(%[[S]] : tensor<32x10xi32>, %[[C]] : tensor<32x10xi32>, %[[E]] : tensor<32x12288xi32>) outs(%[[PO0]] : tensor<3x4096x32x128xbf16>, %[[PL0]] : tensor<3x4096x32xf32>) {block_size = 512 : i64, scale = 0.0883883461 : f32} -> tensor<3x4096x32x128xbf16>, tensor<3x4096x32xf32>
// CHECK: %[[OUT:.+]], %[[LSE:.+]] = moba.lse_merge partials(%[[P]]#0 : tensor<3x4096x32x128xbf16>) partial_lse(%[[P]]#1 : tensor<3x4096x32xf32>) outs(%[[O]] : tensor<4096x32x128xbf16>, %[[L]] : tensor<4096x32xf32>)
// CHECK: return %[[OUT]], %[[LSE]]
// CHECK-NOT: moba.sparse_attention
func.func @static_shapes(%q: tensor<4096x32x128xbf16>, %k: tensor<4096x8x128xbf16>,
                         %v: tensor<4096x8x128xbf16>, %cu: tensor<3xi32>,
                         %sel: tensor<4096x32x3xi32>, %o: tensor<4096x32x128xbf16>,
                         %l: tensor<4096x32xf32>)
    -> (tensor<4096x32x128xbf16>, tensor<4096x32xf32>) {
  %out, %lse = moba.sparse_attention q(%q : tensor<4096x32x128xbf16>)
      k(%k : tensor<4096x8x128xbf16>) v(%v : tensor<4096x8x128xbf16>)
      cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<4096x32x3xi32>)
      outs(%o : tensor<4096x32x128xbf16>, %l : tensor<4096x32xf32>)
      {block_size = 512, scale = 0.0883883461 : f32}
  return %out, %lse : tensor<4096x32x128xbf16>, tensor<4096x32xf32>
}

// -----

// Dynamic tokens and sequences: the bounds are computed.
// CHECK-LABEL: func.func @dynamic_shapes
// CHECK: %[[T:.+]] = tensor.dim %{{.+}}, %c0 : tensor<?x4x16xf32>
// CHECK: %[[B1:.+]] = tensor.dim %{{.+}}, %c0{{.*}} : tensor<?xi32>
// CHECK: %[[B:.+]] = arith.subi %[[B1]], %c1
// CHECK: %[[TB:.+]] = arith.divui %[[T]], %c16
// CHECK: %[[ROWS:.+]] = arith.addi %[[TB]], %[[B]]
// CHECK: %[[SLOTS:.+]] = arith.muli %[[T]], %c2
// CHECK: tensor.empty(%[[ROWS]]) : tensor<4x?xi32>
// CHECK: tensor.empty(%[[SLOTS]]) : tensor<4x?xi32>
// CHECK: moba.group_queries
// CHECK: tensor.empty(%[[T]]) : tensor<2x?x4x16xf32>
// CHECK: moba.grouped_block_attention {{.+}} {block_size = 16 : i64, causal = false, scale = 2.500000e-01 : f32}
// CHECK: moba.lse_merge
func.func @dynamic_shapes(%q: tensor<?x4x16xf32>, %kv: tensor<?x2x16xf32>, %cu: tensor<?xi32>,
                          %sel: tensor<?x4x2xi32>, %o: tensor<?x4x16xf32>, %l: tensor<?x4xf32>)
    -> (tensor<?x4x16xf32>, tensor<?x4xf32>) {
  %out, %lse = moba.sparse_attention q(%q : tensor<?x4x16xf32>) k(%kv : tensor<?x2x16xf32>)
      v(%kv : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) selected(%sel : tensor<?x4x2xi32>)
      outs(%o : tensor<?x4x16xf32>, %l : tensor<?x4xf32>)
      {block_size = 16, scale = 0.25 : f32, causal = false}
  return %out, %lse : tensor<?x4x16xf32>, tensor<?x4xf32>
}

// -----

// Dense attention has nothing to group: left alone.
// CHECK-LABEL: func.func @dense
// CHECK: moba.sparse_attention
// CHECK-NOT: moba.group_queries
func.func @dense(%q: tensor<64x4x16xf32>, %kv: tensor<64x2x16xf32>, %cu: tensor<2xi32>,
                 %o: tensor<64x4x16xf32>, %l: tensor<64x4xf32>)
    -> (tensor<64x4x16xf32>, tensor<64x4xf32>) {
  %out, %lse = moba.sparse_attention q(%q : tensor<64x4x16xf32>) k(%kv : tensor<64x2x16xf32>)
      v(%kv : tensor<64x2x16xf32>) cu_seqlens(%cu : tensor<2xi32>)
      outs(%o : tensor<64x4x16xf32>, %l : tensor<64x4xf32>)
      {block_size = 16, scale = 0.25 : f32}
  return %out, %lse : tensor<64x4x16xf32>, tensor<64x4xf32>
}
