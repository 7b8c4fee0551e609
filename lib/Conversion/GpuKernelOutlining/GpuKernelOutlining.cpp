//===- GpuKernelOutlining.cpp - Outlining that keeps launch attributes ----===//
//
// Part of moba-mlir. Implements `moba-gpu-kernel-outlining`: upstream's
// gpu-kernel-outlining, after which the nvvm.* attributes each gpu.launch
// carried are set on the gpu.func it became (upstream drops them), and each
// kernel gets a name PTX can hold (upstream names it after the host
// function, whose MLIR name may hold any character; NVPTX aborts on those).
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"

#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"

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

/// Whether `name` is a PTX identifier: a letter, or `_`, `$` or `%`
/// followed by at least one more character, then letters, digits, `_` and
/// `$`.
bool isPtxIdentifier(StringRef name) {
  if (name.empty())
    return false;
  auto inner = [](char c) { return llvm::isAlnum(c) || c == '_' || c == '$'; };
  char first = name.front();
  if (!llvm::isAlpha(first) &&
      !((first == '_' || first == '$' || first == '%') && name.size() > 1))
    return false;
  return llvm::all_of(name.drop_front(), inner);
}

/// Renames `kernel` to a PTX identifier made from its name (every other
/// character becomes `_`), unique in its gpu.module, and updates its uses
/// under `root`.
LogicalResult renameForPtx(gpu::GPUFuncOp kernel, Operation *root) {
  std::string base = "_";
  for (char c : kernel.getName())
    base += llvm::isAlnum(c) || c == '_' || c == '$' ? c : '_';
  Operation *table = SymbolTable::getNearestSymbolTable(kernel);
  std::string name = base;
  for (int i = 0; SymbolTable::lookupSymbolIn(table, name); ++i)
    name = base + "_" + std::to_string(i);
  auto newName = StringAttr::get(kernel.getContext(), name);
  if (failed(SymbolTable::replaceAllSymbolUses(kernel, newName, root)))
    return kernel.emitOpError("could not be renamed to ") << newName;
  SymbolTable::setSymbolName(kernel, newName);
  return success();
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
      auto kernel = SymbolTable::lookupNearestSymbolFrom<gpu::GPUFuncOp>(
          launch, launch.getKernel());
      if (!kernel) {
        launch.emitOpError("names no gpu.func after outlining");
        return signalPassFailure();
      }
      for (NamedAttribute attribute : attributes)
        kernel->setAttr(attribute.getName(), attribute.getValue());
      if (!isPtxIdentifier(kernel.getName()) &&
          failed(renameForPtx(kernel, module)))
        return signalPassFailure();
    }
  }
};

} // namespace
