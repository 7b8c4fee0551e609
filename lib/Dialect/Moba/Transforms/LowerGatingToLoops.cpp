//===- LowerGatingToLoops.cpp - Block selection to loops ------------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` patterns of the block
// selection: moba.gate (the score tensor), moba.topk (the selection from
// it) and moba.gate_topk (both at once); the last two share one loop nest
// over queries and heads that streams each score into a running top-k.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::moba;

namespace {

//===----------------------------------------------------------------------===//
// Selection: moba.gate, moba.topk, moba.gate_topk
//===----------------------------------------------------------------------===//

/// Emits the selection of one query and head from block scores produced by
/// `score(builder, j)` for the candidate blocks, streaming: the running
/// top-k sees each score once. Returns the K-wide vector of local block
/// indices (own block first when causal).
Value selectBlocks(ImplicitLocOpBuilder &b, const Sequence &seq, Value token,
                   int64_t blockSize, int64_t k, bool causal,
                   function_ref<Value(ImplicitLocOpBuilder &, Value)> score) {
  LoopEmitter e(b);
  Value own;
  Value candidates = seq.numBlocks;
  int64_t kept = k;
  if (causal) {
    own = arith::DivUIOp::create(
        b, arith::SubIOp::create(b, token, seq.start), e.index(blockSize));
    candidates = own; // strictly past blocks
    kept = k - 1;
  }
  Value ownI32;
  if (causal)
    ownI32 = arith::IndexCastOp::create(b, b.getI32Type(), own);
  if (kept == 0)
    return e.splat(ownI32, 1);

  TopKState init = e.emptyTopK(kept);
  SmallVector<Value> state = e.forLoop(
      e.index(0), candidates, ValueRange{init.scores, init.indices},
      [&](ImplicitLocOpBuilder &jb, Value j, ValueRange c) {
        LoopEmitter je(jb);
        Value s = score(jb, j);
        Value jI32 = arith::IndexCastOp::create(jb, jb.getI32Type(), j);
        TopKState next = je.insertTopK({c[0], c[1]}, s, jI32);
        return SmallVector<Value>{next.scores, next.indices};
      });
  if (!causal)
    return state[1];
  // [own, best past blocks...]
  SmallVector<int64_t> mask(k);
  for (int64_t i = 0; i < k; ++i)
    mask[i] = i; // element 0 of the concatenation is own, then the list
  return vector::ShuffleOp::create(b, e.splat(ownI32, 1), state[1], mask);
}

/// Writes the selection of every query and head into `init`, scoring blocks
/// with `score(builder, seq, token, head, kvHead, queryRow, j)`; query head
/// h reads key/value head h / group.
using ScoreFn = function_ref<Value(ImplicitLocOpBuilder &, const Sequence &,
                                   Value token, Value head, Value kvHead,
                                   Value queryRow, Value block)>;
Value emitSelectionLoops(ImplicitLocOpBuilder &b, Value queries, Value cu,
                         Value init, int64_t blockSize, bool causal,
                         int64_t group, bool parallel, ScoreFn score) {
  LoopEmitter e(b);
  auto initType = cast<RankedTensorType>(init.getType());
  int64_t numHeads = initType.getDimSize(1), k = initType.getDimSize(2);
  // The K-wide selection row of token t, head h.
  auto chooseRow = [&](ImplicitLocOpBuilder &hb, const Sequence &seq, Value t,
                       Value h) {
    LoopEmitter he(hb);
    Value kvHead = arith::DivUIOp::create(hb, h, he.index(group));
    Value queryRow = queries ? he.readRow(queries, {t, h}) : Value();
    return selectBlocks(hb, seq, t, blockSize, k, causal,
                        [&](ImplicitLocOpBuilder &jb, Value j) {
                          return score(jb, seq, t, h, kvHead, queryRow, j);
                        });
  };
  if (parallel) {
    // Heads outer, tokens inner: neighbouring iterations (a GPU warp) score
    // the same block means, so those loads are shared.
    OpFoldResult tokens = tensor::getMixedSize(b, b.getLoc(), init, 0);
    return e.forall(
        {b.getIndexAttr(numHeads), tokens}, ValueRange{init},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value h = ivs[0], t = ivs[1];
          Value chosen = chooseRow(pb, pe.locateToken(cu, blockSize, t), t, h);
          OpFoldResult one = pb.getIndexAttr(1);
          SmallVector<OpFoldResult> offsets = {t, h, pb.getIndexAttr(0)};
          SmallVector<OpFoldResult> sizes = {one, one, pb.getIndexAttr(k)};
          Value slice = tensor::ExtractSliceOp::create(
              pb, outs[0], offsets, sizes, SmallVector<OpFoldResult>(3, one));
          slice = vector::TransferWriteOp::create(
                      pb, chosen, slice,
                      ValueRange{pe.index(0), pe.index(0), pe.index(0)},
                      ArrayRef<bool>{true})
                      .getResult();
          return {{slice, outs[0], offsets, sizes}};
        })[0];
  }
  return e.forEachTokenAndHead(
      cu, blockSize, numHeads, ValueRange{init},
      [&](ImplicitLocOpBuilder &hb, const Sequence &seq, Value t, Value h,
          ValueRange hc) {
        LoopEmitter he(hb);
        Value written =
            vector::TransferWriteOp::create(hb, chooseRow(hb, seq, t, h), hc[0],
                                            ValueRange{t, h, he.index(0)},
                                            ArrayRef<bool>{true})
                .getResult();
        return SmallVector<Value>{written};
      })[0];
}

struct LowerGate : LoweringPattern<GateOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(GateOp op,
                                PatternRewriter &rewriter) const override {
    if (parallel)
      return op.emitOpError(
          "parallel lowering materializes no score tensor: fuse the gate "
          "into its top-k first (moba-fuse-gate-topk)");
    if (failed(checkStaticHeadsAndHeadDim(
            rewriter, op, {op.getQueries(), op.getMeans()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    int64_t group = op.getQueries().getType().getDimSize(1) /
                    op.getMeans().getType().getDimSize(1);
    int64_t numHeads = op.getQueries().getType().getDimSize(1);
    Value means = op.getMeans(), queries = op.getQueries();
    // Blocks past a sequence's last score -inf.
    Value filled = linalg::FillOp::create(b, ValueRange{e.f32(kNegInf)},
                                          ValueRange{op.getInit()})
                       .getResult(0);
    Value result = e.forEachTokenAndHead(
        op.getCuSeqlens(), op.getBlockSize(), numHeads, ValueRange{filled},
        [&](ImplicitLocOpBuilder &hb, const Sequence &seq, Value t, Value h,
            ValueRange hc) {
          LoopEmitter he(hb);
          Value g = arith::DivUIOp::create(hb, h, he.index(group));
          Value q = he.readRow(queries, {t, h});
          return he.forLoop(
              he.index(0), seq.numBlocks, hc,
              [&](ImplicitLocOpBuilder &jb, Value j, ValueRange jc) {
                LoopEmitter je(jb);
                Value row = arith::AddIOp::create(jb, seq.blockOffset, j);
                Value s = je.dot(q, je.readRow(means, {row, g}));
                return SmallVector<Value>{tensor::InsertOp::create(
                    jb, s, jc[0], ValueRange{t, h, j})};
              });
        })[0];
    rewriter.replaceOp(op, result);
    return success();
  }
};

struct LowerTopK : LoweringPattern<TopKOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(TopKOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkStaticHeadsAndHeadDim(rewriter, op, {op.getInit()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    Value scores = op.getScores();
    Value result = emitSelectionLoops(
        b, Value(), op.getCuSeqlens(), op.getInit(), op.getBlockSize(),
        op.getCausal(), /*group=*/1, parallel,
        [&](ImplicitLocOpBuilder &jb, const Sequence &, Value t, Value h,
            Value, Value, Value j) -> Value {
          return tensor::ExtractOp::create(jb, scores, ValueRange{t, h, j});
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

struct LowerGateTopK : LoweringPattern<GateTopKOp> {
  LowerGateTopK(MLIRContext *context, bool parallel, bool keepMmaCompatible)
      : LoweringPattern(context, parallel),
        keepMmaCompatible(keepMmaCompatible) {}
  bool keepMmaCompatible;

  LogicalResult matchAndRewrite(GateTopKOp op,
                                PatternRewriter &rewriter) const override {
    if (!isa<RankedTensorType>(op.getQueries().getType()))
      return rewriter.notifyMatchFailure(op, "on buffers");
    if (keepMmaCompatible && op.isMmaSyncCompatible())
      return rewriter.notifyMatchFailure(op, "left for the mma lowering");
    if (failed(checkStaticHeadsAndHeadDim(
            rewriter, op, {op.getQueries(), op.getMeans(), op.getInit()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    int64_t group =
        cast<ShapedType>(op.getQueries().getType()).getDimSize(1) /
        cast<ShapedType>(op.getMeans().getType()).getDimSize(1);
    Value means = op.getMeans();
    Value result = emitSelectionLoops(
        b, op.getQueries(), op.getCuSeqlens(), op.getInit(),
        op.getBlockSize(), op.getCausal(), group, parallel,
        [&](ImplicitLocOpBuilder &jb, const Sequence &seq, Value, Value,
            Value g, Value queryRow, Value j) -> Value {
          LoopEmitter je(jb);
          Value row = arith::AddIOp::create(jb, seq.blockOffset, j);
          return je.dot(queryRow, je.readRow(means, {row, g}));
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

} // namespace

void mlir::moba::populateLowerGatingToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel, bool keepMmaCompatibleGate) {
  patterns.add<LowerGate, LowerTopK>(patterns.getContext(), parallel);
  patterns.add<LowerGateTopK>(patterns.getContext(), parallel,
                              keepMmaCompatibleGate);
}
