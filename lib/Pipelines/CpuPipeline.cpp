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
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Regex.h"

#include <cstdlib>

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
  if (options.stage != CpuStage::Decomposed)
    pm.addPass(createMobaTileAttention(MobaTileAttentionOptions{
        options.tileQ, options.tileK, options.parallel}));
  pm.addPass(createMobaLowerToLoops(MobaLowerToLoopsOptions{options.parallel}));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
}

void mlir::moba::buildBufferizationPipeline(OpPassManager &pm) {
  // Scratch tensors that end up materialized into a destination (the
  // caller's output buffers) become that destination: no copy.
  pm.addPass(bufferization::createEmptyTensorEliminationPass());
  bufferization::OneShotBufferizePassOptions bufferize;
  bufferize.bufferizeFunctionBoundaries = true;
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

namespace {

/// Stands in for a pipeline whose options are wrong: reports them as an
/// error on the module instead of building passes from them (a pipeline
/// builder cannot fail).
struct RejectOptionsPass
    : public PassWrapper<RejectOptionsPass, OperationPass<>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(RejectOptionsPass)
  explicit RejectOptionsPass(std::string message)
      : message(std::move(message)) {}
  StringRef getArgument() const override { return "moba-reject-options"; }
  void runOnOperation() override {
    getOperation()->emitError() << message;
    signalPassFailure();
  }
  std::string message;
};

/// Why the GPU options are unusable, or "" when they are fine.
std::string checkGpuOptions(const GpuPipelineOptions &options) {
  static const llvm::Regex chip("^sm_[0-9]+[af]?$");
  static const llvm::Regex features("^(\\+[a-z0-9]+)*$");
  static const char *formats[] = {"isa", "bin", "fatbin"};
  if (!chip.match(options.chip))
    return "moba-gpu-pipeline: chip must look like sm_80 or sm_90a, got '" +
           options.chip + "'";
  if (!features.match(options.features))
    return "moba-gpu-pipeline: features must look like +ptx80, got '" +
           options.features + "'";
  if (!llvm::is_contained(formats, StringRef(options.format)))
    return "moba-gpu-pipeline: format must be isa, bin or fatbin, got '" +
           options.format + "'";
  if (options.threadsPerBlock < 1 || options.threadsPerBlock > 1024)
    return "moba-gpu-pipeline: threads-per-block must be in [1, 1024], got " +
           std::to_string(options.threadsPerBlock);
  static const llvm::Regex path("^[A-Za-z0-9_./+-]*$");
  if (!path.match(options.toolkit))
    return "moba-gpu-pipeline: toolkit must be a plain path, got '" +
           options.toolkit + "'";
  if (options.tileK < 1)
    return "moba-gpu-pipeline: tile-k must be at least 1, got " +
           std::to_string(options.tileK);
  return "";
}

} // namespace

void mlir::moba::buildMobaGpuPipeline(OpPassManager &pm,
                                      const GpuPipelineOptions &options) {
  if (std::string problem = checkGpuOptions(options); !problem.empty()) {
    pm.addPass(std::make_unique<RejectOptionsPass>(problem));
    return;
  }
  CpuPipelineOptions loops;
  loops.stage = CpuStage::Fused;
  loops.parallel = true;
  loops.tileK = options.tileK;
  buildMobaToLoopsPipeline(pm, loops);
  buildBufferizationPipeline(pm);
  pm.addPass(createMobaMapForallToGpu(
      MobaMapForallToGpuOptions{options.threadsPerBlock}));
  pm.addPass(createCanonicalizerPass());
  // What the upstream NVVM pipeline does not lower itself: ceil-division and
  // unsigned min/max (arith-expand), and vector transfers (to scf + loads).
  pm.addPass(arith::createArithExpandOpsPass());
  pm.addPass(createConvertVectorToSCFPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  // Outline, lower to NVVM, and serialize. The order is upstream's
  // gpu-lower-to-nvvm-pipeline, plus a reconcile-unrealized-casts on the GPU
  // modules right before serialization: in LLVM 22 the outlined kernels keep
  // dead casts of unused arguments, which the NVVM translation rejects.
  // libdevice (exp, log) is linked from the toolkit, and ptxas found there.
  std::string toolkit = options.toolkit;
  if (toolkit.empty()) {
    const char *home = std::getenv("CUDA_HOME");
    toolkit = home && *home ? home : "/usr/local/cuda";
  }
  std::string nvvm = llvm::formatv(
      "gpu-kernel-outlining, convert-scf-to-cf, convert-nvvm-to-llvm, "
      "convert-func-to-llvm, expand-strided-metadata, "
      "nvvm-attach-target{{chip={0} features={1} O=3}, lower-affine, "
      "convert-arith-to-llvm, convert-index-to-llvm, canonicalize, cse, "
      "gpu.module(convert-gpu-to-nvvm, canonicalize, cse, "
      "reconcile-unrealized-casts), "
      "gpu-to-llvm, reconcile-unrealized-casts, "
      "gpu.module(reconcile-unrealized-casts), "
      "gpu-module-to-binary{{format={2} toolkit={3}}, convert-math-to-llvm, "
      "canonicalize, cse, reconcile-unrealized-casts",
      std::string(options.chip), std::string(options.features),
      std::string(options.format), toolkit);
  if (failed(parsePassPipeline(nvvm, pm)))
    llvm::report_fatal_error("moba-gpu-pipeline: invalid NVVM pipeline");
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
