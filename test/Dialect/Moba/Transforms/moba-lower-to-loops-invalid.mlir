// The loop lowerings need static heads and head_dim (rows are vectors of
// head_dim elements); a dynamic one is an error naming the op and the dim,
// from either pass.
// RUN: not moba-opt %s --moba-tile-attention 2>&1 | FileCheck %s --check-prefix=DYNAMIC
// RUN: not moba-opt %s --moba-lower-to-loops 2>&1 | FileCheck %s --check-prefix=DYNAMIC
// RUN: not moba-opt %s --moba-lower-to-loops="parallel=true" 2>&1 | FileCheck %s --check-prefix=GATE

// DYNAMIC: error: 'moba.sparse_attention' op lowering to loops needs static heads and head_dim; dim 2 of 'tensor<?x4x?xf32>' is dynamic
func.func @dynamic_head_dim(%q: tensor<?x4x?xf32>, %cu: tensor<?xi32>, %o0: tensor<?x4x?xf32>, %l0: tensor<?x4xf32>) -> tensor<?x4x?xf32> {
  %o, %l = moba.sparse_attention q(%q : tensor<?x4x?xf32>) k(%q : tensor<?x4x?xf32>) v(%q : tensor<?x4x?xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%o0 : tensor<?x4x?xf32>, %l0 : tensor<?x4xf32>) {block_size = 16, scale = 0.25 : f32}
  return %o : tensor<?x4x?xf32>
}

// The parallel form has no score tensor: the gate must be fused first.
// GATE: error: 'moba.gate' op parallel lowering materializes no score tensor: fuse the gate into its top-k first (moba-fuse-gate-topk)
func.func @unfused_gate(%q: tensor<?x4x16xf32>, %means: tensor<?x2x16xf32>, %cu: tensor<?xi32>, %s0: tensor<?x4x8xf32>) -> tensor<?x4x8xf32> {
  %s = moba.gate queries(%q : tensor<?x4x16xf32>) means(%means : tensor<?x2x16xf32>) cu_seqlens(%cu : tensor<?xi32>) outs(%s0 : tensor<?x4x8xf32>) {block_size = 16}
  return %s : tensor<?x4x8xf32>
}
