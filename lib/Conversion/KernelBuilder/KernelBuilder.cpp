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

void mlir::moba::nvvm_kernel::launchPerItem(
    ImplicitLocOpBuilder &b, Value count, int64_t threads,
    function_ref<void(ImplicitLocOpBuilder &, Value)> build) {
  Value perCta = arith::ConstantIndexOp::create(b, threads);
  Value ctas = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, count, perCta),
      arith::ConstantIndexOp::create(b, 1));
  launch(b, ctas, threads, /*sharedBytes=*/nullptr, /*workgroup=*/{},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
           Value linear = arith::AddIOp::create(
               kb, arith::MulIOp::create(kb, op.getBlockIds().x, perCta),
               op.getThreadIds().x);
           auto inRange = scf::IfOp::create(
               kb,
               arith::CmpIOp::create(kb, arith::CmpIPredicate::ult, linear,
                                     count),
               /*withElseRegion=*/false);
           OpBuilder::InsertionGuard guard(kb);
           kb.setInsertionPointToStart(&inRange.getThenRegion().front());
           build(kb, linear);
         });
}
