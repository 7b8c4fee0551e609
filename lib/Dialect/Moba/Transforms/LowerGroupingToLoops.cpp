//===- LowerGroupingToLoops.cpp - moba.group_queries to loops -------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` pattern of
// moba.group_queries: the selection regrouped by (head, block row) into
// counts, starts and entries, serially or by chunks of tokens in parallel.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;
using namespace mlir::moba;

namespace {

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

} // namespace

void mlir::moba::populateLowerGroupingToLoopsPatterns(
    RewritePatternSet &patterns, bool parallel,
    bool keepWarpCompatibleGrouping) {
  patterns.add<LowerGroupQueries>(patterns.getContext(), parallel,
                                  keepWarpCompatibleGrouping);
}
