// RUN: moba-opt %s --moba-map-forall-to-gpu="threads-per-block=64" --canonicalize | FileCheck %s
// RUN: not moba-opt %s --moba-map-forall-to-gpu="threads-per-block=2048" 2>&1 | FileCheck %s --check-prefix=BAD

// BAD: error: moba-map-forall-to-gpu: threads-per-block must be in [1, 1024], got 2048

// A 2-D parallel loop over (rows, 4) becomes one launch of 64-thread blocks
// over the linearized space, with the iterations past the end masked off;
// the host's scratch buffer becomes a device allocation (on a stream of its
// own, waited for, which is what gpu-to-llvm lowers).

// CHECK-LABEL: func @rows
// CHECK-SAME: (%[[OUT:[^:]+]]: memref<?x4xf32>, %[[N:[^:]+]]: index)
// CHECK-DAG: %[[C64:.+]] = arith.constant 64 : index
// CHECK-DAG: %[[C4:.+]] = arith.constant 4 : index
// CHECK: %[[START:.+]] = gpu.wait async
// CHECK: %[[SCRATCH:.+]], %[[READY:.+]] = gpu.alloc async [%[[START]]] (%[[N]]) : memref<?x4xf32>
// CHECK: gpu.wait [%[[READY]]]
// CHECK: %[[TOTAL:.+]] = arith.muli %[[N]], %[[C4]] : index
// CHECK: %[[BLOCKS0:.+]] = arith.ceildivui %[[TOTAL]], %[[C64]] : index
// CHECK: %[[BLOCKS:.+]] = arith.maxui %[[BLOCKS0]], %{{.+}} : index
// CHECK: gpu.launch blocks(%[[BX:[^,]+]], %{{[^,]+}}, %{{[^)]+}}) in (%{{[^ ]+}} = %[[BLOCKS]], %{{.+}}) threads(%[[TX:[^,]+]], %{{[^,]+}}, %{{[^)]+}}) in (%{{[^ ]+}} = %[[C64]],
// CHECK:   %[[BASE:.+]] = arith.muli %[[BX]], %[[C64]] : index
// CHECK:   %[[ID:.+]] = arith.addi %[[BASE]], %[[TX]] : index
// CHECK:   %[[IN:.+]] = arith.cmpi ult, %[[ID]], %[[TOTAL]] : index
// CHECK:   scf.if %[[IN]] {
// CHECK:     %[[H:.+]] = arith.remui %[[ID]], %[[C4]] : index
// CHECK:     %[[ROW:.+]] = arith.divui %[[ID]], %[[C4]] : index
// CHECK:     memref.store %{{.+}}, %[[SCRATCH]][%[[ROW]], %[[H]]]
// CHECK:     memref.store %{{.+}}, %[[OUT]][%[[ROW]], %[[H]]]
// CHECK:   gpu.terminator
// CHECK: %[[FREE:.+]] = gpu.wait async
// CHECK: %[[FREED:.+]] = gpu.dealloc async [%[[FREE]]] %[[SCRATCH]] : memref<?x4xf32>
// CHECK: gpu.wait [%[[FREED]]]
// CHECK-NOT: scf.forall
func.func @rows(%out: memref<?x4xf32>, %n: index) {
  %scratch = memref.alloc(%n) : memref<?x4xf32>
  scf.forall (%i, %h) in (%n, 4) {
    %x = arith.index_cast %h : index to i32
    %f = arith.sitofp %x : i32 to f32
    memref.store %f, %scratch[%i, %h] : memref<?x4xf32>
    memref.store %f, %out[%i, %h] : memref<?x4xf32>
  }
  memref.dealloc %scratch : memref<?x4xf32>
  return
}

// Functions that launch nothing keep their host allocations.
// CHECK-LABEL: func @host_only
// CHECK: memref.alloc
// CHECK-NOT: gpu.alloc
func.func @host_only(%n: index) -> memref<?xf32> {
  %a = memref.alloc(%n) : memref<?xf32>
  return %a : memref<?xf32>
}
