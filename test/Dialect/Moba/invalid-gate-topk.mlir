// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @k_zero(%q: tensor<64x8x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x0xi32>) {
  // expected-error @+1 {{K, the last dim of init, must be at least 1, got 0}}
  %r = moba.gate_topk queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x0xi32>) {block_size = 16}
  return
}

// -----

func.func @k_dynamic(%q: tensor<64x8x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x?xi32>) {
  // expected-error @+1 {{K, the last dim of init, must be static}}
  %r = moba.gate_topk queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x?xi32>) {block_size = 16}
  return
}

// -----

func.func @head_groups(%q: tensor<64x6x32xbf16>, %m: tensor<4x4x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x6x2xi32>) {
  // expected-error @+1 {{number of query heads (Hq = 6 in queries) is not a multiple of the number of key/value heads (Hkv = 4 in means)}}
  %r = moba.gate_topk queries(%q : tensor<64x6x32xbf16>) means(%m : tensor<4x4x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x6x2xi32>) {block_size = 16}
  return
}

// -----

func.func @head_dim(%q: tensor<64x8x32xbf16>, %m: tensor<4x2x64xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2xi32>) {
  // expected-error @+1 {{head_dim of queries (32) and means (64) disagree}}
  %r = moba.gate_topk queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x2x64xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2xi32>) {block_size = 16}
  return
}

// -----

func.func @tokens(%q: tensor<64x8x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<32x8x2xi32>) {
  // expected-error @+1 {{token count of queries (64) and init (32) disagree}}
  %r = moba.gate_topk queries(%q : tensor<64x8x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<32x8x2xi32>) {block_size = 16}
  return
}

// -----

func.func @mixed_forms(%q: memref<64x8x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2xi32>) {
  // expected-error @+1 {{operands must be all tensors or all memrefs}}
  %r = moba.gate_topk queries(%q : memref<64x8x32xbf16>) means(%m : tensor<4x2x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%i : tensor<64x8x2xi32>) {block_size = 16}
  return
}

// -----

func.func @result_on_memrefs(%q: memref<64x8x32xbf16>, %m: memref<4x2x32xf32>, %cu: memref<2xi32>, %i: memref<64x8x2xi32>) {
  // expected-error @+1 {{on memrefs, has no results}}
  %r = "moba.gate_topk"(%q, %m, %cu, %i) {block_size = 16 : i64} : (memref<64x8x32xbf16>, memref<4x2x32xf32>, memref<2xi32>, memref<64x8x2xi32>) -> tensor<64x8x2xi32>
  return
}

// -----

func.func @no_result_on_tensors(%q: tensor<64x8x32xbf16>, %m: tensor<4x2x32xf32>, %cu: tensor<2xi32>, %i: tensor<64x8x2xi32>) {
  // expected-error @+1 {{on tensors, expects one result of the type of init}}
  "moba.gate_topk"(%q, %m, %cu, %i) {block_size = 16 : i64} : (tensor<64x8x32xbf16>, tensor<4x2x32xf32>, tensor<2xi32>, tensor<64x8x2xi32>) -> ()
  return
}
