// RUN: moba-opt %s -canonicalize -split-input-file | FileCheck %s

// top_k above the number of blocks a sequence can have is clamped to it:
// 1000 tokens in blocks of 128 make at most 8 blocks.

// CHECK-LABEL: func @clamp_top_k_varlen
// CHECK: moba.attention
// CHECK-SAME: top_k = 8
func.func @clamp_top_k_varlen(%q: tensor<1000x4x32xbf16>, %k: tensor<1000x4x32xbf16>, %v: tensor<1000x4x32xbf16>, %cu: tensor<3xi32>) -> tensor<1000x4x32xbf16> {
  %o = moba.attention q(%q : tensor<1000x4x32xbf16>) k(%k : tensor<1000x4x32xbf16>) v(%v : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) {block_size = 128, top_k = 50} -> tensor<1000x4x32xbf16>
  return %o : tensor<1000x4x32xbf16>
}

// -----

// With max_seqlen = 300 a sequence has at most 3 blocks of 128.

// CHECK-LABEL: func @clamp_top_k_max_seqlen
// CHECK: moba.attention
// CHECK-SAME: top_k = 3
func.func @clamp_top_k_max_seqlen(%q: tensor<1000x4x32xbf16>, %k: tensor<1000x4x32xbf16>, %v: tensor<1000x4x32xbf16>, %cu: tensor<5xi32>) -> tensor<1000x4x32xbf16> {
  %o = moba.attention q(%q : tensor<1000x4x32xbf16>) k(%k : tensor<1000x4x32xbf16>) v(%v : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<5xi32>) {block_size = 128, top_k = 4, max_seqlen = 300} -> tensor<1000x4x32xbf16>
  return %o : tensor<1000x4x32xbf16>
}

// -----

// Batched: sequences of 256 tokens, blocks of 64: 4 blocks.

// CHECK-LABEL: func @clamp_top_k_batched
// CHECK: moba.attention
// CHECK-SAME: top_k = 4
func.func @clamp_top_k_batched(%q: tensor<2x256x4x32xf16>, %k: tensor<2x256x4x32xf16>, %v: tensor<2x256x4x32xf16>) -> tensor<2x256x4x32xf16> {
  %o = moba.attention q(%q : tensor<2x256x4x32xf16>) k(%k : tensor<2x256x4x32xf16>) v(%v : tensor<2x256x4x32xf16>) {block_size = 64, top_k = 7} -> tensor<2x256x4x32xf16>
  return %o : tensor<2x256x4x32xf16>
}

// -----

// Within the block count, or with a dynamic sequence length, top_k stays.

// CHECK-LABEL: func @keep_top_k
// CHECK: moba.attention
// CHECK-SAME: top_k = 3
// CHECK: moba.attention
// CHECK-SAME: top_k = 100
func.func @keep_top_k(%q: tensor<2x256x4x32xf16>, %k: tensor<2x256x4x32xf16>, %v: tensor<2x256x4x32xf16>,
                      %qd: tensor<?x4x32xf16>, %kd: tensor<?x4x32xf16>, %vd: tensor<?x4x32xf16>, %cu: tensor<?xi32>)
    -> (tensor<2x256x4x32xf16>, tensor<?x4x32xf16>) {
  %o = moba.attention q(%q : tensor<2x256x4x32xf16>) k(%k : tensor<2x256x4x32xf16>) v(%v : tensor<2x256x4x32xf16>) {block_size = 64, top_k = 3} -> tensor<2x256x4x32xf16>
  %od = moba.attention q(%qd : tensor<?x4x32xf16>) k(%kd : tensor<?x4x32xf16>) v(%vd : tensor<?x4x32xf16>) cu_seqlens(%cu : tensor<?xi32>) {block_size = 64, top_k = 100} -> tensor<?x4x32xf16>
  return %o, %od : tensor<2x256x4x32xf16>, tensor<?x4x32xf16>
}

// -----

// Causal top-1 is the own block: the scores, and so the gate and the pooling
// that fed them, are gone.

// CHECK-LABEL: func @top1_needs_no_gate
// CHECK-NOT: moba.block_pool
// CHECK-NOT: moba.gate
// CHECK: %[[SEL:.+]] = moba.topk cu_seqlens(%{{.+}} : tensor<3xi32>) outs(%{{.+}} : tensor<1000x4x1xi32>)
// CHECK: moba.sparse_attention
// CHECK-SAME: selected(%[[SEL]] : tensor<1000x4x1xi32>)
func.func @top1_needs_no_gate(%q: tensor<1000x4x32xbf16>, %k: tensor<1000x4x32xbf16>, %v: tensor<1000x4x32xbf16>, %cu: tensor<3xi32>) -> tensor<1000x4x32xbf16> {
  %m0 = tensor.empty() : tensor<9x4x32xf32>
  %means = moba.block_pool keys(%k : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) outs(%m0 : tensor<9x4x32xf32>) {block_size = 128}
  %s0 = tensor.empty() : tensor<1000x4x8xf32>
  %scores = moba.gate queries(%q : tensor<1000x4x32xbf16>) means(%means : tensor<9x4x32xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%s0 : tensor<1000x4x8xf32>) {block_size = 128}
  %i0 = tensor.empty() : tensor<1000x4x1xi32>
  %sel = moba.topk scores(%scores : tensor<1000x4x8xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%i0 : tensor<1000x4x1xi32>) {block_size = 128}
  %o0 = tensor.empty() : tensor<1000x4x32xbf16>
  %l0 = tensor.empty() : tensor<1000x4xf32>
  %o, %l = moba.sparse_attention q(%q : tensor<1000x4x32xbf16>) k(%k : tensor<1000x4x32xbf16>) v(%v : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<1000x4x1xi32>) outs(%o0 : tensor<1000x4x32xbf16>, %l0 : tensor<1000x4xf32>) {block_size = 128, scale = 0.17677669 : f32}
  return %o : tensor<1000x4x32xbf16>
}

// -----

// Non-causal top-1 depends on the scores: nothing changes.

// CHECK-LABEL: func @noncausal_top1_keeps_gate
// CHECK: moba.gate
// CHECK: moba.topk scores
func.func @noncausal_top1_keeps_gate(%q: tensor<1000x4x32xbf16>, %means: tensor<9x4x32xf32>, %cu: tensor<3xi32>) -> tensor<1000x4x1xi32> {
  %s0 = tensor.empty() : tensor<1000x4x8xf32>
  %scores = moba.gate queries(%q : tensor<1000x4x32xbf16>) means(%means : tensor<9x4x32xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%s0 : tensor<1000x4x8xf32>) {block_size = 128}
  %i0 = tensor.empty() : tensor<1000x4x1xi32>
  %sel = moba.topk scores(%scores : tensor<1000x4x8xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%i0 : tensor<1000x4x1xi32>) {block_size = 128, causal = false}
  return %sel : tensor<1000x4x1xi32>
}

// -----

// top_k covering every block: dense attention, no selection, no gate, no
// pooling.

// CHECK-LABEL: func @all_blocks_is_dense
// CHECK-NOT: moba.topk
// CHECK-NOT: moba.gate
// CHECK-NOT: moba.block_pool
// CHECK: moba.sparse_attention
// CHECK-NOT: selected
// CHECK-SAME: outs
func.func @all_blocks_is_dense(%q: tensor<1000x4x32xbf16>, %k: tensor<1000x4x32xbf16>, %v: tensor<1000x4x32xbf16>, %cu: tensor<3xi32>) -> tensor<1000x4x32xbf16> {
  %m0 = tensor.empty() : tensor<9x4x32xf32>
  %means = moba.block_pool keys(%k : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) outs(%m0 : tensor<9x4x32xf32>) {block_size = 128}
  %s0 = tensor.empty() : tensor<1000x4x8xf32>
  %scores = moba.gate queries(%q : tensor<1000x4x32xbf16>) means(%means : tensor<9x4x32xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%s0 : tensor<1000x4x8xf32>) {block_size = 128}
  %i0 = tensor.empty() : tensor<1000x4x8xi32>
  %sel = moba.topk scores(%scores : tensor<1000x4x8xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%i0 : tensor<1000x4x8xi32>) {block_size = 128}
  %o0 = tensor.empty() : tensor<1000x4x32xbf16>
  %l0 = tensor.empty() : tensor<1000x4xf32>
  %o, %l = moba.sparse_attention q(%q : tensor<1000x4x32xbf16>) k(%k : tensor<1000x4x32xbf16>) v(%v : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<1000x4x8xi32>) outs(%o0 : tensor<1000x4x32xbf16>, %l0 : tensor<1000x4xf32>) {block_size = 128, scale = 0.17677669 : f32}
  return %o : tensor<1000x4x32xbf16>
}

// -----

// A causal selection of every block fed to non-causal attention is not dense
// (the future blocks were never candidates); nor is a selection made with
// another block size.

// CHECK-LABEL: func @not_dense
// CHECK: moba.sparse_attention
// CHECK-SAME: selected
// CHECK: moba.sparse_attention
// CHECK-SAME: selected
func.func @not_dense(%q: tensor<1000x4x32xbf16>, %k: tensor<1000x4x32xbf16>, %v: tensor<1000x4x32xbf16>, %cu: tensor<3xi32>, %scores: tensor<1000x4x8xf32>)
    -> (tensor<1000x4x32xbf16>, tensor<1000x4x32xbf16>) {
  %i0 = tensor.empty() : tensor<1000x4x8xi32>
  %sel = moba.topk scores(%scores : tensor<1000x4x8xf32>) cu_seqlens(%cu : tensor<3xi32>) outs(%i0 : tensor<1000x4x8xi32>) {block_size = 128}
  %o0 = tensor.empty() : tensor<1000x4x32xbf16>
  %l0 = tensor.empty() : tensor<1000x4xf32>
  %o, %l = moba.sparse_attention q(%q : tensor<1000x4x32xbf16>) k(%k : tensor<1000x4x32xbf16>) v(%v : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<1000x4x8xi32>) outs(%o0 : tensor<1000x4x32xbf16>, %l0 : tensor<1000x4xf32>) {block_size = 128, scale = 0.17677669 : f32, causal = false}
  %a, %m = moba.sparse_attention q(%q : tensor<1000x4x32xbf16>) k(%k : tensor<1000x4x32xbf16>) v(%v : tensor<1000x4x32xbf16>) cu_seqlens(%cu : tensor<3xi32>) selected(%sel : tensor<1000x4x8xi32>) outs(%o0 : tensor<1000x4x32xbf16>, %l0 : tensor<1000x4xf32>) {block_size = 64, scale = 0.17677669 : f32}
  return %o, %a : tensor<1000x4x32xbf16>, tensor<1000x4x32xbf16>
}

