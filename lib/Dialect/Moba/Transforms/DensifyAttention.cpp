//===- DensifyAttention.cpp - Sparse attention as dense per-block pieces --===//
//
// Part of moba-mlir. Implements `moba-densify-attention`: block-sparse
// attention with per-token routing becomes the queries grouped by the block
// they chose, attention of each group to its block, and a merge of the
// partials through their log-sum-exp.
//
//===----------------------------------------------------------------------===//

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBADENSIFYATTENTION
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

/// An empty tensor of `shape` (kDynamic entries taken from `dynamic`, in
/// order) and element type `element`.
Value emptyTensor(ImplicitLocOpBuilder &b, ArrayRef<int64_t> shape,
                  ValueRange dynamic, Type element) {
  return tensor::EmptyOp::create(b, shape, element, dynamic);
}

struct DensifySparseAttention : OpRewritePattern<SparseAttentionOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(SparseAttentionOp op,
                                PatternRewriter &rewriter) const override {
    Value selected = op.getSelected();
    if (!selected)
      return rewriter.notifyMatchFailure(op, "dense attention");
    auto selType = cast<RankedTensorType>(selected.getType());
    auto qType = op.getQ().getType();
    if (selType.isDynamicDim(2) || qType.isDynamicDim(1) ||
        qType.isDynamicDim(2))
      return rewriter.notifyMatchFailure(op, "dynamic K, heads or head_dim");
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    int64_t k = selType.getDimSize(2), numHeads = qType.getDimSize(1);
    int64_t headDim = qType.getDimSize(2), blockSize = op.getBlockSize();
    int64_t tokens = qType.getDimSize(0);
    auto cuType = cast<RankedTensorType>(op.getCuSeqlens().getType());
    Type i32 = b.getI32Type(), f32 = b.getF32Type();

    // The most block rows a batch of T tokens in B sequences can have:
    // sum_i ceil(n_i / bs) <= T / bs + B.
    int64_t rows = ShapedType::kDynamic;
    SmallVector<Value> rowDims, tokenDims, slotDims;
    Value t = ShapedType::isDynamic(tokens)
                  ? Value(tensor::DimOp::create(b, op.getQ(), 0))
                  : arith::ConstantIndexOp::create(b, tokens).getResult();
    if (!ShapedType::isDynamic(tokens) && !cuType.isDynamicDim(0)) {
      rows = tokens / blockSize + (cuType.getDimSize(0) - 1);
    } else {
      Value sequences = arith::SubIOp::create(
          b, tensor::DimOp::create(b, op.getCuSeqlens(), 0),
          arith::ConstantIndexOp::create(b, 1));
      rowDims.push_back(arith::AddIOp::create(
          b,
          arith::DivUIOp::create(b, t,
                                 arith::ConstantIndexOp::create(b, blockSize)),
          sequences));
    }
    int64_t slots = ShapedType::kDynamic;
    if (!ShapedType::isDynamic(tokens)) {
      slots = tokens * k;
    } else {
      tokenDims.push_back(t);
      slotDims.push_back(
          arith::MulIOp::create(b, t, arith::ConstantIndexOp::create(b, k)));
    }

    Value starts = emptyTensor(b, {numHeads, rows}, rowDims, i32);
    Value counts = emptyTensor(b, {numHeads, rows}, rowDims, i32);
    Value entries = emptyTensor(b, {numHeads, slots}, slotDims, i32);
    auto groups = GroupQueriesOp::create(
        b, TypeRange{starts.getType(), counts.getType(), entries.getType()},
        selected, op.getCuSeqlens(), starts, counts, entries,
        op.getBlockSizeAttr());

    // Partial rows in the element type of q: the merge's read of them, and
    // the attention's writes, are half the bytes of f32 for f16/bf16.
    Value partialOut = emptyTensor(b, {k, tokens, numHeads, headDim},
                                   tokenDims, qType.getElementType());
    Value partialLse = emptyTensor(b, {k, tokens, numHeads}, tokenDims, f32);
    auto parts = GroupedBlockAttentionOp::create(
        b, TypeRange{partialOut.getType(), partialLse.getType()}, op.getQ(),
        op.getK(), op.getV(), op.getCuSeqlens(), selected,
        groups.getStarts(), groups.getCounts(), groups.getEntries(),
        partialOut, partialLse, /*out_init=*/Value(), /*lse_init=*/Value(),
        op.getBlockSizeAttr(), op.getScaleAttr(),
        op.getCausalAttr());
    rewriter.replaceOpWithNewOp<LseMergeOp>(
        op, TypeRange{op.getOutput().getType(), op.getLse().getType()},
        parts.getPartialOut(), parts.getPartialLse(), op.getOutInit(),
        op.getLseInit());
    return success();
  }
};

struct MobaDensifyAttentionPass
    : public moba::impl::MobaDensifyAttentionBase<MobaDensifyAttentionPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMobaDensifyAttentionPatterns(patterns);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
  }
};

} // namespace

void mlir::moba::populateMobaDensifyAttentionPatterns(
    RewritePatternSet &patterns) {
  patterns.add<DensifySparseAttention>(patterns.getContext());
}
