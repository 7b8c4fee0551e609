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

// NaN propagates as docs/semantics.md ("Gradients") says: the inputs of
// attention-grad-tiny.mlir with q[1, head 0] NaN, hence its lse NaN. Its dq
// row and the dk and dv rows of both keys it attends are NaN; head 1 of the
// same token (dq = [0.75, 0.5]) and token 0 (dq = 0) are untouched.

// CHECK: ( 0, 0, 0, 0, nan, nan, 0.75, 0.5 )
// CHECK-NEXT: ( nan, nan, nan, nan )
// CHECK-NEXT: ( nan, nan, nan, nan )

func.func @main() {
  %q = arith.constant dense<[[[3.0, 0.0], [3.0, 0.0]],
                             [[0x7FC00000, 1.0], [2.0, 1.0]]]> : tensor<2x2x2xf32>
  %k = arith.constant dense<[[[1.0, 0.0]], [[0.0, 2.0]]]> : tensor<2x1x2xf32>
  %v = arith.constant dense<[[[1.0, 0.0]], [[0.0, 1.0]]]> : tensor<2x1x2xf32>
  %cu = arith.constant dense<[0, 2]> : tensor<2xi32>
  %o = arith.constant dense<[[[1.0, 0.0], [1.0, 0.0]],
                             [[0.5, 0.5], [0.5, 0.5]]]> : tensor<2x2x2xf32>
  %lse = arith.constant dense<[[3.0, 3.0], [0x7FC00000, 2.69314718]]>
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
