//===- LowerToLoops.cpp - Decomposed moba ops to loops on tensors ---------===//
//
// Part of moba-mlir. Implements `moba-lower-to-loops`. Each op becomes a loop
// nest over the sequences of its packed batch that reads rows with
// vector.transfer_read and writes its init (destination) through iter_args,
// so that one-shot bufferization writes in place.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"
#include "moba/Dialect/Moba/Transforms/Passes.h"

#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBALOWERTOLOOPS
#include "moba/Dialect/Moba/Transforms/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

//===----------------------------------------------------------------------===//
// moba.block_pool
//===----------------------------------------------------------------------===//

struct LowerBlockPool : LoweringPattern<BlockPoolOp> {
  using LoweringPattern::LoweringPattern;
  /// Keys one parallel iteration sums (parallel form, long blocks).
  static constexpr int64_t kPoolChunk = 256;

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
      // The sum of keys [first, last) of (g, d), f32.
      auto sumKeys = [&](ImplicitLocOpBuilder &ib, Value first, Value last,
                         Value g, Value d) {
        LoopEmitter ie(ib);
        return ie.forLoop(first, last, ValueRange{ie.f32(0.0)},
                          [&](ImplicitLocOpBuilder &kb, Value s,
                              ValueRange acc) -> SmallVector<Value> {
                            Value x = tensor::ExtractOp::create(
                                kb, keys, ValueRange{s, g, d});
                            if (x.getType() != kb.getF32Type())
                              x = arith::ExtFOp::create(kb, kb.getF32Type(),
                                                        x);
                            return {arith::AddFOp::create(kb, acc[0], x)};
                          })[0];
      };
      OpFoldResult rows = tensor::getMixedSize(b, b.getLoc(), op.getInit(), 0);
      // Blocks longer than kPoolChunk keys are summed in two passes: one
      // iteration per (block row, chunk of kPoolChunk keys, head, dim)
      // into partial sums, then the chunks' sums added per (row, head,
      // dim). One pass would leave too few iterations, each walking
      // thousands of keys one dependent load after another (0.48 ms at
      // 128K tokens, block 4096, 32 rows x 8 heads x 128 dims; the keys'
      // bytes take 0.07 ms).
      int64_t chunks = (blockSize + kPoolChunk - 1) / kPoolChunk;
      Value partials;
      if (chunks > 1) {
        Value rowCount = getValueOrCreateConstantIndexOp(b, b.getLoc(), rows);
        Value items =
            arith::MulIOp::create(b, rowCount, e.index(chunks)).getResult();
        Value empty = tensor::EmptyOp::create(
            b, ArrayRef<int64_t>{ShapedType::kDynamic, kvHeads, headDim},
            b.getF32Type(), ValueRange{items});
        partials = e.forall(
            {items, b.getIndexAttr(kvHeads), b.getIndexAttr(headDim)},
            ValueRange{empty},
            [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
                ValueRange outs) -> SmallVector<SliceWrite> {
              LoopEmitter pe(pb);
              Value row = arith::DivUIOp::create(pb, ivs[0], pe.index(chunks));
              Value chunk =
                  arith::RemUIOp::create(pb, ivs[0], pe.index(chunks));
              Value j, valid;
              Sequence seq = pe.locateBlockRow(op.getCuSeqlens(), blockSize,
                                               row, j, valid);
              auto [first, last] = pe.blockKeys(seq, j, blockSize);
              // A row past the last block sums nothing (first = last).
              last = arith::SelectOp::create(pb, valid, last, first);
              Value from = arith::MinUIOp::create(
                  pb,
                  arith::AddIOp::create(
                      pb, first,
                      arith::MulIOp::create(pb, chunk,
                                            pe.index(kPoolChunk))),
                  last);
              Value to = arith::MinUIOp::create(
                  pb, arith::AddIOp::create(pb, from, pe.index(kPoolChunk)),
                  last);
              return {pe.scalarWrite(sumKeys(pb, from, to, ivs[1], ivs[2]),
                                     outs[0], ivs)};
            })[0];
      }
      // One iteration per (block row, key/value head, dim): neighbouring
      // iterations (a GPU warp) read neighbouring elements of each key row.
      SmallVector<Value> result = e.forall(
          {rows, b.getIndexAttr(kvHeads), b.getIndexAttr(headDim)},
          ValueRange{op.getInit()},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
              ValueRange outs) -> SmallVector<SliceWrite> {
            LoopEmitter pe(pb);
            Value row = ivs[0], g = ivs[1], d = ivs[2], j, valid;
            Sequence seq = pe.locateBlockRow(op.getCuSeqlens(), blockSize, row,
                                             j, valid);
            OpFoldResult one = pb.getIndexAttr(1);
            SmallVector<OpFoldResult> offsets = {row, g, d};
            SmallVector<OpFoldResult> sizes = {one, one, one};
            Value slice = tensor::ExtractSliceOp::create(
                pb, outs[0], offsets, sizes, SmallVector<OpFoldResult>(3, one));
            // Rows past the last block keep the init's values.
            auto ifOp = scf::IfOp::create(
                pb, valid,
                [&](OpBuilder &tb, Location loc) {
                  ImplicitLocOpBuilder ib(loc, tb);
                  LoopEmitter ie(ib);
                  auto [first, last] = ie.blockKeys(seq, j, blockSize);
                  Value sum;
                  if (!partials) {
                    sum = sumKeys(ib, first, last, g, d);
                  } else {
                    Value base =
                        arith::MulIOp::create(ib, row, ie.index(chunks));
                    sum = ie.forLoop(
                        ie.index(0), ie.index(chunks),
                        ValueRange{ie.f32(0.0)},
                        [&](ImplicitLocOpBuilder &kb, Value c,
                            ValueRange acc) -> SmallVector<Value> {
                          Value x = tensor::ExtractOp::create(
                              kb, partials,
                              ValueRange{arith::AddIOp::create(kb, base, c),
                                         g, d});
                          return {arith::AddFOp::create(kb, acc[0], x)};
                        })[0];
                  }
                  Value count = arith::UIToFPOp::create(
                      ib, ib.getF32Type(),
                      arith::IndexCastUIOp::create(
                          ib, ib.getI64Type(),
                          arith::SubIOp::create(ib, last, first)));
                  Value mean = arith::DivFOp::create(ib, sum, count);
                  scf::YieldOp::create(
                      ib, ValueRange{tensor::InsertOp::create(
                              ib, mean, slice,
                              ValueRange{ie.index(0), ie.index(0),
                                         ie.index(0)})});
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
                // Captured by the loop body below: no structured binding.
                Value first, last;
                std::tie(first, last) = je.blockKeys(seq, j, blockSize);
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
// moba.lse_merge
//===----------------------------------------------------------------------===//

struct LowerLseMerge : LoweringPattern<LseMergeOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(LseMergeOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkStaticHeadsAndHeadDim(rewriter, op, {op.getOutInit()})))
      return failure();
    if (op.getPartials().getType().isDynamicDim(0))
      return op.emitOpError("lowering to loops needs a static number of "
                            "partials (dim 0 of partials)");
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    Value parts = op.getPartials(), partLse = op.getPartialLse();
    int64_t numParts = op.getPartials().getType().getDimSize(0);
    int64_t numHeads = op.getOutInit().getType().getDimSize(1);
    int64_t headDim = op.getOutInit().getType().getDimSize(2);
    // m = max_p lse_p; l = sum_p exp(lse_p - m); acc = sum_p exp(lse_p - m)
    // * o_p; all -inf gives l = 0, hence zeros and -inf. A -inf partial
    // contributes nothing, whatever its row holds. A NaN lse makes m, l and
    // the row NaN (MaximumF propagates NaN; attendedAny holds for NaN).
    struct Weights {
      Value shift, l;
      SmallVector<Value> w, attended;
    };
    auto weightsAt = [&](ImplicitLocOpBuilder &hb, Value t, Value h) {
      LoopEmitter he(hb);
      SmallVector<Value> lses;
      Value m = he.f32(kNegInf);
      for (int64_t p = 0; p < numParts; ++p) {
        lses.push_back(tensor::ExtractOp::create(
            hb, partLse, ValueRange{he.index(p), t, h}));
        m = arith::MaximumFOp::create(hb, m, lses.back());
      }
      Weights weights;
      Value finite = arith::CmpFOp::create(hb, arith::CmpFPredicate::OGT, m,
                                           he.f32(kNegInf));
      weights.shift = arith::SelectOp::create(hb, finite, m, he.f32(0.0));
      weights.l = he.f32(0.0);
      for (int64_t p = 0; p < numParts; ++p) {
        weights.w.push_back(math::ExpOp::create(
            hb, arith::SubFOp::create(hb, lses[p], weights.shift)));
        weights.l = arith::AddFOp::create(hb, weights.l, weights.w.back());
        weights.attended.push_back(arith::CmpFOp::create(
            hb, arith::CmpFPredicate::OGT, lses[p], he.f32(kNegInf)));
      }
      return weights;
    };
    auto merge = [&](ImplicitLocOpBuilder &hb, Value t, Value h) {
      LoopEmitter he(hb);
      Weights weights = weightsAt(hb, t, h);
      Value acc = he.splat(he.f32(0.0), headDim);
      Value zeros = he.splat(he.f32(0.0), headDim);
      for (int64_t p = 0; p < numParts; ++p) {
        Value row = arith::SelectOp::create(
            hb, weights.attended[p], he.readRow(parts, {he.index(p), t, h}),
            zeros);
        acc = vector::FMAOp::create(hb, he.splat(weights.w[p], headDim), row,
                                    acc);
      }
      return finishSoftmax(hb, weights.shift, weights.l, acc);
    };

    OpFoldResult tokens =
        tensor::getMixedSize(b, b.getLoc(), op.getOutInit(), 0);
    SmallVector<Value> results;
    if (parallel) {
      // The log-sum-exp per (token, head); the output per (token, head,
      // dim), so that neighbouring iterations (a GPU warp) read neighbouring
      // elements of the partial rows.
      Value lse = e.forall(
          {tokens, b.getIndexAttr(numHeads)}, ValueRange{op.getLseInit()},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
              ValueRange outs) -> SmallVector<SliceWrite> {
            LoopEmitter pe(pb);
            Weights weights = weightsAt(pb, ivs[0], ivs[1]);
            Value any = attendedAny(pb, pb.getLoc(), weights.l);
            Value value = arith::SelectOp::create(
                pb, any,
                arith::AddFOp::create(pb, weights.shift,
                                      math::LogOp::create(pb, weights.l)),
                pe.f32(kNegInf));
            return {pe.scalarWrite(value, outs[0], ivs)};
          })[0];
      // Each iteration merges `width` neighbouring dims: 16 bytes of each
      // partial (4 f32 or 8 f16/bf16), which moba-align-row-accesses turns
      // into one vector load where the GPU pipeline runs it.
      Type partType = op.getPartials().getType().getElementType();
      int64_t perLoad = 16 / (partType.getIntOrFloatBitWidth() / 8);
      int64_t width = headDim % perLoad == 0 ? perLoad
                      : headDim % 4 == 0     ? 4
                                             : 1;
      auto vectorType = VectorType::get({width}, b.getF32Type());
      Value out = e.forall(
          {tokens, b.getIndexAttr(numHeads), b.getIndexAttr(headDim / width)},
          ValueRange{op.getOutInit()},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
              ValueRange outs) -> SmallVector<SliceWrite> {
            LoopEmitter pe(pb);
            Value t = ivs[0], h = ivs[1];
            Value d = arith::MulIOp::create(pb, ivs[2], pe.index(width));
            Weights weights = weightsAt(pb, t, h);
            Value zeros = pe.splat(pe.f32(0.0), width);
            Value acc = zeros;
            Value pad = arith::ConstantOp::create(pb, pb.getZeroAttr(partType));
            for (int64_t p = 0; p < numParts; ++p) {
              Value x = vector::TransferReadOp::create(
                  pb, VectorType::get({width}, partType), parts,
                  ValueRange{pe.index(p), t, h, d}, pad,
                  ArrayRef<bool>{true});
              if (partType != pb.getF32Type())
                x = arith::ExtFOp::create(pb, vectorType, x);
              x = arith::SelectOp::create(pb, weights.attended[p], x, zeros);
              acc = vector::FMAOp::create(pb, pe.splat(weights.w[p], width),
                                          x, acc);
            }
            Value any = attendedAny(pb, pb.getLoc(), weights.l);
            // One division per iteration, not one per dim.
            Value inverse = arith::SelectOp::create(
                pb, any, arith::DivFOp::create(pb, pe.f32(1.0), weights.l),
                pe.f32(0.0));
            Value value = arith::MulFOp::create(
                pb, acc, pe.splat(inverse, width));
            return {pe.vectorWrite(value, outs[0], {t, h, d})};
          })[0];
      results = {out, lse};
    } else {
      results = e.forLoop(
          e.index(0), getValueOrCreateConstantIndexOp(b, b.getLoc(), tokens),
          ValueRange{op.getOutInit(), op.getLseInit()},
          [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
            LoopEmitter te(tb);
            return te.forLoop(
                te.index(0), te.index(numHeads), tc,
                [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
                  LoopEmitter he(hb);
                  QueryResult r = merge(hb, t, h);
                  Value out = he.writeRow(r.row, hc[0], {t, h});
                  Value lse = tensor::InsertOp::create(hb, r.lse, hc[1],
                                                       ValueRange{t, h});
                  return SmallVector<Value>{out, lse};
                });
          });
    }
    rewriter.replaceOp(op, results);
    return success();
  }
};

//===----------------------------------------------------------------------===//
// moba.group_queries
//===----------------------------------------------------------------------===//

/// Tokens each parallel iteration of moba.group_queries scans.
constexpr int64_t kGroupChunkTokens = 64;

/// t * K + s, the entry of slot s of token t (i32).
Value slotEntry(ImplicitLocOpBuilder &b, Value t, Value s, int64_t k) {
  LoopEmitter e(b);
  return arith::IndexCastOp::create(
      b, b.getI32Type(),
      arith::AddIOp::create(b, arith::MulIOp::create(b, t, e.index(k)), s));
}

struct LowerGroupQueries : LoweringPattern<GroupQueriesOp> {
  LowerGroupQueries(MLIRContext *context, bool parallel,
                    bool keepWarpCompatible)
      : LoweringPattern(context, parallel),
        keepWarpCompatible(keepWarpCompatible) {}
  bool keepWarpCompatible;

  LogicalResult matchAndRewrite(GroupQueriesOp op,
                                PatternRewriter &rewriter) const override {
    if (!isa<RankedTensorType>(op.getSelected().getType()))
      return rewriter.notifyMatchFailure(op, "on buffers");
    if (keepWarpCompatible && op.isWarpCompatible())
      return rewriter.notifyMatchFailure(op, "left for the warp lowering");
    auto selType = cast<RankedTensorType>(op.getSelected().getType());
    if (selType.isDynamicDim(1) || selType.isDynamicDim(2))
      return op.emitOpError("lowering to loops needs static query heads and "
                            "K (dims 1 and 2 of selected)");
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    Value selected = op.getSelected(), cu = op.getCuSeqlens();
    int64_t blockSize = op.getBlockSize();
    int64_t numHeads = selType.getDimSize(1), k = selType.getDimSize(2);
    SmallVector<Value> results =
        parallel ? emitParallel(b, op, selected, cu, blockSize, numHeads, k)
                 : emitSerial(b, op, selected, cu, blockSize, numHeads, k);
    rewriter.replaceOp(op, results);
    return success();
  }

private:
  /// One pass over the tokens counts, a prefix sum places, a second pass
  /// fills: each (h, r) keeps a cursor, so entries come out ordered by token
  /// then slot.
  SmallVector<Value> emitSerial(ImplicitLocOpBuilder &b, GroupQueriesOp op,
                                Value selected, Value cu, int64_t blockSize,
                                int64_t numHeads, int64_t k) const {
    LoopEmitter e(b);
    Value rows = tensor::DimOp::create(b, op.getCountsInit(), 1);
    Value counts =
        linalg::FillOp::create(b, ValueRange{e.i32(0)},
                               ValueRange{op.getCountsInit()})
            .getResult(0);
    Value entries =
        linalg::FillOp::create(b, ValueRange{e.i32(-1)},
                               ValueRange{op.getEntriesInit()})
            .getResult(0);
    // Runs `visit` on every attending slot, in token, head, slot order.
    using SlotVisit = function_ref<SmallVector<Value>(
        ImplicitLocOpBuilder &, Value t, Value h, Value s, Value row,
        ValueRange)>;
    auto forEachSlot = [&](ValueRange inits, SlotVisit visit) {
      return e.forEachTokenAndHead(
          cu, blockSize, numHeads, inits,
          [&](ImplicitLocOpBuilder &tb, const Sequence &seq, Value t, Value h,
              ValueRange tc) {
            LoopEmitter te(tb);
            return te.forEachAttendingSlot(
                seq, te.readSelectionRow(selected, t, h), /*block=*/Value(),
                tc, [&](ImplicitLocOpBuilder &ib, Value s, ValueRange sc) {
                  Value j = arith::IndexCastOp::create(
                      ib, ib.getIndexType(),
                      tensor::ExtractOp::create(ib, selected,
                                                ValueRange{t, h, s}));
                  Value row = arith::AddIOp::create(ib, seq.blockOffset, j);
                  return visit(ib, t, h, s, row, sc);
                });
          });
    };
    auto bump = [](ImplicitLocOpBuilder &ib, Value tensor, Value h, Value row,
                   Value by) {
      Value old = tensor::ExtractOp::create(ib, tensor, ValueRange{h, row});
      return tensor::InsertOp::create(ib, arith::AddIOp::create(ib, old, by),
                                      tensor, ValueRange{h, row})
          .getResult();
    };
    counts = forEachSlot(
        ValueRange{counts},
        [&](ImplicitLocOpBuilder &ib, Value, Value h, Value, Value row,
            ValueRange c) {
          LoopEmitter ie(ib);
          return SmallVector<Value>{bump(ib, c[0], h, row, ie.i32(1))};
        })[0];
    // starts[h, r] = sum_{r' < r} counts[h, r'].
    Value starts = e.forLoop(
        e.index(0), e.index(numHeads), ValueRange{op.getStartsInit()},
        [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
          LoopEmitter he(hb);
          return SmallVector<Value>{he.forLoop(
              he.index(0), rows, ValueRange{hc[0], he.i32(0)},
              [&](ImplicitLocOpBuilder &rb, Value r, ValueRange rc) {
                Value placed = tensor::InsertOp::create(rb, rc[1], rc[0],
                                                        ValueRange{h, r});
                Value count =
                    tensor::ExtractOp::create(rb, counts, ValueRange{h, r});
                return SmallVector<Value>{
                    placed, arith::AddIOp::create(rb, rc[1], count)};
              })[0]};
        })[0];
    entries = forEachSlot(
        ValueRange{entries, starts},
        [&](ImplicitLocOpBuilder &ib, Value t, Value h, Value s, Value row,
            ValueRange c) {
          LoopEmitter ie(ib);
          Value cursor = tensor::ExtractOp::create(ib, c[1], ValueRange{h, row});
          Value at = arith::IndexCastOp::create(ib, ib.getIndexType(), cursor);
          Value filled = tensor::InsertOp::create(
              ib, slotEntry(ib, t, s, k), c[0], ValueRange{h, at});
          return SmallVector<Value>{filled, bump(ib, c[1], h, row, ie.i32(1))};
        })[0];
    return {starts, counts, entries};
  }

  /// Parallel passes, linear in the slots (heads x tokens x K): count the
  /// slots of each (head, chunk of tokens) per block row; per (head, row),
  /// sum the chunks (the group's size) and note each chunk's offset in the
  /// group; place the groups (a prefix sum over the head's earlier rows);
  /// sort each (head, chunk)'s entries by row into a chunk-local list (a
  /// counting sort by the chunk's counts); clear the entries (-1); copy each
  /// (head, row, chunk) part of a local list to its place in the group.
  /// Entries come out ordered by token then slot in every group, as in the
  /// serial form, and no iteration scans more than one chunk of tokens.
  SmallVector<Value> emitParallel(ImplicitLocOpBuilder &b, GroupQueriesOp op,
                                  Value selected, Value cu, int64_t blockSize,
                                  int64_t numHeads, int64_t k) const {
    LoopEmitter e(b);
    OpFoldResult rows =
        tensor::getMixedSize(b, b.getLoc(), op.getCountsInit(), 1);
    OpFoldResult width =
        tensor::getMixedSize(b, b.getLoc(), op.getEntriesInit(), 1);
    OpFoldResult heads = b.getIndexAttr(numHeads);
    OpFoldResult zero = b.getIndexAttr(0), one = b.getIndexAttr(1);
    Value tokens = tensor::DimOp::create(b, selected, 0);
    Value chunks = arith::CeilDivUIOp::create(
        b, tokens, e.index(kGroupChunkTokens));
    OpFoldResult localWidth = b.getIndexAttr(kGroupChunkTokens * k);
    // The 1-D slice dest[offsets][sizes]: sizes are 1 but for the last one
    // that is not (or the last).
    auto slice = [&](ImplicitLocOpBuilder &pb, Value dest,
                     ArrayRef<OpFoldResult> offsets,
                     ArrayRef<OpFoldResult> sizes) -> Value {
      // Static sizes are attributes; a Value size is dynamic even when it
      // is a constant (ExtractSliceOp keeps it as an operand).
      auto staticSize = [](OpFoldResult size) -> std::optional<int64_t> {
        if (auto attr = dyn_cast<Attribute>(size))
          return cast<IntegerAttr>(attr).getInt();
        return std::nullopt;
      };
      OpFoldResult length = sizes.back();
      for (OpFoldResult size : sizes)
        if (staticSize(size) != std::optional<int64_t>(1))
          length = size;
      int64_t extent = staticSize(length).value_or(ShapedType::kDynamic);
      return tensor::ExtractSliceOp::create(
          pb, RankedTensorType::get({extent}, pb.getI32Type()), dest,
          offsets, sizes, SmallVector<OpFoldResult>(offsets.size(), one));
    };
    // Folds `visit` over the attending slots of the tokens of chunk
    // `chunk`, in token then slot order; `row` is the slot's block row.
    using SlotVisit = function_ref<SmallVector<Value>(
        ImplicitLocOpBuilder &, Value t, Value s, Value row, ValueRange)>;
    auto foldChunk = [&](ImplicitLocOpBuilder &pb, Value h, Value chunk,
                         ValueRange inits, SlotVisit visit) {
      LoopEmitter pe(pb);
      Value first =
          arith::MulIOp::create(pb, chunk, pe.index(kGroupChunkTokens));
      Value last = arith::MinUIOp::create(
          pb, arith::AddIOp::create(pb, first, pe.index(kGroupChunkTokens)),
          tokens);
      return pe.forLoop(
          first, last, inits,
          [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
            LoopEmitter te(tb);
            Sequence seq = te.locateToken(cu, blockSize, t);
            return te.forEachAttendingSlot(
                seq, te.readSelectionRow(selected, t, h), /*block=*/Value(),
                tc,
                [&](ImplicitLocOpBuilder &ib, Value s, ValueRange sc) {
                  Value j = arith::IndexCastOp::create(
                      ib, ib.getIndexType(),
                      tensor::ExtractOp::create(ib, selected,
                                                ValueRange{t, h, s}));
                  Value row = arith::AddIOp::create(ib, seq.blockOffset, j);
                  return visit(ib, t, s, row, sc);
                });
          });
    };
    // tensor[at] += by, for 1-D tensors.
    auto bump = [](ImplicitLocOpBuilder &ib, Value tensor, Value at,
                   Value by) -> Value {
      Value old = tensor::ExtractOp::create(ib, tensor, ValueRange{at});
      return tensor::InsertOp::create(ib, arith::AddIOp::create(ib, old, by),
                                      tensor, ValueRange{at});
    };
    auto emptyOf = [&](ArrayRef<OpFoldResult> sizes) -> Value {
      return tensor::EmptyOp::create(b, sizes, b.getI32Type());
    };
    // Writes the exclusive prefix sums of valueAt(0), ..., valueAt(n - 1)
    // (i32) into the 1-D `into`; returns it and the total.
    using ValueAt = function_ref<Value(ImplicitLocOpBuilder &, Value)>;
    // Four values are read before any is placed, so that a GPU thread has
    // four loads in flight instead of waiting on each in turn (the places
    // may alias the values for all the compiler knows).
    auto exclusiveScan = [](ImplicitLocOpBuilder &pb, Value into, Value n,
                            ValueAt valueAt) {
      constexpr int64_t kUnroll = 4;
      LoopEmitter pe(pb);
      Value whole = arith::MulIOp::create(
          pb, arith::DivUIOp::create(pb, n, pe.index(kUnroll)),
          pe.index(kUnroll));
      auto step = [&](Value from, Value to, int64_t width, ValueRange inits) {
        return pe.forLoop(
            from, to, pe.index(width), inits,
            [&](ImplicitLocOpBuilder &cb, Value i,
                ValueRange c) -> SmallVector<Value> {
              LoopEmitter ce(cb);
              SmallVector<Value> at = {i}, values;
              for (int64_t u = 1; u < width; ++u)
                at.push_back(arith::AddIOp::create(cb, i, ce.index(u)));
              for (Value index : at)
                values.push_back(valueAt(cb, index));
              Value placed = c[0], sum = c[1];
              for (int64_t u = 0; u < width; ++u) {
                placed = tensor::InsertOp::create(cb, sum, placed,
                                                  ValueRange{at[u]});
                sum = arith::AddIOp::create(cb, sum, values[u]);
              }
              return {placed, sum};
            });
      };
      SmallVector<Value> unrolled =
          step(pe.index(0), whole, kUnroll, ValueRange{into, pe.i32(0)});
      return step(whole, n, 1, unrolled);
    };

    // [h, chunk, row]: the chunk's slots that chose the row.
    Value chunkCounts = e.forall(
        {heads, chunks}, ValueRange{emptyOf({heads, chunks, rows})},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value h = ivs[0], chunk = ivs[1];
          SmallVector<OpFoldResult> offsets = {h, chunk, zero};
          SmallVector<OpFoldResult> sizes = {one, one, rows};
          Value perRow = slice(pb, outs[0], offsets, sizes);
          Value rowCount = tensor::DimOp::create(pb, perRow, 0);
          perRow = pe.forLoop(pe.index(0), rowCount, ValueRange{perRow},
                              [&](ImplicitLocOpBuilder &rb, Value r,
                                  ValueRange c) -> SmallVector<Value> {
                                LoopEmitter re(rb);
                                return {tensor::InsertOp::create(
                                    rb, re.i32(0), c[0], ValueRange{r})};
                              })[0];
          perRow = foldChunk(pb, h, chunk, ValueRange{perRow},
                             [&](ImplicitLocOpBuilder &ib, Value, Value,
                                 Value row,
                                 ValueRange c) -> SmallVector<Value> {
                               LoopEmitter ie(ib);
                               return {bump(ib, c[0], row, ie.i32(1))};
                             })[0];
          return {{perRow, outs[0], offsets, sizes}};
        })[0];
    // counts[h, row] = the sum over the chunks; chunkOffsets[h, chunk, row]
    // = the earlier chunks' part of it.
    SmallVector<Value> summed = e.forall(
        {heads, rows},
        ValueRange{op.getCountsInit(), emptyOf({heads, chunks, rows})},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value h = ivs[0], row = ivs[1];
          SmallVector<OpFoldResult> offsets = {h, zero, row};
          SmallVector<OpFoldResult> sizes = {one, chunks, one};
          SmallVector<Value> done = exclusiveScan(
              pb, slice(pb, outs[1], offsets, sizes), chunks,
              [&](ImplicitLocOpBuilder &cb, Value c) -> Value {
                return tensor::ExtractOp::create(cb, chunkCounts,
                                                 ValueRange{h, c, row});
              });
          return {pe.scalarWrite(done[1], outs[0], ivs),
                  {done[0], outs[1], offsets, sizes}};
        });
    Value counts = summed[0], chunkOffsets = summed[1];
    // starts[h, r] = sum_{r' < r} counts[h, r'].
    Value starts = e.forall(
        {heads, rows}, ValueRange{op.getStartsInit()},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value h = ivs[0];
          Value start = pe.forLoop(
              pe.index(0), ivs[1], ValueRange{pe.i32(0)},
              [&](ImplicitLocOpBuilder &rb, Value r,
                  ValueRange c) -> SmallVector<Value> {
                return {arith::AddIOp::create(
                    rb, c[0],
                    tensor::ExtractOp::create(rb, counts,
                                              ValueRange{h, r}))};
              })[0];
          return {pe.scalarWrite(start, outs[0], ivs)};
        })[0];
    // Each (head, chunk)'s entries sorted by row into its local list; the
    // cursors end at each row's end there.
    SmallVector<Value> sorted = e.forall(
        {heads, chunks},
        ValueRange{emptyOf({heads, chunks, localWidth}),
                   emptyOf({heads, chunks, rows})},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value h = ivs[0], chunk = ivs[1];
          SmallVector<OpFoldResult> listOffsets = {h, chunk, zero};
          SmallVector<OpFoldResult> listSizes = {one, one, localWidth};
          SmallVector<OpFoldResult> rowSizes = {one, one, rows};
          Value cursor = slice(pb, outs[1], listOffsets, rowSizes);
          cursor = exclusiveScan(
              pb, cursor, tensor::DimOp::create(pb, cursor, 0),
              [&](ImplicitLocOpBuilder &rb, Value r) -> Value {
                return tensor::ExtractOp::create(rb, chunkCounts,
                                                 ValueRange{h, chunk, r});
              })[0];
          Value list = slice(pb, outs[0], listOffsets, listSizes);
          SmallVector<Value> done = foldChunk(
              pb, h, chunk, ValueRange{list, cursor},
              [&](ImplicitLocOpBuilder &ib, Value t, Value s, Value row,
                  ValueRange c) -> SmallVector<Value> {
                LoopEmitter ie(ib);
                Value at = arith::IndexCastOp::create(
                    ib, ib.getIndexType(),
                    tensor::ExtractOp::create(ib, c[1], ValueRange{row}));
                return {tensor::InsertOp::create(ib, slotEntry(ib, t, s, k),
                                                 c[0], ValueRange{at}),
                        bump(ib, c[1], row, ie.i32(1))};
              });
          return {{done[0], outs[0], listOffsets, listSizes},
                  {done[1], outs[1], listOffsets, rowSizes}};
        });
    Value lists = sorted[0], ends = sorted[1];
    Value unfilled =
        e.forall({heads, width}, ValueRange{op.getEntriesInit()},
                 [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
                     ValueRange outs) -> SmallVector<SliceWrite> {
                   LoopEmitter pe(pb);
                   return {pe.scalarWrite(pe.i32(-1), outs[0], ivs)};
                 })[0];
    // Each (head, row, chunk) part copied to the group.
    Value entries = e.forall(
        {heads, rows, chunks}, ValueRange{unfilled},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value h = ivs[0], row = ivs[1], chunk = ivs[2];
          Value count = pe.extractIndex(chunkCounts, {h, chunk, row});
          Value start = arith::AddIOp::create(
              pb, pe.extractIndex(starts, {h, row}),
              pe.extractIndex(chunkOffsets, {h, chunk, row}));
          Value from = arith::SubIOp::create(
              pb, pe.extractIndex(ends, {h, chunk, row}), count);
          SmallVector<OpFoldResult> offsets = {h, start};
          SmallVector<OpFoldResult> sizes = {one, count};
          Value part = slice(pb, outs[0], offsets, sizes);
          part = pe.forLoop(
              pe.index(0), count, ValueRange{part},
              [&](ImplicitLocOpBuilder &ib, Value i,
                  ValueRange c) -> SmallVector<Value> {
                Value entry = tensor::ExtractOp::create(
                    ib, lists,
                    ValueRange{h, chunk, arith::AddIOp::create(ib, from, i)});
                return {tensor::InsertOp::create(ib, entry, c[0],
                                                 ValueRange{i})};
              })[0];
          return {{part, outs[0], offsets, sizes}};
        })[0];
    return {starts, counts, entries};
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
                                     keepWarpCompatibleGrouping);
    walkAndApplyPatterns(getOperation(), std::move(patterns));
    // Whatever could not be lowered has said why (dynamic heads or
    // head_dim); the pass fails rather than leave moba ops behind.
    WalkResult left = getOperation()->walk([&](Operation *op) {
      if (auto grouped = dyn_cast<GroupedBlockAttentionOp>(op))
        if (keepMmaCompatibleAttention && grouped.isMmaSyncCompatible())
          return WalkResult::advance();
      if (auto gate = dyn_cast<GateTopKOp>(op))
        if (keepMmaCompatibleGate && gate.isMmaSyncCompatible())
          return WalkResult::advance();
      if (auto grouping = dyn_cast<GroupQueriesOp>(op))
        if (keepWarpCompatibleGrouping && grouping.isWarpCompatible())
          return WalkResult::advance();
      if (!isa<BlockPoolOp, GateOp, TopKOp, GateTopKOp, SparseAttentionOp,
               LseMergeOp, GroupQueriesOp, GroupedBlockAttentionOp>(op))
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
    bool keepWarpCompatibleGrouping) {
  patterns.add<LowerBlockPool, LowerGate, LowerTopK, LowerSparseAttention,
               LowerLseMerge>(patterns.getContext(), parallel);
  patterns.add<LowerGroupQueries>(patterns.getContext(), parallel,
                                  keepWarpCompatibleGrouping);
  patterns.add<LowerGroupedBlockAttention>(patterns.getContext(), parallel,
                                           keepMmaCompatibleAttention);
  patterns.add<LowerGateTopK>(patterns.getContext(), parallel,
                              keepMmaCompatibleGate);
}
