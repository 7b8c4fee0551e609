//===- SoftmaxStep.cpp - The online softmax of the attention kernel ------===//
//
// Part of moba-mlir. What both chunk loops of the grouped attention kernel
// (mma.sync and wgmma) carry and do per chunk on the score accumulators:
// the initial running max, sums and output accumulators, one online-softmax
// step (mask, row max over the quad, exp2, sums, the rescale factors), and
// the rescale of the output accumulators.
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

#include "moba/Dialect/Moba/Utils/NumericSemantics.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;

SmallVector<Value> AttentionKernel::chunkLoopInits(KernelBuilder &e) {
  SmallVector<Value> inits = {e.f32(kNegInf), e.f32(kNegInf), e.f32(0.0),
                              e.f32(0.0)};
  for (int64_t i = 0; i < headDim / 8 * 4; ++i)
    inits.push_back(e.f32(0.0));
  return inits;
}

void AttentionKernel::maskScores(ImplicitLocOpBuilder &ib, const CtaTile &t,
                                 SmallVector<SmallVector<Value>> &scores,
                                 Value base) {
  KernelBuilder ie{ib, element()};
  for (auto [nt, tile] : llvm::enumerate(scores))
    for (int64_t i = 0; i < 4; ++i) {
      Value keyAt = ie.add(
          base, ie.add(ie.index(8 * static_cast<int64_t>(nt) + i % 2),
                       t.pairCol));
      Value keep = ie.ult(keyAt, t.keyLimit);
      if (causal)
        keep =
            arith::AndIOp::create(ib, keep, ie.ule(keyAt, t.token[i / 2]));
      tile[i] = ie.select(keep, tile[i], ie.f32(kNegInf));
    }
}

SmallVector<Value>
AttentionKernel::softmaxStep(ImplicitLocOpBuilder &ib, const CtaTile &t,
                             SmallVector<SmallVector<Value>> &scores,
                             ValueRange c, Value base, bool masked,
                             Rescale *factorsOut) {
  KernelBuilder ie{ib, element()};
  int64_t nTiles = scores.size();
  if (masked)
    maskScores(ib, t, scores, base);
  // The softmax runs in base 2: p = exp2(s * scale * log2(e) - max).
  double scaleLog2 = scale / std::log(2.0);
  // Per row (values i = 0, 1 are row 0; 2, 3 row 1).
  SmallVector<Value> results(c.begin(), c.end());
  SmallVector<Value> alpha(2);
  Value moved;
  for (int64_t r = 0; r < 2; ++r) {
    Value localMax = ie.f32(kNegInf);
    for (int64_t nt = 0; nt < nTiles; ++nt)
      for (int64_t i = 0; i < 2; ++i)
        localMax = ie.fmax(localMax, scores[nt][2 * r + i]);
    // The scores are unscaled: scale * log2(e) > 0 keeps the max. The
    // running max moves only when the row's new max passes it by more than
    // kMaxSlack: probabilities stay below 2^kMaxSlack, and most chunks then
    // leave every row's max, so alpha is exactly 1 and the accumulators'
    // rescale is skipped (rescale()).
    Value rowMax = ie.fmul(ie.quadReduce(localMax, true), ie.f32(scaleLog2));
    Value moves = arith::CmpFOp::create(
        ib, arith::CmpFPredicate::OGT, rowMax,
        ie.fadd(c[r], ie.f32(kMaxSlack)));
    Value newMax = ie.select(moves, rowMax, c[r]);
    moved = moved ? arith::OrIOp::create(ib, moved, moves).getResult() : moves;
    Value finite = arith::CmpFOp::create(ib, arith::CmpFPredicate::OGT,
                                         newMax, ie.f32(kNegInf));
    Value shift = ie.select(finite, newMax, ie.f32(0.0));
    alpha[r] = ie.exp2(arith::SubFOp::create(ib, c[r], shift));
    Value localSum = ie.f32(0.0);
    for (int64_t nt = 0; nt < nTiles; ++nt)
      for (int64_t i = 0; i < 2; ++i) {
        Value p = ie.exp2(math::FmaOp::create(
            ib, scores[nt][2 * r + i], ie.f32(scaleLog2),
            arith::NegFOp::create(ib, shift)));
        scores[nt][2 * r + i] = p;
        localSum = ie.fadd(localSum, p);
      }
    results[r] = newMax;
    results[2 + r] = ie.fadd(ie.fmul(c[2 + r], alpha[r]), localSum);
  }
  Rescale factors{{alpha[0], alpha[1]}, moved};
  rescale(MutableArrayRef<Value>(results).drop_front(4), factors, ie);
  if (factorsOut)
    *factorsOut = factors;
  return results;
}

void AttentionKernel::rescale(MutableArrayRef<Value> accumulators,
                              const Rescale &factors, KernelBuilder &e) {
  if (accumulators.empty())
    return;
  // Where no lane of the warp moved a max, every alpha is exactly 1: a
  // uniform branch skips the multiplies (head_dim / 2 a lane).
  ImplicitLocOpBuilder &b = e.b;
  Value any = NVVM::VoteSyncOp::create(b, b.getI1Type(), e.i32(-1),
                                       factors.moved, NVVM::VoteSyncKind::any);
  SmallVector<Type> types(accumulators.size(), b.getF32Type());
  auto multiply = scf::IfOp::create(b, types, any, /*withElseRegion=*/true);
  {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&multiply.getThenRegion().front());
    // Values 0, 1 of each m16n8 tile are the lane's first row, 2, 3 its
    // second.
    SmallVector<Value> scaled;
    for (size_t i = 0; i < accumulators.size(); ++i)
      scaled.push_back(e.fmul(accumulators[i], factors.alpha[(i % 4) / 2]));
    scf::YieldOp::create(b, scaled);
    b.setInsertionPointToStart(&multiply.getElseRegion().front());
    scf::YieldOp::create(b, SmallVector<Value>(accumulators.begin(),
                                               accumulators.end()));
  }
  llvm::copy(multiply.getResults(), accumulators.begin());
}
