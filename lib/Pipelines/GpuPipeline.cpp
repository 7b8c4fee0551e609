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
#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/ADT/StringExtras.h"
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

/// Fails on the ops of the attention backward that the GPU cannot run. The
/// row term and the slot sum become parallel loops on GPU threads; the
/// grouped backward has only its tensor-core lowering, which needs the
/// tensor-core path (mma, with densify) and operands it takes
/// (GroupedBlockAttentionGradOp::isMmaSyncCompatible). moba.attention_grad
/// is checked on its own operands, which its decomposition hands the
/// grouped backward: a clear error here, where the GPU passes would
/// otherwise meet moba ops they do not know.
struct RejectGradientsPass
    : public PassWrapper<RejectGradientsPass, OperationPass<>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(RejectGradientsPass)
  explicit RejectGradientsPass(bool tensorCores) : tensorCores(tensorCores) {}
  StringRef getArgument() const override { return "moba-reject-gradients"; }

  /// Why the grouped backward of q and k cannot run on the GPU, or "".
  std::string whyNot(Type q, Type k) const {
    if (!tensorCores)
      return "the GPU backward runs only on the tensor-core path: "
             "moba-gpu-pipeline needs mma=true and densify=true for it";
    if (!GroupedBlockAttentionGradOp::isMmaSyncCompatible(q, k))
      return "the GPU backward's tensor-core kernel needs f16 or bf16 q, "
             "a static head_dim that is a multiple of 16 up to 128 and "
             "static head counts; got q of type " +
             typeString(q) + " and k of type " + typeString(k) +
             " (moba-cpu-pipeline compiles it)";
    return "";
  }
  static std::string typeString(Type type) {
    std::string text;
    llvm::raw_string_ostream os(text);
    os << type;
    return text;
  }

  void runOnOperation() override {
    WalkResult result = getOperation()->walk([&](Operation *op) {
      std::string problem;
      if (auto grad = dyn_cast<AttentionGradOp>(op))
        problem = whyNot(grad.getQ().getType(), grad.getK().getType());
      else if (auto grad = dyn_cast<GroupedBlockAttentionGradOp>(op))
        problem = whyNot(grad.getQ().getType(), grad.getK().getType());
      if (problem.empty())
        return WalkResult::advance();
      op->emitOpError("has no GPU lowering here: ") << problem;
      return WalkResult::interrupt();
    });
    if (result.wasInterrupted())
      signalPassFailure();
  }

  bool tensorCores;
};

/// Fails on moba ops that are still there once the GPU lowerings and the
/// mapping of the loops have run: an op kept for a kernel that did not take
/// it would otherwise reach the LLVM lowering, which leaves it as it is.
struct RejectUnloweredOpsPass
    : public PassWrapper<RejectUnloweredOpsPass, OperationPass<>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(RejectUnloweredOpsPass)
  StringRef getArgument() const override { return "moba-reject-unlowered"; }
  void runOnOperation() override {
    WalkResult result = getOperation()->walk([](Operation *op) {
      if (!isa<MobaDialect>(op->getDialect()))
        return WalkResult::advance();
      op->emitOpError("is left after the GPU lowerings: no kernel of this "
                      "pipeline took it");
      return WalkResult::interrupt();
    });
    if (result.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace

llvm::Expected<AttentionKernelPlan>
mlir::moba::mmaKernelPlan(const GpuPipelineOptions &options) {
  AttentionKernelPlan plan;
  if (options.mmaPlan.empty()) {
    plan.instruction = options.mmaInstruction.getValue();
    plan.loads = options.mmaKeyValueLoads.getValue();
    plan.schedule = options.mmaSchedule.getValue();
    plan.merge = options.mmaFusedMerge ? MergeMode::Fused : MergeMode::Separate;
    plan.warps = options.mmaWarps;
    plan.keyChunk = options.mmaKeyChunk;
    plan.stages = options.mmaStages;
    return plan;
  }
  // mma-plan stands for the options it holds: one given beside it (not at
  // its default) would be ignored, so it is an error.
  GpuPipelineOptions defaults;
  const char *both =
      options.mmaInstruction.getValue() != defaults.mmaInstruction.getValue()
          ? "mma-instruction"
      : options.mmaKeyValueLoads.getValue() !=
              defaults.mmaKeyValueLoads.getValue()
          ? "mma-key-value-loads"
      : options.mmaSchedule.getValue() != defaults.mmaSchedule.getValue()
          ? "mma-schedule"
      : options.mmaFusedMerge.getValue() != defaults.mmaFusedMerge.getValue()
          ? "mma-fused-merge"
      : options.mmaWarps.getValue() != defaults.mmaWarps.getValue()
          ? "mma-warps"
      : options.mmaKeyChunk.getValue() != defaults.mmaKeyChunk.getValue()
          ? "mma-key-chunk"
      : options.mmaStages.getValue() != defaults.mmaStages.getValue()
          ? "mma-stages"
          : nullptr;
  if (both)
    return llvm::createStringError(llvm::Twine("mma-plan holds ") + both +
                                   ": give one or the other");
  return AttentionKernelPlan::parse(options.mmaPlan);
}

void mlir::moba::setMmaKernelPlan(GpuPipelineOptions &options,
                                  const AttentionKernelPlan &plan) {
  options.mmaPlan = "";
  options.mmaInstruction = plan.instruction;
  options.mmaKeyValueLoads = plan.loads;
  options.mmaSchedule = plan.schedule;
  options.mmaFusedMerge = plan.merge == MergeMode::Fused;
  options.mmaWarps = plan.warps;
  options.mmaKeyChunk = plan.keyChunk;
  options.mmaStages = plan.stages;
}

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
  llvm::Expected<AttentionKernelPlan> plan = mmaKernelPlan(options);
  if (!plan)
    return "moba-gpu-pipeline: " + llvm::toString(plan.takeError());
  SmallVector<std::string> problems =
      plan->problems(StringRef(options.chip), PlanSpelling::PipelineOption);
  if (!problems.empty())
    return "moba-gpu-pipeline: " + llvm::join(problems, "; ") + " (plan " +
           plan->print() + ")";
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
  pm.addPass(std::make_unique<RejectGradientsPass>(options.densify &&
                                                   options.mma));
  // Checked above: the plan parses.
  AttentionKernelPlan plan = cantFail(mmaKernelPlan(options));
  CpuPipelineOptions loops;
  loops.stage = CpuStage::Fused;
  loops.parallel = true;
  loops.tileK = options.tileK;
  loops.densify = options.densify;
  loops.keepMmaCompatibleAttention = options.densify && options.mma;
  loops.keepMmaCompatibleGate = options.mma && options.mmaGate;
  loops.keepWarpCompatibleGrouping = options.densify;
  loops.keepSplitKDecode = options.pagedDecode == PagedDecodeForm::SplitK;
  loops.fuseMerge =
      options.densify && options.mma && plan.merge == MergeMode::Fused;
  buildMobaToLoopsPipeline(pm, loops);
  buildBufferizationPipeline(pm);
  if (loops.keepWarpCompatibleGrouping)
    pm.addPass(createMobaConvertGroupQueriesToNVVM());
  if (loops.keepMmaCompatibleGate)
    pm.addPass(createMobaConvertGateTopKToNVVM());
  if (loops.keepSplitKDecode)
    pm.addPass(createMobaConvertPagedDecodeToNVVM());
  if (options.densify && options.mma) {
    pm.addPass(createMobaConvertGroupedAttentionToNVVM(
        MobaConvertGroupedAttentionToNVVMOptions{plan.warps, plan.keyChunk,
                                                 plan.instruction, plan.loads,
                                                 plan.stages, plan.schedule}));
    // The backward's grouped op, kept like the forward's, on the same
    // tensor cores (mma.sync: its own kernel shapes, not the forward's plan).
    pm.addPass(createMobaConvertGroupedAttentionGradToNVVM());
  }
  pm.addPass(createMobaMapForallToGpu(
      MobaMapForallToGpuOptions{options.threadsPerBlock}));
  pm.addPass(std::make_unique<RejectUnloweredOpsPass>());
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
  target.features = plan.usesTma() ? withPtxAtLeast(options.features, 83)
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
