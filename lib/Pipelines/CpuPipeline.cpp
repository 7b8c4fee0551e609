//===- CpuPipeline.cpp - moba.attention to LLVM for the host CPU ----------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Pipelines/Pipelines.h"

#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/Bufferization/Pipelines/Passes.h"
#include "mlir/Dialect/Bufferization/Transforms/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Dialect/SCF/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"


using namespace mlir;
using namespace mlir::moba;

llvm::StringRef mlir::moba::cpuStageName(CpuStage stage) {
  switch (stage) {
  case CpuStage::Decomposed:
    return "decomposed";
  case CpuStage::Tiled:
    return "tiled";
  case CpuStage::Fused:
    return "fused";
  }
  llvm_unreachable("unknown CPU stage");
}

std::optional<CpuStage> mlir::moba::parseCpuStage(llvm::StringRef name) {
  for (CpuStage stage : {CpuStage::Decomposed, CpuStage::Tiled, CpuStage::Fused})
    if (name == cpuStageName(stage))
      return stage;
  return std::nullopt;
}

void mlir::moba::buildMobaToLoopsPipeline(OpPassManager &pm,
                                          const CpuPipelineOptions &options) {
  pm.addPass(createMobaDecompose());
  pm.addPass(createCanonicalizerPass());
  if (options.stage == CpuStage::Fused)
    pm.addPass(createMobaFuseGateTopK());
  if (options.densify)
    pm.addPass(createMobaDensifyAttention());
  if (options.densify && options.fuseMerge)
    pm.addPass(createMobaFuseLseMerge());
  if (options.stage != CpuStage::Decomposed)
    pm.addPass(createMobaTileAttention(MobaTileAttentionOptions{
        options.tileQ, options.tileK, options.parallel}));
  pm.addPass(createMobaLowerToLoops(MobaLowerToLoopsOptions{
      options.parallel, options.keepMmaCompatibleAttention,
      options.keepMmaCompatibleGate, options.keepWarpCompatibleGrouping,
      options.keepSplitKDecode}));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
}

void mlir::moba::buildBufferizationPipeline(OpPassManager &pm) {
  // Scratch tensors that end up materialized into a destination (the
  // caller's output buffers) become that destination: no copy.
  pm.addPass(bufferization::createEmptyTensorEliminationPass());
  bufferization::OneShotBufferizePassOptions bufferize;
  bufferize.bufferizeFunctionBoundaries = true;
  // Tensor arguments become plain row-major buffers (the C interface the
  // runners call passes such buffers), not buffers of unknown strides:
  // kernels that load pairs of elements as one word need contiguous rows.
  bufferize.functionBoundaryTypeConversion =
      bufferization::LayoutMapOption::IdentityLayoutMap;
  pm.addPass(bufferization::createOneShotBufferizePass(bufferize));
  // Row slices of parallel loops bufferize to copies of a view onto itself;
  // CSE makes the two views one, and the canonicalizer drops the copy.
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addPass(createCanonicalizerPass());
  bufferization::BufferDeallocationPipelineOptions dealloc;
  bufferization::buildBufferDeallocationPipeline(pm, dealloc);
}

void mlir::moba::buildLoopsToLLVMPipeline(OpPassManager &pm) {
  buildBufferizationPipeline(pm);
  // Parallel loops (the GPU form) run one iteration after another here.
  pm.addPass(createForallToForLoopPass());
  pm.addPass(createConvertLinalgToLoopsPass());
  pm.addPass(createConvertVectorToSCFPass());
  pm.addPass(createSCFToControlFlowPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  // bf16 has no arithmetic on the host: extend and truncate with integer
  // ops (round to nearest even), compute in f32.
  arith::ArithExpandOpsPassOptions expand;
  expand.includeBf16 = true;
  pm.addPass(arith::createArithExpandOpsPass(expand));
  pm.addPass(createConvertVectorToLLVMPass());
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
  pm.addPass(createCanonicalizerPass());
}

void mlir::moba::buildMobaCpuPipeline(OpPassManager &pm,
                                      const CpuPipelineOptions &options) {
  buildMobaToLoopsPipeline(pm, options);
  buildLoopsToLLVMPipeline(pm);
}

void mlir::moba::registerMobaPipelines() {
  PassPipelineRegistration<GpuPipelineOptions>(
      "moba-gpu-pipeline",
      "moba.attention to host LLVM code and an embedded NVVM GPU binary",
      buildMobaGpuPipeline);
  PassPipelineRegistration<CpuPipelineOptions>(
      "moba-to-loops",
      "moba.attention to loops on tensors (decompose, tile, fuse, lower)",
      buildMobaToLoopsPipeline);
  PassPipelineRegistration<CpuPipelineOptions>(
      "moba-cpu-pipeline",
      "moba.attention to the LLVM dialect for the host CPU",
      buildMobaCpuPipeline);
}
