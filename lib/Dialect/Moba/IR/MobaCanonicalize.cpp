//===- MobaCanonicalize.cpp - Canonicalization of moba ops ----------------===//
//
// Part of moba-mlir. Simplifications that follow from the semantics in
// docs/semantics.md:
//
//  * top_k at or above the number of blocks a sequence can have selects every
//    block: dense attention. On moba.attention top_k is clamped to that
//    number (so equal computations print equally); a moba.sparse_attention
//    fed by such a moba.topk drops its selection and attends densely, which
//    leaves the gate and the pooling dead.
//  * causal top_k = 1 selects the own block only, whatever the scores:
//    moba.topk drops its scores, which leaves the gate dead.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/IR/PatternMatch.h"

using namespace mlir;
using namespace mlir::moba;

namespace {

/// moba.attention: top_k above the static number of blocks per sequence is
/// the same computation as top_k equal to it.
struct ClampTopKToBlockCount : OpRewritePattern<AttentionOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(AttentionOp op,
                                PatternRewriter &rewriter) const override {
    std::optional<int64_t> blocks = op.getStaticMaxBlocksPerSequence();
    if (!blocks || static_cast<int64_t>(op.getTopK()) <= *blocks)
      return rewriter.notifyMatchFailure(op, "top_k within the block count");
    rewriter.modifyOpInPlace(op, [&] { op.setTopK(*blocks); });
    return success();
  }
};

/// moba.topk: causal selection of one block is the own block; the scores do
/// not matter. (When one block is all a sequence can have, the selection is
/// also dense; that form is left to SelectionOfEveryBlockIsDense.)
struct OwnBlockSelectionNeedsNoScores : OpRewritePattern<TopKOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(TopKOp op,
                                PatternRewriter &rewriter) const override {
    Value scores = op.getScores();
    if (!scores || !op.getCausal() || op.getK() != 1)
      return rewriter.notifyMatchFailure(op, "not a scored causal top-1");
    int64_t blocksPerSequence =
        cast<RankedTensorType>(scores.getType()).getShape().back();
    if (!ShapedType::isDynamic(blocksPerSequence) && blocksPerSequence <= 1)
      return rewriter.notifyMatchFailure(op, "selection is dense");
    rewriter.modifyOpInPlace(op, [&] { op.getScoresMutable().clear(); });
    return success();
  }
};

/// moba.sparse_attention fed by a moba.topk
/// that keeps at least as many blocks as a sequence can have: every
/// candidate is selected, so the attention is dense. Requires the selection
/// to use the same sequences and blocks, and a causal selection only for
/// causal attention (a causal top-k never selects future blocks, which
/// non-causal attention would otherwise see).
template <typename AttentionLikeOp>
struct SelectionOfEveryBlockIsDense : OpRewritePattern<AttentionLikeOp> {
  using OpRewritePattern<AttentionLikeOp>::OpRewritePattern;

  LogicalResult matchAndRewrite(AttentionLikeOp op,
                                PatternRewriter &rewriter) const override {
    Value selected = op.getSelected();
    auto topk = selected ? selected.getDefiningOp<TopKOp>() : TopKOp();
    if (!topk || !topk.getScores())
      return rewriter.notifyMatchFailure(op, "selection not from scored topk");
    int64_t blocksPerSequence =
        cast<RankedTensorType>(topk.getScores().getType()).getShape().back();
    if (ShapedType::isDynamic(blocksPerSequence) ||
        topk.getK() < blocksPerSequence)
      return rewriter.notifyMatchFailure(op, "top-k may drop blocks");
    if (topk.getCuSeqlens() != op.getCuSeqlens() ||
        topk.getBlockSize() != op.getBlockSize())
      return rewriter.notifyMatchFailure(op, "different blocks");
    if (topk.getCausal() && !op.getCausal())
      return rewriter.notifyMatchFailure(op, "causal selection, full attention");
    rewriter.modifyOpInPlace(op, [&] { op.getSelectedMutable().clear(); });
    return success();
  }
};

} // namespace

void AttentionOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                              MLIRContext *context) {
  results.add<ClampTopKToBlockCount>(context);
}

void TopKOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                         MLIRContext *context) {
  results.add<OwnBlockSelectionNeedsNoScores>(context);
}

void SparseAttentionOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                    MLIRContext *context) {
  results.add<SelectionOfEveryBlockIsDense<SparseAttentionOp>>(context);
}
