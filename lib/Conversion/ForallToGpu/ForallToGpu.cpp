//===- ForallToGpu.cpp - scf.forall on buffers to gpu.launch --------------===//
//
// Part of moba-mlir. Implements `moba-map-forall-to-gpu` (see Passes.td).
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/Utils/StaticValueUtils.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBAMAPFORALLTOGPU
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

/// One gpu.launch running the iterations of `loop`, one per thread.
LogicalResult mapToLaunch(IRRewriter &rewriter, scf::ForallOp loop,
                          int64_t threadsPerBlock) {
  if (loop.getNumResults() != 0)
    return loop.emitOpError(
        "must be bufferized (no tensor results) before mapping to the GPU");
  // ImplicitLocOpBuilder copies the insertion point: set it first.
  rewriter.setInsertionPoint(loop);
  ImplicitLocOpBuilder b(loop.getLoc(), rewriter);
  SmallVector<Value> lbs = getValueOrCreateConstantIndexOp(
      b, b.getLoc(), loop.getMixedLowerBound());
  SmallVector<Value> ubs = getValueOrCreateConstantIndexOp(
      b, b.getLoc(), loop.getMixedUpperBound());
  SmallVector<Value> steps =
      getValueOrCreateConstantIndexOp(b, b.getLoc(), loop.getMixedStep());

  // Trip count of each dim, and of the whole space.
  SmallVector<Value> counts;
  Value total = arith::ConstantIndexOp::create(b, 1);
  for (auto [lb, ub, step] : llvm::zip(lbs, ubs, steps)) {
    Value count = arith::CeilDivUIOp::create(
        b, arith::SubIOp::create(b, ub, lb), step);
    counts.push_back(count);
    total = arith::MulIOp::create(b, total, count);
  }
  Value one = arith::ConstantIndexOp::create(b, 1);
  Value threads = arith::ConstantIndexOp::create(b, threadsPerBlock);
  Value blocks = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, total, threads), one);
  auto launch =
      gpu::LaunchOp::create(b, blocks, one, one, threads, one, one);

  Block &body = launch.getBody().front();
  rewriter.setInsertionPointToStart(&body);
  ImplicitLocOpBuilder kb(loop.getLoc(), rewriter);
  Value linear = arith::AddIOp::create(
      kb, arith::MulIOp::create(kb, launch.getBlockIds().x, threads),
      launch.getThreadIds().x);
  Value inRange =
      arith::CmpIOp::create(kb, arith::CmpIPredicate::ult, linear, total);
  auto guard = scf::IfOp::create(kb, inRange, /*withElseRegion=*/false);
  gpu::TerminatorOp::create(kb);

  // Delinearize (innermost dim fastest) and run the body once.
  rewriter.setInsertionPointToStart(&guard.getThenRegion().front());
  ImplicitLocOpBuilder ib(loop.getLoc(), rewriter);
  IRMapping mapping;
  Value rest = linear;
  SmallVector<Value> ivs(counts.size());
  for (int64_t d = counts.size() - 1; d >= 0; --d) {
    // The outermost index is what is left: it is below its count already.
    Value idx = d == 0 ? rest : arith::RemUIOp::create(ib, rest, counts[d]);
    if (d > 0)
      rest = arith::DivUIOp::create(ib, rest, counts[d]);
    ivs[d] = arith::AddIOp::create(ib, lbs[d],
                                   arith::MulIOp::create(ib, idx, steps[d]));
  }
  for (auto [iv, value] : llvm::zip(loop.getInductionVars(), ivs))
    mapping.map(iv, value);
  for (Operation &op : loop.getBody()->without_terminator())
    rewriter.clone(op, mapping);
  rewriter.eraseOp(loop);
  return success();
}

struct MobaMapForallToGpuPass
    : public moba::impl::MobaMapForallToGpuBase<MobaMapForallToGpuPass> {
  using MobaMapForallToGpuBase::MobaMapForallToGpuBase;

  void runOnOperation() override {
    if (threadsPerBlock < 1 || threadsPerBlock > 1024) {
      getOperation()->emitError()
          << "moba-map-forall-to-gpu: threads-per-block must be in [1, 1024], "
             "got "
          << int64_t(threadsPerBlock);
      return signalPassFailure();
    }
    SmallVector<scf::ForallOp> loops;
    getOperation()->walk([&](scf::ForallOp loop) {
      if (!loop->getParentOfType<scf::ForallOp>() &&
          !loop->getParentOfType<gpu::LaunchOp>())
        loops.push_back(loop);
    });
    IRRewriter rewriter(&getContext());
    for (scf::ForallOp loop : loops)
      if (failed(mapToLaunch(rewriter, loop, threadsPerBlock)))
        return signalPassFailure();

    // Scratch buffers of functions that launch kernels live on the device.
    getOperation()->walk([&](func::FuncOp func) {
      bool launches = false;
      func.walk([&](gpu::LaunchOp) { launches = true; });
      if (!launches)
        return;
      // Each allocation gets its own stream token and waits for it, the form
      // gpu-to-llvm lowers to runtime calls (a synchronous gpu.alloc is left
      // as it is in LLVM 22).
      Type token = gpu::AsyncTokenType::get(&getContext());
      func.walk([&](memref::AllocOp alloc) {
        rewriter.setInsertionPoint(alloc);
        Location loc = alloc.getLoc();
        Value start = gpu::WaitOp::create(rewriter, loc, token, ValueRange())
                          .getAsyncToken();
        auto device = gpu::AllocOp::create(
            rewriter, loc, alloc.getType(), token, ValueRange{start},
            alloc.getDynamicSizes(), alloc.getSymbolOperands(),
            /*hostShared=*/false);
        gpu::WaitOp::create(rewriter, loc, Type(),
                            ValueRange{device.getAsyncToken()});
        rewriter.replaceOp(alloc, device.getMemref());
      });
      func.walk([&](memref::DeallocOp dealloc) {
        rewriter.setInsertionPoint(dealloc);
        Location loc = dealloc.getLoc();
        Value start = gpu::WaitOp::create(rewriter, loc, token, ValueRange())
                          .getAsyncToken();
        auto done = gpu::DeallocOp::create(rewriter, loc, token,
                                           ValueRange{start},
                                           dealloc.getMemref());
        gpu::WaitOp::create(rewriter, loc, Type(),
                            ValueRange{done.getAsyncToken()});
        rewriter.eraseOp(dealloc);
      });
    });
  }
};

} // namespace
