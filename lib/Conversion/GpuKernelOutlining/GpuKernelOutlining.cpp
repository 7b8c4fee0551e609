//===- GpuKernelOutlining.cpp - Outlining that keeps launch attributes ----===//
//
// Part of moba-mlir. Implements `moba-gpu-kernel-outlining`: upstream's
// gpu-kernel-outlining, after which the nvvm.* attributes each gpu.launch
// carried are set on the gpu.func it became (upstream drops them).
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"

#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBAGPUKERNELOUTLINING
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;

namespace {

/// The launch's discardable attributes of the NVVM dialect.
DictionaryAttr nvvmAttributes(gpu::LaunchOp launch) {
  NamedAttrList kept;
  StringRef prefix = NVVM::NVVMDialect::getDialectNamespace();
  for (NamedAttribute attribute : launch->getDiscardableAttrs())
    if (attribute.getName().strref().starts_with((prefix + ".").str()))
      kept.push_back(attribute);
  return kept.getDictionary(launch->getContext());
}

struct MobaGpuKernelOutliningPass
    : public moba::impl::MobaGpuKernelOutliningBase<
          MobaGpuKernelOutliningPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    // Upstream's pass replaces each launch it outlines by a launch_func in
    // the same place, so the new launch_funcs, in walk order, are the
    // outlined launches in walk order. Launches it leaves alone (outside a
    // top-level function) and launch_funcs already present are set aside.
    llvm::SmallPtrSet<Operation *, 8> launchedBefore;
    module.walk([&](gpu::LaunchFuncOp op) { launchedBefore.insert(op); });
    SmallVector<std::pair<Operation *, DictionaryAttr>> launches;
    module.walk([&](gpu::LaunchOp op) {
      launches.emplace_back(op, nvvmAttributes(op));
    });

    OpPassManager outlining(ModuleOp::getOperationName());
    outlining.addPass(createGpuKernelOutliningPass());
    if (failed(runPipeline(outlining, module)))
      return signalPassFailure();

    // A launch still there was not outlined (no pointer is reused for a
    // new gpu.launch: the pass creates none).
    llvm::SmallPtrSet<Operation *, 8> remaining;
    module.walk([&](gpu::LaunchOp op) { remaining.insert(op); });
    SmallVector<DictionaryAttr> outlined;
    for (auto &[op, attributes] : launches)
      if (!remaining.contains(op))
        outlined.push_back(attributes);
    SmallVector<gpu::LaunchFuncOp> launched;
    module.walk([&](gpu::LaunchFuncOp op) {
      if (!launchedBefore.contains(op))
        launched.push_back(op);
    });
    if (launched.size() != outlined.size()) {
      module.emitError() << "moba-gpu-kernel-outlining: " << outlined.size()
                         << " launches were outlined into "
                         << launched.size() << " launch_func ops";
      return signalPassFailure();
    }
    for (auto [launch, attributes] : llvm::zip_equal(launched, outlined)) {
      if (attributes.empty())
        continue;
      auto kernel = SymbolTable::lookupNearestSymbolFrom<gpu::GPUFuncOp>(
          launch, launch.getKernel());
      if (!kernel) {
        launch.emitOpError("names no gpu.func after outlining");
        return signalPassFailure();
      }
      for (NamedAttribute attribute : attributes)
        kernel->setAttr(attribute.getName(), attribute.getValue());
    }
  }
};

} // namespace
