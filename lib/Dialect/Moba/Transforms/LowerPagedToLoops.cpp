//===- LowerPagedToLoops.cpp - The paged KV cache ops to loops ------------===//
//
// Part of moba-mlir. The `moba-lower-to-loops` patterns of the paged KV
// cache (docs/semantics.md, "Decode and chunked prefill"):
// moba.paged_kv_append (new keys and values into their pages, the f32 key
// sums of their blocks kept in position order) and
// moba.paged_decode_attention (the causal rows of a few queries per
// sequence: the gate over the cached sums of finished blocks, a running
// top-k, and the exact two-pass softmax over the chosen blocks read through
// the block table). Serial loops (sequences, then tokens, then heads), or,
// when `parallel` (the GPU pipeline), scf.foralls whose iterations write
// disjoint rows:
//
//  - a first forall over sequences decides, per sequence, whether its
//    lengths and page ids describe the cache (an i8 flag each), so that the
//    walk over a sequence's page ids runs once, not once per row;
//  - decode: one iteration per (query token, query head), which finds its
//    sequence by a scan of cu_seqlens_q and writes its output row and
//    log-sum-exp (NaN for a sequence that failed its check, or a token
//    that lies in no sequence);
//  - append: one iteration per (new token, key/value head) writes the key
//    and value rows to their page slot (a slice of one or zero rows, so an
//    iteration of a failed sequence writes nothing), and one iteration per
//    (sequence, block, key/value head) rewrites its block's f32 key sum,
//    adding the block's new keys in position order to its old sum (or to
//    zero when the block starts among them): each sum has one writer, so
//    the update has no race and its rounding is the serial loop's.
//
// Either way, every read and write of the cache sits under the check
// (`fitsCache`, plus, in the parallel forms, cu_seqlens within the packed
// tokens, which device callers cannot have checked on the host), so a bad
// length or page id is never an out-of-bounds access.
//
//===----------------------------------------------------------------------===//

#include "LoopEmitter.h"
#include "LowerToLoopsPatterns.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

#include <limits>

using namespace mlir;
using namespace mlir::moba;

namespace {

/// The cache geometry both ops read off their operands.
struct PagedCache {
  Value blockTable; ///< [B, max_pages] i32
  Value cacheLens;  ///< [B] i32
  Value kCache, vCache;
  Value blockKeySums; ///< [B, max_blocks, Hkv, D] f32
  int64_t pageSize;
  int64_t blockSize;
};

/// The i64 value of index `v`.
Value toI64(ImplicitLocOpBuilder &b, Value v) {
  return arith::IndexCastOp::create(b, b.getI64Type(), v);
}

/// Whether sequence `seq` (index) may hold `length` (i64) tokens in the
/// cache, of which `fresh` (i64) are new: 0 <= fresh <= length, length
/// within max_pages pages and max_blocks blocks, and every page id of its
/// first ceil(length / page_size) pages in [0, pages). i64 arithmetic: the
/// dims are below 2^62 bytes (the verifier's staticSizes, and the runner
/// for dynamic ones), so the products cannot wrap.
Value fitsCache(ImplicitLocOpBuilder &b, const PagedCache &c, Value seq,
                Value length, Value fresh) {
  LoopEmitter e(b);
  auto i64 = [&](int64_t v) {
    return arith::ConstantOp::create(b, b.getI64IntegerAttr(v)).getResult();
  };
  auto cmp = [&](arith::CmpIPredicate p, Value x, Value y) {
    return arith::CmpIOp::create(b, p, x, y).getResult();
  };
  Value maxPages = toI64(b, tensor::DimOp::create(b, c.blockTable, 1));
  Value maxBlocks = toI64(b, tensor::DimOp::create(b, c.blockKeySums, 1));
  Value numPages = tensor::DimOp::create(b, c.kCache, 0);
  Value ok = cmp(arith::CmpIPredicate::sge, fresh, i64(0));
  ok = arith::AndIOp::create(b, ok,
                             cmp(arith::CmpIPredicate::sle, fresh, length));
  ok = arith::AndIOp::create(
      b, ok,
      cmp(arith::CmpIPredicate::sle, length,
          arith::MulIOp::create(b, maxPages, i64(c.pageSize))));
  ok = arith::AndIOp::create(
      b, ok,
      cmp(arith::CmpIPredicate::sle, length,
          arith::MulIOp::create(b, maxBlocks, i64(c.blockSize))));
  // The pages of the sequence, 0 when the lengths already failed.
  Value pagesUsed = arith::SelectOp::create(
      b, ok, arith::CeilDivSIOp::create(b, length, i64(c.pageSize)), i64(0));
  Value numPagesI32 = arith::IndexCastOp::create(b, b.getI32Type(), numPages);
  return e.forLoop(
      e.index(0), arith::IndexCastOp::create(b, b.getIndexType(), pagesUsed),
      ValueRange{ok},
      [&](ImplicitLocOpBuilder &pb, Value i,
          ValueRange acc) -> SmallVector<Value> {
        Value page = tensor::ExtractOp::create(pb, c.blockTable,
                                               ValueRange{seq, i});
        Value inRange = arith::AndIOp::create(
            pb,
            arith::CmpIOp::create(pb, arith::CmpIPredicate::sge, page,
                                  arith::ConstantOp::create(
                                      pb, pb.getI32IntegerAttr(0))),
            arith::CmpIOp::create(pb, arith::CmpIPredicate::slt, page,
                                  numPagesI32));
        return {arith::AndIOp::create(pb, acc[0], inRange)};
      })[0];
}

/// The loops read rows of head_dim elements as vectors: the heads and
/// head_dim of the packed tensors and of the cache (and its page_size) must
/// be static; the block sums' max_blocks, the batch and the pool's page
/// count may be dynamic.
LogicalResult checkLowerablePaged(RewriterBase &rewriter, Operation *op,
                                  ValueRange packedAndCache, Value sums) {
  if (failed(checkStaticHeadsAndHeadDim(rewriter, op, packedAndCache)))
    return failure();
  auto type = cast<RankedTensorType>(sums.getType());
  for (int64_t i = 2; i < 4; ++i)
    if (type.isDynamicDim(i))
      return op->emitOpError()
             << "lowering to loops needs static heads and head_dim; dim " << i
             << " of " << type << " is dynamic";
  return success();
}

/// The (page, slot) of position `pos` (index) of sequence `seq`.
std::pair<Value, Value> pageSlot(ImplicitLocOpBuilder &b, const PagedCache &c,
                                 Value seq, Value pos) {
  LoopEmitter e(b);
  Value page = e.extractIndex(
      c.blockTable,
      {seq, arith::DivUIOp::create(b, pos, e.index(c.pageSize)).getResult()});
  Value slot = arith::RemUIOp::create(b, pos, e.index(c.pageSize));
  return {page, slot};
}

/// Element `indices` of the i32 tensor `tensor`, as i64.
Value extractI64(ImplicitLocOpBuilder &b, Value tensor, ValueRange indices) {
  return arith::ExtSIOp::create(b, b.getI64Type(),
                                tensor::ExtractOp::create(b, tensor, indices));
}

/// The parallel forms' cache check: an i8 tensor with one flag per
/// sequence, 1 where fitsCache accepts its length (the grown one when
/// `grown`: the append's) and its tokens [cu[s], cu[s + 1]) lie within the
/// `numTokens` (index) packed tokens. One forall iteration per sequence.
Value fitsPerSequence(ImplicitLocOpBuilder &b, const PagedCache &c, Value cu,
                      Value numTokens, bool grown) {
  LoopEmitter e(b);
  OpFoldResult numSequences =
      tensor::getMixedSize(b, b.getLoc(), c.cacheLens, 0);
  Value init = tensor::EmptyOp::create(b, ArrayRef<OpFoldResult>{numSequences},
                                       b.getI8Type());
  Value tokens = toI64(b, numTokens);
  return e.forall(
      {numSequences}, ValueRange{init},
      [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
          ValueRange outs) -> SmallVector<SliceWrite> {
        LoopEmitter pe(pb);
        Value s = ivs[0];
        Value first = extractI64(pb, cu, {s});
        Value last = extractI64(
            pb, cu, {arith::AddIOp::create(pb, s, pe.index(1)).getResult()});
        Value lens = extractI64(pb, c.cacheLens, {s});
        Value fresh = arith::SubIOp::create(pb, last, first);
        Value length =
            grown ? arith::AddIOp::create(pb, lens, fresh).getResult() : lens;
        Value ok = fitsCache(pb, c, s, length, fresh);
        Value zero = arith::ConstantOp::create(pb, pb.getI64IntegerAttr(0));
        ok = arith::AndIOp::create(
            pb, ok,
            arith::CmpIOp::create(pb, arith::CmpIPredicate::sge, first, zero));
        ok = arith::AndIOp::create(
            pb, ok,
            arith::CmpIOp::create(pb, arith::CmpIPredicate::sle, last, tokens));
        Value flag = arith::ExtUIOp::create(pb, pb.getI8Type(), ok);
        return {pe.scalarWrite(flag, outs[0], {s})};
      })[0];
}

/// The sequence of packed token `token` (index) in a parallel iteration:
/// the first s with cu[s] <= token < cu[s + 1], found by a scan over the
/// sequences, and whether its flag in `fits` (fitsPerSequence) is set;
/// false, with sequence 0, for a token in no sequence.
std::pair<Value, Value> locateFittingSequence(ImplicitLocOpBuilder &b,
                                              Value cu, Value fits,
                                              Value token) {
  LoopEmitter e(b);
  Value numSequences = tensor::DimOp::create(b, fits, 0);
  Value t = toI64(b, token);
  Value no = arith::ConstantOp::create(b, b.getBoolAttr(false));
  SmallVector<Value> found = e.forLoop(
      e.index(0), numSequences, ValueRange{e.index(0), no},
      [&](ImplicitLocOpBuilder &sb, Value s,
          ValueRange acc) -> SmallVector<Value> {
        LoopEmitter se(sb);
        Value first = extractI64(sb, cu, {s});
        Value last = extractI64(
            sb, cu, {arith::AddIOp::create(sb, s, se.index(1)).getResult()});
        Value inside = arith::AndIOp::create(
            sb, arith::CmpIOp::create(sb, arith::CmpIPredicate::sle, first, t),
            arith::CmpIOp::create(sb, arith::CmpIPredicate::slt, t, last));
        Value take = arith::AndIOp::create(
            sb, inside,
            arith::XOrIOp::create(
                sb, acc[1],
                arith::ConstantOp::create(sb, sb.getBoolAttr(true))));
        return {arith::SelectOp::create(sb, take, s, acc[0]),
                arith::OrIOp::create(sb, acc[1], inside)};
      });
  // The flag is read only for a sequence that exists.
  auto ifOp = scf::IfOp::create(
      b, found[1],
      [&](OpBuilder &ob, Location loc) {
        ImplicitLocOpBuilder ib(loc, ob);
        Value flag = tensor::ExtractOp::create(ib, fits, ValueRange{found[0]});
        Value set = arith::CmpIOp::create(
            ib, arith::CmpIPredicate::ne, flag,
            arith::ConstantOp::create(ib, ib.getI8IntegerAttr(0)));
        scf::YieldOp::create(ib, set);
      },
      [&](OpBuilder &ob, Location loc) {
        ImplicitLocOpBuilder ib(loc, ob);
        scf::YieldOp::create(
            ib, ValueRange{arith::ConstantOp::create(ib, ib.getBoolAttr(false))
                               .getResult()});
      });
  return {found[0], ifOp.getResult(0)};
}

//===----------------------------------------------------------------------===//
// moba.paged_kv_append
//===----------------------------------------------------------------------===//

struct LowerPagedKvAppend : LoweringPattern<PagedKvAppendOp> {
  using LoweringPattern::LoweringPattern;

  LogicalResult matchAndRewrite(PagedKvAppendOp op,
                                PatternRewriter &rewriter) const override {
    if (!isa<RankedTensorType>(op.getK().getType()))
      return rewriter.notifyMatchFailure(op, "on buffers");
    if (failed(checkLowerablePaged(
            rewriter, op,
            {op.getK(), op.getV(), op.getKCacheInit(), op.getVCacheInit()},
            op.getBlockKeySumsInit())))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    PagedCache c{op.getBlockTable(),
                 op.getCacheLens(),
                 op.getKCacheInit(),
                 op.getVCacheInit(),
                 op.getBlockKeySumsInit(),
                 op.getKCacheInit().getType().getDimSize(1),
                 static_cast<int64_t>(op.getBlockSize())};
    int64_t kvHeads = op.getK().getType().getDimSize(1);
    int64_t headDim = op.getK().getType().getDimSize(2);
    Value cu = op.getCuSeqlens(), k = op.getK(), v = op.getV();
    if (parallel) {
      rewriter.replaceOp(op, appendInParallel(b, c, op, kvHeads, headDim));
      return success();
    }
    Value numSequences = tensor::DimOp::create(b, c.cacheLens, 0);
    Value zeros = e.splat(e.f32(0.0), headDim);
    SmallVector<Value> result = e.forLoop(
        e.index(0), numSequences,
        ValueRange{op.getKCacheInit(), op.getVCacheInit(),
                   op.getBlockKeySumsInit()},
        [&](ImplicitLocOpBuilder &sb, Value seq, ValueRange sc) {
          LoopEmitter se(sb);
          Value first = se.extractIndex(cu, seq);
          Value last = se.extractIndex(
              cu, arith::AddIOp::create(sb, seq, se.index(1)).getResult());
          Value old = arith::ExtSIOp::create(
              sb, sb.getI64Type(),
              tensor::ExtractOp::create(sb, c.cacheLens, ValueRange{seq}));
          Value fresh =
              toI64(sb, arith::SubIOp::create(sb, last, first).getResult());
          // Checked as the decode that follows will see it: the grown
          // length, of which `fresh` tokens are new (old >= 0 follows).
          Value grown = arith::AddIOp::create(sb, old, fresh);
          Value fits = fitsCache(sb, c, seq, grown, fresh);
          return se.ifThen(fits, sc, [&](ImplicitLocOpBuilder &ib) {
            LoopEmitter ie(ib);
            Value base = arith::IndexCastOp::create(ib, ib.getIndexType(), old);
            return ie.forLoop(
                first, last, sc,
                [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
                  LoopEmitter te(tb);
                  Value pos = arith::AddIOp::create(
                      tb, base, arith::SubIOp::create(tb, t, first));
                  // Captured by the loop body below: no structured binding.
                  Value page, slot;
                  std::tie(page, slot) = pageSlot(tb, c, seq, pos);
                  Value block =
                      arith::DivUIOp::create(tb, pos, te.index(c.blockSize));
                  // The first key of a block starts its sum afresh.
                  Value starts = arith::CmpIOp::create(
                      tb, arith::CmpIPredicate::eq,
                      arith::RemUIOp::create(tb, pos, te.index(c.blockSize)),
                      te.index(0));
                  return te.forLoop(
                      te.index(0), te.index(kvHeads), tc,
                      [&](ImplicitLocOpBuilder &gb, Value g,
                          ValueRange gc) -> SmallVector<Value> {
                        LoopEmitter ge(gb);
                        Value key = ge.readRow(k, {t, g});
                        Value kc = ge.writeRow(key, gc[0], {page, slot, g});
                        Value vc = ge.writeRow(ge.readRow(v, {t, g}), gc[1],
                                               {page, slot, g});
                        Value sum = arith::SelectOp::create(
                            gb, starts, zeros,
                            ge.readRow(gc[2], {seq, block, g}));
                        Value sums = ge.writeRow(
                            arith::AddFOp::create(gb, sum, key), gc[2],
                            {seq, block, g});
                        return {kc, vc, sums};
                      });
                });
          });
        });
    rewriter.replaceOp(op, result);
    return success();
  }

  /// The parallel form (see the file comment): the flags, then the rows,
  /// then the block sums.
  static SmallVector<Value> appendInParallel(ImplicitLocOpBuilder &b,
                                             const PagedCache &c,
                                             PagedKvAppendOp op,
                                             int64_t kvHeads,
                                             int64_t headDim) {
    LoopEmitter e(b);
    Value cu = op.getCuSeqlens(), k = op.getK(), v = op.getV();
    OpFoldResult tokens = tensor::getMixedSize(b, b.getLoc(), k, 0);
    Value fits = fitsPerSequence(
        b, c, cu, getValueOrCreateConstantIndexOp(b, b.getLoc(), tokens),
        /*grown=*/true);

    // The key and value rows: one iteration per (new token, kv head).
    SmallVector<Value> rows = e.forall(
        {tokens, b.getIndexAttr(kvHeads)},
        ValueRange{op.getKCacheInit(), op.getVCacheInit()},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value t = ivs[0], g = ivs[1];
          auto [seq, ok] = locateFittingSequence(pb, cu, fits, t);
          // The page and slot of the token (0 and 0 when it is written
          // nowhere): read only for a sequence whose check passed.
          auto where = scf::IfOp::create(
              pb, ok,
              [&](OpBuilder &ob, Location loc) {
                ImplicitLocOpBuilder ib(loc, ob);
                Value first = extractI64(ib, cu, {seq});
                Value old = extractI64(ib, c.cacheLens, {seq});
                Value pos = arith::IndexCastOp::create(
                    ib, ib.getIndexType(),
                    arith::AddIOp::create(
                        ib, old,
                        arith::SubIOp::create(ib, toI64(ib, t), first)));
                auto [page, slot] = pageSlot(ib, c, seq, pos);
                scf::YieldOp::create(ib, ValueRange{page, slot});
              },
              [&](OpBuilder &ob, Location loc) {
                ImplicitLocOpBuilder ib(loc, ob);
                LoopEmitter ie(ib);
                scf::YieldOp::create(ib,
                                     ValueRange{ie.index(0), ie.index(0)});
              });
          Value page = where.getResult(0), slot = where.getResult(1);
          // One row, or none: the slice's first dim is 1 or 0.
          Value count = arith::SelectOp::create(pb, ok, pe.index(1),
                                                pe.index(0));
          OpFoldResult one = pb.getIndexAttr(1);
          SmallVector<OpFoldResult> offsets = {page, slot, g,
                                               pb.getIndexAttr(0)};
          SmallVector<OpFoldResult> sizes = {count, one, one,
                                             pb.getIndexAttr(headDim)};
          SmallVector<OpFoldResult> strides(4, one);
          SmallVector<SliceWrite> writes;
          for (auto [source, dest] : {std::pair{k, outs[0]},
                                      std::pair{v, outs[1]}}) {
            Value slice = tensor::ExtractSliceOp::create(pb, dest, offsets,
                                                         sizes, strides);
            SmallVector<Value> written = pe.ifThen(
                ok, ValueRange{slice},
                [&](ImplicitLocOpBuilder &ib) -> SmallVector<Value> {
                  LoopEmitter ie(ib);
                  Value row = ie.readRow(source, {t, g});
                  return {ie.writeRow(row, slice,
                                      {ie.index(0), ie.index(0), ie.index(0)})};
                });
            writes.push_back({written[0], dest, offsets, sizes});
          }
          return writes;
        });

    // The block sums: one iteration per (sequence, block, kv head), each
    // the one writer of its sum.
    Value zeros = e.splat(e.f32(0.0), headDim);
    Value sums = e.forall(
        {tensor::getMixedSize(b, b.getLoc(), c.blockKeySums, 0),
         tensor::getMixedSize(b, b.getLoc(), c.blockKeySums, 1),
         b.getIndexAttr(kvHeads)},
        ValueRange{op.getBlockKeySumsInit()},
        [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
            ValueRange outs) -> SmallVector<SliceWrite> {
          LoopEmitter pe(pb);
          Value s = ivs[0], j = ivs[1], g = ivs[2];
          Value old = pe.readRow(outs[0], {s, j, g});
          // Rows past the batch's sequences (a sums tensor with more rows
          // than cache_lens) are left as they are.
          Value numSequences = tensor::DimOp::create(pb, fits, 0);
          Value exists = arith::CmpIOp::create(pb, arith::CmpIPredicate::ult,
                                               s, numSequences);
          Value sum = pe.ifThen(
              exists, ValueRange{old},
              [&](ImplicitLocOpBuilder &xb) -> SmallVector<Value> {
                LoopEmitter xe(xb);
                Value flag =
                    tensor::ExtractOp::create(xb, fits, ValueRange{s});
                Value ok = arith::CmpIOp::create(
                    xb, arith::CmpIPredicate::ne, flag,
                    arith::ConstantOp::create(xb, xb.getI8IntegerAttr(0)));
                return xe.ifThen(
                    ok, ValueRange{old},
                    [&](ImplicitLocOpBuilder &ib) -> SmallVector<Value> {
                      LoopEmitter ie(ib);
                      Value first = extractI64(ib, cu, {s});
                      Value last = extractI64(
                          ib, cu,
                          {arith::AddIOp::create(ib, s, ie.index(1))
                               .getResult()});
                      Value lens = extractI64(ib, c.cacheLens, {s});
                      Value grown = arith::AddIOp::create(
                          ib, lens, arith::SubIOp::create(ib, last, first));
                      Value blockFirst = arith::MulIOp::create(
                          ib, toI64(ib, j),
                          arith::ConstantOp::create(
                              ib, ib.getI64IntegerAttr(c.blockSize)));
                      Value blockEnd = arith::AddIOp::create(
                          ib, blockFirst,
                          arith::ConstantOp::create(
                              ib, ib.getI64IntegerAttr(c.blockSize)));
                      // The block's new positions [from, to).
                      Value from = arith::MaxSIOp::create(ib, lens, blockFirst);
                      Value to = arith::MinSIOp::create(ib, grown, blockEnd);
                      Value touched = arith::CmpIOp::create(
                          ib, arith::CmpIPredicate::slt, from, to);
                      return ie.ifThen(
                          touched, ValueRange{old},
                          [&](ImplicitLocOpBuilder &tb) -> SmallVector<Value> {
                            LoopEmitter te(tb);
                            // A block whose first key is new starts afresh.
                            Value fresh = arith::CmpIOp::create(
                                tb, arith::CmpIPredicate::sge, blockFirst,
                                lens);
                            Value start =
                                arith::SelectOp::create(tb, fresh, zeros, old);
                            // Packed token of position p: first + p - lens.
                            Value shift = arith::SubIOp::create(tb, first, lens);
                            auto asIndex = [&](Value x) {
                              return arith::IndexCastOp::create(
                                         tb, tb.getIndexType(), x)
                                  .getResult();
                            };
                            return te.forLoop(
                                asIndex(from), asIndex(to), ValueRange{start},
                                [&](ImplicitLocOpBuilder &kb, Value p,
                                    ValueRange acc) -> SmallVector<Value> {
                                  LoopEmitter ke(kb);
                                  Value t = arith::IndexCastOp::create(
                                      kb, kb.getIndexType(),
                                      arith::AddIOp::create(kb, toI64(kb, p),
                                                            shift));
                                  return {arith::AddFOp::create(
                                      kb, acc[0], ke.readRow(k, {t, g}))};
                                });
                          });
                    });
              })[0];
          return {pe.vectorWrite(sum, outs[0], {s, j, g, pe.index(0)})};
        })[0];
    return {rows[0], rows[1], sums};
  }
};

//===----------------------------------------------------------------------===//
// moba.paged_decode_attention
//===----------------------------------------------------------------------===//

struct LowerPagedDecodeAttention : LoweringPattern<PagedDecodeAttentionOp> {
  LowerPagedDecodeAttention(MLIRContext *context, bool parallel,
                            bool keepSplitK)
      : LoweringPattern(context, parallel), keepSplitK(keepSplitK) {}

  /// Leave ops the split-K GPU lowering takes.
  bool keepSplitK;

  LogicalResult matchAndRewrite(PagedDecodeAttentionOp op,
                                PatternRewriter &rewriter) const override {
    if (!isa<RankedTensorType>(op.getQ().getType()))
      return rewriter.notifyMatchFailure(op, "on buffers");
    if (keepSplitK && op.isSplitKCompatible())
      return rewriter.notifyMatchFailure(op, "kept for the split-K kernel");
    if (failed(checkLowerablePaged(rewriter, op,
                                   {op.getQ(), op.getKCache(), op.getVCache()},
                                   op.getBlockKeySums())))
      return failure();
    ImplicitLocOpBuilder b(op.getLoc(), rewriter);
    LoopEmitter e(b);
    auto qType = cast<RankedTensorType>(op.getQ().getType());
    auto cacheType = cast<RankedTensorType>(op.getKCache().getType());
    PagedCache c{op.getBlockTable(),
                 op.getCacheLens(),
                 op.getKCache(),
                 op.getVCache(),
                 op.getBlockKeySums(),
                 cacheType.getDimSize(1),
                 static_cast<int64_t>(op.getBlockSize())};
    int64_t numHeads = qType.getDimSize(1);
    int64_t headDim = qType.getDimSize(2);
    int64_t group = numHeads / cacheType.getDimSize(2);
    int64_t topK = op.getTopK();
    bool perKvHead = op.isSelectionPerKvHead();
    double scale = op.getScaleOrDefault();
    Value q = op.getQ(), cu = op.getCuSeqlensQ();
    Value nan = e.f32(std::numeric_limits<double>::quiet_NaN());
    if (parallel) {
      // One iteration per (query token, query head); see the file comment.
      OpFoldResult tokens = tensor::getMixedSize(b, b.getLoc(), q, 0);
      Value fits = fitsPerSequence(
          b, c, cu, getValueOrCreateConstantIndexOp(b, b.getLoc(), tokens),
          /*grown=*/false);
      SmallVector<Value> result = e.forall(
          {tokens, b.getIndexAttr(numHeads)},
          ValueRange{op.getOutInit(), op.getLseInit()},
          [&](ImplicitLocOpBuilder &pb, ValueRange ivs,
              ValueRange outs) -> SmallVector<SliceWrite> {
            LoopEmitter pe(pb);
            Value t = ivs[0], h = ivs[1];
            auto [seq, ok] = locateFittingSequence(pb, cu, fits, t);
            auto ifOp = scf::IfOp::create(
                pb, ok,
                [&](OpBuilder &ob, Location loc) {
                  ImplicitLocOpBuilder ib(loc, ob);
                  Value last = extractI64(
                      ib, cu,
                      {arith::AddIOp::create(ib, seq, LoopEmitter(ib).index(1))
                           .getResult()});
                  Value length = extractI64(ib, c.cacheLens, {seq});
                  // length - (last - first) + (t - first), first being
                  // the sequence's first query token.
                  Value pos = arith::IndexCastOp::create(
                      ib, ib.getIndexType(),
                      arith::AddIOp::create(
                          ib, arith::SubIOp::create(ib, length, last),
                          toI64(ib, t)));
                  QueryResult r = attendRow(ib, c, op, seq, t, h, pos, group,
                                            topK, perKvHead, scale);
                  scf::YieldOp::create(ib, ValueRange{r.row, r.lse});
                },
                [&](OpBuilder &ob, Location loc) {
                  ImplicitLocOpBuilder ib(loc, ob);
                  LoopEmitter ie(ib);
                  scf::YieldOp::create(
                      ib, ValueRange{ie.splat(nan, headDim), nan});
                });
            return pe.rowAndScalarWrites(outs[0], outs[1], {t, h},
                                         ifOp.getResult(0), ifOp.getResult(1));
          });
      rewriter.replaceOp(op, result);
      return success();
    }
    Value numSequences = tensor::DimOp::create(b, c.cacheLens, 0);

    SmallVector<Value> result = e.forLoop(
        e.index(0), numSequences,
        ValueRange{op.getOutInit(), op.getLseInit()},
        [&](ImplicitLocOpBuilder &sb, Value seq, ValueRange sc) {
          LoopEmitter se(sb);
          Value first = se.extractIndex(cu, seq);
          Value last = se.extractIndex(
              cu, arith::AddIOp::create(sb, seq, se.index(1)).getResult());
          Value length = arith::ExtSIOp::create(
              sb, sb.getI64Type(),
              tensor::ExtractOp::create(sb, c.cacheLens, ValueRange{seq}));
          Value fresh =
              toI64(sb, arith::SubIOp::create(sb, last, first).getResult());
          Value fits = fitsCache(sb, c, seq, length, fresh);
          // Position of the first query (meaningful when `fits`).
          Value base = arith::IndexCastOp::create(
              sb, sb.getIndexType(),
              arith::SelectOp::create(
                  sb, fits, arith::SubIOp::create(sb, length, fresh),
                  arith::ConstantOp::create(sb, sb.getI64IntegerAttr(0))));
          return se.forLoop(
              first, last, sc,
              [&](ImplicitLocOpBuilder &tb, Value t, ValueRange tc) {
                LoopEmitter te(tb);
                Value pos = arith::AddIOp::create(
                    tb, base, arith::SubIOp::create(tb, t, first));
                return te.forLoop(
                    te.index(0), te.index(numHeads), tc,
                    [&](ImplicitLocOpBuilder &hb, Value h, ValueRange hc) {
                      auto ifOp = scf::IfOp::create(
                          hb, fits,
                          [&](OpBuilder &ob, Location loc) {
                            ImplicitLocOpBuilder ib(loc, ob);
                            QueryResult r =
                                attendRow(ib, c, op, seq, t, h, pos, group,
                                          topK, perKvHead, scale);
                            LoopEmitter ie(ib);
                            Value out = ie.writeRow(r.row, hc[0], {t, h});
                            Value lse = tensor::InsertOp::create(
                                ib, r.lse, hc[1], ValueRange{t, h});
                            scf::YieldOp::create(ib, ValueRange{out, lse});
                          },
                          [&](OpBuilder &ob, Location loc) {
                            // Lengths or pages that describe no cache.
                            ImplicitLocOpBuilder ib(loc, ob);
                            LoopEmitter ie(ib);
                            Value out = ie.writeRow(ie.splat(nan, headDim),
                                                    hc[0], {t, h});
                            Value lse = tensor::InsertOp::create(
                                ib, nan, hc[1], ValueRange{t, h});
                            scf::YieldOp::create(ib, ValueRange{out, lse});
                          });
                      return SmallVector<Value>(ifOp.getResults());
                    });
              });
        });
    rewriter.replaceOp(op, result);
    return success();
  }

  /// Row `pos` (index) of causal MoBA for query `t`, head `h` of sequence
  /// `seq`, whose cache `fitsCache` has accepted.
  static QueryResult attendRow(ImplicitLocOpBuilder &b, const PagedCache &c,
                               PagedDecodeAttentionOp op, Value seq, Value t,
                               Value h, Value pos, int64_t group, int64_t topK,
                               bool perKvHead, double scale) {
    LoopEmitter e(b);
    Value q = op.getQ();
    int64_t headDim = cast<RankedTensorType>(q.getType()).getDimSize(2);
    Value g = arith::DivUIOp::create(b, h, e.index(group));
    Value queryRow = e.readRow(q, {t, h});
    Value own = arith::DivUIOp::create(b, pos, e.index(c.blockSize));
    Value blockLength = e.splat(e.f32(double(c.blockSize)), headDim);

    // The top_k - 1 best finished blocks before the own one (-1: none).
    Value chosen;
    if (topK > 1) {
      TopKState init = e.emptyTopK(topK - 1);
      chosen = e.forLoop(
          e.index(0), own, ValueRange{init.scores, init.indices},
          [&](ImplicitLocOpBuilder &jb, Value j, ValueRange jc) {
            LoopEmitter je(jb);
            // The mean as moba.block_pool computes it: the f32 sum over
            // the block's length.
            Value mean = arith::DivFOp::create(
                jb, je.readRow(c.blockKeySums, {seq, j, g}), blockLength);
            Value score;
            if (!perKvHead) {
              score = je.dot(queryRow, mean);
            } else {
              Value firstHead =
                  arith::MulIOp::create(jb, g, je.index(group));
              score = je.forLoop(
                  je.index(0), je.index(group), ValueRange{je.f32(0.0)},
                  [&](ImplicitLocOpBuilder &kb, Value i,
                      ValueRange acc) -> SmallVector<Value> {
                    LoopEmitter ke(kb);
                    Value head = arith::AddIOp::create(kb, firstHead, i);
                    return {arith::AddFOp::create(
                        kb, acc[0],
                        ke.dot(ke.readRow(q, {t, head}), mean))};
                  })[0];
            }
            TopKState next = je.insertTopK(
                {jc[0], jc[1]}, score,
                arith::IndexCastOp::create(jb, jb.getI32Type(), j));
            return SmallVector<Value>{next.scores, next.indices};
          })[1];
    }

    // Runs `body` over the attended key ranges: the own block up to `pos`,
    // then every chosen block in full (all end before the own one).
    Value end = arith::AddIOp::create(b, pos, e.index(1));
    auto forEachRange = [&](ValueRange inits, KeyRangeBody body) {
      LoopEmitter le(b);
      Value ownFirst = arith::MulIOp::create(b, own, le.index(c.blockSize));
      SmallVector<Value> state = body(b, ownFirst, end, inits);
      if (!chosen)
        return state;
      return le.forLoop(
          le.index(0), le.index(topK - 1), state,
          [&](ImplicitLocOpBuilder &kb, Value slot, ValueRange kc) {
            LoopEmitter ke(kb);
            Value block =
                vector::ExtractOp::create(kb, chosen, OpFoldResult(slot));
            Value listed = arith::CmpIOp::create(
                kb, arith::CmpIPredicate::sge, block, ke.i32(0));
            return ke.ifThen(listed, kc, [&](ImplicitLocOpBuilder &ib) {
              LoopEmitter ie(ib);
              Value j =
                  arith::IndexCastOp::create(ib, ib.getIndexType(), block);
              Value from = arith::MulIOp::create(ib, j, ie.index(c.blockSize));
              Value to = arith::AddIOp::create(ib, from, ie.index(c.blockSize));
              return body(ib, from, to, kc);
            });
          });
    };
    Value scaleValue = e.f32(scale);
    auto scoreAt = [&](ImplicitLocOpBuilder &kb, Value s) {
      LoopEmitter ke(kb);
      auto [page, slot] = pageSlot(kb, c, seq, s);
      return arith::MulFOp::create(
                 kb, ke.dot(queryRow, ke.readRow(c.kCache, {page, slot, g})),
                 scaleValue)
          .getResult();
    };
    // Pass 1: the maximum score.
    Value m = forEachRange(
        ValueRange{e.f32(kNegInf)},
        [&](ImplicitLocOpBuilder &rb, Value from, Value to, ValueRange rc) {
          LoopEmitter re(rb);
          return re.forLoop(from, to, rc,
                            [&](ImplicitLocOpBuilder &kb, Value s,
                                ValueRange kc) -> SmallVector<Value> {
                              return {arith::MaximumFOp::create(
                                  kb, kc[0], scoreAt(kb, s))};
                            });
        })[0];
    // Pass 2: the sum and the weighted values.
    SmallVector<Value> sums = forEachRange(
        ValueRange{e.f32(0.0), e.splat(e.f32(0.0), headDim)},
        [&](ImplicitLocOpBuilder &rb, Value from, Value to, ValueRange rc) {
          LoopEmitter re(rb);
          return re.forLoop(
              from, to, rc,
              [&](ImplicitLocOpBuilder &kb, Value s,
                  ValueRange kc) -> SmallVector<Value> {
                LoopEmitter ke(kb);
                Value p = math::ExpOp::create(
                    kb, arith::SubFOp::create(kb, scoreAt(kb, s), m));
                auto [page, slot] = pageSlot(kb, c, seq, s);
                Value acc = vector::FMAOp::create(
                    kb, ke.splat(p, headDim),
                    ke.readRow(c.vCache, {page, slot, g}), kc[1]);
                return {arith::AddFOp::create(kb, kc[0], p), acc};
              });
        });
    return finishSoftmax(b, m, sums[0], sums[1]);
  }
};

} // namespace

void mlir::moba::populateLowerPagedToLoopsPatterns(RewritePatternSet &patterns,
                                                   bool parallel,
                                                   bool keepSplitKDecode) {
  patterns.add<LowerPagedKvAppend>(patterns.getContext(), parallel);
  patterns.add<LowerPagedDecodeAttention>(patterns.getContext(), parallel,
                                          keepSplitKDecode);
}
