//===- LowerToLoops.cpp - Decomposed moba ops to loops on tensors ---------===//
//
// Part of moba-mlir. Implements `moba-lower-to-loops`. Each op becomes a loop
// nest over the sequences of its packed batch that reads rows with
// vector.transfer_read and writes its init (destination) through iter_args,
// so that one-shot bufferization writes in place. This file holds the pass
// and populateMobaLowerToLoopsPatterns; the patterns live in one file per
// op family (Lower*ToLoops.cpp, declared in LowerToLoopsPatterns.h).
//
//===----------------------------------------------------------------------===//

#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBALOWERTOLOOPS
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

struct MobaLowerToLoopsPass
    : public moba::impl::MobaLowerToLoopsBase<MobaLowerToLoopsPass> {
  using MobaLowerToLoopsBase::MobaLowerToLoopsBase;

  void runOnOperation() override {
    // A merged grouped attention that no kernel here keeps merges in loops
    // of its own: split it into the op and a moba.lse_merge first.
    SmallVector<GroupedBlockAttentionOp> merged;
    getOperation()->walk([&](GroupedBlockAttentionOp op) {
      if (op.isMerged() && isa<RankedTensorType>(op.getQ().getType()) &&
          !(keepMmaCompatibleAttention && op.isMmaSyncCompatible()))
        merged.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (GroupedBlockAttentionOp op : merged)
      splitLseMerge(rewriter, op);

    RewritePatternSet patterns(&getContext());
    populateMobaLowerToLoopsPatterns(patterns, parallel,
                                     keepMmaCompatibleAttention,
                                     keepMmaCompatibleGate,
                                     keepWarpCompatibleGrouping,
                                     keepSplitKDecode);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
    // Whatever could not be lowered has said why (dynamic heads or
    // head_dim); the pass fails rather than leave moba ops behind.
    WalkResult left = getOperation()->walk([&](Operation *op) {
      if (auto grouped = dyn_cast<GroupedBlockAttentionOp>(op))
        if (keepMmaCompatibleAttention && grouped.isMmaSyncCompatible())
          return WalkResult::advance();
      if (auto grad = dyn_cast<GroupedBlockAttentionGradOp>(op))
        if (keepMmaCompatibleAttention && grad.isMmaSyncCompatible())
          return WalkResult::advance();
      if (auto gate = dyn_cast<GateTopKOp>(op))
        if (keepMmaCompatibleGate && gate.isMmaSyncCompatible())
          return WalkResult::advance();
      if (auto grouping = dyn_cast<GroupQueriesOp>(op))
        if (keepWarpCompatibleGrouping && grouping.isWarpCompatible())
          return WalkResult::advance();
      if (auto decode = dyn_cast<PagedDecodeAttentionOp>(op))
        if (keepSplitKDecode && decode.isSplitKCompatible())
          return WalkResult::advance();
      if (!isa<BlockPoolOp, GateOp, TopKOp, GateTopKOp, SparseAttentionOp,
               LseMergeOp, GroupQueriesOp, GroupedBlockAttentionOp,
               AttentionRowTermOp, GroupedBlockAttentionGradOp, SumSlotsOp,
               PagedKvAppendOp, PagedDecodeAttentionOp>(
              op))
        return WalkResult::advance();
      // The ops that exist on buffers (after bufferization) have only their
      // GPU lowerings there.
      if (llvm::any_of(op->getOperandTypes(), llvm::IsaPred<MemRefType>))
        op->emitOpError("on memrefs has no loop lowering: lower it on "
                        "tensors, or with its GPU lowering after "
                        "bufferization");
      return WalkResult::interrupt();
    });
    if (left.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace

void mlir::moba::populateMobaLowerToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel,
    bool keepMmaCompatibleAttention, bool keepMmaCompatibleGate,
    bool keepWarpCompatibleGrouping, bool keepSplitKDecode) {
  populateLowerPoolingToLoopsPatterns(patterns, parallel);
  populateLowerGatingToLoopsPatterns(patterns, parallel, keepMmaCompatibleGate);
  populateLowerAttentionToLoopsPatterns(patterns, parallel,
                                        keepMmaCompatibleAttention);
  populateLowerMergeToLoopsPatterns(patterns, parallel);
  populateLowerGroupingToLoopsPatterns(patterns, parallel,
                                       keepWarpCompatibleGrouping);
  populateLowerGradToLoopsPatterns(patterns, parallel,
                                   keepMmaCompatibleAttention);
  populateLowerPagedToLoopsPatterns(patterns, parallel, keepSplitKDecode);
}
