//===- GroupQueriesToNVVM.cpp - The query grouping on warps ---------------===//
//
// Part of moba-mlir. Implements `moba-convert-group-queries-to-nvvm`:
// moba.group_queries on buffers becomes three GPU launches, a stable
// counting sort of the selection slots by (head, block row).
//
// The tokens are cut into chunks of C consecutive tokens, and one warp takes
// one (head, chunk). It walks the chunk 32 / K tokens a step, lane l holding
// slot l % K of token l / K. A slot attends when its block exists in the
// token's sequence and no lower slot of its token holds the same block;
// nvvm.match.sync finds the lanes of equal block rows, so the lanes that
// share an attending row in one step are distinct tokens, in token order.
// The row's lowest lane makes one atomic add of their number for all of
// them (a warp-aggregated atomic), and lane i of the row takes the old value
// plus the row's lanes below it. A scratch buffer `cursors[h, row, chunk]`
// (i32) links three passes:
//
//  * count: each warp zeroes its (h, :, chunk) column, then adds every
//    attending slot to its cursor;
//  * scan: one CTA per head turns its cursors, read row by row and chunk by
//    chunk, into their exclusive prefix sums in place: cursors[h, r, c]
//    becomes where chunk c's entries of row r begin in entries[h, :], i.e.
//    starts[h, r] plus the earlier chunks' share of the row. It then writes
//    starts (cursors[h, r, 0]), counts (the next row's start minus this
//    one's) and -1 into every entry past the head's last;
//  * place: each warp walks its chunk again and writes slot s of token t
//    as t * K + s where its row's atomic and its rank among the row's lanes
//    say. A warp barrier after each step orders the steps' atomics, so
//    within a (row, chunk) the entries come out in token order, and the
//    chunks of a row follow in chunk order: entries ordered by token, then
//    slot, exactly as the op says.
//
// The generic parallel lowering (moba-lower-to-loops) sorts each chunk
// into a local list with one thread per (head, chunk) and copies the lists
// out in six launches: its threads' reads of the selection lie 64 tokens
// apart and each slot costs a read-modify-write of a cursor in device
// memory (0.34 ms at 32K tokens, block 512, top-3; 4.1 ms at 128K, block
// 4096, top-8; here 0.13 and 0.96 ms, docs/PERFORMANCE.md).
//
// C grows with the block rows (64 tokens per 128 rows) so that the cursors
// stay about as large as the entries, however small the blocks.
//
//===----------------------------------------------------------------------===//

#include "KernelBuilder/KernelBuilder.h"

#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/IR/PatternMatch.h"

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTGROUPQUERIESTONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;
using nvvm_kernel::KernelBuilder;
using nvvm_kernel::launch;
using nvvm_kernel::locateSequence;
using nvvm_kernel::toI32;
using nvvm_kernel::TokenSequence;

namespace {

/// Warps per CTA of the count and place kernels.
constexpr int64_t kWarpsPerCta = 4;
/// Tokens a warp walks per 128 block rows (at least this many).
constexpr int64_t kChunkTokens = 64;
constexpr int64_t kRowsPerChunkStep = 128;
/// Threads of the scan's CTA, and the elements each takes per tile.
constexpr int64_t kScanThreads = 512;
constexpr int64_t kScanPerThread = 4;

struct GroupingKernels {
  Value selected, cu, starts, counts, entries;
  int64_t heads, k, blockSize;
  /// Host values.
  Value tokens, rows, width, chunkTokens, chunks, cursors;

  void emit(ImplicitLocOpBuilder &b);

private:
  /// The count (`place` false) or place (true) kernel.
  void emitSlotWalk(ImplicitLocOpBuilder &b, bool place);
  void emitScan(ImplicitLocOpBuilder &b);
};

void GroupingKernels::emit(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, b.getI32Type()};
  tokens = memref::DimOp::create(b, selected, 0);
  rows = memref::DimOp::create(b, counts, 1);
  width = memref::DimOp::create(b, entries, 1);
  Value steps = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, rows, e.index(kRowsPerChunkStep)),
      e.index(1));
  chunkTokens = e.mul(steps, e.index(kChunkTokens));
  chunks = arith::CeilDivUIOp::create(b, tokens, chunkTokens);
  auto cursorType = MemRefType::get(
      {heads, ShapedType::kDynamic, ShapedType::kDynamic}, b.getI32Type());
  cursors = memref::AllocOp::create(b, cursorType, ValueRange{rows, chunks});
  emitSlotWalk(b, /*place=*/false);
  emitScan(b);
  emitSlotWalk(b, /*place=*/true);
  memref::DeallocOp::create(b, cursors);
}

void GroupingKernels::emitSlotWalk(ImplicitLocOpBuilder &b, bool place) {
  KernelBuilder e{b, b.getI32Type()};
  Value items = e.mul(e.index(heads), chunks);
  Value ctas = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, items, e.index(kWarpsPerCta)),
      e.index(1));
  // Tokens a step: lane l holds slot l % K of token l / K.
  int64_t perStep = 32 / k;
  launch(b, ctas, 32 * kWarpsPerCta, /*sharedBytes=*/nullptr,
         /*workgroup=*/{}, [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
    KernelBuilder ke{kb, kb.getI32Type()};
    Value tid = op.getThreadIds().x;
    Value lane = ke.rem(tid, ke.index(32));
    Value item = ke.add(ke.mul(op.getBlockIds().x, ke.index(kWarpsPerCta)),
                        ke.div(tid, ke.index(32)));
    // Warp-uniform: the whole warp takes the branch or skips it.
    auto inRange = scf::IfOp::create(kb, ke.ult(item, items), false);
    OpBuilder::InsertionGuard guard(kb);
    kb.setInsertionPointToStart(&inRange.getThenRegion().front());
    Value h = ke.div(item, chunks), chunk = ke.rem(item, chunks);
    Value allLanes = ke.i32(-1);
    if (!place) {
      scf::ForOp::create(
          kb, lane, rows, ke.index(32), ValueRange{},
          [&](OpBuilder &fb, Location loc, Value r, ValueRange) {
            ImplicitLocOpBuilder zb(loc, fb);
            KernelBuilder ze{zb, zb.getI32Type()};
            memref::StoreOp::create(zb, ze.i32(0), cursors,
                                    ValueRange{h, r, chunk});
            scf::YieldOp::create(zb);
          });
      NVVM::SyncWarpOp::create(kb, allLanes);
    }
    Value first = ke.mul(chunk, chunkTokens);
    Value last = ke.minU(ke.add(first, chunkTokens), tokens);
    Value laneI32 = toI32(kb, lane);
    auto bit = [&](ImplicitLocOpBuilder &ib, Value position) {
      return arith::ShLIOp::create(ib, KernelBuilder{ib, ib.getI32Type()}
                                           .i32(1), position);
    };
    // The lanes below this one, and those of its token.
    Value below = ke.sub(bit(kb, laneI32), ke.i32(1));
    Value sub = ke.div(lane, ke.index(k));
    Value slot = ke.rem(lane, ke.index(k));
    Value ofToken = arith::ShLIOp::create(
        kb, ke.i32((int64_t(1) << k) - 1), toI32(kb, ke.mul(sub, ke.index(k))));
    Value holdsSlot = ke.ult(sub, ke.index(perStep));
    // Where a lane does not attend, a distinct negative value keeps
    // match.sync from pairing it with anything.
    Value unmatched = ke.sub(ke.i32(-1), laneI32);
    auto popc = [&](ImplicitLocOpBuilder &ib, Value x) -> Value {
      return LLVM::CtPopOp::create(ib, x);
    };
    TokenSequence seq0 =
        locateSequence(kb, cu, ke.add(first, sub), blockSize);
    Value steps = arith::CeilDivUIOp::create(kb, ke.sub(last, first),
                                             ke.index(perStep));
    scf::ForOp::create(
        kb, ke.index(0), steps, ke.index(1),
        ValueRange{seq0.start, seq0.end, seq0.blockOffset},
        [&](OpBuilder &fb, Location loc, Value step, ValueRange c) {
          ImplicitLocOpBuilder tb(loc, fb);
          KernelBuilder te{tb, tb.getI32Type()};
          Value t = te.add(first, te.add(te.mul(step, te.index(perStep)), sub));
          Value active = arith::AndIOp::create(tb, holdsSlot, te.ult(t, last));
          // A new sequence begins only at its start: re-scan then (this
          // lane alone).
          Value crossed = arith::AndIOp::create(
              tb, active,
              arith::OrIOp::create(tb, te.ule(c[1], t), te.ult(t, c[0])));
          auto moved = scf::IfOp::create(
              tb, TypeRange{tb.getIndexType(), tb.getIndexType(),
                            tb.getIndexType()},
              crossed, /*withElseRegion=*/true);
          {
            OpBuilder::InsertionGuard ifGuard(tb);
            tb.setInsertionPointToStart(&moved.getThenRegion().front());
            TokenSequence found = locateSequence(tb, cu, t, blockSize);
            scf::YieldOp::create(
                tb, ValueRange{found.start, found.end, found.blockOffset});
            tb.setInsertionPointToStart(&moved.getElseRegion().front());
            scf::YieldOp::create(tb, c);
          }
          Value start = moved.getResult(0), end = moved.getResult(1);
          Value blockOffset = moved.getResult(2);
          Value numBlocks = arith::CeilDivUIOp::create(
              tb, te.sub(end, start), te.index(blockSize));
          auto read = scf::IfOp::create(tb, TypeRange{tb.getI32Type()}, active,
                                        /*withElseRegion=*/true);
          {
            OpBuilder::InsertionGuard ifGuard(tb);
            tb.setInsertionPointToStart(&read.getThenRegion().front());
            scf::YieldOp::create(
                tb, memref::LoadOp::create(tb, selected,
                                           ValueRange{t, h, slot})
                        .getResult());
            tb.setInsertionPointToStart(&read.getElseRegion().front());
            scf::YieldOp::create(tb, te.i32(-1));
          }
          Value block = read.getResult(0);
          Value valid = arith::AndIOp::create(
              tb, active,
              arith::AndIOp::create(
                  tb,
                  arith::CmpIOp::create(tb, arith::CmpIPredicate::sge, block,
                                        te.i32(0)),
                  arith::CmpIOp::create(tb, arith::CmpIPredicate::slt, block,
                                        toI32(tb, numBlocks))));
          Value row = te.add(blockOffset, arith::IndexCastOp::create(
                                              tb, tb.getIndexType(), block));
          auto matching = [&](Value taken) -> Value {
            return NVVM::MatchSyncOp::create(
                tb, tb.getI32Type(), allLanes,
                te.select(taken, toI32(tb, row), unmatched),
                NVVM::MatchSyncKind::any);
          };
          // A slot attends unless a lower slot of its token holds its
          // block. The tokens of a step are distinct, so the lanes that
          // share an attending row are distinct tokens, in token order.
          Value repeated = arith::AndIOp::create(
              tb, matching(valid), arith::AndIOp::create(tb, ofToken, below));
          Value attends = arith::AndIOp::create(
              tb, valid,
              arith::CmpIOp::create(tb, arith::CmpIPredicate::eq, repeated,
                                    te.i32(0)));
          // One atomic per row and step, by the row's lowest lane, for
          // all its lanes; a lane's place is the old cursor plus the
          // lanes of its row below it.
          Value peers = matching(attends);
          Value leader = LLVM::CountTrailingZerosOp::create(tb, peers, false);
          Value isLeader = arith::AndIOp::create(
              tb, attends,
              arith::CmpIOp::create(tb, arith::CmpIPredicate::eq, leader,
                                    laneI32));
          auto bump = scf::IfOp::create(tb, TypeRange{tb.getI32Type()},
                                        isLeader, /*withElseRegion=*/true);
          {
            OpBuilder::InsertionGuard ifGuard(tb);
            tb.setInsertionPointToStart(&bump.getThenRegion().front());
            Value old = memref::AtomicRMWOp::create(
                tb, arith::AtomicRMWKind::addi, popc(tb, peers), cursors,
                ValueRange{h, row, chunk});
            scf::YieldOp::create(tb, old);
            tb.setInsertionPointToStart(&bump.getElseRegion().front());
            scf::YieldOp::create(tb, te.i32(0));
          }
          if (place) {
            Value old = gpu::ShuffleOp::create(tb, bump.getResult(0),
                                               te.select(attends, leader,
                                                         laneI32),
                                               te.i32(32),
                                               gpu::ShuffleMode::IDX)
                            .getShuffleResult();
            auto write = scf::IfOp::create(tb, attends, false);
            OpBuilder::InsertionGuard ifGuard(tb);
            tb.setInsertionPointToStart(&write.getThenRegion().front());
            Value at = te.add(old, popc(tb, arith::AndIOp::create(tb, peers,
                                                                  below)));
            Value entry = toI32(tb, te.add(te.mul(t, te.index(k)), slot));
            memref::StoreOp::create(
                tb, entry, entries,
                ValueRange{h, arith::IndexCastOp::create(
                                  tb, tb.getIndexType(), at)});
          }
          // The next step's increments follow this one's.
          if (place)
            NVVM::SyncWarpOp::create(tb, allLanes);
          scf::YieldOp::create(tb, ValueRange{start, end, blockOffset});
        });
  });
}

void GroupingKernels::emitScan(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, b.getI32Type()};
  constexpr int64_t warps = kScanThreads / 32;
  constexpr int64_t tile = kScanThreads * kScanPerThread;
  // [0, warps): the warps' exclusive offsets in the tile; [32]: the tile's
  // total.
  auto totalsType = MemRefType::get(
      {33}, b.getI32Type(), MemRefLayoutAttrInterface(),
      gpu::AddressSpaceAttr::get(b.getContext(),
                                 gpu::AddressSpace::Workgroup));
  launch(b, e.index(heads), kScanThreads, /*sharedBytes=*/nullptr,
         TypeRange{totalsType},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
    KernelBuilder ke{kb, kb.getI32Type()};
    Value totals = op.getWorkgroupAttributions()[0];
    Value h = op.getBlockIds().x, tid = op.getThreadIds().x;
    Value warp = ke.div(tid, ke.index(32)), lane = ke.rem(tid, ke.index(32));
    Value length = ke.mul(rows, chunks);
    Value zero = ke.i32(0);
    auto warpScan = [&](ImplicitLocOpBuilder &sb, Value x) {
      return KernelBuilder{sb, sb.getI32Type()}.warpInclusiveSum(x);
    };
    auto at = [&](ImplicitLocOpBuilder &ib, Value flat) {
      KernelBuilder ie{ib, ib.getI32Type()};
      return SmallVector<Value>{h, ie.div(flat, chunks),
                                ie.rem(flat, chunks)};
    };
    auto tiles = scf::ForOp::create(
        kb, ke.index(0), length, ke.index(tile), ValueRange{zero},
        [&](OpBuilder &fb, Location loc, Value base, ValueRange c) {
          ImplicitLocOpBuilder ib(loc, fb);
          KernelBuilder ie{ib, ib.getI32Type()};
          Value own = ie.add(base, ie.mul(tid, ie.index(kScanPerThread)));
          SmallVector<Value> flat, inside, values;
          for (int64_t i = 0; i < kScanPerThread; ++i) {
            flat.push_back(ie.add(own, ie.index(i)));
            inside.push_back(ie.ult(flat.back(), length));
            auto read = scf::IfOp::create(ib, TypeRange{ib.getI32Type()},
                                          inside.back(), true);
            OpBuilder::InsertionGuard guard(ib);
            ib.setInsertionPointToStart(&read.getThenRegion().front());
            scf::YieldOp::create(
                ib, memref::LoadOp::create(ib, cursors, at(ib, flat.back()))
                        .getResult());
            ib.setInsertionPointToStart(&read.getElseRegion().front());
            scf::YieldOp::create(ib, zero);
            values.push_back(read.getResult(0));
          }
          // The thread's own exclusive sums, then the warp's, then the
          // CTA's (warp 0 scans the warps' totals).
          SmallVector<Value> before = {zero};
          for (int64_t i = 1; i < kScanPerThread; ++i)
            before.push_back(ie.add(before.back(), values[i - 1]));
          Value sum = ie.add(before.back(), values.back());
          Value inclusive = warpScan(ib, sum);
          auto lastLane = scf::IfOp::create(
              ib, ie.ult(ie.index(30), lane), false);
          {
            OpBuilder::InsertionGuard guard(ib);
            ib.setInsertionPointToStart(&lastLane.getThenRegion().front());
            memref::StoreOp::create(ib, inclusive, totals, ValueRange{warp});
          }
          gpu::BarrierOp::create(ib);
          auto firstWarp =
              scf::IfOp::create(ib, ie.ult(warp, ie.index(1)), false);
          {
            OpBuilder::InsertionGuard guard(ib);
            ib.setInsertionPointToStart(&firstWarp.getThenRegion().front());
            KernelBuilder we{ib, ib.getI32Type()};
            Value mine = we.ult(lane, we.index(warps));
            auto read = scf::IfOp::create(ib, TypeRange{ib.getI32Type()},
                                          mine, true);
            {
              OpBuilder::InsertionGuard readGuard(ib);
              ib.setInsertionPointToStart(&read.getThenRegion().front());
              scf::YieldOp::create(
                  ib, memref::LoadOp::create(ib, totals, ValueRange{lane})
                          .getResult());
              ib.setInsertionPointToStart(&read.getElseRegion().front());
              scf::YieldOp::create(ib, zero);
            }
            Value warpTotal = read.getResult(0);
            Value scanned = warpScan(ib, warpTotal);
            auto write = scf::IfOp::create(ib, mine, false);
            {
              OpBuilder::InsertionGuard writeGuard(ib);
              ib.setInsertionPointToStart(&write.getThenRegion().front());
              memref::StoreOp::create(ib, we.sub(scanned, warpTotal), totals,
                                      ValueRange{lane});
            }
            auto tileTotal =
                scf::IfOp::create(ib, we.ult(we.index(30), lane), false);
            {
              OpBuilder::InsertionGuard totalGuard(ib);
              ib.setInsertionPointToStart(&tileTotal.getThenRegion().front());
              memref::StoreOp::create(ib, scanned, totals,
                                      ValueRange{we.index(32)});
            }
          }
          gpu::BarrierOp::create(ib);
          Value offset = ie.add(
              ie.add(c[0], memref::LoadOp::create(ib, totals,
                                                  ValueRange{warp})),
              ie.sub(inclusive, sum));
          for (int64_t i = 0; i < kScanPerThread; ++i) {
            auto write = scf::IfOp::create(ib, inside[i], false);
            OpBuilder::InsertionGuard guard(ib);
            ib.setInsertionPointToStart(&write.getThenRegion().front());
            memref::StoreOp::create(ib, ie.add(offset, before[i]), cursors,
                                    at(ib, flat[i]));
          }
          Value next = ie.add(
              c[0], memref::LoadOp::create(ib, totals,
                                           ValueRange{ie.index(32)}));
          // Every thread has read the totals before the next tile's
          // overwrite them.
          gpu::BarrierOp::create(ib);
          scf::YieldOp::create(ib, next);
        });
    Value total = tiles.getResult(0);
    // The cursors every thread wrote are visible to the CTA after a
    // barrier (the loop's last, or none when there was no tile).
    gpu::BarrierOp::create(kb);
    auto startOf = [&](ImplicitLocOpBuilder &rb, Value r) -> Value {
      KernelBuilder re{rb, rb.getI32Type()};
      auto any = scf::IfOp::create(
          rb, TypeRange{rb.getI32Type()},
          arith::AndIOp::create(rb, re.ult(r, rows),
                                re.ult(re.index(0), chunks)),
          true);
      OpBuilder::InsertionGuard guard(rb);
      rb.setInsertionPointToStart(&any.getThenRegion().front());
      scf::YieldOp::create(
          rb, memref::LoadOp::create(rb, cursors,
                                     ValueRange{h, r, re.index(0)})
                  .getResult());
      rb.setInsertionPointToStart(&any.getElseRegion().front());
      // Past the last row every entry has been placed; with no chunks
      // there are none.
      scf::YieldOp::create(rb, total);
      return any.getResult(0);
    };
    scf::ForOp::create(
        kb, tid, rows, ke.index(kScanThreads), ValueRange{},
        [&](OpBuilder &fb, Location loc, Value r, ValueRange) {
          ImplicitLocOpBuilder rb(loc, fb);
          KernelBuilder re{rb, rb.getI32Type()};
          Value start = startOf(rb, r);
          Value next = startOf(rb, re.add(r, re.index(1)));
          memref::StoreOp::create(rb, start, starts, ValueRange{h, r});
          memref::StoreOp::create(rb, re.sub(next, start), counts,
                                  ValueRange{h, r});
          scf::YieldOp::create(rb);
        });
    Value placed = arith::IndexCastOp::create(kb, kb.getIndexType(), total);
    scf::ForOp::create(
        kb, ke.add(placed, tid), width, ke.index(kScanThreads), ValueRange{},
        [&](OpBuilder &fb, Location loc, Value i, ValueRange) {
          ImplicitLocOpBuilder rb(loc, fb);
          KernelBuilder re{rb, rb.getI32Type()};
          memref::StoreOp::create(rb, re.i32(-1), entries, ValueRange{h, i});
          scf::YieldOp::create(rb);
        });
  });
}

struct MobaConvertGroupQueriesToNVVMPass
    : public moba::impl::MobaConvertGroupQueriesToNVVMBase<
          MobaConvertGroupQueriesToNVVMPass> {
  void runOnOperation() override {
    SmallVector<GroupQueriesOp> ops;
    getOperation()->walk([&](GroupQueriesOp op) {
      if (isa<MemRefType>(op.getSelected().getType()))
        ops.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (GroupQueriesOp op : ops) {
      auto selType = cast<MemRefType>(op.getSelected().getType());
      if (!op.isWarpCompatible() || selType.isDynamicDim(1)) {
        op.emitOpError()
            << "has no warp lowering: it needs static query heads and a "
               "static K of at most "
            << GroupQueriesOp::kMaxWarpSlots << ", got " << selType;
        return signalPassFailure();
      }
      rewriter.setInsertionPoint(op);
      ImplicitLocOpBuilder b(op.getLoc(), rewriter);
      // The host values (tokens, rows, ...) are set by emit().
      GroupingKernels kernels{op.getSelected(),
                              op.getCuSeqlens(),
                              op.getStartsInit(),
                              op.getCountsInit(),
                              op.getEntriesInit(),
                              selType.getDimSize(1),
                              selType.getDimSize(2),
                              static_cast<int64_t>(op.getBlockSize())};
      kernels.emit(b);
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
