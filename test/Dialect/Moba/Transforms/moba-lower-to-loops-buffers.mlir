// RUN: moba-opt %s --split-input-file --moba-lower-to-loops --verify-diagnostics

// The loop lowerings work on tensors. The forms some ops take after
// bufferization belong to their tensor-core lowerings: left to the loop
// lowering, they are an error naming the op, never a silent failure.
func.func @gate_topk_on_buffers(%q: memref<?x8x64xbf16>, %m: memref<?x2x64xf32>, %cu: memref<?xi32>, %i: memref<?x8x4xi32>) {
  // expected-error @+1 {{'moba.gate_topk' op on memrefs has no loop lowering: lower it on tensors, or with its GPU lowering after bufferization}}
  moba.gate_topk queries(%q : memref<?x8x64xbf16>) means(%m : memref<?x2x64xf32>) cu_seqlens(%cu : memref<?xi32>) outs(%i : memref<?x8x4xi32>) {block_size = 64}
  return
}

// -----

func.func @group_queries_on_buffers(%sel: memref<?x8x3xi32>, %cu: memref<?xi32>, %s: memref<8x?xi32>, %c: memref<8x?xi32>, %e: memref<8x?xi32>) {
  // expected-error @+1 {{'moba.group_queries' op on memrefs has no loop lowering: lower it on tensors, or with its GPU lowering after bufferization}}
  moba.group_queries selected(%sel : memref<?x8x3xi32>) cu_seqlens(%cu : memref<?xi32>) outs(%s : memref<8x?xi32>, %c : memref<8x?xi32>, %e : memref<8x?xi32>) {block_size = 64}
  return
}
