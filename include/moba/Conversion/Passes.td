//===- Passes.td - moba conversion passes ------------------*- tablegen -*-===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_CONVERSION_PASSES_TD
#define MOBA_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def MobaMapForallToGpu : Pass<"moba-map-forall-to-gpu"> {
  let summary = "Map the parallel loops of bufferized moba code onto GPU threads";
  let description = [{
    Turns every outermost `scf.forall` on buffers (as `moba-lower-to-loops`
    and `moba-tile-attention` emit with `parallel`) into one `gpu.launch`:
    the iteration space is linearized, `threads-per-block` threads per block,
    as many blocks as it takes, each thread running one iteration (the ones
    past the end do nothing). Buffers the host function allocates
    (`memref.alloc`, the decomposition's scratch tensors such as block means
    and selections) become device allocations, since only kernels touch them:
    `gpu.alloc async` on a stream of its own that is waited for (the form
    gpu-to-llvm lowers to runtime calls), and likewise `gpu.dealloc`.

    This is the SIMT baseline of the GPU backend: one thread per (token,
    head) row, no tensor cores.
  }];
  let options = [
    Option<"threadsPerBlock", "threads-per-block", "int64_t", /*default=*/"128",
           "Threads of each block">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::scf::SCFDialect",
  ];
}

#endif // MOBA_CONVERSION_PASSES_TD
