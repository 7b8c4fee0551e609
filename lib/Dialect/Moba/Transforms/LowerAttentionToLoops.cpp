//===- LowerAttentionToLoops.cpp - Block attention to loops ---------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` patterns of attention:
// moba.sparse_attention (every query over its selected blocks) and
// moba.grouped_block_attention (one partial per selection slot), both on
// the exact two-pass softmax of one query over a set of key ranges.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::moba;

namespace {

//===----------------------------------------------------------------------===//
// moba.sparse_attention, untiled: exact two-pass softmax
//===----------------------------------------------------------------------===//

/// Attention of query row `q` (f32, token `t`, key/value head `g`) to the
/// key ranges of `selectedRow` (null: the whole sequence) with an exact
/// two-pass softmax: the maximum score first, then the sum and the weighted
/// values.
QueryResult exactSoftmaxAttention(ImplicitLocOpBuilder &qb, const Sequence &seq,
                                  Value t, Value g, Value q, Value selectedRow,
                                  Value keys, Value values, int64_t blockSize,
                                  bool causal, double scale) {
  LoopEmitter e(qb);
  int64_t headDim = cast<VectorType>(q.getType()).getShape().front();
  Value scaleValue = e.f32(scale);
  auto scoreAt = [&](ImplicitLocOpBuilder &kb, Value s) {
    LoopEmitter ke(kb);
    return arith::MulFOp::create(kb, ke.dot(q, ke.readRow(keys, {s, g})),
                                 scaleValue)
        .getResult();
  };
  // Pass 1: the maximum score.
  Value m = e.forEachAttendedRange(
      seq, blockSize, causal, t, selectedRow, ValueRange{e.f32(kNegInf)},
      [&](ImplicitLocOpBuilder &rb, Value first, Value last, ValueRange c) {
        LoopEmitter re(rb);
        return re.forLoop(first, last, c,
                          [&](ImplicitLocOpBuilder &kb, Value s,
                              ValueRange kc) -> SmallVector<Value> {
                            return {arith::MaximumFOp::create(
                                kb, kc[0], scoreAt(kb, s))};
                          });
      })[0];
  // Pass 2: the sum and the weighted values.
  SmallVector<Value> sums = e.forEachAttendedRange(
      seq, blockSize, causal, t, selectedRow,
      ValueRange{e.f32(0.0), e.splat(e.f32(0.0), headDim)},
      [&](ImplicitLocOpBuilder &rb, Value first, Value last, ValueRange c) {
        LoopEmitter re(rb);
        return re.forLoop(
            first, last, c,
            [&](ImplicitLocOpBuilder &kb, Value s,
                ValueRange kc) -> SmallVector<Value> {
              LoopEmitter ke(kb);
              Value p = math::ExpOp::create(
                  kb, arith::SubFOp::create(kb, scoreAt(kb, s), m));
              Value acc = vector::FMAOp::create(
                  kb, ke.splat(p, headDim), ke.readRow(values, {s, g}), kc[1]);
              return {arith::AddFOp::create(kb, kc[0], p), acc};
            });
      });
  return finishSoftmax(qb, m, sums[0], sums[1]);
}

struct LowerSparseAttention : LoweringPattern<SparseAttentionOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(SparseAttentionOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkLowerable(rewriter, op)))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    auto body = [&](ImplicitLocOpBuilder &qb, const Sequence &seq, Value t,
                    Value g, Value q, Value selectedRow) {
      return exactSoftmaxAttention(qb, seq, t, g, q, selectedRow, op.getK(),
                                   op.getV(), op.getBlockSize(),
                                   op.getCausal(),
                                   op.getScale().convertToDouble());
    };
    auto [out, lse] = parallel ? emitParallelAttention(b, op, body)
                               : emitAttentionLoops(b, op, /*tileQ=*/0, body);
    rewriter.replaceOp(op, {out, lse});
    return success();
  }
};

//===----------------------------------------------------------------------===//
// moba.grouped_block_attention
//===----------------------------------------------------------------------===//

struct LowerGroupedBlockAttention
    : LoweringPattern<GroupedBlockAttentionOp> {
  LowerGroupedBlockAttention(MLIRContext *context, bool parallel,
                             bool keepMmaCompatible)
      : LoweringPattern(context, parallel),
        keepMmaCompatible(keepMmaCompatible) {}
  bool keepMmaCompatible;

  LogicalResult matchAndRewrite(GroupedBlockAttentionOp op,
                                PatternRewriter &rewriter) const override {
    if (!isa<RankedTensorType>(op.getQ().getType()))
      return rewriter.notifyMatchFailure(op, "on buffers");
    if (keepMmaCompatible && op.isMmaSyncCompatible())
      return rewriter.notifyMatchFailure(op, "left for the mma.sync lowering");
    if (op.isMerged())
      return rewriter.notifyMatchFailure(op, "merged: split by the pass");
    if (failed(checkStaticHeadsAndHeadDim(
            rewriter, op,
            {op.getQ(), op.getK(), op.getV(), op.getSelected()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    int64_t blockSize = op.getBlockSize();
    bool causal = op.getCausal();
    double scale = op.getScale().convertToDouble();
    auto qType = cast<RankedTensorType>(op.getQ().getType());
    int64_t numHeads = qType.getDimSize(1);
    int64_t group =
        numHeads / cast<RankedTensorType>(op.getK().getType()).getDimSize(1);
    int64_t k =
        cast<RankedTensorType>(op.getSelected().getType()).getDimSize(2);
    Value cu = op.getCuSeqlens();
    // The partial of token t, head h over local block j (i32; -1 or any
    // invalid index attends nothing).
    auto attendBlock = [&](ImplicitLocOpBuilder &ab, const Sequence &seq,
                           Value t, Value h, Value j) {
      LoopEmitter ae(ab);
      Value g = arith::DivUIOp::create(ab, h, ae.index(group));
      Value row = vector::BroadcastOp::create(
          ab, VectorType::get({1}, ab.getI32Type()), j);
      return exactSoftmaxAttention(ab, seq, t, g, ae.readRow(op.getQ(), {t, h}),
                                   row, op.getK(), op.getV(), blockSize,
                                   causal, scale);
    };

    if (parallel) {
      // One iteration per slot, reading the selection: the SIMT form.
      OpFoldResult tokens = tensor::getMixedSize(b, b.getLoc(), op.getQ(), 0);
      SmallVector<Value> results = e.forall(
          {b.getIndexAttr(k), tokens, b.getIndexAttr(numHeads)},
          ValueRange{op.getPartialOutInit(), op.getPartialLseInit()},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs, ValueRange outs) {
            LoopEmitter pe(pb);
            Value s = ivs[0], t = ivs[1], h = ivs[2];
            Sequence seq = pe.locateToken(cu, blockSize, t);
            Value selRow = pe.readSelectionRow(op.getSelected(), t, h);
            Value j = arith::SelectOp::create(
                pb, pe.slotAttends(seq, selRow, s),
                vector::ExtractOp::create(pb, selRow, OpFoldResult(s)),
                pe.i32(-1));
            QueryResult r = attendBlock(pb, seq, t, h, j);
            return pe.rowAndScalarWrites(outs[0], outs[1], ivs, r.row, r.lse);
          });
      rewriter.replaceOp(op, results);
      return success();
    }

    // Serial: every slot starts empty; then per (head, block row) the
    // group's entries, as a tensor-core kernel walks them.
    Type partialElement =
        cast<ShapedType>(op.getPartialOutInit().getType()).getElementType();
    Value partialOut =
        linalg::FillOp::create(
            b,
            ValueRange{arith::ConstantOp::create(
                b, b.getZeroAttr(partialElement))},
            ValueRange{op.getPartialOutInit()})
            .getResult(0);
    Value partialLse =
        linalg::FillOp::create(b, ValueRange{e.f32(kNegInf)},
                               ValueRange{op.getPartialLseInit()})
            .getResult(0);
    Value rows = tensor::DimOp::create(b, op.getCounts(), 1);
    SmallVector<Value> results = e.forLoop(
        e.index(0), e.index(numHeads), ValueRange{partialOut, partialLse},
        [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
          LoopEmitter he(hb);
          return he.forLoop(
              he.index(0), rows, hc,
              [&](ImplicitLocOpBuilder &rb, Value row, ValueRange rc) {
                LoopEmitter re(rb);
                Value j, valid;
                Sequence seq = re.locateBlockRow(cu, blockSize, row, j, valid);
                Value jI32 = arith::IndexCastOp::create(rb, rb.getI32Type(), j);
                Value start = arith::IndexCastOp::create(
                    rb, rb.getIndexType(),
                    tensor::ExtractOp::create(rb, op.getStarts(),
                                              ValueRange{h, row}));
                Value count = arith::IndexCastOp::create(
                    rb, rb.getIndexType(),
                    tensor::ExtractOp::create(rb, op.getCounts(),
                                              ValueRange{h, row}));
                Value end = arith::AddIOp::create(rb, start, count);
                return re.forLoop(
                    start, end, rc,
                    [&](ImplicitLocOpBuilder &ib, Value at, ValueRange ic) {
                      LoopEmitter ie(ib);
                      Value entry = arith::IndexCastOp::create(
                          ib, ib.getIndexType(),
                          tensor::ExtractOp::create(ib, op.getEntries(),
                                                    ValueRange{h, at}));
                      Value t = arith::DivUIOp::create(ib, entry, ie.index(k));
                      Value s = arith::RemUIOp::create(ib, entry, ie.index(k));
                      QueryResult r = attendBlock(ib, seq, t, h, jI32);
                      Value out = ie.writeRow(r.row, ic[0], {s, t, h});
                      Value lse = tensor::InsertOp::create(
                          ib, r.lse, ic[1], ValueRange{s, t, h});
                      return SmallVector<Value>{out, lse};
                    });
              });
        });
    rewriter.replaceOp(op, results);
    return success();
  }
};

} // namespace

void mlir::moba::populateLowerAttentionToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel,
    bool keepMmaCompatibleAttention) {
  patterns.add<LowerSparseAttention>(patterns.getContext(), parallel);
  patterns.add<LowerGroupedBlockAttention>(patterns.getContext(), parallel,
                                           keepMmaCompatibleAttention);
}
