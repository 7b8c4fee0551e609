// The attention kernel's occupancy reaches ptxas: at head_dim 128 the wgmma
// form sizes its shared memory for three CTAs per SM (V single-buffered,
// P in registers: 66592 bytes) and states it; moba-gpu-kernel-outlining carries the
// statement across outlining, and the PTX holds it as .minnctapersm, which
// caps the kernel at 168 registers (unconstrained, ptxas takes 173 and two
// CTAs fit). The mma.sync form states none.
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=wgmma" | FileCheck %s
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true mma-instruction=mma.sync" | FileCheck %s --check-prefix=MMASYNC

// CHECK: llvm.mlir.constant(66592 : i32)
// CHECK: gpu.binary @moba_attention_kernel_{{[0-9]+}} {{.+}}.maxntid 128, 1, 1\0A.minnctapersm 3\0A
// CHECK-SAME: wgmma.mma_async
// The softmax's exponentials are one SFU instruction each (flush to zero).
// CHECK-SAME: ex2.approx.ftz.f32
// CHECK-NOT: minnctapersm
// MMASYNC-NOT: minnctapersm
func.func @moba_attention(%q: memref<?x32x128xbf16>, %k: memref<?x8x128xbf16>, %v: memref<?x8x128xbf16>,
                          %cu: memref<?xi32>, %out: memref<?x32x128xbf16>,
                          %lse: memref<?x32xf32>) attributes {llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<?x32x128xbf16> to tensor<?x32x128xbf16>
  %kt = bufferization.to_tensor %k restrict : memref<?x8x128xbf16> to tensor<?x8x128xbf16>
  %vt = bufferization.to_tensor %v restrict : memref<?x8x128xbf16> to tensor<?x8x128xbf16>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %o, %l = moba.attention q(%qt : tensor<?x32x128xbf16>) k(%kt : tensor<?x8x128xbf16>)
      v(%vt : tensor<?x8x128xbf16>) cu_seqlens(%cut : tensor<?xi32>) {block_size = 512, top_k = 3}
      -> tensor<?x32x128xbf16>, tensor<?x32xf32>
  bufferization.materialize_in_destination %o in restrict writable %out
      : (tensor<?x32x128xbf16>, memref<?x32x128xbf16>) -> ()
  bufferization.materialize_in_destination %l in restrict writable %lse
      : (tensor<?x32xf32>, memref<?x32xf32>) -> ()
  return
}
