//===- FuseGateTopK.cpp - moba.gate + moba.topk -> moba.gate_topk ---------===//
//
// Part of moba-mlir. Implements `moba-fuse-gate-topk`.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBAFUSEGATETOPK
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

/// topk(gate(q, means)) -> gate_topk(q, means), when the gate's scores feed
/// only this selection and both agree on the sequences and blocks.
struct FuseGateIntoTopK : OpRewritePattern<TopKOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(TopKOp op,
                                PatternRewriter &rewriter) const override {
    auto gate = op.getScores() ? op.getScores().getDefiningOp<GateOp>()
                               : GateOp();
    if (!gate)
      return rewriter.notifyMatchFailure(op, "scores not from moba.gate");
    if (!gate->hasOneUse())
      return rewriter.notifyMatchFailure(op, "scores used elsewhere");
    if (gate.getCuSeqlens() != op.getCuSeqlens() ||
        gate.getBlockSize() != op.getBlockSize())
      return rewriter.notifyMatchFailure(op, "different blocks");
    rewriter.replaceOpWithNewOp<GateTopKOp>(
        op, op.getType(), gate.getQueries(), gate.getMeans(),
        op.getCuSeqlens(), op.getInit(), op.getBlockSizeAttr(),
        op.getCausalAttr());
    rewriter.eraseOp(gate);
    return success();
  }
};

struct MobaFuseGateTopKPass
    : public moba::impl::MobaFuseGateTopKBase<MobaFuseGateTopKPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMobaFuseGateTopKPatterns(patterns);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
  }
};

} // namespace

void mlir::moba::populateMobaFuseGateTopKPatterns(RewritePatternSet &patterns) {
  patterns.add<FuseGateIntoTopK>(patterns.getContext());
}
