// RUN: moba-opt %s -split-input-file -verify-diagnostics

func.func @acc_shape(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %a: tensor<64x8x16xf32>, %m: tensor<64x8xf32>, %s: tensor<64x8xf32>) {
  // expected-error @+1 {{shape of q [64, 8, 32] and of acc_init [64, 8, 16] disagree}}
  %r:3 = moba.online_sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%a : tensor<64x8x16xf32>, %m : tensor<64x8xf32>, %s : tensor<64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @max_sum_shapes(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %a: tensor<64x8x32xf32>, %m: tensor<64x8xf32>, %s: tensor<64x4xf32>) {
  // expected-error @+1 {{shape of max_init [64, 8] and of sum_init [64, 4] disagree}}
  %r:3 = moba.online_sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%a : tensor<64x8x32xf32>, %m : tensor<64x8xf32>, %s : tensor<64x4xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @max_tokens(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xbf16>, %cu: tensor<2xi32>, %a: tensor<64x8x32xf32>, %m: tensor<32x8xf32>, %s: tensor<32x8xf32>) {
  // expected-error @+1 {{token count of q (64) and max_init (32) disagree}}
  %r:3 = moba.online_sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xbf16>) cu_seqlens(%cu : tensor<2xi32>) outs(%a : tensor<64x8x32xf32>, %m : tensor<32x8xf32>, %s : tensor<32x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}

// -----

func.func @kv_element_type(%q: tensor<64x8x32xbf16>, %k: tensor<64x4x32xbf16>, %v: tensor<64x4x32xf32>, %cu: tensor<2xi32>, %a: tensor<64x8x32xf32>, %m: tensor<64x8xf32>, %s: tensor<64x8xf32>) {
  // expected-error @+1 {{element types disagree: q has 'bf16', v has 'f32'}}
  %r:3 = moba.online_sparse_attention q(%q : tensor<64x8x32xbf16>) k(%k : tensor<64x4x32xbf16>) v(%v : tensor<64x4x32xf32>) cu_seqlens(%cu : tensor<2xi32>) outs(%a : tensor<64x8x32xf32>, %m : tensor<64x8xf32>, %s : tensor<64x8xf32>) {block_size = 16, scale = 0.5 : f32}
  return
}
