//===- LowerMergeToLoops.cpp - moba.lse_merge to loops --------------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` pattern of moba.lse_merge:
// the partial outputs of every query and head combined by their
// log-sum-exps.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::moba;

namespace {

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

} // namespace

void mlir::moba::populateLowerMergeToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel) {
  patterns.add<LowerLseMerge>(patterns.getContext(), parallel);
}
