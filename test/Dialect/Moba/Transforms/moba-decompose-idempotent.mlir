// Decomposed IR has nothing left to decompose: a second run changes nothing,
// and the pass leaves the decomposed ops and other dialects alone.
// RUN: moba-opt %S/../../../../examples/moba_attention.mlir --moba-decompose > %t.once.mlir
// RUN: moba-opt %t.once.mlir --moba-decompose > %t.twice.mlir
// RUN: diff %t.once.mlir %t.twice.mlir
// RUN: FileCheck %s < %t.twice.mlir
// CHECK-NOT: moba.attention
// CHECK: moba.sparse_attention
