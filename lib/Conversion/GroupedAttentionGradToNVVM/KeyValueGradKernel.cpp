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
  for (int64_t r = 0; r < 2; ++r) {
    Value key = e.add(tileFirst, e.add(e.mul(warp, e.index(16)),
                                       e.add(quadRow, e.index(8 * r))));
    ifThen(b, e.ult(key, keyEnd), [&](ImplicitLocOpBuilder &ib) {
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

void mlir::moba::grouped_attention_grad::emitKeyValueGrad(
    ImplicitLocOpBuilder &b, const GradOperands &ops,
    const KeyValueGradShape &shape) {
  KernelBuilder e{b, ops.element()};
  Value rows = memref::DimOp::create(b, ops.counts, 1);
  int64_t tilesPerRow = llvm::divideCeil(ops.blockSize, shape.keys());
  // CTA (g, row, tile), tile-major within a row; one CTA even with no rows
  // (a launch needs one), which then finds none.
  Value perHead = e.mul(rows, e.index(tilesPerRow));
  Value used = e.mul(perHead, e.index(ops.kvHeads()));
  Value ctas = arith::MaxUIOp::create(b, used, e.index(1));
  Value divisor = arith::MaxUIOp::create(b, perHead, e.index(1));
  int64_t bytes = ops.element().getIntOrFloatBitWidth() / 8;
  int64_t sharedBytes = shape.sharedBytes(ops.headDim, bytes, ops.group);
  nvvm_kernel::launch(
      b, ctas, shape.threads(), e.i32(sharedBytes), /*workgroup=*/{},
      [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp launchOp) {
        KernelBuilder ke{kb, e.element};
        KeyValueGradCta cta{ops, shape};
        Value id = launchOp.getBlockIds().x;
        cta.tid = launchOp.getThreadIds().x;
        cta.warp = ke.div(cta.tid, ke.index(32));
        cta.lane = ke.rem(cta.tid, ke.index(32));
        cta.g = ke.div(id, divisor);
        Value rest = ke.rem(id, divisor);
        cta.row = ke.div(rest, ke.index(tilesPerRow));
        Value tile = ke.rem(rest, ke.index(tilesPerRow));
        // Every thread takes the same branches: the barriers inside are
        // reached by all.
        ifThen(kb, ke.ult(id, used), [&](ImplicitLocOpBuilder &ib) {
          KernelBuilder ie{ib, e.element};
          nvvm_kernel::BlockRow keys = nvvm_kernel::locateBlockRow(
              ib, ops.cu, cta.row, ops.blockSize);
          cta.tileFirst = ie.add(keys.first,
                                 ie.mul(tile, ie.index(shape.keys())));
          cta.keyEnd = keys.end;
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
            Value total = cta.emitTotalChunks(cb);
            // Step 0's queries join the keys' copies in the first group;
            // then one barrier a step publishes its copies and frees the
            // buffer of the step before, which the next step's copies
            // refill during this one.
            ifThen(cb, ce.ult(ce.index(0), total),
                   [&](ImplicitLocOpBuilder &sb) {
                     cta.emitQueryCopies(sb, ce.index(0), ce.index(0));
                   });
            NVVM::CpAsyncCommitGroupOp::create(cb);
            SmallVector<Value> inits(ops.headDim, ce.f32(0.0));
            auto walk = scf::ForOp::create(
                cb, ce.index(0), total, ce.index(1), inits,
                [&](OpBuilder &fb, Location loc, Value step, ValueRange acc) {
                  ImplicitLocOpBuilder lb(loc, fb);
                  KernelBuilder le{lb, e.element};
                  NVVM::CpAsyncWaitGroupOp::create(lb, 0);
                  gpu::BarrierOp::create(lb);
                  Value next = le.add(step, le.index(1));
                  ifThen(lb, le.ult(next, total),
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
}
