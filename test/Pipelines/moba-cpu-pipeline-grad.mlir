// RUN: moba-opt %s --moba-to-loops | FileCheck %s --check-prefixes=LOOPS,FUSED
// RUN: moba-opt %s --moba-to-loops="stage=decomposed" | FileCheck %s --check-prefixes=LOOPS,DECOMPOSED
// RUN: moba-opt %s --moba-to-loops="stage=tiled tile-q=16 tile-k=8" | FileCheck %s --check-prefixes=LOOPS,DECOMPOSED
// RUN: moba-opt %s --moba-to-loops="densify=true" | FileCheck %s --check-prefixes=LOOPS,FUSED
// RUN: moba-opt %s --moba-cpu-pipeline | FileCheck %s --check-prefix=LLVM
// RUN: moba-opt %s --moba-cpu-pipeline="stage=decomposed" | FileCheck %s --check-prefix=LLVM
// RUN: moba-opt %s --moba-cpu-pipeline="stage=tiled" | FileCheck %s --check-prefix=LLVM
// RUN: moba-opt %s --moba-cpu-pipeline="parallel=true" | FileCheck %s --check-prefixes=LLVM,INPLACE
// RUN: not moba-opt %s --moba-gpu-pipeline="format=isa" 2>&1 | FileCheck %s --check-prefix=GPU

// The backward on the entry function a runner compiles (dynamic token
// counts, GQA, bf16), through every stage of the CPU pipeline. Its gate goes
// through the passes the forward's goes through: fused into moba.gate_topk
// (no score tensor) in the fused stage, a stored score tensor otherwise.
// None of the later stages (tiling, densifying) touches the selection or
// the backward ops, so each stage's selection is the forward's.
// LOOPS-LABEL: func @moba_attention_grad
// LOOPS-NOT: moba.
// FUSED-NOT: tensor<?x8x?xf32>
// DECOMPOSED: tensor.empty(%{{.+}}, %{{.+}}) : tensor<?x8x?xf32>
// The row term: a dot product of grad_out and out per token and head.
// LOOPS: vector.transfer_read %{{.+}} : tensor<?x8x64xbf16>, vector<64xbf16>
// LOOPS: vector.transfer_read %{{.+}} : tensor<?x8x64xbf16>, vector<64xbf16>
// LOOPS: tensor.insert %{{.+}} : tensor<?x8xf32>
// The grouped backward: zeroed dq partials, dk and dv, then key/value head,
// block row, the group's entries, the block's keys.
// LOOPS: linalg.fill {{.+}} outs(%{{.+}} : tensor<3x?x8x64xf32>)
// LOOPS: linalg.fill {{.+}} outs(%{{.+}} : tensor<?x2x64xbf16>)
// The f32 sums of one block's dk and dv rows, zeroed per block.
// LOOPS: tensor.empty(%{{.+}}) : tensor<?x2x64xf32>
// LOOPS: scf.for
// LOOPS: scf.for
// LOOPS: scf.if
// LOOPS: linalg.fill {{.+}} outs(%{{.+}} : tensor<?x2x64xf32>)
// LOOPS: math.exp
// LOOPS-COUNT-3: vector.fma
// LOOPS: vector.transfer_write %{{.+}} : vector<64xf32>, tensor<3x?x8x64xf32>
// dk and dv rounded once to bf16 as they are written.
// LOOPS: arith.truncf %{{.+}} : vector<64xf32> to vector<64xbf16>
// LOOPS: arith.truncf %{{.+}} : vector<64xf32> to vector<64xbf16>
// dq: the slots' partials summed, rounded once.
// LOOPS: vector.transfer_read %{{.+}} : tensor<3x?x8x64xf32>, vector<64xf32>
// LOOPS: arith.addf %{{.+}} : vector<64xf32>
// LOOPS: arith.truncf %{{.+}} : vector<64xf32> to vector<64xbf16>
// LOOPS-NOT: moba.
// LOOPS: return

// Down to the LLVM dialect, with the C interface a runner calls.
// The parallel form's iterations write the dq partials in place: no copy of
// the buffer onto itself is left (memrefCopy, which the runners do not link).
// INPLACE-NOT: memrefCopy
// LLVM: llvm.func @moba_attention_grad
// INPLACE-NOT: memrefCopy
// LLVM: llvm.func @_mlir_ciface_moba_attention_grad
// LLVM-NOT: moba.
// LLVM-NOT: scf.
// LLVM-NOT: memref.

// GPU: error: 'moba.attention_grad' op has no GPU lowering here: the GPU backward runs only on the tensor-core path: moba-gpu-pipeline needs mma=true and densify=true for it

func.func @moba_attention_grad(
    %q: memref<?x8x64xbf16>, %k: memref<?x2x64xbf16>, %v: memref<?x2x64xbf16>,
    %cu: memref<?xi32>, %o: memref<?x8x64xbf16>, %lse: memref<?x8xf32>,
    %do: memref<?x8x64xbf16>, %dq: memref<?x8x64xbf16>,
    %dk: memref<?x2x64xbf16>, %dv: memref<?x2x64xbf16>)
    attributes {llvm.emit_c_interface} {
  %qt = bufferization.to_tensor %q restrict : memref<?x8x64xbf16> to tensor<?x8x64xbf16>
  %kt = bufferization.to_tensor %k restrict : memref<?x2x64xbf16> to tensor<?x2x64xbf16>
  %vt = bufferization.to_tensor %v restrict : memref<?x2x64xbf16> to tensor<?x2x64xbf16>
  %cut = bufferization.to_tensor %cu restrict : memref<?xi32> to tensor<?xi32>
  %ot = bufferization.to_tensor %o restrict : memref<?x8x64xbf16> to tensor<?x8x64xbf16>
  %lset = bufferization.to_tensor %lse restrict : memref<?x8xf32> to tensor<?x8xf32>
  %dot = bufferization.to_tensor %do restrict : memref<?x8x64xbf16> to tensor<?x8x64xbf16>
  %dqt, %dkt, %dvt = moba.attention_grad q(%qt : tensor<?x8x64xbf16>)
      k(%kt : tensor<?x2x64xbf16>) v(%vt : tensor<?x2x64xbf16>)
      cu_seqlens(%cut : tensor<?xi32>)
      out(%ot : tensor<?x8x64xbf16>) lse(%lset : tensor<?x8xf32>)
      grad_out(%dot : tensor<?x8x64xbf16>)
      {block_size = 64, top_k = 3}
      -> tensor<?x8x64xbf16>, tensor<?x2x64xbf16>, tensor<?x2x64xbf16>
  bufferization.materialize_in_destination %dqt in restrict writable %dq
      : (tensor<?x8x64xbf16>, memref<?x8x64xbf16>) -> ()
  bufferization.materialize_in_destination %dkt in restrict writable %dk
      : (tensor<?x2x64xbf16>, memref<?x2x64xbf16>) -> ()
  bufferization.materialize_in_destination %dvt in restrict writable %dv
      : (tensor<?x2x64xbf16>, memref<?x2x64xbf16>) -> ()
  return
}
