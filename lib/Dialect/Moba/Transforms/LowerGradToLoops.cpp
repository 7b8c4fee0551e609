//===- LowerGradToLoops.cpp - The attention backward to loops -------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` patterns of the backward:
// moba.attention_row_term (one dot product per token and head),
// moba.grouped_block_attention_grad (key block by key block, over the
// groups of moba.group_queries) and moba.sum_slots (the dq partials summed
// over the slots). Serially, each is a loop nest; with `parallel`, the row
// term and the slot sum are one scf.forall over (token, head), the form the
// GPU pipeline maps onto threads, and the grouped backward one scf.forall
// over (key/value head, block row), whose iterations write disjoint rows.
// Every sum is accumulated in f32 and rounded once, in the same order in
// both forms (so they give the same bits); nothing clamps or takes a
// maximum, so NaN propagates as docs/semantics.md ("Gradients") says.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Utils/StaticValueUtils.h"
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

/// The scf.forall over tokens [0, tokens) and heads [0, numHeads) sharing
/// `init`: the parallel form of forEachTokenAndHead, each iteration writing
/// the slices `body` returns (only its own (t, h) elements).
Value forallTokensAndHeads(
    LoopEmitter &e, ImplicitLocOpBuilder &b, Value init, int64_t numHeads,
    OpFoldResult tokens,
    llvm::function_ref<SliceWrite(ImplicitLocOpBuilder &, LoopEmitter &,
                                  Value, Value, Value)>
        body) {
  return e.forall({tokens, b.getIndexAttr(numHeads)}, ValueRange{init},
                  [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
                      ValueRange outs) -> SmallVector<SliceWrite> {
                    LoopEmitter pe(pb);
                    return {body(pb, pe, ivs[0], ivs[1], outs[0])};
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
    // delta(t, h) = grad_out . out - grad_lse.
    auto delta = [&](ImplicitLocOpBuilder &hb, LoopEmitter &he, Value t,
                     Value h) -> Value {
      Value dot = he.dot(he.readRow(op.getGradOut(), {t, h}),
                         he.readRow(op.getOut(), {t, h}));
      if (Value gradLse = op.getGradLse())
        dot = arith::SubFOp::create(
            hb, dot, tensor::ExtractOp::create(hb, gradLse, ValueRange{t, h}));
      return dot;
    };
    Value result;
    if (parallel) {
      result = forallTokensAndHeads(
          e, b, op.getInit(), numHeads,
          tensor::getMixedSize(b, b.getLoc(), op.getGradOut(), 0),
          [&](ImplicitLocOpBuilder &pb, LoopEmitter &pe, Value t, Value h,
              Value rowTerms) {
            return pe.scalarWrite(delta(pb, pe, t, h), rowTerms, {t, h});
          });
    } else {
      Value tokens = tensor::DimOp::create(b, op.getGradOut(), 0);
      result = forEachTokenAndHead(
          e, tokens, numHeads, op.getInit(),
          [&](ImplicitLocOpBuilder &hb, LoopEmitter &he, Value t, Value h,
              Value rowTerms) -> Value {
            return tensor::InsertOp::create(hb, delta(hb, he, t, h), rowTerms,
                                            ValueRange{t, h});
          });
    }
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
/// its entries, then scaled, rounded and written once. No two (g, r) write
/// the same dk, dv or dq partial row (an entry's row belongs to the one
/// block it chose, of the one key/value head of its query head), so the
/// result does not depend on the order of the blocks, and the parallel form,
/// one scf.forall over (g, r), needs no atomics.
struct LowerGroupedBlockAttentionGrad
    : LoweringPattern<GroupedBlockAttentionGradOp> {
  LowerGroupedBlockAttentionGrad(MLIRContext *context, bool parallel,
                                 bool keepMmaCompatible)
      : LoweringPattern(context, parallel),
        keepMmaCompatible(keepMmaCompatible) {}
  bool keepMmaCompatible;

  LogicalResult matchAndRewrite(GroupedBlockAttentionGradOp op,
                                PatternRewriter &rewriter) const override {
    if (!isa<RankedTensorType>(op.getQ().getType()))
      return rewriter.notifyMatchFailure(op, "on buffers");
    if (keepMmaCompatible && op.isMmaSyncCompatible())
      return rewriter.notifyMatchFailure(op,
                                         "left for the tensor-core lowering");
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
    auto qType = cast<RankedTensorType>(op.getQ().getType());
    int64_t numHeads = qType.getDimSize(1), headDim = qType.getDimSize(2);
    int64_t kvHeads =
        cast<RankedTensorType>(op.getK().getType()).getDimSize(1);
    int64_t group = numHeads / kvHeads;
    int64_t k =
        cast<RankedTensorType>(op.getSelected().getType()).getDimSize(2);
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
    auto emptySums = [&](ImplicitLocOpBuilder &sb) -> Value {
      return tensor::EmptyOp::create(sb, scratchType, ValueRange{scratchRows});
    };
    Value dkPart = e.index(0), dvPart = e.index(1);
    Value rows = tensor::DimOp::create(b, op.getCounts(), 1);

    // One entry (t, slot) of head h, key/value head g, over the keys
    // [first, last) of its block: its dq partial written, the block's dk
    // and dv sums (rows from `first` on) updated. Carried: partials, sums.
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
          first, end, ValueRange{zeroRow, carried[1]},
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
      return {ie.writeRow(dq, carried[0], {slot, t, h}), sums[1]};
    };

    // The entries of the groups G(h, row) of the query heads h of g over
    // the block's keys [first, last), the sums zeroed first. Carried:
    // partials, sums.
    auto attendBlock = [&](ImplicitLocOpBuilder &vb, Value g, Value row,
                           Value first, Value last,
                           ValueRange carried) -> SmallVector<Value> {
      LoopEmitter ve(vb);
      SmallVector<Value> c = {carried[0], zeroFilled(vb, carried[1])};
      return ve.forLoop(
          ve.index(0), ve.index(group), c,
          [&](ImplicitLocOpBuilder &hb, Value i, ValueRange hc) {
            LoopEmitter he(hb);
            Value h = arith::AddIOp::create(
                hb, arith::MulIOp::create(hb, g, he.index(group)), i);
            Value start = he.extractIndex(op.getStarts(), {h, row});
            Value count = he.extractIndex(op.getCounts(), {h, row});
            return he.forLoop(
                start, arith::AddIOp::create(hb, start, count), hc,
                [&](ImplicitLocOpBuilder &ib, Value at, ValueRange ic) {
                  LoopEmitter ie(ib);
                  Value entry = ie.extractIndex(op.getEntries(), {h, at});
                  return attendEntry(ib, g, h, entry, first, last, ic);
                });
          });
    };

    // The block's rows s in [first, last) of dk and dv from the sums: dk
    // scaled, both rounded once, written at `rowOf(s)`.
    auto writeBlock =
        [&](ImplicitLocOpBuilder &vb, Value first, Value last, Value sums,
            Value dkDest, Value dvDest,
            llvm::function_ref<SmallVector<Value>(ImplicitLocOpBuilder &,
                                                  Value)>
                rowOf) -> SmallVector<Value> {
      LoopEmitter ve(vb);
      return ve.forLoop(
          first, last, ValueRange{dkDest, dvDest},
          [&](ImplicitLocOpBuilder &wb, Value s,
              ValueRange wc) -> SmallVector<Value> {
            LoopEmitter we(wb);
            Value local = arith::SubIOp::create(wb, s, first);
            Value dkRow = arith::MulFOp::create(
                wb, we.readRow(sums, {local, dkPart}),
                we.splat(scale, headDim));
            Value dvRow = we.readRow(sums, {local, dvPart});
            SmallVector<Value> at = rowOf(wb, s);
            return {we.writeRow(dkRow, wc[0], at),
                    we.writeRow(dvRow, wc[1], at)};
          });
    };

    SmallVector<Value> results;
    if (parallel) {
      // Every (g, r) writes the dq partials of its entries (rows no other
      // iteration writes) into a slice that is the whole partials tensor,
      // and inserts it back whole: one-shot bufferization makes both the
      // same view of the one buffer (CSE merges them, the canonicalizer
      // drops the copy of the view onto itself), so each iteration stores
      // only its rows there. dk and dv are the block's rows of head g,
      // inserted as slices. The sums are the iteration's own scratch.
      OpFoldResult zero = b.getIndexAttr(0), one = b.getIndexAttr(1);
      results = e.forall(
          {b.getIndexAttr(kvHeads), getAsOpFoldResult(rows)},
          ValueRange{partials, dk, dv},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
              ValueRange outs) -> SmallVector<SliceWrite> {
            LoopEmitter pe(pb);
            Value g = ivs[0], row = ivs[1];
            Value j, valid;
            Sequence seq = pe.locateBlockRow(cu, blockSize, row, j, valid);
            // Rows past the batch's last block hold no keys: [0, 0).
            auto [blockFirst, blockLast] = pe.blockKeys(seq, j, blockSize);
            Value first =
                arith::SelectOp::create(pb, valid, blockFirst, pe.index(0));
            Value last =
                arith::SelectOp::create(pb, valid, blockLast, pe.index(0));
            SmallVector<OpFoldResult> whole =
                tensor::getMixedSizes(pb, pb.getLoc(), outs[0]);
            SmallVector<OpFoldResult> origin(whole.size(), zero);
            Value mine = tensor::ExtractSliceOp::create(
                pb, outs[0], origin, whole,
                SmallVector<OpFoldResult>(whole.size(), one));
            Value sums = emptySums(pb);
            SmallVector<Value> done = pe.ifThen(
                valid, ValueRange{mine, sums},
                [&](ImplicitLocOpBuilder &vb) {
                  return attendBlock(vb, g, row, first, last,
                                     ValueRange{mine, sums});
                });
            Value blockRows = arith::SubIOp::create(pb, last, first);
            SmallVector<OpFoldResult> rowOffsets = {first, g, zero};
            SmallVector<OpFoldResult> rowSizes = {blockRows, one,
                                                  pb.getIndexAttr(headDim)};
            SmallVector<OpFoldResult> unit(3, one);
            Value dkRows = tensor::ExtractSliceOp::create(
                pb, outs[1], rowOffsets, rowSizes, unit);
            Value dvRows = tensor::ExtractSliceOp::create(
                pb, outs[2], rowOffsets, rowSizes, unit);
            SmallVector<Value> written = writeBlock(
                pb, first, last, done[1], dkRows, dvRows,
                [&](ImplicitLocOpBuilder &wb, Value s) -> SmallVector<Value> {
                  LoopEmitter we(wb);
                  return {arith::SubIOp::create(wb, s, first), we.index(0)};
                });
            return {{done[0], outs[0], origin, whole},
                    {written[0], outs[1], rowOffsets, rowSizes},
                    {written[1], outs[2], rowOffsets, rowSizes}};
          });
    } else {
      // Carried: partials, dk, dv, sums.
      results = e.forLoop(
          e.index(0), e.index(kvHeads),
          ValueRange{partials, dk, dv, emptySums(b)},
          [&](ImplicitLocOpBuilder &gb, Value g, ValueRange gc) {
            LoopEmitter ge(gb);
            return ge.forLoop(
                ge.index(0), rows, gc,
                [&](ImplicitLocOpBuilder &rb, Value row, ValueRange rc) {
                  LoopEmitter re(rb);
                  Value j, valid;
                  Sequence seq =
                      re.locateBlockRow(cu, blockSize, row, j, valid);
                  // Rows past the batch's last block hold no keys.
                  return re.ifThen(valid, rc, [&](ImplicitLocOpBuilder &vb) {
                    LoopEmitter ve(vb);
                    auto [first, last] = ve.blockKeys(seq, j, blockSize);
                    SmallVector<Value> c = attendBlock(
                        vb, g, row, first, last, ValueRange{rc[0], rc[3]});
                    SmallVector<Value> written = writeBlock(
                        vb, first, last, c[1], rc[1], rc[2],
                        [&](ImplicitLocOpBuilder &, Value s) {
                          return SmallVector<Value>{s, g};
                        });
                    return SmallVector<Value>{c[0], written[0], written[1],
                                              c[1]};
                  });
                });
          });
    }
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
    Value slots = tensor::DimOp::create(b, op.getPartials(), 0);
    Value zeroRow = e.splat(e.f32(0.0), headDim);
    // The f32 sum of the slots' partial rows of (t, h), in slot order.
    auto sumOf = [&](LoopEmitter &he, Value t, Value h) -> Value {
      return he.forLoop(
          he.index(0), slots, ValueRange{zeroRow},
          [&](ImplicitLocOpBuilder &sb, Value s,
              ValueRange sc) -> SmallVector<Value> {
            LoopEmitter se(sb);
            return {arith::AddFOp::create(
                sb, sc[0], se.readRow(op.getPartials(), {s, t, h}))};
          })[0];
    };
    Value result;
    if (parallel) {
      result = forallTokensAndHeads(
          e, b, op.getInit(), numHeads,
          tensor::getMixedSize(b, b.getLoc(), op.getInit(), 0),
          [&](ImplicitLocOpBuilder &, LoopEmitter &pe, Value t, Value h,
              Value sums) {
            return pe.vectorWrite(sumOf(pe, t, h), sums, {t, h, pe.index(0)});
          });
    } else {
      Value tokens = tensor::DimOp::create(b, op.getInit(), 0);
      result = forEachTokenAndHead(
          e, tokens, numHeads, op.getInit(),
          [&](ImplicitLocOpBuilder &, LoopEmitter &he, Value t, Value h,
              Value sums) -> Value {
            return he.writeRow(sumOf(he, t, h), sums, {t, h});
          });
    }
    rewriter.replaceOp(op, result);
    return success();
  }
};

} // namespace

void mlir::moba::populateLowerGradToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel,
    bool keepMmaCompatibleAttention) {
  patterns.add<LowerAttentionRowTerm, LowerSumSlots>(patterns.getContext(),
                                                     parallel);
  patterns.add<LowerGroupedBlockAttentionGrad>(
      patterns.getContext(), parallel, keepMmaCompatibleAttention);
}
