//===- TileAttention.cpp - Sparse attention as tiled online softmax -------===//
//
// Part of moba-mlir. Implements `moba-tile-attention`: moba.sparse_attention
// becomes the flash-attention loop nest described in Passes.td.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBATILEATTENTION
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

struct TileSparseAttention : OpRewritePattern<SparseAttentionOp> {
  TileSparseAttention(MLIRContext *context, int64_t tileQ, int64_t tileK,
                      bool parallel)
      : OpRewritePattern(context), tileQ(tileQ), tileK(tileK),
        parallel(parallel) {}

  LogicalResult matchAndRewrite(SparseAttentionOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkLowerable(rewriter, op)))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    int64_t blockSize = op.getBlockSize();
    int64_t headDim = op.getQ().getType().getDimSize(2);
    bool causal = op.getCausal();
    double scale = op.getScale().convertToDouble();
    Value keys = op.getK(), values = op.getV();
    int64_t tk = tileK;

    auto body = [&](ImplicitLocOpBuilder &qb, const Sequence &seq, Value t,
                    Value g, Value q, Value selectedRow) -> QueryResult {
          LoopEmitter e(qb);
          Value scaleValue = e.f32(scale);
          Value emptyTile = e.splat(e.f32(kNegInf), tk);
          // State: running max m, running sum l, accumulator acc.
          SmallVector<Value> state = e.forEachAttendedRange(
              seq, blockSize, causal, t, selectedRow,
              ValueRange{e.f32(kNegInf), e.f32(0.0),
                         e.splat(e.f32(0.0), headDim)},
              [&](ImplicitLocOpBuilder &rb, Value first, Value last,
                  ValueRange c) {
                LoopEmitter re(rb);
                return re.forLoop(
                    first, last, re.index(tk), c,
                    [&](ImplicitLocOpBuilder &kb, Value tileStart,
                        ValueRange kc) -> SmallVector<Value> {
                      LoopEmitter ke(kb);
                      Value tileEnd = arith::MinUIOp::create(
                          kb, arith::AddIOp::create(kb, tileStart,
                                                    ke.index(tk)),
                          last);
                      Value count = arith::SubIOp::create(kb, tileEnd, tileStart);
                      // Scores of the tile; lanes past its end stay -inf.
                      Value scores =
                          ke.forLoop(
                              ke.index(0), count, ValueRange{emptyTile},
                              [&](ImplicitLocOpBuilder &sb, Value i,
                                  ValueRange sc) -> SmallVector<Value> {
                                LoopEmitter se(sb);
                                Value s = arith::AddIOp::create(sb, tileStart, i);
                                Value x = arith::MulFOp::create(
                                    sb, se.dot(q, se.readRow(keys, {s, g})),
                                    scaleValue);
                                return {vector::InsertOp::create(
                                    sb, x, sc[0], OpFoldResult(i))};
                              })[0];
                      Value tileMax = vector::ReductionOp::create(
                          kb, vector::CombiningKind::MAXIMUMF, scores);
                      Value m = arith::MaximumFOp::create(kb, kc[0], tileMax);
                      Value alpha = math::ExpOp::create(
                          kb, arith::SubFOp::create(kb, kc[0], m));
                      Value p = math::ExpOp::create(
                          kb, arith::SubFOp::create(kb, scores,
                                                    ke.splat(m, tk)));
                      Value l = arith::AddFOp::create(
                          kb, arith::MulFOp::create(kb, kc[1], alpha),
                          vector::ReductionOp::create(
                              kb, vector::CombiningKind::ADD, p));
                      Value acc = arith::MulFOp::create(
                          kb, kc[2], ke.splat(alpha, headDim));
                      acc = ke.forLoop(
                          ke.index(0), count, ValueRange{acc},
                          [&](ImplicitLocOpBuilder &vb, Value i,
                              ValueRange vc) -> SmallVector<Value> {
                            LoopEmitter ve(vb);
                            Value s = arith::AddIOp::create(vb, tileStart, i);
                            Value pi = vector::ExtractOp::create(
                                vb, p, OpFoldResult(i));
                            return {vector::FMAOp::create(
                                vb, ve.splat(pi, headDim),
                                ve.readRow(values, {s, g}), vc[0])};
                          })[0];
                      return {m, l, acc};
                    });
              });
          return finishSoftmax(qb, state[0], state[1], state[2]);
        };
    auto [out, lse] = parallel ? emitParallelAttention(b, op, body)
                               : emitAttentionLoops(b, op, tileQ, body);
    rewriter.replaceOp(op, {out, lse});
    return success();
  }

  int64_t tileQ, tileK;
  bool parallel;
};

struct MobaTileAttentionPass
    : public moba::impl::MobaTileAttentionBase<MobaTileAttentionPass> {
  using MobaTileAttentionBase::MobaTileAttentionBase;

  void runOnOperation() override {
    if (tileQ < 1 || tileK < 1) {
      getOperation()->emitError()
          << "moba-tile-attention: tile-q and tile-k must be at least 1, got "
          << "tile-q=" << int64_t(tileQ) << " tile-k=" << int64_t(tileK);
      return signalPassFailure();
    }
    if (tileQ > kMaxTileQueries || tileK > kMaxTileKeys) {
      getOperation()->emitError()
          << "moba-tile-attention: tile-q must be at most " << kMaxTileQueries
          << " and tile-k at most " << kMaxTileKeys
          << " (tile-k keys are scored as one vector), got tile-q="
          << int64_t(tileQ) << " tile-k=" << int64_t(tileK);
      return signalPassFailure();
    }
    RewritePatternSet patterns(&getContext());
    populateMobaTileAttentionPatterns(patterns, tileQ, tileK, parallel);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
    WalkResult left = getOperation()->walk([](SparseAttentionOp) {
      return WalkResult::interrupt();
    });
    if (left.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace

void mlir::moba::populateMobaTileAttentionPatterns(RewritePatternSet &patterns,
                                                   int64_t tileQ, int64_t tileK,
                                                   bool parallel) {
  patterns.add<TileSparseAttention>(patterns.getContext(), tileQ, tileK,
                                    parallel);
}
