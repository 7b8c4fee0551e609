// RUN: moba-opt %s --moba-fuse-lse-merge | FileCheck %s
// RUN: moba-opt %s --moba-fuse-lse-merge --moba-lower-to-loops | FileCheck %s --check-prefix=SPLIT
// RUN: moba-opt %s --moba-fuse-lse-merge --moba-lower-to-loops="parallel=true keep-mma-compatible-attention=true" | FileCheck %s --check-prefix=KEPT

// The merge of the attention's partials becomes the attention's merge(...):
// the merged output and lse replace the merge's results.
// CHECK-LABEL: func @fuse
// CHECK-SAME: %[[OUT:[^:]+]]: tensor<64x4x16xbf16>, %[[LSE:[^:]+]]: tensor<64x4xf32>
// CHECK-NOT: moba.lse_merge
// CHECK: %[[P:.+]]:4 = moba.grouped_block_attention {{.*}} outs(%{{.*}} : tensor<2x64x4x16xbf16>, %{{.*}} : tensor<2x64x4xf32>) merge(%[[OUT]] : tensor<64x4x16xbf16>, %[[LSE]] : tensor<64x4xf32>) {block_size = 16 : i64, scale = 2.500000e-01 : f32} -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>, tensor<64x4x16xbf16>, tensor<64x4xf32>
// CHECK-NOT: moba.lse_merge
// CHECK: return %[[P]]#2, %[[P]]#3

// Lowered to loops, where no kernel merges: split back into the attention
// and a merge, both lowered.
// SPLIT-LABEL: func @fuse
// SPLIT-NOT: moba.
// SPLIT: return

// Kept for the tensor-core lowering (bf16, head_dim 16): still merged.
// KEPT-LABEL: func @fuse
// KEPT: moba.grouped_block_attention {{.*}} merge(
// KEPT-NOT: moba.lse_merge
// KEPT-LABEL: func @f32_split
// KEPT: moba.grouped_block_attention
// KEPT-NOT: merge(
// KEPT-NOT: moba.
// KEPT: return
func.func @fuse(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                %e: tensor<4x128xi32>, %out: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>)
    -> (tensor<64x4x16xbf16>, tensor<64x4xf32>) {
  %po = tensor.empty() : tensor<2x64x4x16xbf16>
  %pl = tensor.empty() : tensor<2x64x4xf32>
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>)
      k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>)
      cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>)
      outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>)
      {block_size = 16, scale = 0.25 : f32}
      -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>
  %o, %l = moba.lse_merge partials(%p#0 : tensor<2x64x4x16xbf16>)
      partial_lse(%p#1 : tensor<2x64x4xf32>)
      outs(%out : tensor<64x4x16xbf16>, %lse : tensor<64x4xf32>)
  return %o, %l : tensor<64x4x16xbf16>, tensor<64x4xf32>
}

// f32 has no tensor-core lowering: the kept pipeline splits it too.
func.func @f32_split(%q: tensor<64x4x16xf32>, %kv: tensor<64x2x16xf32>, %cu: tensor<2xi32>,
                     %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                     %e: tensor<4x128xi32>, %out: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>)
    -> (tensor<64x4x16xf32>, tensor<64x4xf32>) {
  %po = tensor.empty() : tensor<2x64x4x16xf32>
  %pl = tensor.empty() : tensor<2x64x4xf32>
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x4x16xf32>)
      k(%kv : tensor<64x2x16xf32>) v(%kv : tensor<64x2x16xf32>)
      cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>)
      outs(%po : tensor<2x64x4x16xf32>, %pl : tensor<2x64x4xf32>)
      {block_size = 16, scale = 0.25 : f32}
      -> tensor<2x64x4x16xf32>, tensor<2x64x4xf32>
  %o, %l = moba.lse_merge partials(%p#0 : tensor<2x64x4x16xf32>)
      partial_lse(%p#1 : tensor<2x64x4xf32>)
      outs(%out : tensor<64x4x16xf32>, %lse : tensor<64x4xf32>)
  return %o, %l : tensor<64x4x16xf32>, tensor<64x4xf32>
}

// Partials that are also returned must exist: no fusion.
// CHECK-LABEL: func @partials_used
// CHECK: moba.grouped_block_attention
// CHECK-NOT: merge(
// CHECK: moba.lse_merge
func.func @partials_used(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                         %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                         %e: tensor<4x128xi32>, %out: tensor<64x4x16xbf16>, %lse: tensor<64x4xf32>)
    -> (tensor<64x4x16xbf16>, tensor<2x64x4xf32>) {
  %po = tensor.empty() : tensor<2x64x4x16xbf16>
  %pl = tensor.empty() : tensor<2x64x4xf32>
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>)
      k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>)
      cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>)
      outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>)
      {block_size = 16, scale = 0.25 : f32}
      -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>
  %o, %l = moba.lse_merge partials(%p#0 : tensor<2x64x4x16xbf16>)
      partial_lse(%p#1 : tensor<2x64x4xf32>)
      outs(%out : tensor<64x4x16xbf16>, %lse : tensor<64x4xf32>)
  return %o, %p#1 : tensor<64x4x16xbf16>, tensor<2x64x4xf32>
}

// A merged output of another element type than q's: no fusion (the fused
// kernel writes q's type).
// CHECK-LABEL: func @other_output_type
// CHECK: moba.lse_merge
func.func @other_output_type(%q: tensor<64x4x16xbf16>, %kv: tensor<64x2x16xbf16>, %cu: tensor<2xi32>,
                             %sel: tensor<64x4x2xi32>, %s: tensor<4x4xi32>, %c: tensor<4x4xi32>,
                             %e: tensor<4x128xi32>, %out: tensor<64x4x16xf32>, %lse: tensor<64x4xf32>)
    -> (tensor<64x4x16xf32>, tensor<64x4xf32>) {
  %po = tensor.empty() : tensor<2x64x4x16xbf16>
  %pl = tensor.empty() : tensor<2x64x4xf32>
  %p:2 = moba.grouped_block_attention q(%q : tensor<64x4x16xbf16>)
      k(%kv : tensor<64x2x16xbf16>) v(%kv : tensor<64x2x16xbf16>)
      cu_seqlens(%cu : tensor<2xi32>) selected(%sel : tensor<64x4x2xi32>)
      groups(%s : tensor<4x4xi32>, %c : tensor<4x4xi32>, %e : tensor<4x128xi32>)
      outs(%po : tensor<2x64x4x16xbf16>, %pl : tensor<2x64x4xf32>)
      {block_size = 16, scale = 0.25 : f32}
      -> tensor<2x64x4x16xbf16>, tensor<2x64x4xf32>
  %o, %l = moba.lse_merge partials(%p#0 : tensor<2x64x4x16xbf16>)
      partial_lse(%p#1 : tensor<2x64x4xf32>)
      outs(%out : tensor<64x4x16xf32>, %lse : tensor<64x4xf32>)
  return %o, %l : tensor<64x4x16xf32>, tensor<64x4xf32>
}
