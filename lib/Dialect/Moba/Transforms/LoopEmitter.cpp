//===- LoopEmitter.cpp - Building blocks of the moba loop lowerings -------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

#include <limits>

using namespace mlir;
using namespace mlir::moba;

Value LoopEmitter::index(int64_t v) {
  return arith::ConstantIndexOp::create(b, v);
}

Value LoopEmitter::f32(double v) {
  return arith::ConstantOp::create(b, b.getF32FloatAttr(v));
}

Value LoopEmitter::i32(int64_t v) {
  return arith::ConstantOp::create(b, b.getI32IntegerAttr(v));
}

SmallVector<Value> LoopEmitter::forLoop(Value lb, Value ub, Value step,
                                        ValueRange inits, LoopBody body) {
  auto loop = scf::ForOp::create(
      b, lb, ub, step, inits,
      [&](OpBuilder &nested, Location loc, Value iv, ValueRange args) {
        ImplicitLocOpBuilder nb(loc, nested);
        SmallVector<Value> yields = body(nb, iv, args);
        scf::YieldOp::create(nb, yields);
      });
  return SmallVector<Value>(loop.getResults());
}

Value LoopEmitter::extractIndex(Value tensor, ValueRange indices) {
  Value v = tensor::ExtractOp::create(b, tensor, indices);
  if (v.getType().isIndex())
    return v;
  return arith::IndexCastOp::create(b, b.getIndexType(), v);
}

SmallVector<Value> LoopEmitter::forEachSequence(Value cuSeqlens,
                                                int64_t blockSize,
                                                ValueRange inits,
                                                SequenceBody body) {
  Value numOffsets = tensor::DimOp::create(b, cuSeqlens, 0);
  Value numSequences = arith::SubIOp::create(b, numOffsets, index(1));
  Value block = index(blockSize);
  SmallVector<Value> carried(inits);
  carried.push_back(index(0)); // block offset of the sequence
  SmallVector<Value> results = forLoop(
      index(0), numSequences, carried,
      [&](ImplicitLocOpBuilder &nb, Value s, ValueRange args) {
        LoopEmitter e(nb);
        Sequence seq;
        seq.start = e.extractIndex(cuSeqlens, s);
        Value next = arith::AddIOp::create(nb, s, e.index(1));
        seq.end = e.extractIndex(cuSeqlens, next);
        Value length = arith::SubIOp::create(nb, seq.end, seq.start);
        seq.numBlocks = arith::CeilDivUIOp::create(nb, length, block);
        seq.blockOffset = args.back();
        SmallVector<Value> yields = body(nb, seq, args.drop_back());
        yields.push_back(
            arith::AddIOp::create(nb, seq.blockOffset, seq.numBlocks));
        return yields;
      });
  results.pop_back();
  return results;
}

SmallVector<Value> LoopEmitter::forEachTokenAndHead(Value cuSeqlens,
                                                    int64_t blockSize,
                                                    int64_t numHeads,
                                                    ValueRange inits,
                                                    TokenHeadBody body) {
  return forEachSequence(
      cuSeqlens, blockSize, inits,
      [&](ImplicitLocOpBuilder &sb, const Sequence &seq, ValueRange c) {
        LoopEmitter se(sb);
        return se.forLoop(
            seq.start, seq.end, c,
            [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
              LoopEmitter te(tb);
              return te.forLoop(
                  te.index(0), te.index(numHeads), tc,
                  [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
                    return body(hb, seq, t, h, hc);
                  });
            });
      });
}

Value LoopEmitter::readRow(Value tensor, ValueRange indices) {
  auto type = cast<RankedTensorType>(tensor.getType());
  int64_t n = type.getShape().back();
  Type element = type.getElementType();
  SmallVector<Value> full(indices);
  full.push_back(index(0));
  Value pad = arith::ConstantOp::create(b, b.getZeroAttr(element));
  Value row = vector::TransferReadOp::create(
      b, VectorType::get({n}, element), tensor, full, pad,
      ArrayRef<bool>{true});
  if (element.isF32())
    return row;
  return arith::ExtFOp::create(b, VectorType::get({n}, b.getF32Type()), row);
}

Value LoopEmitter::writeRow(Value row, Value tensor, ValueRange indices) {
  auto type = cast<RankedTensorType>(tensor.getType());
  Type element = type.getElementType();
  auto rowType = cast<VectorType>(row.getType());
  if (element != rowType.getElementType())
    row = arith::TruncFOp::create(
        b, VectorType::get(rowType.getShape(), element), row);
  SmallVector<Value> full(indices);
  full.push_back(index(0));
  return vector::TransferWriteOp::create(b, row, tensor, full,
                                         ArrayRef<bool>{true})
      .getResult();
}

Value LoopEmitter::dot(Value a, Value c) {
  // Eight partial sums, lanes i, i + 8, i + 16, ... fused into lane i, then
  // added: eight independent chains of n / 8 fmas instead of one chain of
  // n - 1 dependent adds (a GPU thread scoring a block waited on 128 serial
  // adds), with only 8 sums live. Shuffles, not extract_strided_slice: the
  // GPU kernels' vector-to-LLVM conversion has no pattern for the latter.
  constexpr int64_t kLanes = 8;
  int64_t n = cast<VectorType>(a.getType()).getShape().front();
  if (n % kLanes != 0 || n == kLanes)
    return vector::ReductionOp::create(b, vector::CombiningKind::ADD,
                                       arith::MulFOp::create(b, a, c));
  auto slice = [&](Value v, int64_t offset) {
    SmallVector<int64_t> lanes(kLanes);
    for (int64_t i = 0; i < kLanes; ++i)
      lanes[i] = offset + i;
    return vector::ShuffleOp::create(b, v, v, lanes).getResult();
  };
  // Operands are built one statement at a time: the IR's order must not
  // depend on the C++ compiler's order of evaluating arguments.
  Value aLanes = slice(a, 0);
  Value cLanes = slice(c, 0);
  Value sums = arith::MulFOp::create(b, aLanes, cLanes);
  for (int64_t offset = kLanes; offset < n; offset += kLanes) {
    aLanes = slice(a, offset);
    cLanes = slice(c, offset);
    sums = vector::FMAOp::create(b, aLanes, cLanes, sums);
  }
  return vector::ReductionOp::create(b, vector::CombiningKind::ADD, sums);
}

Value LoopEmitter::splat(Value scalar, int64_t n) {
  return vector::BroadcastOp::create(b, VectorType::get({n}, scalar.getType()),
                                     scalar);
}

SmallVector<Value> LoopEmitter::forEachAttendedRange(
    const Sequence &seq, int64_t blockSize, bool causal, Value queryToken,
    Value selectedRow, ValueRange inits, KeyRangeBody body) {
  // Cuts [first, last) at the query in causal mode; runs `body` on it unless
  // it is empty.
  auto visit = [&](ImplicitLocOpBuilder &nb, Value first, Value last,
                   ValueRange args) -> SmallVector<Value> {
    LoopEmitter e(nb);
    if (causal)
      last = arith::MinUIOp::create(
          nb, last, arith::AddIOp::create(nb, queryToken, e.index(1)));
    Value nonEmpty =
        arith::CmpIOp::create(nb, arith::CmpIPredicate::ult, first, last);
    return e.ifThen(nonEmpty, args, [&](ImplicitLocOpBuilder &ib) {
      return body(ib, first, last, args);
    });
  };

  if (!selectedRow)
    return visit(b, seq.start, seq.end, inits);

  return forEachAttendingSlot(
      seq, selectedRow, /*block=*/Value(), inits,
      [&](ImplicitLocOpBuilder &ib, Value slot, ValueRange args) {
        Value j = arith::IndexCastOp::create(
            ib, ib.getIndexType(),
            vector::ExtractOp::create(ib, selectedRow, OpFoldResult(slot)));
        auto [first, last] = LoopEmitter(ib).blockKeys(seq, j, blockSize);
        return visit(ib, first, last, args);
      });
}

std::pair<Value, Value> LoopEmitter::blockKeys(const Sequence &seq, Value j,
                                               int64_t blockSize) {
  Value block = index(blockSize);
  Value first =
      arith::AddIOp::create(b, seq.start, arith::MulIOp::create(b, j, block));
  Value last = arith::MinUIOp::create(
      b, arith::AddIOp::create(b, first, block), seq.end);
  return {first, last};
}

SmallVector<Value> LoopEmitter::ifThen(
    Value condition, ValueRange carried,
    function_ref<SmallVector<Value>(ImplicitLocOpBuilder &)> then) {
  auto ifOp = scf::IfOp::create(
      b, condition,
      [&](OpBuilder &tb, Location loc) {
        ImplicitLocOpBuilder ib(loc, tb);
        scf::YieldOp::create(ib, then(ib));
      },
      [&](OpBuilder &eb, Location loc) {
        scf::YieldOp::create(eb, loc, carried);
      });
  return SmallVector<Value>(ifOp.getResults());
}

SmallVector<Value> LoopEmitter::forEachAttendingSlot(const Sequence &seq,
                                                     Value selectedRow,
                                                     Value block,
                                                     ValueRange inits,
                                                     SlotBody body) {
  int64_t k = cast<VectorType>(selectedRow.getType()).getShape().front();
  return forLoop(
      index(0), index(k), inits,
      [&](ImplicitLocOpBuilder &nb, Value slot, ValueRange args) {
        LoopEmitter e(nb);
        Value take = e.slotAttends(seq, selectedRow, slot);
        if (block)
          take = arith::AndIOp::create(
              nb, take,
              arith::CmpIOp::create(
                  nb, arith::CmpIPredicate::eq,
                  vector::ExtractOp::create(nb, selectedRow,
                                            OpFoldResult(slot)),
                  block));
        return e.ifThen(take, args, [&](ImplicitLocOpBuilder &ib) {
          return body(ib, slot, args);
        });
      });
}

TopKState LoopEmitter::emptyTopK(int64_t k) {
  auto scoresType = VectorType::get({k}, b.getF32Type());
  auto indicesType = VectorType::get({k}, b.getI32Type());
  return {arith::ConstantOp::create(
              b, DenseElementsAttr::get(
                     scoresType, b.getF32FloatAttr(
                                     -std::numeric_limits<float>::infinity()))),
          arith::ConstantOp::create(
              b, DenseElementsAttr::get(indicesType, b.getI32IntegerAttr(-1)))};
}

TopKState LoopEmitter::insertTopK(TopKState state, Value score,
                                  Value blockIndex) {
  int64_t k = cast<VectorType>(state.scores.getType()).getShape().front();
  auto i32Vec = VectorType::get({k}, b.getI32Type());
  // NaN ranks as +inf (docs/semantics.md, "NaN and infinity"), so the list
  // never holds a NaN and the comparisons below stay a total order.
  score = rankingScore(b, b.getLoc(), score);
  // The new entry's slot: the number of entries strictly better than it.
  Value better = arith::CmpFOp::create(b, arith::CmpFPredicate::OGT,
                                       state.scores, splat(score, k));
  Value position = vector::ReductionOp::create(
      b, vector::CombiningKind::ADD, arith::ExtUIOp::create(b, i32Vec, better));
  SmallVector<int32_t> slots(k);
  SmallVector<int64_t> shiftMask(k);
  for (int64_t i = 0; i < k; ++i) {
    slots[i] = i;
    shiftMask[i] = i == 0 ? 0 : i - 1; // slot 0 never keeps a shifted entry
  }
  Value slotIds = arith::ConstantOp::create(
      b, DenseElementsAttr::get(i32Vec, ArrayRef<int32_t>(slots)));
  Value positions = splat(position, k);
  Value keep =
      arith::CmpIOp::create(b, arith::CmpIPredicate::slt, slotIds, positions);
  Value here =
      arith::CmpIOp::create(b, arith::CmpIPredicate::eq, slotIds, positions);
  auto update = [&](Value old, Value entry) {
    Value shifted = vector::ShuffleOp::create(b, old, old, shiftMask);
    Value placed =
        arith::SelectOp::create(b, here, splat(entry, k), shifted);
    return arith::SelectOp::create(b, keep, old, placed).getResult();
  };
  return {update(state.scores, score), update(state.indices, blockIndex)};
}

std::pair<Value, Value> mlir::moba::emitAttentionLoops(ImplicitLocOpBuilder &b,
                                                       SparseAttentionOp op,
                                                       int64_t tileQ,
                                                       QueryBody body) {
  LoopEmitter e(b);
  auto qType = op.getQ().getType();
  int64_t numHeads = qType.getDimSize(1);
  int64_t group = numHeads / op.getK().getType().getDimSize(1);
  Value q = op.getQ(), selected = op.getSelected();

  // One query and head: read, compute, write.
  auto query = [&](ImplicitLocOpBuilder &nb, const Sequence &seq, Value t,
                   Value h, Value out, Value lse) -> SmallVector<Value> {
    LoopEmitter ne(nb);
    Value kvHead = arith::DivUIOp::create(nb, h, ne.index(group));
    Value queryRow = ne.readRow(q, {t, h});
    Value selectedRow;
    if (selected) {
      int64_t k = cast<RankedTensorType>(selected.getType()).getShape().back();
      Value pad = ne.i32(-1);
      selectedRow = vector::TransferReadOp::create(
          nb, VectorType::get({k}, nb.getI32Type()), selected,
          ValueRange{t, h, ne.index(0)}, pad, ArrayRef<bool>{true});
    }
    QueryResult r = body(nb, seq, t, kvHead, queryRow, selectedRow);
    out = ne.writeRow(r.row, out, {t, h});
    lse = tensor::InsertOp::create(nb, r.lse, lse, ValueRange{t, h});
    return {out, lse};
  };
  auto heads = [&](ImplicitLocOpBuilder &nb, const Sequence &seq,
                   ValueRange carried,
                   function_ref<SmallVector<Value>(ImplicitLocOpBuilder &, Value,
                                                   ValueRange)>
                       perHead) {
    LoopEmitter ne(nb);
    return ne.forLoop(ne.index(0), ne.index(numHeads), carried, perHead);
  };

  SmallVector<Value> results = e.forEachSequence(
      op.getCuSeqlens(), op.getBlockSize(),
      ValueRange{op.getOutInit(), op.getLseInit()},
      [&](ImplicitLocOpBuilder &sb, const Sequence &seq, ValueRange carried) {
        LoopEmitter se(sb);
        if (tileQ <= 0) {
          return se.forLoop(
              seq.start, seq.end, carried,
              [&](ImplicitLocOpBuilder &tb, Value t, ValueRange c) {
                return heads(tb, seq, c,
                             [&](ImplicitLocOpBuilder &hb, Value h,
                                 ValueRange hc) {
                               return query(hb, seq, t, h, hc[0], hc[1]);
                             });
              });
        }
        return se.forLoop(
            seq.start, seq.end, se.index(tileQ), carried,
            [&](ImplicitLocOpBuilder &tb, Value tileStart, ValueRange c) {
              LoopEmitter te(tb);
              Value tileEnd = arith::MinUIOp::create(
                  tb, arith::AddIOp::create(tb, tileStart, te.index(tileQ)),
                  seq.end);
              return heads(
                  tb, seq, c,
                  [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
                    LoopEmitter he(hb);
                    return he.forLoop(
                        tileStart, tileEnd, hc,
                        [&](ImplicitLocOpBuilder &qb, Value t, ValueRange qc) {
                          return query(qb, seq, t, h, qc[0], qc[1]);
                        });
                  });
            });
      });
  return {results[0], results[1]};
}

QueryResult mlir::moba::finishSoftmax(ImplicitLocOpBuilder &b, Value m,
                                      Value l, Value acc) {
  LoopEmitter e(b);
  int64_t n = cast<VectorType>(acc.getType()).getShape().front();
  Value attended = attendedAny(b, b.getLoc(), l);
  Value safeL = arith::SelectOp::create(b, attended, l, e.f32(1.0));
  Value row = arith::DivFOp::create(b, acc, e.splat(safeL, n));
  Value zeros = e.splat(e.f32(0.0), n);
  row = arith::SelectOp::create(b, attended, row, zeros);
  Value lse = arith::AddFOp::create(b, m, math::LogOp::create(b, safeL));
  lse = arith::SelectOp::create(
      b, attended, lse, e.f32(-std::numeric_limits<double>::infinity()));
  return {row, lse};
}

LogicalResult mlir::moba::checkLowerable(RewriterBase &rewriter,
                                         SparseAttentionOp op) {
  SmallVector<Value> shaped = {op.getQ(), op.getK(), op.getV()};
  if (op.getSelected())
    shaped.push_back(op.getSelected());
  return checkStaticHeadsAndHeadDim(rewriter, op, shaped);
}

LogicalResult mlir::moba::checkStaticHeadsAndHeadDim(RewriterBase &rewriter,
                                                     Operation *op,
                                                     ValueRange tensors) {
  for (Value v : tensors) {
    auto type = cast<RankedTensorType>(v.getType());
    for (int64_t i = 1; i < type.getRank(); ++i)
      if (type.isDynamicDim(i))
        return op->emitOpError()
               << "lowering to loops needs static heads and head_dim; dim "
               << i << " of " << type << " is dynamic";
  }
  return success();
}

SmallVector<Value> LoopEmitter::forall(ArrayRef<OpFoldResult> ubs,
                                       ValueRange outs, ParallelBody body) {
  auto loop = scf::ForallOp::create(b, ubs, outs, std::nullopt);
  Block *block = loop.getBody();
  scf::InParallelOp terminator = loop.getTerminator();
  SmallVector<SliceWrite> writes;
  {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPoint(terminator);
    writes = body(b, loop.getInductionVars(), loop.getRegionIterArgs());
    b.setInsertionPointToEnd(terminator.getBody());
    for (SliceWrite &w : writes) {
      SmallVector<OpFoldResult> strides(w.offsets.size(), b.getIndexAttr(1));
      tensor::ParallelInsertSliceOp::create(b, w.slice, w.dest, w.offsets,
                                            w.sizes, strides);
    }
  }
  (void)block;
  return SmallVector<Value>(loop.getResults());
}

Sequence LoopEmitter::findSequence(Value cuSeqlens, int64_t blockSize,
                                   SequenceMatch matches, Value *found) {
  Value numSequences = arith::SubIOp::create(
      b, tensor::DimOp::create(b, cuSeqlens, 0), index(1));
  Value block = index(blockSize);
  // Carried: start, end and block offset of the match, whether a match was
  // seen (only when the caller asks), and the running block offset.
  SmallVector<Value> inits = {index(0), index(0), index(0)};
  if (found)
    inits.push_back(arith::ConstantOp::create(b, b.getBoolAttr(false)));
  inits.push_back(index(0));
  SmallVector<Value> state = forLoop(
      index(0), numSequences, inits,
      [&](ImplicitLocOpBuilder &nb, Value s, ValueRange c) {
        LoopEmitter e(nb);
        Value start = e.extractIndex(cuSeqlens, s);
        Value end = e.extractIndex(
            cuSeqlens, Value(arith::AddIOp::create(nb, s, e.index(1))));
        Value blocks = arith::CeilDivUIOp::create(
            nb, arith::SubIOp::create(nb, end, start), block);
        Value running = c.back();
        Value inside = matches(nb, start, end, running, blocks);
        SmallVector<Value> next = {
            arith::SelectOp::create(nb, inside, start, c[0]),
            arith::SelectOp::create(nb, inside, end, c[1]),
            arith::SelectOp::create(nb, inside, running, c[2])};
        if (found)
          next.push_back(arith::OrIOp::create(nb, inside, c[3]));
        next.push_back(arith::AddIOp::create(nb, running, blocks));
        return next;
      });
  Sequence seq;
  seq.start = state[0];
  seq.end = state[1];
  seq.blockOffset = state[2];
  seq.numBlocks = arith::CeilDivUIOp::create(
      b, arith::SubIOp::create(b, seq.end, seq.start), block);
  if (found)
    *found = state[3];
  return seq;
}

Sequence LoopEmitter::locateToken(Value cuSeqlens, int64_t blockSize,
                                  Value token) {
  return findSequence(
      cuSeqlens, blockSize,
      [&](ImplicitLocOpBuilder &nb, Value start, Value end, Value, Value) {
        return arith::AndIOp::create(
                   nb,
                   arith::CmpIOp::create(nb, arith::CmpIPredicate::ule, start,
                                         token),
                   arith::CmpIOp::create(nb, arith::CmpIPredicate::ult, token,
                                         end))
            .getResult();
      },
      /*found=*/nullptr);
}

Value LoopEmitter::slotAttends(const Sequence &seq, Value selectedRow,
                               Value slot) {
  int64_t k = cast<VectorType>(selectedRow.getType()).getShape().front();
  SmallVector<int32_t> slots(k);
  for (int64_t i = 0; i < k; ++i)
    slots[i] = i;
  Value slotIds = arith::ConstantOp::create(
      b, DenseElementsAttr::get(VectorType::get({k}, b.getI32Type()),
                                ArrayRef<int32_t>(slots)));
  Value slotI32 = arith::IndexCastOp::create(b, b.getI32Type(), slot);
  Value blockI32 =
      vector::ExtractOp::create(b, selectedRow, OpFoldResult(slot));
  // Listed earlier in the row: same block in a slot below this one.
  Value same = arith::CmpIOp::create(b, arith::CmpIPredicate::eq, selectedRow,
                                     splat(blockI32, k));
  Value earlier = arith::CmpIOp::create(b, arith::CmpIPredicate::slt, slotIds,
                                        splat(slotI32, k));
  Value repeats = vector::ReductionOp::create(
      b, vector::CombiningKind::OR, arith::AndIOp::create(b, same, earlier));
  Value numBlocksI32 =
      arith::IndexCastOp::create(b, b.getI32Type(), seq.numBlocks);
  Value valid = arith::AndIOp::create(
      b, arith::CmpIOp::create(b, arith::CmpIPredicate::sge, blockI32, i32(0)),
      arith::CmpIOp::create(b, arith::CmpIPredicate::slt, blockI32,
                            numBlocksI32));
  Value firstTime = arith::XOrIOp::create(
      b, repeats, arith::ConstantOp::create(b, b.getBoolAttr(true)));
  return arith::AndIOp::create(b, valid, firstTime);
}

Sequence LoopEmitter::locateBlockRow(Value cuSeqlens, int64_t blockSize,
                                     Value row, Value &blockIndex,
                                     Value &valid) {
  Sequence seq = findSequence(
      cuSeqlens, blockSize,
      [&](ImplicitLocOpBuilder &nb, Value, Value, Value offset, Value blocks) {
        return arith::AndIOp::create(
                   nb,
                   arith::CmpIOp::create(nb, arith::CmpIPredicate::ule, offset,
                                         row),
                   arith::CmpIOp::create(
                       nb, arith::CmpIPredicate::ult, row,
                       arith::AddIOp::create(nb, offset, blocks)))
            .getResult();
      },
      &valid);
  blockIndex = arith::SubIOp::create(b, row, seq.blockOffset);
  return seq;
}

std::pair<Value, Value>
mlir::moba::emitParallelAttention(ImplicitLocOpBuilder &b, SparseAttentionOp op,
                                  QueryBody body) {
  LoopEmitter e(b);
  auto qType = op.getQ().getType();
  int64_t numHeads = qType.getDimSize(1);
  int64_t group = numHeads / op.getK().getType().getDimSize(1);
  Value q = op.getQ(), selected = op.getSelected();
  OpFoldResult tokens = tensor::getMixedSize(b, b.getLoc(), q, 0);
  SmallVector<Value> results = e.forall(
      {tokens, b.getIndexAttr(numHeads)},
      ValueRange{op.getOutInit(), op.getLseInit()},
      [&](ImplicitLocOpBuilder &nb, ValueRange ivs,
          ValueRange outs) -> SmallVector<SliceWrite> {
        LoopEmitter ne(nb);
        Value t = ivs[0], h = ivs[1];
        Sequence seq = ne.locateToken(op.getCuSeqlens(), op.getBlockSize(), t);
        Value kvHead = arith::DivUIOp::create(nb, h, ne.index(group));
        Value queryRow = ne.readRow(q, {t, h});
        Value selectedRow =
            selected ? ne.readSelectionRow(selected, t, h) : Value();
        QueryResult r = body(nb, seq, t, kvHead, queryRow, selectedRow);
        return ne.rowAndScalarWrites(outs[0], outs[1], {t, h}, r.row, r.lse);
      });
  return {results[0], results[1]};
}

Value LoopEmitter::readSelectionRow(Value selected, Value t, Value h) {
  int64_t k = cast<RankedTensorType>(selected.getType()).getShape().back();
  return vector::TransferReadOp::create(
      b, VectorType::get({k}, b.getI32Type()), selected,
      ValueRange{t, h, index(0)}, i32(-1), ArrayRef<bool>{true});
}

SmallVector<SliceWrite> LoopEmitter::rowAndScalarWrites(Value rows,
                                                        Value scalars,
                                                        ValueRange indices,
                                                        Value row,
                                                        Value scalar) {
  auto rowsType = cast<RankedTensorType>(rows.getType());
  int64_t width = rowsType.getShape().back();
  OpFoldResult one = b.getIndexAttr(1), zero = b.getIndexAttr(0);
  SmallVector<OpFoldResult> rowOffsets = getAsOpFoldResult(indices);
  rowOffsets.push_back(zero);
  SmallVector<OpFoldResult> rowSizes(indices.size(), one);
  rowSizes.push_back(b.getIndexAttr(width));
  SmallVector<OpFoldResult> unit(rowOffsets.size(), one);
  Value rowSlice =
      tensor::ExtractSliceOp::create(b, rows, rowOffsets, rowSizes, unit);
  SmallVector<Value> zeros(indices.size(), index(0));
  rowSlice = writeRow(row, rowSlice, zeros);
  SmallVector<OpFoldResult> scalarOffsets = getAsOpFoldResult(indices);
  SmallVector<OpFoldResult> scalarSizes(indices.size(), one);
  Value scalarSlice = tensor::ExtractSliceOp::create(
      b, scalars, scalarOffsets, scalarSizes,
      SmallVector<OpFoldResult>(indices.size(), one));
  scalarSlice = tensor::InsertOp::create(b, scalar, scalarSlice, zeros);
  return {{rowSlice, rows, rowOffsets, rowSizes},
          {scalarSlice, scalars, scalarOffsets, scalarSizes}};
}

SliceWrite LoopEmitter::vectorWrite(Value vector, Value dest,
                                    ValueRange indices) {
  OpFoldResult one = b.getIndexAttr(1);
  int64_t width = cast<VectorType>(vector.getType()).getNumElements();
  SmallVector<OpFoldResult> offsets = getAsOpFoldResult(indices);
  SmallVector<OpFoldResult> sizes(indices.size() - 1, one);
  sizes.push_back(b.getIndexAttr(width));
  Value slice = tensor::ExtractSliceOp::create(
      b, dest, offsets, sizes, SmallVector<OpFoldResult>(indices.size(), one));
  SmallVector<Value> zeros(indices.size() - 1, index(0));
  slice = writeRow(vector, slice, zeros);
  return {slice, dest, offsets, sizes};
}

SliceWrite LoopEmitter::scalarWrite(Value value, Value dest,
                                    ValueRange indices) {
  OpFoldResult one = b.getIndexAttr(1);
  SmallVector<OpFoldResult> offsets = getAsOpFoldResult(indices);
  SmallVector<OpFoldResult> sizes(indices.size(), one);
  Value slice = tensor::ExtractSliceOp::create(
      b, dest, offsets, sizes, SmallVector<OpFoldResult>(indices.size(), one));
  SmallVector<Value> zeros(indices.size(), index(0));
  slice = tensor::InsertOp::create(b, value, slice, zeros);
  return {slice, dest, offsets, sizes};
}
