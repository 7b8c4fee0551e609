// REQUIRES: ptxas
// The GPU pipeline compiles the shipped entry function into host code plus
// a GPU binary for each chip; with format=bin, ptxas assembles the PTX, so
// these runs fail if the emitted PTX does not assemble for sm_80 or sm_90a.
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=bin" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=isa" | FileCheck %s --check-prefix=PTX80
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa" | FileCheck %s --check-prefix=PTX90
// RUN: not moba-opt %s --moba-gpu-pipeline="format=elf" 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: not moba-opt %s --moba-gpu-pipeline="tile-k=4294967301" 2>&1 | FileCheck %s --check-prefix=BAD-TILE-K
// The host side translates to LLVM IR, calling exactly the runtime entry
// points the project's CUDA runtime has to provide (the MLIR CUDA runtime
// wrappers' ABI): streams, device allocation, module loading, launches.
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa" | mlir-translate --mlir-to-llvmir | FileCheck %s --check-prefix=HOST

// Host code first, then three kernels: block pooling, the fused gate +
// top-k, the tiled attention.
// BIN: llvm.func @moba_attention(
// BIN-NOT: scf.forall
// BIN: gpu.binary @moba_attention_kernel {{.*}}chip = "{{sm_80|sm_90a}}"
// BIN-NEXT: gpu.binary @moba_attention_kernel_0
// BIN-NEXT: gpu.binary @moba_attention_kernel_1
// BIN-NOT: gpu.binary

// PTX80: gpu.binary @moba_attention_kernel
// PTX80: .target sm_80
// The bf16 output is rounded on the GPU, the softmax uses the SFU's exp2.
// PTX80-DAG: cvt.rn.bf16x2.f32
// PTX80-DAG: ex2.approx

// PTX90: gpu.binary @moba_attention_kernel
// PTX90: .target sm_90a

// BAD: error: moba-gpu-pipeline: format must be isa, bin or fatbin, got 'elf'
// BAD-TILE-K: error: moba-gpu-pipeline: tile-k must be in [1, 1024] (keys scored as one vector), got 4294967301

// HOST-DAG: declare ptr @mgpuStreamCreate()
// HOST-DAG: declare void @mgpuStreamSynchronize(ptr)
// HOST-DAG: declare void @mgpuStreamDestroy(ptr)
// HOST-DAG: declare ptr @mgpuMemAlloc(i64, ptr, i8)
// HOST-DAG: declare void @mgpuMemFree(ptr, ptr)
// HOST-DAG: declare ptr @mgpuModuleLoadJIT(ptr, i32)
// HOST-DAG: declare void @mgpuModuleUnload(ptr)
// HOST-DAG: declare ptr @mgpuModuleGetFunction(ptr, ptr)
// HOST-DAG: declare void @mgpuLaunchKernel(ptr, i64, i64, i64, i64, i64, i64, i32, ptr, ptr, ptr, i64)
// HOST-DAG: define void @_mlir_ciface_moba_attention(

func.func @moba_attention(%q: memref<?x8x64xbf16>, %k: memref<?x2x64xbf16>, %v: memref<?x2x64xbf16>,
                          %cu: memref<?xi32>, %out: memref<?x8x64xbf16>,
                          %lse: memref<?x8xf32>) attributes {llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<?x8x64xbf16> to tensor<?x8x64xbf16>
  %kt = bufferization.to_tensor %k restrict : memref<?x2x64xbf16> to tensor<?x2x64xbf16>
  %vt = bufferization.to_tensor %v restrict : memref<?x2x64xbf16> to tensor<?x2x64xbf16>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %o, %l = moba.attention q(%qt : tensor<?x8x64xbf16>) k(%kt : tensor<?x2x64xbf16>)
      v(%vt : tensor<?x2x64xbf16>) cu_seqlens(%cut : tensor<?xi32>) {block_size = 64, top_k = 3}
      -> tensor<?x8x64xbf16>, tensor<?x8xf32>
  bufferization.materialize_in_destination %o in restrict writable %out
      : (tensor<?x8x64xbf16>, memref<?x8x64xbf16>) -> ()
  bufferization.materialize_in_destination %l in restrict writable %lse
      : (tensor<?x8xf32>, memref<?x8xf32>) -> ()
  return
}
