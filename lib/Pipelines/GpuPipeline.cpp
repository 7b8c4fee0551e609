//===- GpuPipeline.cpp - moba.attention to host code and NVVM kernels -----===//
//
// Part of moba-mlir. The GPU pipeline reuses the CPU pipeline's lowering to
// parallel loops and its bufferization, maps the loops onto GPU launches, and
// then runs upstream's NVVM lowering and serialization, built pass by pass
// (not parsed from text) so that it needs no pass registry: the runner and
// the standalone C library build it too.
//
//===----------------------------------------------------------------------===//

#include "moba/Pipelines/Pipelines.h"

#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/IR/MobaDialect.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/Support/Regex.h"

#include <cstdlib>

using namespace mlir;
using namespace mlir::moba;

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

/// Whether the attention's K and V come by TMA (alone or multicast).
bool usesTma(const GpuPipelineOptions &options) {
  return options.mmaKeyValueLoads == "tma" ||
         options.mmaKeyValueLoads == "tma-multicast";
}

} // namespace

std::string mlir::moba::checkGpuPipelineOptions(
    const GpuPipelineOptions &options) {
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
  if (options.mma && !options.densify)
    return "moba-gpu-pipeline: mma needs densify (the tensor-core kernel "
           "attends the densified groups)";
  if (options.mmaWarps < 1 || options.mmaWarps > 16)
    return "moba-gpu-pipeline: mma-warps must be in [1, 16], got " +
           std::to_string(options.mmaWarps);
  if (options.mmaKeyChunk < 16 || options.mmaKeyChunk > 256 ||
      options.mmaKeyChunk % 16 != 0)
    return "moba-gpu-pipeline: mma-key-chunk must be a multiple of 16 in "
           "[16, 256], got " +
           std::to_string(options.mmaKeyChunk);
  if (options.mmaInstruction != "mma.sync" &&
      options.mmaInstruction != "wgmma")
    return "moba-gpu-pipeline: mma-instruction must be mma.sync or wgmma, "
           "got '" +
           options.mmaInstruction + "'";
  if (options.mmaInstruction == "wgmma") {
    // wgmma is sm_90a's alone: later chips have other matrix instructions.
    if (options.chip != "sm_90a")
      return "moba-gpu-pipeline: mma-instruction=wgmma needs chip sm_90a, "
             "got '" +
             options.chip + "'";
    if (options.mmaWarps % 4 != 0 || options.mmaKeyChunk % 64 != 0)
      return "moba-gpu-pipeline: mma-instruction=wgmma needs mma-warps a "
             "multiple of 4 and mma-key-chunk a multiple of 64, got " +
             std::to_string(options.mmaWarps) + " and " +
             std::to_string(options.mmaKeyChunk);
  }
  bool tma = usesTma(options);
  if (options.mmaKeyValueLoads != "cp.async" && !tma)
    return "moba-gpu-pipeline: mma-key-value-loads must be cp.async, tma or "
           "tma-multicast, got '" +
           options.mmaKeyValueLoads + "'";
  if (tma && options.mmaInstruction != "wgmma")
    return "moba-gpu-pipeline: mma-key-value-loads=" +
           options.mmaKeyValueLoads +
           " needs mma-instruction=wgmma, got '" + options.mmaInstruction +
           "'";
  if (options.mmaStages < 2 || options.mmaStages > 4 ||
      (options.mmaStages > 2 && !tma))
    return "moba-gpu-pipeline: mma-stages must be 2, or up to 4 with "
           "mma-key-value-loads=tma or tma-multicast, got " +
           std::to_string(options.mmaStages);
  if (options.tileK < 1 || options.tileK > kMaxTileKeys)
    return "moba-gpu-pipeline: tile-k must be in [1, " +
           std::to_string(kMaxTileKeys) + "] (keys scored as one vector), got " +
           std::to_string(options.tileK);
  return "";
}

/// `features` (checked: "+a+b...") with its PTX ISA version raised to
/// `version` (83: 8.3) where it names a lower one or none: the tensormap
/// proxy fences of TMA (fence.proxy.tensormap::generic) need PTX 8.3.
static std::string withPtxAtLeast(llvm::StringRef features, int version) {
  SmallVector<StringRef> parts;
  features.split(parts, '+', /*MaxSplit=*/-1, /*KeepEmpty=*/false);
  std::string result;
  bool named = false;
  for (StringRef part : parts) {
    StringRef digits = part;
    int namedVersion = 0;
    if (digits.consume_front("ptx") && !digits.getAsInteger(10, namedVersion)) {
      named = true;
      result += "+ptx" + std::to_string(std::max(namedVersion, version));
      continue;
    }
    result += "+" + part.str();
  }
  if (!named)
    result += "+ptx" + std::to_string(version);
  return result;
}

std::string mlir::moba::cudaToolkitPath(llvm::StringRef requested) {
  if (!requested.empty())
    return requested.str();
  const char *home = std::getenv("CUDA_HOME");
  return home && *home ? home : "/usr/local/cuda";
}

void mlir::moba::buildMobaGpuPipeline(OpPassManager &pm,
                                      const GpuPipelineOptions &options) {
  if (std::string problem = checkGpuPipelineOptions(options);
      !problem.empty()) {
    pm.addPass(std::make_unique<RejectOptionsPass>(problem));
    return;
  }
  CpuPipelineOptions loops;
  loops.stage = CpuStage::Fused;
  loops.parallel = true;
  loops.tileK = options.tileK;
  loops.densify = options.densify;
  loops.keepMmaCompatibleAttention = options.densify && options.mma;
  loops.keepMmaCompatibleGate = options.mma && options.mmaGate;
  loops.keepWarpCompatibleGrouping = options.densify;
  loops.fuseMerge = options.densify && options.mma && options.mmaFusedMerge;
  buildMobaToLoopsPipeline(pm, loops);
  buildBufferizationPipeline(pm);
  if (loops.keepWarpCompatibleGrouping)
    pm.addPass(createMobaConvertGroupQueriesToNVVM());
  if (loops.keepMmaCompatibleGate)
    pm.addPass(createMobaConvertGateTopKToNVVM());
  if (options.densify && options.mma)
    pm.addPass(createMobaConvertGroupedAttentionToNVVM(
        MobaConvertGroupedAttentionToNVVMOptions{
            options.mmaWarps, options.mmaKeyChunk, options.mmaInstruction,
            options.mmaKeyValueLoads, options.mmaStages}));
  pm.addPass(createMobaMapForallToGpu(
      MobaMapForallToGpuOptions{options.threadsPerBlock}));
  pm.addPass(createCanonicalizerPass());
  // Rows of q, k, v, out and of device allocations start 16-byte aligned
  // (the runner checks the caller's): whole-row vector transfers become
  // aligned loads and stores, 16 bytes per instruction in the kernels.
  pm.addPass(createMobaAlignRowAccesses());
  // What the upstream NVVM pipeline does not lower itself: ceil-division and
  // unsigned min/max (arith-expand), and vector transfers (to scf + loads).
  pm.addPass(arith::createArithExpandOpsPass());
  pm.addPass(createConvertVectorToSCFPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  // The tensor-core kernel's ldmatrix and cp.async (nvgpu) become NVVM
  // before outlining, as in upstream's gpu-lower-to-nvvm-pipeline.
  pm.addPass(createConvertNVGPUToNVVMPass());

  // Outline, lower to NVVM, and serialize, in the order of upstream's
  // gpu-lower-to-nvvm-pipeline, plus a reconcile-unrealized-casts on the GPU
  // modules right before serialization: in LLVM 22 the outlined kernels keep
  // dead casts of unused arguments, which the NVVM translation rejects.
  //
  // Constants and index computations used in a launch body but defined
  // outside it (the canonicalizer hoists every constant to the function's
  // entry) are sunk into it first: outlining would otherwise pass each one
  // as a kernel parameter, and the NVPTX backend, which cannot see through
  // a parameter, would emit real 64-bit divisions and multiplications for
  // what are divisions by 2 or 64 (the attention kernel took 59 parameters,
  // 26 of them constants).
  pm.addPass(createGpuLaunchSinkIndexComputationsPass());
  pm.addPass(createMobaGpuKernelOutlining());
  pm.addPass(createSCFToControlFlowPass());
  pm.addPass(createConvertNVVMToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  GpuNVVMAttachTargetOptions target;
  target.chip = options.chip;
  target.features = usesTma(options)
                        ? withPtxAtLeast(options.features, 83)
                        : std::string(options.features);
  target.optLevel = 3;
  pm.addPass(createGpuNVVMAttachTarget(target));
  pm.addPass(createLowerAffinePass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  OpPassManager &kernels = pm.nest<gpu::GPUModuleOp>();
  kernels.addPass(createConvertGpuOpsToNVVMOps());
  kernels.addPass(createCanonicalizerPass());
  kernels.addPass(createCSEPass());
  kernels.addPass(createReconcileUnrealizedCastsPass());
  pm.addPass(createGpuToLLVMConversionPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createReconcileUnrealizedCastsPass());
  // libdevice (exp, log) is linked from the toolkit, and ptxas (format=bin
  // or fatbin) found there; format=isa needs neither ptxas nor a toolkit
  // unless a kernel calls libdevice.
  GpuModuleToBinaryPassOptions binary;
  binary.compilationTarget = options.format;
  binary.toolkitPath = cudaToolkitPath(options.toolkit);
  pm.addPass(createGpuModuleToBinaryPass(binary));
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
}
