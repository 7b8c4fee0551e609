//===- PersistentCta.cpp - CTAs that walk the tile list -------------------===//
//
// Part of moba-mlir. The frame of the grouped attention kernel's persistent
// schedule (KernelSchedule::Persistent): the warp-specialized CTA of
// WgmmaChunkLoop.cpp, launched once per SM slot instead of once per tile.
//
// Each CTA takes tiles cta, cta + grid, cta + 2 grid, ... of the tile list
// (all heads' tiles in a row, unused ones skipped). Its producer's thread
// and its consumers walk the same tiles, each computing a tile's keys and
// chunk count on its own, and never meet at a barrier: the ring of K/V
// slots runs on across tiles (a tile's chunk c is the ring's chunk
// ringBase + c, ringBase the chunks of the CTA's earlier tiles), so the
// producer copies the next tile's first chunks as soon as the consumers
// release their slots, while they still multiply the current tile's last
// chunks and write its rows. The producer's other warps gather each
// tile's queries (rows of q picked by the entries: no tensor map describes
// them) into one of two buffers, on mbarriers of their own, as far as two
// tiles ahead. A CTA of one tile per launch waits for its first chunk's
// copy and its queries at every tile; this one finds both there.
//
// The ring's slots now pass from tile to tile: the V rows past a tile's
// last key, which its consumers zero with generic stores
// (WgmmaTile::zeroPastLastKey), are overwritten by the next tile's TMA copy
// (the async proxy). The consumers' fence.proxy.async after the zeroing
// (which wgmma's reads of them need anyway), their release arrival and the
// producer's wait order the two.
//
// Without a CTA-wide reduction (the producer is not there to take part),
// a tile's first and last token are its first and last entries: the
// entries of a block row are in token order (moba.group_queries'
// contract, which the multicast pairs rely on too).
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"
#include "TmaLoader.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;
using nvvm_kernel::ifThen;

void AttentionKernel::emitPersistentCta(ImplicitLocOpBuilder &b,
                                        gpu::LaunchOp launch, Value tiles,
                                        Value tilesPerHead, Value rows,
                                        Value tileList) {
  KernelBuilder e{b, element()};
  CtaTile frame = ctaFrame(b, launch);
  // Thread 0 initializes the ring's and the query buffers' barriers, once
  // for all the CTA's tiles; the CTA barrier publishes them, and is the
  // last that all threads reach.
  {
    TmaLoader loader(*this, b, frame);
    ifThen(b,
           arith::CmpIOp::create(b, arith::CmpIPredicate::eq, frame.tid,
                                 e.index(0)),
           [&](ImplicitLocOpBuilder &ib) { loader.initialize(ib); });
  }
  gpu::BarrierOp::create(b);

  Value cta = launch.getBlockIds().x;
  Value grid = launch.getGridSize().x;
  // `work` on each of the CTA's tiles that exists, with its keys, chunks,
  // ringBase and query buffer read; the walk carries the ring's chunks and
  // the tiles taken.
  auto walkTiles = [&](ImplicitLocOpBuilder &wb, bool laneRows,
                       function_ref<void(ImplicitLocOpBuilder &, CtaTile &)>
                           work) {
    KernelBuilder we{wb, e.element};
    scf::ForOp::create(
        wb, cta, tiles, grid, ValueRange{we.index(0), we.index(0)},
        [&](OpBuilder &fb, Location loc, Value tile, ValueRange carried) {
          ImplicitLocOpBuilder lb(loc, fb);
          KernelBuilder le{lb, e.element};
          CtaTile t = frame;
          t.h = le.div(tile, tilesPerHead);
          Value tileOfHead = le.rem(tile, tilesPerHead);
          Value row = le.loadIndex(tileList, {t.h, tileOfHead, le.index(0)});
          auto exists = scf::IfOp::create(
              lb, TypeRange{lb.getIndexType(), lb.getIndexType()},
              le.ult(row, rows), /*withElseRegion=*/true);
          {
            OpBuilder::InsertionGuard guard(lb);
            lb.setInsertionPointToStart(&exists.getThenRegion().front());
            Value keyLast = readTileKeys(lb, t, tileOfHead, row, tileList);
            if (causal) {
              auto tokenAt = [&](Value at) {
                return le.div(le.loadIndex(entries, {t.h, at}),
                              le.index(slotsPerToken));
              };
              Value lastEntry = le.sub(le.add(t.first, t.valid), le.index(1));
              boundChunks(lb, t, keyLast, tokenAt(lastEntry),
                          tokenAt(t.first));
            } else {
              boundChunks(lb, t, keyLast, Value(), Value());
            }
            if (laneRows)
              readLaneRows(lb, t);
            t.ringBase = carried[0];
            t.queryBuffer = le.rem(carried[1], le.index(2));
            t.queryFill = le.div(carried[1], le.index(2));
            work(lb, t);
            scf::YieldOp::create(lb, ValueRange{le.add(carried[0], t.chunks),
                                                le.add(carried[1],
                                                       le.index(1))});
            lb.setInsertionPointToStart(&exists.getElseRegion().front());
            scf::YieldOp::create(lb, carried);
          }
          scf::YieldOp::create(lb, exists.getResults());
        });
  };

  auto roles = scf::IfOp::create(
      b, e.ult(frame.tid, e.index(shape.consumerThreads())),
      /*withElseRegion=*/true);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&roles.getThenRegion().front());
  moveRegisters(b, /*producer=*/false);
  walkTiles(b, /*laneRows=*/true, [&](ImplicitLocOpBuilder &tb, CtaTile &t) {
    emitCtaChunks(tb, t);
  });

  // The producer: lane 0 of its first warp copies K and V, its other warps
  // gather queries, each at its own pace.
  b.setInsertionPointToStart(&roles.getElseRegion().front());
  moveRegisters(b, /*producer=*/true);
  Value producerThread = e.sub(frame.tid, e.index(shape.consumerThreads()));
  ifThen(b,
         arith::CmpIOp::create(b, arith::CmpIPredicate::eq, producerThread,
                               e.index(0)),
         [&](ImplicitLocOpBuilder &ib) {
           walkTiles(ib, /*laneRows=*/false,
                     [&](ImplicitLocOpBuilder &tb, CtaTile &t) {
                       TmaLoader loader(*this, tb, t);
                       produceChunks(tb, t, loader,
                                     KernelBuilder{tb, e.element}.index(0));
                     });
         });
  ifThen(b, e.ult(e.index(31), producerThread),
         [&](ImplicitLocOpBuilder &ib) {
           Value gatherer = KernelBuilder{ib, e.element}.sub(
               producerThread, KernelBuilder{ib, e.element}.index(32));
           walkTiles(ib, /*laneRows=*/false,
                     [&](ImplicitLocOpBuilder &tb, CtaTile &t) {
                       TmaLoader loader(*this, tb, t);
                       gatherQueriesAhead(tb, t, loader, gatherer);
                     });
         });
}
