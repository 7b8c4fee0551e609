// REQUIRES: ptxas
// The paged KV cache ops on the GPU pipeline. The append (and the decode
// with paged-decode=loops) takes the generic (SIMT) route: the scf.forall
// forms become one launch each, one iteration a thread. The decode's
// default is the split-K kernels of moba-convert-paged-decode-to-nvvm. With
// format=bin ptxas assembles every kernel for sm_80 and sm_90a, so these
// runs fail if the emitted PTX does not assemble.
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=bin" | FileCheck %s --check-prefixes=BIN,SPLIT
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin" | FileCheck %s --check-prefixes=BIN,SPLIT
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=isa" | FileCheck %s --check-prefix=PTX
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_90a format=bin paged-decode=loops" | FileCheck %s --check-prefixes=BIN,LOOPS
// RUN: moba-opt %s --moba-gpu-pipeline="chip=sm_80 format=isa paged-decode=loops" | FileCheck %s --check-prefix=LOOPS-PTX

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
// The decode with paged-decode=loops: the check, then one thread per
// (query token, query head).
// LOOPS-LABEL: llvm.func @decode(
// LOOPS: llvm.call @mgpuMemAlloc
// LOOPS: gpu.launch_func @[[DCHECK:decode_kernel]]::@decode_kernel
// LOOPS: gpu.launch_func @[[ROW:decode_kernel_[0-9]+]]::@decode_kernel
// LOOPS: llvm.call @mgpuMemFree
// LOOPS: gpu.binary @[[DCHECK]] {{.*}}chip = "{{sm_80|sm_90a}}"
// LOOPS: gpu.binary @[[ROW]] {{.*}}chip = "{{sm_80|sm_90a}}"
// BIN-NOT: moba.

// The split-K decode: the check into a scratch of flags, the scratch of one
// slab of tokens (selection, sequence of each token, partials and their
// max and sum), then per slab (a host loop) the selection, the attention
// and the merge; all scratch freed after the loop.
// SPLIT-LABEL: llvm.func @decode(
// SPLIT: llvm.call @mgpuMemAlloc
// SPLIT: gpu.launch_func @[[SCHECK:decode_kernel]]::@decode_kernel
// SPLIT-COUNT-4: llvm.call @mgpuMemAlloc
// SPLIT: llvm.cond_br
// SPLIT: gpu.launch_func @[[SELECT:decode_kernel_[0-9]+]]::@decode_kernel
// SPLIT: gpu.launch_func @[[ATTEND:decode_kernel_[0-9]+]]::@decode_kernel
// SPLIT: gpu.launch_func @[[MERGE:decode_kernel_[0-9]+]]::@decode_kernel
// SPLIT: llvm.br
// SPLIT-COUNT-5: llvm.call @mgpuMemFree
// SPLIT: gpu.binary @[[SCHECK]] {{.*}}chip = "{{sm_80|sm_90a}}"
// SPLIT: gpu.binary @[[SELECT]] {{.*}}chip = "{{sm_80|sm_90a}}"
// SPLIT: gpu.binary @[[ATTEND]] {{.*}}chip = "{{sm_80|sm_90a}}"
// SPLIT: gpu.binary @[[MERGE]] {{.*}}chip = "{{sm_80|sm_90a}}"

// The loop form's row kernel writes NaN rows for a sequence that failed its
// check; its softmax runs on the SFU's ex2.approx, as the attention's does.
// LOOPS-PTX-LABEL: gpu.binary @decode_kernel_{{[0-9]+}}
// LOOPS-PTX-SAME: 0f7FC00000
// LOOPS-PTX-SAME: ex2.approx

// The split-K kernels: the selection's shuffle reductions; the attention's
// ballot, index shuffles, fma dots and ex2 softmax; the merge's
// log-sum-exp back from log2 units (times ln 2) and its NaN rows.
// PTX-LABEL: gpu.binary @decode_kernel_{{[0-9]+}}
// PTX-SAME: shfl.sync.bfly.b32
// PTX-LABEL: gpu.binary @decode_kernel_{{[0-9]+}}
// PTX-SAME: vote.sync.ballot.b32
// PTX-SAME: shfl.sync.idx.b32
// PTX-SAME: fma.rn.f32
// PTX-SAME: ex2.approx.ftz.f32
// PTX-LABEL: gpu.binary @decode_kernel_{{[0-9]+}}
// PTX-SAME: 0f3F317218
// PTX-SAME: 0f7FC00000

func.func @append(%k: tensor<?x2x64xbf16>, %v: tensor<?x2x64xbf16>, %cu: tensor<?xi32>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>, %sums: tensor<?x?x2x64xf32>) -> (tensor<?x16x2x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x?x2x64xf32>) {
  %a, %b, %c = moba.paged_kv_append k(%k : tensor<?x2x64xbf16>) v(%v : tensor<?x2x64xbf16>) cu_seqlens(%cu : tensor<?xi32>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) outs(%kc : tensor<?x16x2x64xbf16>, %vc : tensor<?x16x2x64xbf16>, %sums : tensor<?x?x2x64xf32>) {block_size = 32}
  return %a, %b, %c : tensor<?x16x2x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x?x2x64xf32>
}

func.func @decode(%q: tensor<?x8x64xbf16>, %cuq: tensor<?xi32>, %kc: tensor<?x16x2x64xbf16>, %vc: tensor<?x16x2x64xbf16>, %table: tensor<?x?xi32>, %lens: tensor<?xi32>, %sums: tensor<?x?x2x64xf32>, %o: tensor<?x8x64xbf16>, %l: tensor<?x8xf32>) -> (tensor<?x8x64xbf16>, tensor<?x8xf32>) {
  %out, %lse = moba.paged_decode_attention q(%q : tensor<?x8x64xbf16>) cu_seqlens_q(%cuq : tensor<?xi32>) k_cache(%kc : tensor<?x16x2x64xbf16>) v_cache(%vc : tensor<?x16x2x64xbf16>) block_table(%table : tensor<?x?xi32>) cache_lens(%lens : tensor<?xi32>) block_key_sums(%sums : tensor<?x?x2x64xf32>) outs(%o : tensor<?x8x64xbf16>, %l : tensor<?x8xf32>) {block_size = 32, top_k = 3}
  return %out, %lse : tensor<?x8x64xbf16>, tensor<?x8xf32>
}
