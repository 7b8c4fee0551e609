//===- LowerToLoops.cpp - Decomposed moba ops to loops on tensors ---------===//
//
// Part of moba-mlir. Implements `moba-lower-to-loops`. Each op becomes a loop
// nest over the sequences of its packed batch that reads rows with
// vector.transfer_read and writes its init (destination) through iter_args,
// so that one-shot bufferization writes in place.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Transforms/WalkPatternRewriteDriver.h"

#include <limits>

namespace mlir::moba {
#define GEN_PASS_DEF_MOBALOWERTOLOOPS
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

/// A lowering pattern that emits serial loops (sequences, then tokens or
/// blocks) or, when `parallel`, one scf.forall over independent rows.
template <typename OpTy>
struct LoweringPattern : OpRewritePattern<OpTy> {
  LoweringPattern(MLIRContext *context, bool parallel)
      : OpRewritePattern<OpTy>(context), parallel(parallel) {}
  bool parallel;
};

//===----------------------------------------------------------------------===//
// moba.block_pool
//===----------------------------------------------------------------------===//

struct LowerBlockPool : LoweringPattern<BlockPoolOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(BlockPoolOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkStaticHeadsAndHeadDim(rewriter, op,
                                          {op.getKeys(), op.getInit()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    int64_t blockSize = op.getBlockSize();
    int64_t kvHeads = op.getKeys().getType().getDimSize(1);
    int64_t headDim = op.getKeys().getType().getDimSize(2);
    Value keys = op.getKeys();
    Value zeros = e.splat(e.f32(0.0), headDim);
    // The mean of keys [first, last) of key/value head g.
    auto mean = [&](ImplicitLocOpBuilder &gb, Value first, Value last,
                    Value g) {
      LoopEmitter ge(gb);
      Value count = arith::UIToFPOp::create(
          gb, gb.getF32Type(),
          arith::IndexCastUIOp::create(gb, gb.getI64Type(),
                                       arith::SubIOp::create(gb, last, first)));
      Value sum = ge.forLoop(first, last, ValueRange{zeros},
                             [&](ImplicitLocOpBuilder &kb, Value s,
                                 ValueRange acc) -> SmallVector<Value> {
                               LoopEmitter ke(kb);
                               return {arith::AddFOp::create(
                                   kb, acc[0], ke.readRow(keys, {s, g}))};
                             })[0];
      return arith::DivFOp::create(gb, sum, ge.splat(count, headDim))
          .getResult();
    };

    if (parallel) {
      OpFoldResult rows = tensor::getMixedSize(b, b.getLoc(), op.getInit(), 0);
      SmallVector<Value> result = e.forall(
          {rows, b.getIndexAttr(kvHeads)}, ValueRange{op.getInit()},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
              ValueRange outs) -> SmallVector<SliceWrite> {
            LoopEmitter pe(pb);
            Value row = ivs[0], g = ivs[1], j, valid;
            Sequence seq = pe.locateBlockRow(op.getCuSeqlens(), blockSize, row,
                                             j, valid);
            OpFoldResult one = pb.getIndexAttr(1);
            SmallVector<OpFoldResult> offsets = {row, g, pb.getIndexAttr(0)};
            SmallVector<OpFoldResult> sizes = {one, one,
                                               pb.getIndexAttr(headDim)};
            Value slice = tensor::ExtractSliceOp::create(
                pb, outs[0], offsets, sizes, SmallVector<OpFoldResult>(3, one));
            // Rows past the last block keep the init's values.
            auto ifOp = scf::IfOp::create(
                pb, valid,
                [&](OpBuilder &tb, Location loc) {
                  ImplicitLocOpBuilder ib(loc, tb);
                  LoopEmitter ie(ib);
                  Value first = arith::AddIOp::create(
                      ib, seq.start,
                      arith::MulIOp::create(ib, j, ie.index(blockSize)));
                  Value last = arith::MinUIOp::create(
                      ib, arith::AddIOp::create(ib, first, ie.index(blockSize)),
                      seq.end);
                  scf::YieldOp::create(
                      ib, ie.writeRow(mean(ib, first, last, g), slice,
                                      {ie.index(0), ie.index(0)}));
                },
                [&](OpBuilder &eb, Location loc) {
                  scf::YieldOp::create(eb, loc, slice);
                });
            return {{ifOp.getResult(0), outs[0], offsets, sizes}};
          });
      rewriter.replaceOp(op, result);
      return success();
    }

    SmallVector<Value> result = e.forEachSequence(
        op.getCuSeqlens(), blockSize, ValueRange{op.getInit()},
        [&](ImplicitLocOpBuilder &sb, const Sequence &seq, ValueRange c) {
          LoopEmitter se(sb);
          return se.forLoop(
              se.index(0), seq.numBlocks, c,
              [&](ImplicitLocOpBuilder &jb, Value j, ValueRange jc) {
                LoopEmitter je(jb);
                Value first = arith::AddIOp::create(
                    jb, seq.start,
                    arith::MulIOp::create(jb, j, je.index(blockSize)));
                Value last = arith::MinUIOp::create(
                    jb, arith::AddIOp::create(jb, first, je.index(blockSize)),
                    seq.end);
                Value row = arith::AddIOp::create(jb, seq.blockOffset, j);
                return je.forLoop(
                    je.index(0), je.index(kvHeads), jc,
                    [&](ImplicitLocOpBuilder &gb, Value g, ValueRange gc) {
                      LoopEmitter ge(gb);
                      return SmallVector<Value>{ge.writeRow(
                          mean(gb, first, last, g), gc[0], {row, g})};
                    });
              });
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

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
    OpFoldResult tokens = tensor::getMixedSize(b, b.getLoc(), init, 0);
    return e.forall(
        {tokens, b.getIndexAttr(numHeads)}, ValueRange{init},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value t = ivs[0], h = ivs[1];
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
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(GateTopKOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkStaticHeadsAndHeadDim(
            rewriter, op, {op.getQueries(), op.getMeans(), op.getInit()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    int64_t group = op.getQueries().getType().getDimSize(1) /
                    op.getMeans().getType().getDimSize(1);
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

//===----------------------------------------------------------------------===//
// moba.sparse_attention, untiled: exact two-pass softmax
//===----------------------------------------------------------------------===//

struct LowerSparseAttention : LoweringPattern<SparseAttentionOp> {
  using LoweringPattern::LoweringPattern;

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

    auto body = [&](ImplicitLocOpBuilder &qb, const Sequence &seq, Value t,
                    Value g, Value q, Value selectedRow) -> QueryResult {
          LoopEmitter e(qb);
          Value scaleValue = e.f32(scale);
          auto scoreAt = [&](ImplicitLocOpBuilder &kb, Value s) {
            LoopEmitter ke(kb);
            return arith::MulFOp::create(
                       kb, ke.dot(q, ke.readRow(keys, {s, g})), scaleValue)
                .getResult();
          };
          // Pass 1: the maximum score.
          Value m = e.forEachAttendedRange(
              seq, blockSize, causal, t, selectedRow,
              ValueRange{e.f32(kNegInf)},
              [&](ImplicitLocOpBuilder &rb, Value first, Value last,
                  ValueRange c) {
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
              [&](ImplicitLocOpBuilder &rb, Value first, Value last,
                  ValueRange c) {
                LoopEmitter re(rb);
                return re.forLoop(
                    first, last, c,
                    [&](ImplicitLocOpBuilder &kb, Value s,
                        ValueRange kc) -> SmallVector<Value> {
                      LoopEmitter ke(kb);
                      Value p = math::ExpOp::create(
                          kb, arith::SubFOp::create(kb, scoreAt(kb, s), m));
                      Value acc = vector::FMAOp::create(
                          kb, ke.splat(p, headDim),
                          ke.readRow(values, {s, g}), kc[1]);
                      return {arith::AddFOp::create(kb, kc[0], p), acc};
                    });
              });
          return finishSoftmax(qb, m, sums[0], sums[1]);
        };
    auto [out, lse] = parallel ? emitParallelAttention(b, op, body)
                               : emitAttentionLoops(b, op, /*tileQ=*/0, body);
    rewriter.replaceOp(op, {out, lse});
    return success();
  }
};

//===----------------------------------------------------------------------===//
// moba.lse_merge
//===----------------------------------------------------------------------===//

struct LowerLseMerge : LoweringPattern<LseMergeOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(LseMergeOp op,
                                PatternRewriter &rewriter) const override {
    if (parallel)
      return op.emitOpError("parallel lowering of moba.lse_merge is not "
                            "implemented yet");
    if (failed(checkStaticHeadsAndHeadDim(rewriter, op, {op.getOutInit()})) ||
        op.getPartials().getType().isDynamicDim(0))
      return rewriter.notifyMatchFailure(op, "dynamic partials or heads");
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    Value parts = op.getPartials(), partLse = op.getPartialLse();
    int64_t numParts = op.getPartials().getType().getDimSize(0);
    int64_t numHeads = op.getOutInit().getType().getDimSize(1);
    int64_t headDim = op.getOutInit().getType().getDimSize(2);
    Value tokens = tensor::DimOp::create(b, op.getOutInit(), 0);
    SmallVector<Value> results = e.forLoop(
        e.index(0), tokens, ValueRange{op.getOutInit(), op.getLseInit()},
        [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
          LoopEmitter te(tb);
          return te.forLoop(
              te.index(0), te.index(numHeads), tc,
              [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
                LoopEmitter he(hb);
                // m = max_p lse_p; l = sum_p exp(lse_p - m);
                // acc = sum_p exp(lse_p - m) * o_p.
                Value m = he.f32(kNegInf);
                for (int64_t p = 0; p < numParts; ++p)
                  m = arith::MaximumFOp::create(
                      hb, m,
                      tensor::ExtractOp::create(
                          hb, partLse, ValueRange{he.index(p), t, h}));
                Value finite =
                    arith::CmpFOp::create(hb, arith::CmpFPredicate::OGT, m,
                                          he.f32(kNegInf));
                Value shift = arith::SelectOp::create(hb, finite, m,
                                                      he.f32(0.0));
                Value l = he.f32(0.0);
                Value acc = he.splat(he.f32(0.0), headDim);
                for (int64_t p = 0; p < numParts; ++p) {
                  Value w = math::ExpOp::create(
                      hb, arith::SubFOp::create(
                              hb,
                              tensor::ExtractOp::create(
                                  hb, partLse, ValueRange{he.index(p), t, h}),
                              shift));
                  l = arith::AddFOp::create(hb, l, w);
                  acc = vector::FMAOp::create(
                      hb, he.splat(w, headDim),
                      he.readRow(parts, {he.index(p), t, h}), acc);
                }
                QueryResult r = finishSoftmax(hb, shift, l, acc);
                Value out = he.writeRow(r.row, hc[0], {t, h});
                Value lse = tensor::InsertOp::create(hb, r.lse, hc[1],
                                                     ValueRange{t, h});
                return SmallVector<Value>{out, lse};
              });
        });
    rewriter.replaceOp(op, results);
    return success();
  }
};

struct MobaLowerToLoopsPass
    : public moba::impl::MobaLowerToLoopsBase<MobaLowerToLoopsPass> {
  using MobaLowerToLoopsBase::MobaLowerToLoopsBase;

  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMobaLowerToLoopsPatterns(patterns, parallel);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
    // Whatever could not be lowered has said why (dynamic heads or
    // head_dim); the pass fails rather than leave moba ops behind.
    WalkResult left = getOperation()->walk([](Operation *op) {
      return isa<BlockPoolOp, GateOp, TopKOp, GateTopKOp, SparseAttentionOp,
                 LseMergeOp>(op)
                 ? WalkResult::interrupt()
                 : WalkResult::advance();
    });
    if (left.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace

void mlir::moba::populateMobaLowerToLoopsPatterns(RewritePatternSet &patterns,
                                                  bool parallel) {
  patterns.add<LowerBlockPool, LowerGate, LowerTopK, LowerGateTopK,
               LowerSparseAttention, LowerLseMerge>(patterns.getContext(),
                                                    parallel);
}
