//===- moba-opt.cpp - The moba-mlir optimizer driver ----------------------===//
//
// Part of moba-mlir. mlir-opt with the moba dialect and passes, plus every
// upstream dialect, extension and pass, so that one tool runs the whole
// pipeline from moba.attention down to LLVM and NVVM.
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/IR/MobaDialect.h"
#include "moba/Dialect/Moba/Transforms/BufferizableOpInterfaceImpl.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"
#include "moba/Pipelines/Pipelines.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  mlir::moba::registerMobaPasses();
  mlir::moba::registerMobaConversionPasses();
  mlir::moba::registerMobaPipelines();

  mlir::DialectRegistry registry;
  registry.insert<mlir::moba::MobaDialect>();
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  mlir::moba::registerBufferizableOpInterfaceExternalModels(registry);
  // gpu-module-to-binary translates kernels to LLVM IR and on to PTX.
  mlir::registerAllToLLVMIRTranslations(registry);

  return mlir::asMainReturnCode(mlir::MlirOptMain(
      argc, argv, "moba-mlir optimizer driver\n", registry));
}
