// RUN: moba-opt %s | moba-opt | FileCheck %s

// Dynamic dims are accepted wherever a static one is, and are never said to
// disagree with a static one.

// CHECK-LABEL: func @dynamic
// CHECK: moba.attention q(%{{.+}} : tensor<?x?x?xf16>) k(%{{.+}} : tensor<?x2x64xf16>) v(%{{.+}} : tensor<?x2x?xf16>) cu_seqlens(%{{.+}} : tensor<?xi64>)
// CHECK-SAME: -> tensor<?x8x64xf16>, tensor<?x?xf32>
// CHECK: moba.gate queries(%{{.+}} : tensor<?x?x?xf16>) means(%{{.+}} : tensor<?x?x?xf32>) cu_seqlens(%{{.+}} : tensor<?xi64>) outs(%{{.+}} : tensor<?x?x?xf32>)
// CHECK: moba.lse_merge partials(%{{.+}} : tensor<?x?x?x?xf32>)
func.func @dynamic(%q: tensor<?x?x?xf16>, %k: tensor<?x2x64xf16>, %v: tensor<?x2x?xf16>, %cu: tensor<?xi64>,
                   %m: tensor<?x?x?xf32>, %s0: tensor<?x?x?xf32>, %p: tensor<?x?x?x?xf32>, %pl: tensor<?x?x?xf32>,
                   %o0: tensor<?x?x?xf16>, %l0: tensor<?x?xf32>) {
  %o, %l = moba.attention q(%q : tensor<?x?x?xf16>) k(%k : tensor<?x2x64xf16>) v(%v : tensor<?x2x?xf16>) cu_seqlens(%cu : tensor<?xi64>)
      {block_size = 64, top_k = 3} -> tensor<?x8x64xf16>, tensor<?x?xf32>
  %s = moba.gate queries(%q : tensor<?x?x?xf16>) means(%m : tensor<?x?x?xf32>) cu_seqlens(%cu : tensor<?xi64>) outs(%s0 : tensor<?x?x?xf32>) {block_size = 64}
  %mo, %ml = moba.lse_merge partials(%p : tensor<?x?x?x?xf32>) partial_lse(%pl : tensor<?x?x?xf32>) outs(%o0 : tensor<?x?x?xf16>, %l0 : tensor<?x?xf32>)
  return
}
