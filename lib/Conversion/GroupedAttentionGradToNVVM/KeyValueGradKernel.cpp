//===- KeyValueGradKernel.cpp - dK and dV per key block on mma.sync -------===//
//
// Part of moba-mlir. The key/value kernel of
// moba-convert-grouped-attention-grad-to-nvvm. Each CTA owns 16 x warps
// keys of one block row r and one KV head g, each warp 16 of them, and
// walks every query that attends them: the entries of the groups G(h, r)
// of the query heads h of g, which are in token order. Per step of
// `queryChunk` queries (gathered by token from q and grad_out into two
// cp.async buffers, so that the next step's copies run during this one)
// each warp computes, with its keys as the rows (the M of m16n8k16):
//
//   S^T  = K Q^T              P^T  = exp2(S^T scale log2(e) - lse log2(e))
//   dP^T = V dO^T             dS^T = P^T (dP^T - delta)
//   dV  += P^T dO             dK  += dS^T Q
//
// K and V come from shared memory by ldmatrix as A fragments, Q and dO as B
// fragments (.trans for the products over queries), and P^T and dS^T pass
// from the accumulator layout to the A layout in registers, as P does in
// the forward. dK and dV stay in registers for the whole walk and are
// written once: each key's rows belong to one CTA, so nothing is added in
// memory and the result does not depend on the order CTAs run in.
//
// Columns past a group's end are zero-filled and masked, so are (causally)
// keys past the query; the leading entries of a group that precede the
// CTA's first key are skipped by a binary search.
//
//===----------------------------------------------------------------------===//

#include "GradKernels.h"

#include "llvm/Support/MathExtras.h"

#include <algorithm>
#include <cmath>

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention_grad;
using nvvm_kernel::ifThen;
using nvvm_kernel::KernelBuilder;

namespace {

/// One CTA of the key/value kernel: its keys, its views of shared memory
/// and the steps of its walk.
struct KeyValueGradCta {
  const GradOperands &ops;
  const KeyValueGradShape &shape;
  Value tid, warp, lane;
  Value g, row;
  Value tileFirst, keyEnd;
  Value tileInBlock; ///< the tile's first key within its block
  /// The CTA's part of the walk (split of splits) and, when the row's walk
  /// is split, the first scratch slot of its parts (splits > 1).
  Value split, splits, firstSlot;
  /// [slot, key of the block, dK or dV, head_dim] f32: the split walks'
  /// partial sums, which emitReduceSplits adds up in split order.
  Value partials;
  /// [K or V][key][pitch]; [buffer][Q or dO][query][pitch]; [buffer][query]
  /// each; [first, end, chunks][head of the group].
  Value keyValues, queries, tokens, lseLog2, deltas, table;

  int64_t chunk() const { return shape.queryChunk; }
  int64_t pieces() const { return ops.headDim / 8; } ///< 16-byte copies a row

  void emitViews(ImplicitLocOpBuilder &b, Value shared);
  void emitKeyValueCopies(ImplicitLocOpBuilder &b);
  void emitHeadTable(ImplicitLocOpBuilder &b);
  Value emitTotalChunks(ImplicitLocOpBuilder &b);
  void emitQueryCopies(ImplicitLocOpBuilder &b, Value step, Value buffer);
  SmallVector<Value> emitStep(ImplicitLocOpBuilder &b, Value buffer,
                              ValueRange accumulators);
  void emitWrites(ImplicitLocOpBuilder &b, ValueRange accumulators);
};

/// How the key/value kernel's work is cut: every (KV head, block row) walks
/// its groups' queries in steps; a walk of more than kStepsPerSplit steps
/// is split into parts of about equal length, each a CTA's (per key tile),
/// that write f32 partial sums to scratch slots, added up in split order by
/// a last kernel. Without it the block every query chooses (a sequence's
/// first, often) would be one CTA's walk over the whole sequence while the
/// other SMs idle; with it the longest walk is kStepsPerSplit steps, and
/// the sums still do not depend on which CTA runs first.
constexpr int64_t kStepsPerSplit = 128;
/// The scratch of the split walks' sums stays within this many bytes: a
/// slot holds a whole block's dK and dV in f32, so where blocks are long
/// (4096 keys: 4 MiB a slot at head_dim 128) the parts grow past
/// kStepsPerSplit until the bound on slots fits. Long blocks have many key
/// tiles a row, hence CTAs enough without splitting much.
constexpr int64_t kSplitScratchBytes = int64_t(1) << 30;

/// The plan of the cut, sized on the host from bounds (the groups' sizes
/// are on the device): per KV head at most `items` parts in all, and
/// `slots` scratch slots (a split row of s > 1 parts takes s).
struct SplitPlan {
  Value rows;     ///< block rows
  Value items;    ///< part bound per KV head
  Value slots;    ///< scratch slot bound per KV head
  Value rowPlan;  ///< [Hkv, rows, 4] i32: splits, first slot, keys [first, end)
  Value itemList; ///< [Hkv, items, 2] i32: row (rows: unused), split
  Value partials; ///< [Hkv * slots, blockSize, 2, head_dim] f32
};

} // namespace

void KeyValueGradCta::emitViews(ImplicitLocOpBuilder &b, Value shared) {
  KernelBuilder e{b, ops.element()};
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  int64_t bytes = ops.element().getIntOrFloatBitWidth() / 8;
  int64_t pitch = KeyValueGradShape::pitch(ops.headDim);
  int64_t offset = 0;
  auto view = [&](ArrayRef<int64_t> shapeOf, Type type, int64_t size) {
    Value result = memref::ViewOp::create(
        b, MemRefType::get(shapeOf, type, MemRefLayoutAttrInterface(),
                           workgroup),
        shared, e.index(offset), ValueRange{});
    offset += size;
    return result;
  };
  keyValues = view({2, shape.keys(), pitch}, ops.element(),
                   shape.keyValueBytes(ops.headDim, bytes));
  queries = view({2, 2, chunk(), pitch}, ops.element(),
                 shape.queryBytes(ops.headDim, bytes));
  tokens = view({2, chunk()}, b.getI32Type(), 2 * chunk() * 4);
  lseLog2 = view({2, chunk()}, b.getF32Type(), 2 * chunk() * 4);
  deltas = view({2, chunk()}, b.getF32Type(), 2 * chunk() * 4);
  table = view({3, ops.group}, b.getI32Type(), shape.tableBytes(ops.group));
}

void KeyValueGradCta::emitKeyValueCopies(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, ops.element()};
  // Rows past the block's end repeat its last key: their dK and dV are
  // computed and never written.
  Value lastKey = e.sub(keyEnd, e.index(1));
  scf::ForOp::create(
      b, tid, e.index(shape.keys() * pieces()), e.index(shape.threads()),
      ValueRange{}, [&](OpBuilder &fb, Location loc, Value j, ValueRange) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value key = ie.div(j, ie.index(pieces()));
        Value col = ie.mul(ie.rem(j, ie.index(pieces())), ie.index(8));
        Value from = ie.minU(ie.add(tileFirst, key), lastKey);
        Value sources[] = {ops.k, ops.v};
        for (auto [operand, source] : llvm::enumerate(sources))
          nvgpu::DeviceAsyncCopyOp::create(
              ib, keyValues,
              ValueRange{ie.index(static_cast<int64_t>(operand)), key, col},
              source, ValueRange{from, g, col}, ib.getIndexAttr(8),
              /*srcElements=*/Value(), ib.getUnitAttr());
        scf::YieldOp::create(ib);
      });
}

void KeyValueGradCta::emitHeadTable(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, ops.element()};
  // Causally the entries of tokens before the CTA's first key attend none
  // of its keys: the first entry at or past it (entries are token * K +
  // slot, in order) by bisection, 32 halvings of the group's range.
  Value firstEntry = e.mul(tileFirst, e.index(ops.slotsPerToken));
  scf::ForOp::create(
      b, tid, e.index(ops.group), e.index(shape.threads()), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value hh, ValueRange) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value h = ie.add(ie.mul(g, ie.index(ops.group)), hh);
        Value start = ie.loadIndex(ops.starts, {h, row});
        Value end = ie.add(start, ie.loadIndex(ops.counts, {h, row}));
        Value begin = start;
        if (ops.causal) {
          auto search = scf::ForOp::create(
              ib, ie.index(0), ie.index(32), ie.index(1),
              ValueRange{start, end},
              [&](OpBuilder &sb, Location sloc, Value, ValueRange range) {
                ImplicitLocOpBuilder jb(sloc, sb);
                KernelBuilder je{jb, e.element};
                Value lo = range[0], hi = range[1];
                Value open = je.ult(lo, hi);
                Value mid = je.add(lo, je.div(je.sub(hi, lo), je.index(2)));
                // Read only inside [lo, hi), which holds entries.
                auto read = scf::IfOp::create(jb, TypeRange{jb.getIndexType()},
                                              open, /*withElseRegion=*/true);
                {
                  OpBuilder::InsertionGuard guard(jb);
                  jb.setInsertionPointToStart(&read.getThenRegion().front());
                  scf::YieldOp::create(jb, je.loadIndex(ops.entries, {h, mid}));
                  jb.setInsertionPointToStart(&read.getElseRegion().front());
                  scf::YieldOp::create(jb, firstEntry);
                }
                Value before = arith::AndIOp::create(
                    jb, open, je.ult(read.getResult(0), firstEntry));
                Value notBefore =
                    arith::AndIOp::create(jb, open, je.ule(firstEntry,
                                                           read.getResult(0)));
                scf::YieldOp::create(
                    jb, ValueRange{je.select(before, je.add(mid, je.index(1)),
                                             lo),
                                   je.select(notBefore, mid, hi)});
              });
          begin = search.getResult(0);
        }
        Value steps = arith::CeilDivUIOp::create(ib, ie.sub(end, begin),
                                                 ie.index(chunk()));
        Value fields[] = {begin, end, steps};
        for (auto [field, value] : llvm::enumerate(fields))
          memref::StoreOp::create(
              ib, nvvm_kernel::toI32(ib, value), table,
              ValueRange{ie.index(static_cast<int64_t>(field)), hh});
        scf::YieldOp::create(ib);
      });
}

Value KeyValueGradCta::emitTotalChunks(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, ops.element()};
  auto sum = scf::ForOp::create(
      b, e.index(0), e.index(ops.group), e.index(1), ValueRange{e.index(0)},
      [&](OpBuilder &fb, Location loc, Value hh, ValueRange c) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        scf::YieldOp::create(
            ib, ie.add(c[0], ie.loadIndex(table, {ie.index(2), hh})));
      });
  return sum.getResult(0);
}

void KeyValueGradCta::emitQueryCopies(ImplicitLocOpBuilder &b, Value step,
                                      Value buffer) {
  KernelBuilder e{b, ops.element()};
  // The step's head of the group and its first entry: the heads' steps
  // follow one another in head order.
  auto locate = scf::ForOp::create(
      b, e.index(0), e.index(ops.group), e.index(1),
      ValueRange{e.index(0), e.index(0), e.index(0)},
      [&](OpBuilder &fb, Location loc, Value hh, ValueRange c) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value next = ie.add(c[0], ie.loadIndex(table, {ie.index(2), hh}));
        Value here = arith::AndIOp::create(ib, ie.ule(c[0], step),
                                           ie.ult(step, next));
        scf::YieldOp::create(
            ib, ValueRange{next, ie.select(here, hh, c[1]),
                           ie.select(here, ie.sub(step, c[0]), c[2])});
      });
  Value hh = locate.getResult(1);
  Value h = e.add(e.mul(g, e.index(ops.group)), hh);
  Value begin = e.add(e.loadIndex(table, {e.index(0), hh}),
                      e.mul(locate.getResult(2), e.index(chunk())));
  Value end = e.loadIndex(table, {e.index(1), hh});
  Value lastEntry = e.sub(end, e.index(1));
  // Column j's entry (the group's last past its end) and token.
  auto column = [&](KernelBuilder &ie, Value j) {
    Value at = ie.add(begin, j);
    Value valid = ie.ult(at, end);
    Value entry = ie.loadIndex(ops.entries, {h, ie.minU(at, lastEntry)});
    return std::make_pair(valid, ie.div(entry, ie.index(ops.slotsPerToken)));
  };
  // Q and dO rows, 16 bytes a copy; zeros past the group's end.
  scf::ForOp::create(
      b, tid, e.index(chunk() * pieces()), e.index(shape.threads()),
      ValueRange{}, [&](OpBuilder &fb, Location loc, Value p, ValueRange) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value j = ie.div(p, ie.index(pieces()));
        Value col = ie.mul(ie.rem(p, ie.index(pieces())), ie.index(8));
        auto [valid, token] = column(ie, j);
        Value copied = ie.select(valid, ie.index(8), ie.index(0));
        Value sources[] = {ops.q, ops.gradOut};
        for (auto [operand, source] : llvm::enumerate(sources))
          nvgpu::DeviceAsyncCopyOp::create(
              ib, queries,
              ValueRange{buffer, ie.index(static_cast<int64_t>(operand)), j,
                         col},
              source, ValueRange{token, h, col}, ib.getIndexAttr(8), copied,
              ib.getUnitAttr());
        scf::YieldOp::create(ib);
      });
  // The columns' token (-1: none), lse in base 2 and delta.
  double log2e = 1.0 / std::log(2.0);
  scf::ForOp::create(
      b, tid, e.index(chunk()), e.index(shape.threads()), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value j, ValueRange) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        auto [valid, token] = column(ie, j);
        Value lse = memref::LoadOp::create(ib, ops.lse, ValueRange{token, h});
        Value delta =
            memref::LoadOp::create(ib, ops.rowTerm, ValueRange{token, h});
        memref::StoreOp::create(
            ib, ie.select(valid, nvvm_kernel::toI32(ib, token), ie.i32(-1)),
            tokens, ValueRange{buffer, j});
        memref::StoreOp::create(
            ib, ie.select(valid, ie.fmul(lse, ie.f32(log2e)), ie.f32(0.0)),
            lseLog2, ValueRange{buffer, j});
        memref::StoreOp::create(ib, ie.select(valid, delta, ie.f32(0.0)),
                                deltas, ValueRange{buffer, j});
        scf::YieldOp::create(ib);
      });
}

SmallVector<Value> KeyValueGradCta::emitStep(ImplicitLocOpBuilder &b,
                                             Value buffer,
                                             ValueRange accumulators) {
  KernelBuilder e{b, ops.element()};
  int64_t kSteps = ops.headDim / 16, dTiles = ops.headDim / 8;
  int64_t nTiles = chunk() / 8;
  Value lane8 = e.rem(lane, e.index(8));
  Value laneMatrix = e.div(lane, e.index(8));
  Value quadRow = e.div(lane, e.index(4));
  Value pairCol = e.mul(e.rem(lane, e.index(4)), e.index(2));
  Value warpRow = e.mul(warp, e.index(16));
  // A fragments of the warp's 16 key rows: lanes 8j..8j+7 address matrix
  // j's rows, matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15).
  Value aRow = e.add(warpRow, e.add(lane8, e.mul(e.rem(laneMatrix,
                                                       e.index(2)),
                                                 e.index(8))));
  Value aCol = e.mul(e.div(lane, e.index(16)), e.index(8));
  // K (operand 0) times Q^T, or V (1) times dO^T: [nTiles][4] f32.
  auto transposedProduct = [&](int64_t operand) {
    SmallVector<SmallVector<Value>> tiles(nTiles,
                                          SmallVector<Value>(4, e.f32(0.0)));
    for (int64_t kk = 0; kk < kSteps; kk += 2) {
      bool pair = kk + 1 < kSteps;
      SmallVector<SmallVector<Value>> a;
      for (int64_t s = 0; s < (pair ? 2 : 1); ++s)
        a.push_back(e.ldmatrix(
            keyValues,
            {e.index(operand), aRow, e.add(e.index((kk + s) * 16), aCol)}, 4,
            /*transpose=*/false));
      Value matrix = pair ? laneMatrix : e.rem(laneMatrix, e.index(2));
      Value col = e.add(e.index(kk * 16), e.mul(matrix, e.index(8)));
      for (int64_t nt = 0; nt < nTiles; ++nt) {
        Value queryRow = e.add(e.index(nt * 8), lane8);
        SmallVector<Value> frag =
            e.ldmatrix(queries, {buffer, e.index(operand), queryRow, col},
                       pair ? 4 : 2, /*transpose=*/false);
        tiles[nt] = e.mma(a[0], {frag[0], frag[1]}, tiles[nt]);
        if (pair)
          tiles[nt] = e.mma(a[1], {frag[2], frag[3]}, tiles[nt]);
      }
    }
    return tiles;
  };
  SmallVector<SmallVector<Value>> probabilities = transposedProduct(0);
  SmallVector<SmallVector<Value>> scoreGrads = transposedProduct(1);

  // P^T and dS^T, in place of S^T and dP^T. Value i of a tile is key row
  // quadRow + 8 (i / 2) of the warp's, query column pairCol + i % 2.
  double scaleLog2 = ops.scale / std::log(2.0);
  for (int64_t nt = 0; nt < nTiles; ++nt)
    for (int64_t c = 0; c < 2; ++c) {
      Value j = e.add(e.index(nt * 8 + c), pairCol);
      Value token = memref::LoadOp::create(b, tokens, ValueRange{buffer, j});
      Value lse = memref::LoadOp::create(b, lseLog2, ValueRange{buffer, j});
      Value delta = memref::LoadOp::create(b, deltas, ValueRange{buffer, j});
      Value valid = arith::CmpIOp::create(b, arith::CmpIPredicate::ne, token,
                                          e.i32(-1));
      for (int64_t r = 0; r < 2; ++r) {
        int64_t i = 2 * r + c;
        Value keep = valid;
        if (ops.causal) {
          Value key = e.add(tileFirst,
                            e.add(warpRow, e.add(quadRow, e.index(8 * r))));
          Value tokenIndex = arith::IndexCastUIOp::create(
              b, b.getIndexType(), token);
          keep = arith::AndIOp::create(b, keep, e.ule(key, tokenIndex));
        }
        Value p = e.exp2(math::FmaOp::create(
            b, probabilities[nt][i], e.f32(scaleLog2),
            arith::NegFOp::create(b, lse)));
        Value ds = e.fmul(p, arith::SubFOp::create(b, scoreGrads[nt][i],
                                                   delta));
        probabilities[nt][i] = e.select(keep, p, e.f32(0.0));
        scoreGrads[nt][i] = e.select(keep, ds, e.f32(0.0));
      }
    }

  // dV += P^T dO and dK += dS^T Q: two query tiles are one k-step of A; the
  // B fragments by ldmatrix.trans (x4: two d-tiles).
  SmallVector<Value> results(accumulators.begin(), accumulators.end());
  int64_t half = dTiles * 4; // [dK tiles..., dV tiles...]
  Value bRow = e.add(lane8, e.mul(e.rem(laneMatrix, e.index(2)), e.index(8)));
  Value bCol = e.mul(e.div(lane, e.index(16)), e.index(8));
  for (int64_t kv = 0; kv < nTiles / 2; ++kv) {
    auto fragment = [&](SmallVector<SmallVector<Value>> &tiles) {
      const SmallVector<Value> &lo = tiles[2 * kv], &hi = tiles[2 * kv + 1];
      return SmallVector<Value>{e.pack(lo[0], lo[1]), e.pack(lo[2], lo[3]),
                                e.pack(hi[0], hi[1]), e.pack(hi[2], hi[3])};
    };
    SmallVector<Value> pFrag = fragment(probabilities);
    SmallVector<Value> dsFrag = fragment(scoreGrads);
    Value queryRow = e.add(e.index(kv * 16), bRow);
    for (int64_t dn = 0; dn < dTiles; dn += 2) {
      Value col = e.add(e.index(dn * 8), bCol);
      // operand 1 (dO) with P into dV, operand 0 (Q) with dS into dK.
      for (int64_t operand : {1, 0}) {
        SmallVector<Value> frag =
            e.ldmatrix(queries, {buffer, e.index(operand), queryRow, col}, 4,
                       /*transpose=*/true);
        const SmallVector<Value> &a = operand == 1 ? pFrag : dsFrag;
        int64_t base = operand == 1 ? half : 0;
        for (int64_t s = 0; s < 2; ++s) {
          auto at = results.begin() + base + (dn + s) * 4;
          SmallVector<Value> acc(at, at + 4);
          llvm::copy(e.mma(a, {frag[2 * s], frag[2 * s + 1]}, acc), at);
        }
      }
    }
  }
  return results;
}

void KeyValueGradCta::emitWrites(ImplicitLocOpBuilder &b,
                                 ValueRange accumulators) {
  KernelBuilder e{b, ops.element()};
  int64_t dTiles = ops.headDim / 8, half = dTiles * 4;
  Value quadRow = e.div(lane, e.index(4));
  Value pairCol = e.mul(e.rem(lane, e.index(4)), e.index(2));
  Value whole = arith::CmpIOp::create(b, arith::CmpIPredicate::eq, splits,
                                      e.index(1));
  // KV head g's slots follow those of the heads before it.
  Value slotsPerHead = e.div(memref::DimOp::create(b, partials, 0),
                             e.index(ops.kvHeads()));
  Value slot = e.add(e.mul(g, slotsPerHead), e.add(firstSlot, split));
  for (int64_t r = 0; r < 2; ++r) {
    Value keyInTile = e.add(e.mul(warp, e.index(16)),
                            e.add(quadRow, e.index(8 * r)));
    Value key = e.add(tileFirst, keyInTile);
    // A part of a split walk: its f32 sums into its slot.
    ifThen(b, arith::AndIOp::create(b, e.ult(key, keyEnd),
                                    arith::XOrIOp::create(
                                        b, whole,
                                        arith::ConstantIntOp::create(b, 1,
                                                                     1))),
           [&](ImplicitLocOpBuilder &ib) {
      KernelBuilder ie{ib, e.element};
      Value keyInBlock = ie.add(tileInBlock, keyInTile);
      for (int64_t dn = 0; dn < dTiles; ++dn) {
        Value col = ie.add(ie.index(dn * 8), pairCol);
        for (int64_t which = 0; which < 2; ++which) {
          int64_t at = which * half + dn * 4 + 2 * r;
          double factor = which == 0 ? ops.scale : 1.0;
          Value pair = vector::FromElementsOp::create(
              ib, VectorType::get({2}, ib.getF32Type()),
              ValueRange{ie.fmul(accumulators[at], ie.f32(factor)),
                         ie.fmul(accumulators[at + 1], ie.f32(factor))});
          vector::StoreOp::create(
              ib, pair, partials,
              ValueRange{slot, keyInBlock, ie.index(which), col})
              .setAlignment(8);
        }
      }
    });
    ifThen(b, arith::AndIOp::create(b, e.ult(key, keyEnd), whole),
           [&](ImplicitLocOpBuilder &ib) {
      KernelBuilder ie{ib, e.element};
      for (int64_t dn = 0; dn < dTiles; ++dn) {
        Value col = ie.add(ie.index(dn * 8), pairCol);
        for (auto [target, base, factor] :
             {std::make_tuple(ops.dk, int64_t(0), ops.scale),
              std::make_tuple(ops.dv, half, 1.0)}) {
          Type stored = cast<MemRefType>(target.getType()).getElementType();
          int64_t at = base + dn * 4 + 2 * r;
          Value pair = vector::FromElementsOp::create(
              ib, VectorType::get({2}, ib.getF32Type()),
              ValueRange{ie.fmul(accumulators[at], ie.f32(factor)),
                         ie.fmul(accumulators[at + 1], ie.f32(factor))});
          if (!stored.isF32())
            pair = arith::TruncFOp::create(ib, VectorType::get({2}, stored),
                                           pair);
          vector::StoreOp::create(ib, pair, target, ValueRange{key, g, col})
              .setAlignment(2 * stored.getIntOrFloatBitWidth() / 8);
        }
      }
    });
  }
}

namespace {

/// Sizes the plan on the host and fills it on the device: one warp per KV
/// head takes the block rows 32 at a time (a lane each): the row's keys,
/// its walk's steps (the groups' sizes over queryChunk, summed over the
/// head's query heads), its parts, and by prefix sums over the lanes its
/// first part and first slot.
SplitPlan emitSplitPlan(ImplicitLocOpBuilder &b, const GradOperands &ops,
                        const KeyValueGradShape &shape) {
  KernelBuilder e{b, ops.element()};
  SplitPlan plan;
  plan.rows = memref::DimOp::create(b, ops.counts, 1);
  // A head's steps: at most (its entries + one partial step a row) per query
  // head; a part holds kStepsPerSplit of them, and a row's parts at most
  // one more than its share, so the head has at most steps / kStepsPerSplit
  // + rows parts and (rows with s > 1 parts holding s <= 2 steps /
  // kStepsPerSplit) 2 steps / kStepsPerSplit slots.
  Value width = memref::DimOp::create(b, ops.entries, 1);
  Value steps = e.mul(e.index(ops.group),
                      e.add(arith::CeilDivUIOp::create(
                                b, width, e.index(shape.queryChunk)),
                            plan.rows));
  int64_t kvHeads = ops.kvHeads();
  // Steps a part: kStepsPerSplit, or more where the slots' bound
  // (2 steps / part + 1 a KV head, blockSize x 2 x head_dim f32 each)
  // would pass kSplitScratchBytes (or, where one slot a KV head passes
  // half of it, two slots).
  int64_t slotBytes = ops.blockSize * 2 * ops.headDim * 4 * kvHeads;
  Value perSplit = arith::MaxUIOp::create(
      b, e.index(kStepsPerSplit),
      arith::CeilDivUIOp::create(
          b, e.mul(e.mul(steps, e.index(2)), e.index(slotBytes)),
          e.index(std::max(kSplitScratchBytes - slotBytes, slotBytes))));
  plan.items = e.add(e.div(steps, perSplit), e.add(plan.rows, e.index(1)));
  plan.slots = e.add(e.div(e.mul(steps, e.index(2)), perSplit), e.index(1));
  auto i32 = b.getI32Type();
  plan.rowPlan = memref::AllocOp::create(
      b, MemRefType::get({kvHeads, ShapedType::kDynamic, 4}, i32),
      ValueRange{plan.rows});
  plan.itemList = memref::AllocOp::create(
      b, MemRefType::get({kvHeads, ShapedType::kDynamic, 2}, i32),
      ValueRange{plan.items});
  plan.partials = memref::AllocOp::create(
      b,
      MemRefType::get({ShapedType::kDynamic, ops.blockSize, 2, ops.headDim},
                      b.getF32Type()),
      ValueRange{e.mul(plan.slots, e.index(kvHeads))});

  nvvm_kernel::launch(
      b, e.index(kvHeads), 32, /*sharedBytes=*/nullptr, /*workgroup=*/{},
      [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp launchOp) {
        KernelBuilder ke{kb, e.element};
        Value g = launchOp.getBlockIds().x, lane = launchOp.getThreadIds().x;
        auto lastLane = [&](KernelBuilder &ie, Value x) {
          return arith::IndexCastOp::create(
              ie.b, ie.b.getIndexType(),
              gpu::ShuffleOp::create(ie.b, x, 31, 32, gpu::ShuffleMode::IDX)
                  .getShuffleResult());
        };
        auto scan = scf::ForOp::create(
            kb, ke.index(0), plan.rows, ke.index(32),
            ValueRange{ke.index(0), ke.index(0)},
            [&](OpBuilder &fb, Location loc, Value chunk, ValueRange c) {
              ImplicitLocOpBuilder ib(loc, fb);
              KernelBuilder ie{ib, e.element};
              Value row = ie.add(chunk, lane);
              Value inside = ie.ult(row, plan.rows);
              Value at = ie.select(inside, row, ie.index(0));
              Value rowSteps = ie.index(0);
              for (int64_t hh = 0; hh < ops.group; ++hh) {
                Value h = ie.add(ie.mul(g, ie.index(ops.group)),
                                 ie.index(hh));
                rowSteps = ie.add(
                    rowSteps, arith::CeilDivUIOp::create(
                                  ib, ie.loadIndex(ops.counts, {h, at}),
                                  ie.index(shape.queryChunk)));
              }
              Value parts = arith::MaxUIOp::create(
                  ib, arith::CeilDivUIOp::create(ib, rowSteps, perSplit),
                  ie.index(1));
              parts = ie.select(inside, parts, ie.index(0));
              Value split = arith::CmpIOp::create(
                  ib, arith::CmpIPredicate::ugt, parts, ie.index(1));
              Value slots = ie.select(split, parts, ie.index(0));
              Value partSum =
                  ie.warpInclusiveSum(nvvm_kernel::toI32(ib, parts));
              Value slotSum =
                  ie.warpInclusiveSum(nvvm_kernel::toI32(ib, slots));
              auto fromI32 = [&](Value x) -> Value {
                return arith::IndexCastOp::create(ib, ib.getIndexType(), x);
              };
              Value firstPart = ie.add(c[0], ie.sub(fromI32(partSum), parts));
              Value firstSlot = ie.add(c[1], ie.sub(fromI32(slotSum), slots));
              ifThen(ib, inside, [&](ImplicitLocOpBuilder &jb) {
                KernelBuilder je{jb, e.element};
                nvvm_kernel::BlockRow keys = nvvm_kernel::locateBlockRow(
                    jb, ops.cu, row, ops.blockSize);
                Value fields[] = {parts, firstSlot, keys.first, keys.end};
                for (auto [f, value] : llvm::enumerate(fields))
                  memref::StoreOp::create(
                      jb, nvvm_kernel::toI32(jb, value), plan.rowPlan,
                      ValueRange{g, row, je.index(static_cast<int64_t>(f))});
                scf::ForOp::create(
                    jb, je.index(0), parts, je.index(1), ValueRange{},
                    [&](OpBuilder &pb, Location ploc, Value part, ValueRange) {
                      ImplicitLocOpBuilder qb(ploc, pb);
                      KernelBuilder qe{qb, e.element};
                      Value item = qe.add(firstPart, part);
                      memref::StoreOp::create(
                          qb, nvvm_kernel::toI32(qb, row), plan.itemList,
                          ValueRange{g, item, qe.index(0)});
                      memref::StoreOp::create(
                          qb, nvvm_kernel::toI32(qb, part), plan.itemList,
                          ValueRange{g, item, qe.index(1)});
                      scf::YieldOp::create(qb);
                    });
              });
              scf::YieldOp::create(
                  ib, ValueRange{ie.add(c[0], lastLane(ie, partSum)),
                                 ie.add(c[1], lastLane(ie, slotSum))});
            });
        // The parts past the head's last: row = rows.
        scf::ForOp::create(
            kb, ke.add(scan.getResult(0), lane), plan.items, ke.index(32),
            ValueRange{}, [&](OpBuilder &fb, Location loc, Value item,
                              ValueRange) {
              ImplicitLocOpBuilder ib(loc, fb);
              KernelBuilder ie{ib, e.element};
              memref::StoreOp::create(ib, nvvm_kernel::toI32(ib, plan.rows),
                                      plan.itemList,
                                      ValueRange{g, item, ie.index(0)});
              scf::YieldOp::create(ib);
            });
      });
  return plan;
}

/// The rows whose walk was split: dK and dV of each key as the sum of its
/// parts' slots in split order, rounded once; four columns a thread.
void emitReduceSplits(ImplicitLocOpBuilder &b, const GradOperands &ops,
                      const SplitPlan &plan) {
  KernelBuilder e{b, ops.element()};
  int64_t quads = ops.headDim / 4;
  Value count = e.mul(e.mul(e.index(ops.kvHeads()), plan.rows),
                      e.index(ops.blockSize * quads));
  nvvm_kernel::launchPerItem(
      b, count, /*threads=*/256, [&](ImplicitLocOpBuilder &kb, Value linear) {
        KernelBuilder ke{kb, e.element};
        Value col = ke.mul(ke.rem(linear, ke.index(quads)), ke.index(4));
        Value rest = ke.div(linear, ke.index(quads));
        Value keyInBlock = ke.rem(rest, ke.index(ops.blockSize));
        rest = ke.div(rest, ke.index(ops.blockSize));
        Value row = ke.rem(rest, plan.rows);
        Value g = ke.div(rest, plan.rows);
        auto field = [&](int64_t f) {
          return ke.loadIndex(plan.rowPlan, {g, row, ke.index(f)});
        };
        Value parts = field(0);
        Value key = ke.add(field(2), keyInBlock);
        Value split = arith::CmpIOp::create(kb, arith::CmpIPredicate::ugt,
                                            parts, ke.index(1));
        ifThen(kb, arith::AndIOp::create(kb, split, ke.ult(key, field(3))),
               [&](ImplicitLocOpBuilder &ib) {
          KernelBuilder ie{ib, e.element};
          Value first = ie.add(ie.mul(g, plan.slots), field(1));
          auto type = VectorType::get({4}, ib.getF32Type());
          for (auto [which, target] :
               llvm::enumerate(SmallVector<Value, 2>{ops.dk, ops.dv})) {
            Value zeros = arith::ConstantOp::create(
                ib, type, DenseElementsAttr::get(type, ib.getF32FloatAttr(0)));
            auto sum = scf::ForOp::create(
                ib, ie.index(0), parts, ie.index(1), ValueRange{zeros},
                [&](OpBuilder &fb, Location loc, Value part, ValueRange acc) {
                  ImplicitLocOpBuilder sb(loc, fb);
                  KernelBuilder se{sb, e.element};
                  auto load = vector::LoadOp::create(
                      sb, type, plan.partials,
                      ValueRange{se.add(first, part), keyInBlock,
                                 se.index(static_cast<int64_t>(which)), col});
                  load.setAlignment(16);
                  scf::YieldOp::create(
                      sb, ValueRange{arith::AddFOp::create(sb, acc[0], load)});
                });
            Type stored = cast<MemRefType>(target.getType()).getElementType();
            Value result = sum.getResult(0);
            if (!stored.isF32())
              result = arith::TruncFOp::create(
                  ib, VectorType::get({4}, stored), result);
            vector::StoreOp::create(ib, result, target,
                                    ValueRange{key, g, col})
                .setAlignment(4 * stored.getIntOrFloatBitWidth() / 8);
          }
        });
      });
}

} // namespace

void mlir::moba::grouped_attention_grad::emitKeyValueGrad(
    ImplicitLocOpBuilder &b, const GradOperands &ops,
    const KeyValueGradShape &shape) {
  KernelBuilder e{b, ops.element()};
  SplitPlan plan = emitSplitPlan(b, ops, shape);
  int64_t tilesPerRow = llvm::divideCeil(ops.blockSize, shape.keys());
  // CTA (g, part, tile), tile-major within a part; parts past a head's
  // last find row = rows and return.
  Value perHead = e.mul(plan.items, e.index(tilesPerRow));
  Value ctas = e.mul(perHead, e.index(ops.kvHeads()));
  int64_t bytes = ops.element().getIntOrFloatBitWidth() / 8;
  int64_t sharedBytes = shape.sharedBytes(ops.headDim, bytes, ops.group);
  nvvm_kernel::launch(
      b, ctas, shape.threads(), e.i32(sharedBytes), /*workgroup=*/{},
      [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp launchOp) {
        KernelBuilder ke{kb, e.element};
        KeyValueGradCta cta{ops, shape};
        cta.partials = plan.partials;
        Value id = launchOp.getBlockIds().x;
        cta.tid = launchOp.getThreadIds().x;
        cta.warp = ke.div(cta.tid, ke.index(32));
        cta.lane = ke.rem(cta.tid, ke.index(32));
        cta.g = ke.div(id, perHead);
        Value rest = ke.rem(id, perHead);
        Value item = ke.div(rest, ke.index(tilesPerRow));
        Value tile = ke.rem(rest, ke.index(tilesPerRow));
        cta.row = ke.loadIndex(plan.itemList, {cta.g, item, ke.index(0)});
        // Every thread takes the same branches: the barriers inside are
        // reached by all.
        ifThen(kb, ke.ult(cta.row, plan.rows), [&](ImplicitLocOpBuilder &ib) {
          KernelBuilder ie{ib, e.element};
          auto field = [&](int64_t f) {
            return ie.loadIndex(plan.rowPlan, {cta.g, cta.row, ie.index(f)});
          };
          cta.split = ie.loadIndex(plan.itemList, {cta.g, item, ie.index(1)});
          cta.splits = field(0);
          cta.firstSlot = field(1);
          cta.tileInBlock = ie.mul(tile, ie.index(shape.keys()));
          cta.tileFirst = ie.add(field(2), cta.tileInBlock);
          cta.keyEnd = field(3);
          ifThen(ib, ie.ult(cta.tileFirst, cta.keyEnd),
                 [&](ImplicitLocOpBuilder &cb) {
            KernelBuilder ce{cb, e.element};
            Value shared = gpu::DynamicSharedMemoryOp::create(
                cb, MemRefType::get({ShapedType::kDynamic}, cb.getI8Type(),
                                    MemRefLayoutAttrInterface(),
                                    gpu::AddressSpaceAttr::get(
                                        cb.getContext(),
                                        gpu::AddressSpace::Workgroup)));
            cta.emitViews(cb, shared);
            cta.emitKeyValueCopies(cb);
            cta.emitHeadTable(cb);
            gpu::BarrierOp::create(cb);
            // This part's steps of the tile's walk: the walk cut into
            // `splits` runs of equal length.
            Value total = cta.emitTotalChunks(cb);
            Value length = arith::CeilDivUIOp::create(cb, total, cta.splits);
            Value first = ce.minU(ce.mul(cta.split, length), total);
            Value end = ce.minU(ce.add(first, length), total);
            // The first step's queries join the keys' copies in the first
            // group; then one barrier a step publishes its copies and frees
            // the buffer of the step before, which the next step's copies
            // refill during this one.
            ifThen(cb, ce.ult(first, end), [&](ImplicitLocOpBuilder &sb) {
              KernelBuilder se{sb, e.element};
              cta.emitQueryCopies(sb, first, se.rem(first, se.index(2)));
            });
            NVVM::CpAsyncCommitGroupOp::create(cb);
            SmallVector<Value> inits(ops.headDim, ce.f32(0.0));
            auto walk = scf::ForOp::create(
                cb, first, end, ce.index(1), inits,
                [&](OpBuilder &fb, Location loc, Value step, ValueRange acc) {
                  ImplicitLocOpBuilder lb(loc, fb);
                  KernelBuilder le{lb, e.element};
                  NVVM::CpAsyncWaitGroupOp::create(lb, 0);
                  gpu::BarrierOp::create(lb);
                  Value next = le.add(step, le.index(1));
                  ifThen(lb, le.ult(next, end),
                         [&](ImplicitLocOpBuilder &sb) {
                           KernelBuilder se{sb, e.element};
                           cta.emitQueryCopies(sb, next,
                                               se.rem(next, se.index(2)));
                         });
                  NVVM::CpAsyncCommitGroupOp::create(lb);
                  scf::YieldOp::create(
                      lb, cta.emitStep(lb, le.rem(step, le.index(2)), acc));
                });
            NVVM::CpAsyncWaitGroupOp::create(cb, 0);
            cta.emitWrites(cb, walk.getResults());
          });
        });
      });
  emitReduceSplits(b, ops, plan);
  for (Value buffer : {plan.rowPlan, plan.itemList, plan.partials})
    memref::DeallocOp::create(b, buffer);
}
