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

def MobaConvertGroupedAttentionToNVVM
    : Pass<"moba-convert-grouped-attention-to-nvvm"> {
  let summary = "Grouped block attention on tensor cores (mma.sync)";
  let description = [{
    Lowers every `moba.grouped_block_attention` on buffers (after
    bufferization) to two `gpu.launch`es: one that marks every slot's
    partial empty (log-sum-exp -inf; the output rows of empty slots are
    never read), and the attention kernel, where each
    warp takes 16 consecutive entries of one group (16 queries that chose
    the same key block), computes `Q K^T` and `P V` with `nvvm.mma.sync`
    m16n8k16 (f16 or bf16 operands, f32 accumulation) 16 keys at a time,
    keeps the online softmax in the accumulator fragments, and writes each
    query's normalized partial and log-sum-exp to its slot. Needs f16 or
    bf16, head_dim a static multiple of 16 up to 128, static heads and K;
    runs on sm_80 and newer. Operands are read from global memory (no
    shared-memory staging yet).
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect",
    "::mlir::gpu::GPUDialect",
    "::mlir::LLVM::LLVMDialect",
    "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect",
    "::mlir::NVVM::NVVMDialect",
    "::mlir::scf::SCFDialect",
    "::mlir::vector::VectorDialect",
  ];
}

#endif // MOBA_CONVERSION_PASSES_TD
