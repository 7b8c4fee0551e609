// Outlining keeps each launch's nvvm.* attributes on the kernel it becomes.
// RUN: moba-opt %s --moba-gpu-kernel-outlining | FileCheck %s

// Three launches in two functions and a launch_func already there: the
// attributes go to the right kernel by position, other dialects'
// attributes stay behind, and the existing launch_func is left alone.
// CHECK: gpu.module @existing
// CHECK-NOT: nvvm.minctasm
// CHECK-LABEL: func.func @two
// CHECK: gpu.launch_func @existing::@k
// CHECK: gpu.launch_func @two_kernel::@two_kernel
// CHECK: gpu.launch_func @two_kernel_0::@two_kernel
// CHECK: gpu.module @two_kernel {
// CHECK: gpu.func @two_kernel({{.*}}) kernel attributes {{{.*}}nvvm.minctasm = 3 : i32}
// CHECK-NOT: nvvm.maxnreg
// CHECK: gpu.module @two_kernel_0 {
// CHECK: gpu.func @two_kernel() kernel attributes {{{.*}}nvvm.maxnreg = 96 : i32}
// CHECK-NOT: moba.other
// CHECK-LABEL: func.func @one
// CHECK: gpu.launch_func @named::@named
// CHECK: gpu.module @named {
// CHECK: gpu.func @named() kernel attributes {{{.*}}nvvm.minctasm = 2 : i32}
// CHECK-NOT: gpu.launch {
module attributes {gpu.container_module} {
  gpu.module @existing {
    gpu.func @k() kernel {
      gpu.return
    }
  }
  func.func @two(%buffer: memref<4xf32>) {
    %c1 = arith.constant 1 : index
    gpu.launch_func @existing::@k blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1)
    gpu.launch blocks(%bx, %by, %bz) in (%gx = %c1, %gy = %c1, %gz = %c1)
               threads(%tx, %ty, %tz) in (%sx = %c1, %sy = %c1, %sz = %c1) {
      %f = arith.constant 1.0 : f32
      memref.store %f, %buffer[%tx] : memref<4xf32>
      gpu.terminator
    } {nvvm.minctasm = 3 : i32, moba.other = 2 : i32}
    gpu.launch blocks(%bx, %by, %bz) in (%gx = %c1, %gy = %c1, %gz = %c1)
               threads(%tx, %ty, %tz) in (%sx = %c1, %sy = %c1, %sz = %c1) {
      gpu.terminator
    } {nvvm.maxnreg = 96 : i32, moba.other = 1 : i32}
    return
  }
  func.func @one() {
    %c1 = arith.constant 1 : index
    gpu.launch blocks(%bx, %by, %bz) in (%gx = %c1, %gy = %c1, %gz = %c1)
               threads(%tx, %ty, %tz) in (%sx = %c1, %sy = %c1, %sz = %c1)
               module(@named) function(@named) {
      gpu.terminator
    } {nvvm.minctasm = 2 : i32}
    return
  }
  // A host function's name PTX cannot hold: the kernel is renamed to a PTX
  // identifier (NVPTX would abort on "moba attention.kernel"), its launch
  // follows.
  // CHECK-LABEL: func.func @"moba attention"
  // CHECK: gpu.launch_func @"moba attention_kernel"::@_moba_attention_kernel
  // CHECK: gpu.module @"moba attention_kernel"
  // CHECK: gpu.func @_moba_attention_kernel() kernel
  func.func @"moba attention"() {
    %c1 = arith.constant 1 : index
    gpu.launch blocks(%bx, %by, %bz) in (%gx = %c1, %gy = %c1, %gz = %c1)
               threads(%tx, %ty, %tz) in (%sx = %c1, %sy = %c1, %sz = %c1) {
      gpu.terminator
    }
    return
  }
}
