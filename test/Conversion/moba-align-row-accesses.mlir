// RUN: moba-opt %s --split-input-file --moba-align-row-accesses | FileCheck %s
// RUN: moba-opt %s --split-input-file --moba-align-row-accesses=alignment=8 | FileCheck %s --check-prefix=EIGHT
// RUN: not moba-opt %s --split-input-file --moba-align-row-accesses=alignment=12 2>&1 | FileCheck %s --check-prefix=BAD

// BAD: moba-align-row-accesses: alignment must be a power of two, got 12

// Whole rows of identity-layout buffers: a row of 128 f32 (512 bytes) or
// 128 bf16 (256 bytes) starts 16-byte aligned.
// CHECK-LABEL: func.func @rows
// CHECK: vector.load %{{.+}}[%{{.+}}, %{{.+}}, %{{.+}}] {alignment = 16 : i64} : memref<?x8x128xf32>, vector<128xf32>
// CHECK: vector.store %{{.+}}, %{{.+}}[%{{.+}}, %{{.+}}] {alignment = 16 : i64} : memref<?x128xbf16>, vector<128xbf16>
// CHECK-NOT: vector.transfer
// EIGHT-LABEL: func.func @rows
// EIGHT: vector.load {{.+}} {alignment = 8 : i64}
func.func @rows(%m: memref<?x8x128xf32>, %o: memref<?x128xbf16>, %i: index, %g: index) {
  %c0 = arith.constant 0 : index
  %pad = arith.constant 0.0 : f32
  %r = vector.transfer_read %m[%i, %g, %c0], %pad {in_bounds = [true]} : memref<?x8x128xf32>, vector<128xf32>
  %b = arith.truncf %r : vector<128xf32> to vector<128xbf16>
  vector.transfer_write %b, %o[%i, %c0] {in_bounds = [true]} : vector<128xbf16>, memref<?x128xbf16>
  return
}

// -----

// Not provably aligned, left alone: a row that does not start at column 0;
// rows 12 bytes apart; a dynamic stride; a vector of 12 bytes.
// CHECK-LABEL: func.func @unaligned
// CHECK-NOT: vector.load
// CHECK-COUNT-4: vector.transfer_read
// CHECK-NOT: vector.load
func.func @unaligned(%m: memref<?x128xf32>, %n: memref<?x3xf32>,
                     %s: memref<?x128xf32, strided<[?, 1]>>, %i: index, %j: index)
    -> (vector<4xf32>, vector<3xf32>, vector<128xf32>, vector<3xf32>) {
  %c0 = arith.constant 0 : index
  %pad = arith.constant 0.0 : f32
  %a = vector.transfer_read %m[%i, %j], %pad {in_bounds = [true]} : memref<?x128xf32>, vector<4xf32>
  %b = vector.transfer_read %n[%i, %c0], %pad {in_bounds = [true]} : memref<?x3xf32>, vector<3xf32>
  %c = vector.transfer_read %s[%i, %c0], %pad {in_bounds = [true]} : memref<?x128xf32, strided<[?, 1]>>, vector<128xf32>
  %e = vector.transfer_read %m[%i, %c0], %pad {in_bounds = [true]} : memref<?x128xf32>, vector<3xf32>
  return %a, %b, %c, %e : vector<4xf32>, vector<3xf32>, vector<128xf32>, vector<3xf32>
}

// -----

// Starts inside a row that are provably aligned: a column 4 * i (16 bytes
// of f32), an affine 8 * i + 4 (16 bytes of bf16, 8 aligned), and a
// subview of 1 x 1 x 4 at such a column (the merge's 8-byte bf16 store),
// folded into the buffer first. A dynamic outer stride of an identity
// layout is a multiple of the static sizes inside it (32 x 128).
// CHECK-LABEL: func.func @columns
// CHECK: %[[D:.+]] = arith.muli %{{.+}}, %c4
// CHECK: vector.load %{{.+}}[%{{.+}}, %{{.+}}, %{{.+}}, %[[D]]] {alignment = 16 : i64} : memref<3x?x32x128xf32>, vector<4xf32>
// CHECK: vector.load %{{.+}}[%{{.+}}, %{{.+}}] {alignment = 8 : i64} : memref<?x128xbf16>, vector<8xbf16>
// CHECK: vector.store %{{.+}}, %{{.+}}[%{{.+}}, %{{.+}}, %[[D]]] {alignment = 8 : i64} : memref<?x32x128xbf16>, vector<4xbf16>
// CHECK-NOT: vector.transfer
// EIGHT-LABEL: func.func @columns
// EIGHT: vector.load {{.+}} {alignment = 8 : i64} : memref<3x?x32x128xf32>, vector<4xf32>
func.func @columns(%p: memref<3x?x32x128xf32>, %b: memref<?x128xbf16>, %o: memref<?x32x128xbf16>,
                   %t: index, %h: index, %i: index) -> (vector<4xf32>, vector<8xbf16>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  %f = arith.constant 0.0 : f32
  %g = arith.constant 0.0 : bf16
  %d = arith.muli %i, %c4 : index
  %r = vector.transfer_read %p[%c1, %t, %h, %d], %f {in_bounds = [true]} : memref<3x?x32x128xf32>, vector<4xf32>
  %e = affine.apply affine_map<(x) -> (x * 8 + 4)>(%i)
  %s = vector.transfer_read %b[%t, %e], %g {in_bounds = [true]} : memref<?x128xbf16>, vector<8xbf16>
  %v = arith.truncf %r : vector<4xf32> to vector<4xbf16>
  %slice = memref.subview %o[%t, %h, %d] [1, 1, 4] [1, 1, 1] : memref<?x32x128xbf16> to memref<1x1x4xbf16, strided<[4096, 128, 1], offset: ?>>
  vector.transfer_write %v, %slice[%c0, %c0, %c0] {in_bounds = [true]} : vector<4xbf16>, memref<1x1x4xbf16, strided<[4096, 128, 1], offset: ?>>
  return %r, %s : vector<4xf32>, vector<8xbf16>
}

// -----

// Weaker starts: a column 2 * i of f32 is 8-byte aligned, no more; i + 4
// is only 4-byte aligned (an element), left alone.
// CHECK-LABEL: func.func @weak_columns
// CHECK: vector.load %{{.+}} {alignment = 8 : i64} : memref<?x128xf32>, vector<4xf32>
// CHECK: vector.transfer_read
func.func @weak_columns(%m: memref<?x128xf32>, %t: index, %i: index) -> (vector<4xf32>, vector<4xf32>) {
  %c2 = arith.constant 2 : index
  %c4 = arith.constant 4 : index
  %f = arith.constant 0.0 : f32
  %d = arith.muli %i, %c2 : index
  %a = vector.transfer_read %m[%t, %d], %f {in_bounds = [true]} : memref<?x128xf32>, vector<4xf32>
  %e = arith.addi %i, %c4 : index
  %b = vector.transfer_read %m[%t, %e], %f {in_bounds = [true]} : memref<?x128xf32>, vector<4xf32>
  return %a, %b : vector<4xf32>, vector<4xf32>
}
