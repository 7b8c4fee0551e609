//===- LowerGradToLoops.cpp - The attention backward to loops -------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` patterns of the backward:
// moba.attention_row_term (one dot product per token and head),
// moba.grouped_block_attention_grad (key block by key block, over the
// groups of moba.group_queries) and moba.sum_slots (the dq partials summed
// over the slots). All three are serial loops, with or without `parallel`:
// the backward has no GPU lowering yet, and on the CPU the parallel form
// runs serially anyway. Every sum is accumulated in f32 and rounded once;
// nothing clamps or takes a maximum, so NaN propagates as
// docs/semantics.md ("Gradients") says.
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

/// `init` filled with zeros of its element type.
Value zeroFilled(ImplicitLocOpBuilder &b, Value init) {
  Type element = cast<ShapedType>(init.getType()).getElementType();
  Value zero = arith::ConstantOp::create(b, b.getZeroAttr(element));
  return linalg::FillOp::create(b, ValueRange{zero}, ValueRange{init})
      .getResult(0);
}

//===----------------------------------------------------------------------===//
// moba.attention_row_term
//===----------------------------------------------------------------------===//

/// The serial nest over tokens [0, tokens) and heads [0, numHeads) that
/// updates the tensor `init` once per (token, head): `body` gets a builder
/// and loop emitter inside the nest, t, h and the running tensor, and
/// returns it updated. The row ops of the backward have no cu_seqlens, so
/// LoopEmitter's per-sequence nest does not fit them.
Value forEachTokenAndHead(
    LoopEmitter &e, Value tokens, int64_t numHeads, Value init,
    llvm::function_ref<Value(ImplicitLocOpBuilder &, LoopEmitter &, Value,
                             Value, Value)>
        body) {
  return e.forLoop(
      e.index(0), tokens, ValueRange{init},
      [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
        LoopEmitter te(tb);
        return te.forLoop(te.index(0), te.index(numHeads), tc,
                          [&](ImplicitLocOpBuilder &hb, Value h,
                              ValueRange hc) -> SmallVector<Value> {
                            LoopEmitter he(hb);
                            return {body(hb, he, t, h, hc[0])};
                          });
      })[0];
}

struct LowerAttentionRowTerm : LoweringPattern<AttentionRowTermOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(AttentionRowTermOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkStaticHeadsAndHeadDim(rewriter, op,
                                          {op.getGradOut(), op.getOut()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    int64_t numHeads = op.getGradOut().getType().getDimSize(1);
    Value tokens = tensor::DimOp::create(b, op.getGradOut(), 0);
    Value result = forEachTokenAndHead(
        e, tokens, numHeads, op.getInit(),
        [&](ImplicitLocOpBuilder &hb, LoopEmitter &he, Value t, Value h,
            Value rowTerms) -> Value {
          Value delta = he.dot(he.readRow(op.getGradOut(), {t, h}),
                               he.readRow(op.getOut(), {t, h}));
          if (Value gradLse = op.getGradLse())
            delta = arith::SubFOp::create(
                hb, delta,
                tensor::ExtractOp::create(hb, gradLse, ValueRange{t, h}));
          return tensor::InsertOp::create(hb, delta, rowTerms,
                                          ValueRange{t, h});
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

//===----------------------------------------------------------------------===//
// moba.grouped_block_attention_grad
//===----------------------------------------------------------------------===//

/// Key-block-major, as a tensor-core kernel would walk it: for every
/// key/value head g and block row r, the entries (t, slot) of the groups
/// G(h, r) of the query heads h of g attend the block's keys. Each entry
/// recomputes its P over the block (causal: keys up to its own position),
/// then dP and dS, sums its dq partial in registers and writes it once; the
/// block's dk and dv rows are summed in an f32 scratch of one block over all
/// its entries, then scaled, rounded and written once. No two iterations
/// write the same dk, dv or dq partial row, so the result does not depend
/// on the order of the blocks (and a parallel form needs no atomics).
struct LowerGroupedBlockAttentionGrad
    : LoweringPattern<GroupedBlockAttentionGradOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(GroupedBlockAttentionGradOp op,
                                PatternRewriter &rewriter) const override {
    if (failed(checkStaticHeadsAndHeadDim(
            rewriter, op,
            {op.getQ(), op.getK(), op.getV(), op.getSelected(),
             op.getGradOut()})))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    Value q = op.getQ(), keys = op.getK(), values = op.getV();
    Value gradOut = op.getGradOut(), lse = op.getLse();
    Value rowTerm = op.getRowTerm(), cu = op.getCuSeqlens();
    int64_t blockSize = op.getBlockSize();
    bool causal = op.getCausal();
    auto qType = op.getQ().getType();
    int64_t numHeads = qType.getDimSize(1), headDim = qType.getDimSize(2);
    int64_t kvHeads = op.getK().getType().getDimSize(1);
    int64_t group = numHeads / kvHeads;
    int64_t k = op.getSelected().getType().getDimSize(2);
    Value scale = e.f32(op.getScale().convertToDouble());
    Value zeroRow = e.splat(e.f32(0.0), headDim);

    // Unattended slots keep a zero partial; unattended keys zero rows.
    Value partials = zeroFilled(b, op.getDqPartialsInit());
    Value dk = zeroFilled(b, op.getDkInit());
    Value dv = zeroFilled(b, op.getDvInit());
    // The f32 sums of one block's dk rows ([i, 0, :]) and dv rows
    // ([i, 1, :]): block_size rows, or the token count when that is smaller
    // (block_size is unbounded). One tensor, not two: two tensor.empty of
    // one shape fold into one value, and one-shot bufferization gives two
    // loop arguments that start from the same tensor.empty one buffer.
    Value tokens = tensor::DimOp::create(b, q, 0);
    Value scratchRows =
        arith::MinUIOp::create(b, tokens, e.index(blockSize));
    auto scratchType = RankedTensorType::get(
        {ShapedType::kDynamic, 2, headDim}, b.getF32Type());
    Value sums =
        tensor::EmptyOp::create(b, scratchType, ValueRange{scratchRows});
    Value dkPart = e.index(0), dvPart = e.index(1);
    Value rows = tensor::DimOp::create(b, op.getCounts(), 1);

    // One entry (t, slot) of head h, key/value head g, over the keys
    // [first, last) of its block: its dq partial written, the block's dk
    // and dv sums (rows from `first` on) updated. Carried: partials, dk,
    // dv, sums.
    auto attendEntry = [&](ImplicitLocOpBuilder &ib, Value g, Value h,
                           Value entry, Value first, Value last,
                           ValueRange carried) -> SmallVector<Value> {
      LoopEmitter ie(ib);
      Value t = arith::DivUIOp::create(ib, entry, ie.index(k));
      Value slot = arith::RemUIOp::create(ib, entry, ie.index(k));
      Value qRow = ie.readRow(q, {t, h});
      Value doRow = ie.readRow(gradOut, {t, h});
      Value rowLse = tensor::ExtractOp::create(ib, lse, ValueRange{t, h});
      Value delta = tensor::ExtractOp::create(ib, rowTerm, ValueRange{t, h});
      // Causal: the keys at or before the query (same sequence, so packed
      // indices compare as positions). The query chose this block, so it
      // starts at or before t and the range is not empty.
      Value end = causal
                      ? arith::MinUIOp::create(
                            ib, last,
                            arith::AddIOp::create(ib, t, ie.index(1)))
                            .getResult()
                      : last;
      SmallVector<Value> sums = ie.forLoop(
          first, end, ValueRange{zeroRow, carried[3]},
          [&](ImplicitLocOpBuilder &kb, Value s,
              ValueRange kc) -> SmallVector<Value> {
            LoopEmitter ke(kb);
            Value kRow = ke.readRow(keys, {s, g});
            Value vRow = ke.readRow(values, {s, g});
            // P = exp(scale * q . k - lse): the forward's weight.
            Value x = arith::MulFOp::create(kb, ke.dot(qRow, kRow), scale);
            Value p =
                math::ExpOp::create(kb, arith::SubFOp::create(kb, x, rowLse));
            Value dp = ke.dot(doRow, vRow);
            Value ds = arith::MulFOp::create(
                kb, p, arith::SubFOp::create(kb, dp, delta));
            Value dsRow = ke.splat(ds, headDim);
            Value dq = vector::FMAOp::create(kb, dsRow, kRow, kc[0]);
            Value local = arith::SubIOp::create(kb, s, first);
            Value dkRow = vector::FMAOp::create(
                kb, dsRow, qRow, ke.readRow(kc[1], {local, dkPart}));
            Value dvRow = vector::FMAOp::create(
                kb, ke.splat(p, headDim), doRow,
                ke.readRow(kc[1], {local, dvPart}));
            Value updated = ke.writeRow(dkRow, kc[1], {local, dkPart});
            return {dq, ke.writeRow(dvRow, updated, {local, dvPart})};
          });
      Value dq = arith::MulFOp::create(ib, sums[0], ie.splat(scale, headDim));
      return {ie.writeRow(dq, carried[0], {slot, t, h}), carried[1],
              carried[2], sums[1]};
    };

    // Carried: partials, dk, dv, sums.
    SmallVector<Value> results = e.forLoop(
        e.index(0), e.index(kvHeads), ValueRange{partials, dk, dv, sums},
        [&](ImplicitLocOpBuilder &gb, Value g, ValueRange gc) {
          LoopEmitter ge(gb);
          return ge.forLoop(
              ge.index(0), rows, gc,
              [&](ImplicitLocOpBuilder &rb, Value row, ValueRange rc) {
                LoopEmitter re(rb);
                Value j, valid;
                Sequence seq = re.locateBlockRow(cu, blockSize, row, j, valid);
                // Rows past the batch's last block hold no keys.
                return re.ifThen(valid, rc, [&](ImplicitLocOpBuilder &vb) {
                  LoopEmitter ve(vb);
                  auto [first, last] = ve.blockKeys(seq, j, blockSize);
                  SmallVector<Value> c(rc);
                  c[3] = zeroFilled(vb, c[3]);
                  c = ve.forLoop(
                      ve.index(0), ve.index(group), c,
                      [&](ImplicitLocOpBuilder &hb, Value i, ValueRange hc) {
                        LoopEmitter he(hb);
                        Value h = arith::AddIOp::create(
                            hb, arith::MulIOp::create(hb, g, he.index(group)),
                            i);
                        Value start = he.extractIndex(op.getStarts(), {h, row});
                        Value count = he.extractIndex(op.getCounts(), {h, row});
                        return he.forLoop(
                            start, arith::AddIOp::create(hb, start, count), hc,
                            [&](ImplicitLocOpBuilder &ib, Value at,
                                ValueRange ic) {
                              LoopEmitter ie(ib);
                              Value entry =
                                  ie.extractIndex(op.getEntries(), {h, at});
                              return attendEntry(ib, g, h, entry, first, last,
                                                 ic);
                            });
                      });
                  // The block's rows: dk scaled, both rounded once.
                  SmallVector<Value> written = ve.forLoop(
                      first, last, ValueRange{c[1], c[2]},
                      [&](ImplicitLocOpBuilder &wb, Value s,
                          ValueRange wc) -> SmallVector<Value> {
                        LoopEmitter we(wb);
                        Value local = arith::SubIOp::create(wb, s, first);
                        Value dkRow = arith::MulFOp::create(
                            wb, we.readRow(c[3], {local, dkPart}),
                            we.splat(scale, headDim));
                        Value dvRow = we.readRow(c[3], {local, dvPart});
                        return {we.writeRow(dkRow, wc[0], {s, g}),
                                we.writeRow(dvRow, wc[1], {s, g})};
                      });
                  return SmallVector<Value>{c[0], written[0], written[1],
                                            c[3]};
                });
              });
        });
    rewriter.replaceOp(op, {results[0], results[1], results[2]});
    return success();
  }
};

//===----------------------------------------------------------------------===//
// moba.sum_slots
//===----------------------------------------------------------------------===//

struct LowerSumSlots : LoweringPattern<SumSlotsOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(SumSlotsOp op,
                                PatternRewriter &rewriter) const override {
    // Heads and head_dim static in both (the partials' dim 1 is tokens).
    auto partialsType = op.getPartials().getType();
    if (failed(checkStaticHeadsAndHeadDim(rewriter, op, {op.getInit()})))
      return failure();
    if (partialsType.isDynamicDim(2) || partialsType.isDynamicDim(3))
      return op.emitOpError()
             << "lowering to loops needs static heads and head_dim; dims 2 "
                "and 3 of "
             << partialsType << " must be static";
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    auto initType = op.getInit().getType();
    int64_t numHeads = initType.getDimSize(1), headDim = initType.getDimSize(2);
    Value tokens = tensor::DimOp::create(b, op.getInit(), 0);
    Value slots = tensor::DimOp::create(b, op.getPartials(), 0);
    Value zeroRow = e.splat(e.f32(0.0), headDim);
    Value result = forEachTokenAndHead(
        e, tokens, numHeads, op.getInit(),
        [&](ImplicitLocOpBuilder &, LoopEmitter &he, Value t, Value h,
            Value sums) -> Value {
          Value sum = he.forLoop(
              he.index(0), slots, ValueRange{zeroRow},
              [&](ImplicitLocOpBuilder &sb, Value s,
                  ValueRange sc) -> SmallVector<Value> {
                LoopEmitter se(sb);
                return {arith::AddFOp::create(
                    sb, sc[0], se.readRow(op.getPartials(), {s, t, h}))};
              })[0];
          return he.writeRow(sum, sums, {t, h});
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

} // namespace

void mlir::moba::populateLowerGradToLoopsPatterns(RewritePatternSet &patterns,
                                                  bool parallel) {
  patterns.add<LowerAttentionRowTerm, LowerGroupedBlockAttentionGrad,
               LowerSumSlots>(patterns.getContext(), parallel);
}
