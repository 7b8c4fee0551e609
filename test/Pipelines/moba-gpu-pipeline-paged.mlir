// REQUIRES: ptxas
// The paged KV cache ops on the GPU pipeline's generic (SIMT) route: their
// scf.forall forms become one launch each, one iteration a thread. With
// format=bin ptxas assembles every kernel for sm_80 and sm_90a, so these
// runs fail if the emitted PTX does not assemble.
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=bin" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin" | FileCheck %s --check-prefix=BIN
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=isa" | FileCheck %s --check-prefix=PTX

// The append: the per-sequence cache check into a device scratch buffer of
// flags (allocated on the stream, freed after), then the key and value rows
// (per new token and key/value head), then the block sums (per sequence,
// block and key/value head).
// BIN-LABEL: llvm.func @append(
// BIN-NOT: scf.forall
// BIN: llvm.call @mgpuMemAlloc
// BIN: gpu.launch_func @[[CHECK:append_kernel]]::@append_kernel
// BIN: gpu.launch_func @[[ROWS:append_kernel_[0-9]+]]::@append_kernel
// BIN: gpu.launch_func @[[SUMS:append_kernel_[0-9]+]]::@append_kernel
// BIN: llvm.call @mgpuMemFree
// BIN: gpu.binary @[[CHECK]] {{.*}}chip = "{{sm_80|sm_90a}}"
// BIN: gpu.binary @[[ROWS]] {{.*}}chip = "{{sm_80|sm_90a}}"
// BIN: gpu.binary @[[SUMS]] {{.*}}chip = "{{sm_80|sm_90a}}"
// The decode: the check, then one thread per (query token, query head).
// BIN-LABEL: llvm.func @decode(
// BIN: llvm.call @mgpuMemAlloc
// BIN: gpu.launch_func @[[DCHECK:decode_kernel]]::@decode_kernel
// BIN: gpu.launch_func @[[ROW:decode_kernel_[0-9]+]]::@decode_kernel
// BIN: llvm.call @mgpuMemFree
// BIN: gpu.binary @[[DCHECK]] {{.*}}chip = "{{sm_80|sm_90a}}"
// BIN: gpu.binary @[[ROW]] {{.*}}chip = "{{sm_80|sm_90a}}"
// BIN-NOT: moba.

// The decode row kernel writes NaN rows for a sequence that failed its
// check; its softmax runs on the SFU's ex2.approx, as the attention's does.
// PTX-LABEL: gpu.binary @decode_kernel_{{[0-9]+}}
// PTX-SAME: 0f7FC00000
// PTX-SAME: ex2.approx

func.func @append(%k: tensor<?x2x64xbf16>, %v: tensor<?x2x64xbf16>, %cu: tensor<?xi32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>, %sums: tensor<?x?x2x64xf32>) -> (tensor<?x16x2x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x?x2x64xf32>) {
  %a, %b, %c = moba.paged_kv_append k(%k : tensor<?x2x64xbf16>) v(%v : tensor<?x2x64xbf16>) cu_seqlens(%cu : tensor<?xi32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) outs(%kc : tensor<?x16x2x64xbf16>, %vc : tensor<?x16x2x64xbf16>, %sums : tensor<?x?x2x64xf32>) {block_size = 32}
  return %a, %b, %c : tensor<?x16x2x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x?x2x64xf32>
}

func.func @decode(%q: tensor<?x8x64xbf16>, %cuq: tensor<?xi32>, %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %sums: tensor<?x?x2x64xf32>, %o: tensor<?x8x64xbf16>, %l: tensor<?x8xf32>) -> (tensor<?x8x64xbf16>, tensor<?x8xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x8x64xbf16>) cu_seqlens_q(%cuq : tensor<?xi32>) k_cache(%kc : tensor<?x16x2x64xbf16>) v_cache(%vc : tensor<?x16x2x64xbf16>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) block_key_sums(%sums : tensor<?x?x2x64xf32>) outs(%o : tensor<?x8x64xbf16>, %l : tensor<?x8xf32>) {block_size = 32, top_k = 3}
  return %out, %lse : tensor<?x8x64xbf16>, tensor<?x8xf32>
}
