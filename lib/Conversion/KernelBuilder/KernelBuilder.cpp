//===- KernelBuilder.cpp - Helpers for emitting NVVM kernels --------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "KernelBuilder/KernelBuilder.h"

using namespace mlir;

void mlir::moba::nvvm_kernel::launch(
    ImplicitLocOpBuilder &b, Value blocks, int64_t threads, Value sharedBytes,
    TypeRange workgroup,
    function_ref<void(ImplicitLocOpBuilder &, gpu::LaunchOp)> build) {
  Value one = arith::ConstantIndexOp::create(b, 1);
  Value threadCount = arith::ConstantIndexOp::create(b, threads);
  auto op = gpu::LaunchOp::create(b, blocks, one, one, threadCount, one, one,
                                  sharedBytes, /*asyncTokenType=*/nullptr,
                                  /*asyncDependencies=*/{}, workgroup);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&op.getBody().front());
  build(b, op);
  gpu::TerminatorOp::create(b);
}
