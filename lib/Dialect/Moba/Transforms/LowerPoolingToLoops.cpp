//===- LowerPoolingToLoops.cpp - moba.block_pool to loops -----------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` pattern of moba.block_pool:
// the mean key of every block and key/value head, a loop per block or, in
// parallel, one iteration per element (long blocks summed in chunks first).
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

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

} // namespace

void mlir::moba::populateLowerPoolingToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel) {
  patterns.add<LowerBlockPool>(patterns.getContext(), parallel);
}
