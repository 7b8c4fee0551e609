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
