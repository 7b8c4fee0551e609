// RUN: moba-opt %s --moba-to-loops | FileCheck %s --check-prefix=FUSED
// RUN: moba-opt %s --moba-to-loops="stage=decomposed" | FileCheck %s --check-prefix=DECOMPOSED
// RUN: moba-opt %s --moba-to-loops="stage=tiled tile-q=16 tile-k=8" | FileCheck %s --check-prefix=TILED
// RUN: moba-opt %s --moba-cpu-pipeline | FileCheck %s --check-prefix=LLVM
// RUN: not moba-opt %s --moba-cpu-pipeline="stage=vectorized" 2>&1 | FileCheck %s --check-prefix=BAD-STAGE

// The three stages of the CPU pipeline on the entry function the runner
// compiles. No moba op survives any of them.

// The fused stage never builds the [tokens, heads, blocks] score tensor: the
// only f32 scratch tensor is the block means.
// FUSED-LABEL: func @moba_attention
// FUSED-NOT: moba.
// FUSED-NOT: tensor<?x8x?xf32>
// FUSED: tensor.empty(%{{.+}}) : tensor<?x2x64xf32>
// FUSED-NOT: tensor<?x8x?xf32>
// FUSED: vector.reduction <maximumf>
// FUSED: return

// Decomposed: the gate scores are materialized and the softmax has two passes
// (no key tiles).
// DECOMPOSED-LABEL: func @moba_attention
// DECOMPOSED-NOT: moba.
// DECOMPOSED: tensor.empty(%{{.+}}, %{{.+}}) : tensor<?x8x?xf32>
// DECOMPOSED: linalg.fill
// DECOMPOSED-NOT: vector.reduction <maximumf>
// DECOMPOSED: return

// Tiled: key tiles of 8 scores (vector<8xf32>), gate scores still stored.
// TILED-LABEL: func @moba_attention
// TILED-NOT: moba.
// TILED: tensor<?x8x?xf32>
// TILED: vector.reduction <maximumf>, %{{.+}} : vector<8xf32> into f32

// Down to the LLVM dialect, with the C interface the runner calls.
// LLVM: llvm.func @moba_attention
// LLVM: llvm.func @_mlir_ciface_moba_attention
// LLVM-NOT: moba.
// LLVM-NOT: scf.
// LLVM-NOT: memref.

// BAD-STAGE: for the --stage option: Cannot find option named 'vectorized'!

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
