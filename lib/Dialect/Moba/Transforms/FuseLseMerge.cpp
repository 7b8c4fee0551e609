//===- FuseLseMerge.cpp - lse_merge into grouped_block_attention ----------===//
//
// Part of moba-mlir. Implements `moba-fuse-lse-merge`, and its inverse,
// `splitLseMerge`, for the lowerings that merge in a loop nest of its own.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBAFUSELSEMERGE
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

/// The grouped attention `op` with its operands, and `merge(out, lse)` when
/// both are given.
GroupedBlockAttentionOp cloneWithMerge(RewriterBase &rewriter,
                                       GroupedBlockAttentionOp op,
                                       Value outInit, Value lseInit) {
  SmallVector<Type> types = {op.getPartialOutInit().getType(),
                             op.getPartialLseInit().getType()};
  if (outInit)
    types.append({outInit.getType(), lseInit.getType()});
  return GroupedBlockAttentionOp::create(
      rewriter, op.getLoc(), types, op.getQ(), op.getK(), op.getV(),
      op.getCuSeqlens(), op.getSelected(), op.getStarts(), op.getCounts(),
      op.getEntries(), op.getPartialOutInit(), op.getPartialLseInit(),
      outInit, lseInit, op.getBlockSizeAttr(), op.getScaleAttr(),
      op.getCausalAttr());
}

/// lse_merge(grouped_block_attention(...)) -> grouped_block_attention(...)
/// merge(...), when the partials feed only this merge.
struct FuseMergeIntoGroupedAttention : OpRewritePattern<LseMergeOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(LseMergeOp op,
                                PatternRewriter &rewriter) const override {
    auto parts = op.getPartials().getDefiningOp<GroupedBlockAttentionOp>();
    if (!parts || !isa<RankedTensorType>(parts.getQ().getType()))
      return rewriter.notifyMatchFailure(op, "partials not from "
                                             "moba.grouped_block_attention");
    if (parts.isMerged())
      return rewriter.notifyMatchFailure(op, "already merged");
    if (op.getPartials() != parts.getPartialOut() ||
        op.getPartialLse() != parts.getPartialLse())
      return rewriter.notifyMatchFailure(op, "partials of different ops");
    if (!parts.getPartialOut().hasOneUse() ||
        !parts.getPartialLse().hasOneUse())
      return rewriter.notifyMatchFailure(op, "partials used elsewhere");
    if (getElementTypeOrSelf(op.getOutInit().getType()) !=
        getElementTypeOrSelf(parts.getQ().getType()))
      return rewriter.notifyMatchFailure(op, "output type is not q's");
    rewriter.setInsertionPoint(op);
    GroupedBlockAttentionOp fused =
        cloneWithMerge(rewriter, parts, op.getOutInit(), op.getLseInit());
    rewriter.replaceOp(op, {fused.getMergedOut(), fused.getMergedLse()});
    rewriter.eraseOp(parts);
    return success();
  }
};

struct MobaFuseLseMergePass
    : public moba::impl::MobaFuseLseMergeBase<MobaFuseLseMergePass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMobaFuseLseMergePatterns(patterns);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
  }
};

} // namespace

void mlir::moba::populateMobaFuseLseMergePatterns(
    RewritePatternSet &patterns) {
  patterns.add<FuseMergeIntoGroupedAttention>(patterns.getContext());
}

LseMergeOp mlir::moba::splitLseMerge(RewriterBase &rewriter,
                                     GroupedBlockAttentionOp op) {
  assert(op.isMerged() && isa<RankedTensorType>(op.getQ().getType()) &&
         "splits the merged form on tensors");
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  GroupedBlockAttentionOp parts =
      cloneWithMerge(rewriter, op, Value(), Value());
  auto merge = LseMergeOp::create(
      rewriter, op.getLoc(),
      TypeRange{op.getOutInit().getType(), op.getLseInit().getType()},
      parts.getPartialOut(), parts.getPartialLse(), op.getOutInit(),
      op.getLseInit());
  rewriter.replaceOp(op, {parts.getPartialOut(), parts.getPartialLse(),
                          merge.getOutput(), merge.getLse()});
  return merge;
}
