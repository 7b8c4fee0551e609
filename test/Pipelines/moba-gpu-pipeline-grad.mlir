// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" -split-input-file --mlir-print-ir-after=moba-map-forall-to-gpu -o /dev/null 2> %t.mapped || true
// RUN: FileCheck %s --check-prefix=MAPPED < %t.mapped
// RUN: not moba-opt %s --moba-gpu-pipeline="format=isa" -split-input-file 2>&1 | FileCheck %s --check-prefix=NOMMA
// RUN: not moba-opt %s --moba-gpu-pipeline="format=isa densify=true mma=true" -split-input-file 2>&1 | FileCheck %s --check-prefix=BAD
// The whole pipeline, for sm_80 and sm_90a: moba-convert-grouped-attention-
// grad-to-nvvm takes the kept grouped backward (the later cases fail, hence
// `not`).
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=isa densify=true mma=true" -split-input-file 2>/dev/null | FileCheck %s --check-prefix=PTX
// RUN: not moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=isa densify=true mma=true" -split-input-file 2>/dev/null | FileCheck %s --check-prefix=PTXTEXT

// The backward on the GPU (the entry function a runner compiles: dynamic
// token counts, GQA, bf16, head_dim 64). Its row term and its slot sum are
// scf.forall loops over (token, head) that moba-map-forall-to-gpu maps onto
// one thread per row; the grouped backward is mma-compatible, so it is kept
// through bufferization, on the buffers of the row term, the groups and
// the caller's dk and dv, for its tensor-core lowering.
// MAPPED-LABEL: func.func @moba_attention_grad
// MAPPED-SAME: %[[DO:[^:]+]]: memref<?x8x64xbf16>, %[[DQ:[^:]+]]: memref<?x8x64xbf16>, %[[DK:[^:]+]]: memref<?x2x64xbf16>, %[[DV:[^:]+]]: memref<?x2x64xbf16>)
// MAPPED-NOT: scf.forall
// MAPPED: %[[DELTA:[^,]+]], %{{.+}} = gpu.alloc async [%{{.+}}] (%{{.+}}) : memref<?x8xf32>
// MAPPED: gpu.launch
// MAPPED:   %[[ROW:.+]] = memref.subview %[[DELTA]][%{{.+}}, %{{.+}}] [1, 1] [1, 1]
// MAPPED:   memref.store %{{.+}}, %[[ROW]][%{{.+}}, %{{.+}}] : memref<1x1xf32
// MAPPED: %[[DQP:[^,]+]], %{{.+}} = gpu.alloc async [%{{.+}}] (%{{.+}}) : memref<3x?x8x64xf32>
// MAPPED: memref.load %[[DELTA]]
// MAPPED: nvvm.mma.sync
// MAPPED: vector.store %{{.+}}, %[[DQP]]
// MAPPED: vector.store %{{.+}}, %[[DK]]
// MAPPED: vector.store %{{.+}}, %[[DV]]
// MAPPED: gpu.launch
// MAPPED:   vector.transfer_read %[[DQP]]
// MAPPED:   %[[DQROW:.+]] = memref.subview %[[DQ]]
// MAPPED:   vector.transfer_write %{{.+}}, %[[DQROW]]{{.+}} : vector<64xbf16>, memref<1x1x64xbf16
// MAPPED-NOT: scf.forall
// MAPPED: return

// The GPU backward is the tensor-core path's.
// NOMMA: error: 'moba.attention_grad' op has no GPU lowering here: the GPU backward runs only on the tensor-core path: moba-gpu-pipeline needs mma=true and densify=true for it

// Fourteen kernels: pooling, the gate, the grouping, the row term; the dq
// kernels (the unlisted slots zeroed, the tile list, dq); the key/value
// kernels (the plan, dK and dV, the split rows' sums); the slot sum.
// PTX: llvm.func @moba_attention_grad(
// PTX-NOT: moba.
// PTX-COUNT-14: gpu.binary @moba_attention_grad_kernel
// PTX-NOT: gpu.binary
// The backward's kernels on mma.sync and ldmatrix (.trans for the products
// over keys and queries), copies by cp.async.
// PTXTEXT-DAG: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
// PTXTEXT-DAG: ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
// PTXTEXT-DAG: cp.async.cg.shared.global

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

// -----

// f32 has no tensor-core backward: moba-cpu-pipeline compiles it.
// BAD: error: 'moba.attention_grad' op has no GPU lowering here: the GPU backward's tensor-core kernel needs f16 or bf16 q, a static head_dim that is a multiple of 16 up to 128 and static head counts; got q of type tensor<?x4x64xf32> and k of type tensor<?x2x64xf32> (moba-cpu-pipeline compiles it)
func.func @f32_grad(%q: tensor<?x4x64xf32>, %k: tensor<?x2x64xf32>, %cu: tensor<?xi32>,
                    %lse: tensor<?x4xf32>) -> tensor<?x4x64xf32> {
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x4x64xf32>)
      k(%k : tensor<?x2x64xf32>) v(%k : tensor<?x2x64xf32>) cu_seqlens(%cu : tensor<?xi32>)
      out(%q : tensor<?x4x64xf32>) lse(%lse : tensor<?x4xf32>) grad_out(%q : tensor<?x4x64xf32>)
      {block_size = 64, top_k = 3}
      -> tensor<?x4x64xf32>, tensor<?x2x64xf32>, tensor<?x2x64xf32>
  return %dq : tensor<?x4x64xf32>
}

// -----

// Nor a head_dim the kernel's fragments do not tile (24 is not a multiple
// of 16).
// BAD: error: 'moba.attention_grad' op has no GPU lowering here: {{.+}} got q of type tensor<?x4x24xf16>
func.func @odd_head_dim(%q: tensor<?x4x24xf16>, %k: tensor<?x2x24xf16>, %cu: tensor<?xi32>,
                        %lse: tensor<?x4xf32>) -> tensor<?x4x24xf16> {
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x4x24xf16>)
      k(%k : tensor<?x2x24xf16>) v(%k : tensor<?x2x24xf16>) cu_seqlens(%cu : tensor<?xi32>)
      out(%q : tensor<?x4x24xf16>) lse(%lse : tensor<?x4xf32>) grad_out(%q : tensor<?x4x24xf16>)
      {block_size = 64, top_k = 3}
      -> tensor<?x4x24xf16>, tensor<?x2x24xf16>, tensor<?x2x24xf16>
  return %dq : tensor<?x4x24xf16>
}

// -----

// Nor dynamic head counts.
// BAD: error: 'moba.attention_grad' op has no GPU lowering here: {{.+}} got q of type tensor<?x?x64xbf16>
func.func @dynamic_heads(%q: tensor<?x?x64xbf16>, %k: tensor<?x?x64xbf16>, %cu: tensor<?xi32>,
                         %lse: tensor<?x?xf32>) -> tensor<?x?x64xbf16> {
  %dq, %dk, %dv = moba.attention_grad q(%q : tensor<?x?x64xbf16>)
      k(%k : tensor<?x?x64xbf16>) v(%k : tensor<?x?x64xbf16>) cu_seqlens(%cu : tensor<?xi32>)
      out(%q : tensor<?x?x64xbf16>) lse(%lse : tensor<?x?xf32>) grad_out(%q : tensor<?x?x64xbf16>)
      {block_size = 64, top_k = 3}
      -> tensor<?x?x64xbf16>, tensor<?x?x64xbf16>, tensor<?x?x64xbf16>
  return %dq : tensor<?x?x64xbf16>
}
