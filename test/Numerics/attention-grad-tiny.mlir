// RUN: moba-opt %s --moba-cpu-pipeline="stage=fused" \
// RUN:   | mlir-runner -e main -entry-point-result=void \
// RUN:       -shared-libs=%mlir_lib_dir/libmlir_c_runner_utils.so \
// RUN:   | FileCheck %s
// RUN: moba-opt %s --moba-cpu-pipeline="stage=decomposed" \
// RUN:   | mlir-runner -e main -entry-point-result=void \
// RUN:       -shared-libs=%mlir_lib_dir/libmlir_c_runner_utils.so \
// RUN:   | FileCheck %s
// RUN: moba-opt %s --moba-cpu-pipeline="stage=tiled" \
// RUN:   | mlir-runner -e main -entry-point-result=void \
// RUN:       -shared-libs=%mlir_lib_dir/libmlir_c_runner_utils.so \
// RUN:   | FileCheck %s
// RUN: moba-opt %s --moba-cpu-pipeline="parallel=true" \
// RUN:   | mlir-runner -e main -entry-point-result=void \
// RUN:       -shared-libs=%mlir_lib_dir/libmlir_c_runner_utils.so \
// RUN:   | FileCheck %s

// moba.attention_grad compiled by the CPU pipeline and run on inputs small
// enough to differentiate by hand. One sequence of two tokens, blocks of one
// token, top_k = 2, causal, scale 1: token 0 attends key 0, token 1 keys 0
// and 1. Two query heads share the one key/value head (GQA) and hold the
// same data, so dk and dv are twice one head's.
//
//   k0 = [1, 0], k1 = [0, 2], v0 = [1, 0], v1 = [0, 1]
//   q0 = [3, 0]: P(0, 0) = 1, lse = 3, out = v0
//   q1 = [2, 1]: scores 2 and 2, P = 1/2 each, lse = 2 + ln 2,
//                out = [1/2, 1/2]
//   dO0 = dO1 = [1, 0], dlse = [0, 1]
//   delta0 = dO0 . out0 - 0 = 1,   delta1 = 1/2 - 1 = -1/2
//   dS(0, 0) = 1 * (1 - 1) = 0
//   dS(1, 0) = 1/2 * (dO1 . v0 - delta1) = 1/2 * (1 + 1/2) = 3/4
//   dS(1, 1) = 1/2 * (dO1 . v1 - delta1) = 1/2 * (0 + 1/2) = 1/4
//   dq0 = 0,  dq1 = 3/4 k0 + 1/4 k1 = [3/4, 1/2]
//   dk0 = 2 * 3/4 q1 = [3, 3/2],   dk1 = 2 * 1/4 q1 = [1, 1/2]
//   dv0 = 2 * (1 + 1/2) dO = [3, 0],   dv1 = 2 * 1/2 dO = [1, 0]

// CHECK: ( 0, 0, 0, 0, 0.75, 0.5, 0.75, 0.5 )
// CHECK-NEXT: ( 3, 1.5, 1, 0.5 )
// CHECK-NEXT: ( 3, 0, 1, 0 )

func.func @main() {
  %q = arith.constant dense<[[[3.0, 0.0], [3.0, 0.0]],
                             [[2.0, 1.0], [2.0, 1.0]]]> : tensor<2x2x2xf32>
  %k = arith.constant dense<[[[1.0, 0.0]], [[0.0, 2.0]]]> : tensor<2x1x2xf32>
  %v = arith.constant dense<[[[1.0, 0.0]], [[0.0, 1.0]]]> : tensor<2x1x2xf32>
  %cu = arith.constant dense<[0, 2]> : tensor<2xi32>
  %o = arith.constant dense<[[[1.0, 0.0], [1.0, 0.0]],
                             [[0.5, 0.5], [0.5, 0.5]]]> : tensor<2x2x2xf32>
  %lse = arith.constant dense<[[3.0, 3.0], [2.69314718, 2.69314718]]>
      : tensor<2x2xf32>
  %do = arith.constant dense<[[[1.0, 0.0], [1.0, 0.0]],
                              [[1.0, 0.0], [1.0, 0.0]]]> : tensor<2x2x2xf32>
  %dlse = arith.constant dense<[[0.0, 0.0], [1.0, 1.0]]> : tensor<2x2xf32>
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<2x2x2xf32>)
      k(%k : tensor<2x1x2xf32>) v(%v : tensor<2x1x2xf32>)
      cu_seqlens(%cu : tensor<2xi32>)
      out(%o : tensor<2x2x2xf32>) lse(%lse : tensor<2x2xf32>)
      grad_out(%do : tensor<2x2x2xf32>) grad_lse(%dlse : tensor<2x2xf32>)
      {block_size = 1, top_k = 2, scale = 1.0 : f32}
      -> tensor<2x2x2xf32>, tensor<2x1x2xf32>, tensor<2x1x2xf32>
  // Printed flat, one row of values per result.
  %fdq = tensor.collapse_shape %dq [[0, 1, 2]]
      : tensor<2x2x2xf32> into tensor<8xf32>
  %fdk = tensor.collapse_shape %dk [[0, 1, 2]]
      : tensor<2x1x2xf32> into tensor<4xf32>
  %fdv = tensor.collapse_shape %dv [[0, 1, 2]]
      : tensor<2x1x2xf32> into tensor<4xf32>
  %c0 = arith.constant 0 : index
  %pad = arith.constant 0.0 : f32
  %vdq = vector.transfer_read %fdq[%c0], %pad : tensor<8xf32>, vector<8xf32>
  %vdk = vector.transfer_read %fdk[%c0], %pad : tensor<4xf32>, vector<4xf32>
  %vdv = vector.transfer_read %fdv[%c0], %pad : tensor<4xf32>, vector<4xf32>
  vector.print %vdq : vector<8xf32>
  vector.print %vdk : vector<4xf32>
  vector.print %vdv : vector<4xf32>
  return
}
