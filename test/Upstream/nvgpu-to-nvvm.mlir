// RUN: moba-opt %s --convert-nvgpu-to-nvvm | FileCheck %s

// Hopper's mbarrier, which the TMA pipelines of the performance work need,
// lowers through the registered nvgpu conversion.

// CHECK-LABEL: func @barrier
// CHECK: nvvm.mbarrier.init
func.func @barrier() {
  %c1 = arith.constant 1 : index
  %c0 = arith.constant 0 : index
  %b = nvgpu.mbarrier.create -> !nvgpu.mbarrier.group<memorySpace = #gpu.address_space<workgroup>>
  nvgpu.mbarrier.init %b[%c0], %c1 : !nvgpu.mbarrier.group<memorySpace = #gpu.address_space<workgroup>>
  return
}
