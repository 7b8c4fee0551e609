// RUN: moba-opt %s --convert-gpu-to-nvvm | FileCheck %s

// moba-opt carries the upstream GPU stack that the GPU pipelines will be
// built from: gpu, nvgpu and nvvm dialects and their conversions.

// CHECK-LABEL: gpu.module @kernels
// CHECK: llvm.func @tid
// CHECK: nvvm.read.ptx.sreg.tid.x
gpu.module @kernels {
  gpu.func @tid() -> index {
    %t = gpu.thread_id x
    gpu.return %t : index
  }
}
