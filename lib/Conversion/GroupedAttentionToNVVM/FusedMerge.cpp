//===- FusedMerge.cpp - The log-sum-exp merge inside the attention kernel -===//
//
// Part of moba-mlir. The merged form of moba.grouped_block_attention
// (`merge(out, lse)`, from moba-fuse-lse-merge) on tensor cores: the CTA
// that finishes the last attending slot of a (token, head) merges the row.
//
//  * The initializing kernel (a thread per (token, head)) marks every
//    slot's partial empty, as the unmerged form's does, and stores the
//    number of the row's slots that attend in `arrivals[t, h]`: those the
//    groups list, blocks of the token's sequence that no lower slot of the
//    token holds (the op's K(t, s) is not empty as a set of blocks). A row
//    with none gets the merge of no partials: output 0, lse -inf.
//  * Each CTA writes its rows' partials as before, then every lane fences
//    (fence.acq_rel.gpu: its stores before the arrival), the warp syncs,
//    and the first lane of each row's quad decrements the row's arrivals
//    (one atomic per row). The lane that takes it from 1 to 0 finished the
//    row's last slot: every other slot's partial was stored and fenced
//    before its own decrement, which came earlier in the counter's order.
//  * The warp then merges those rows, after a fence that acquires what the
//    other CTAs released: four rows at a time, eight lanes a row (the n-th
//    row of the warp's mask of 16 to lanes 8(n % 4)..). Each lane reads
//    the row's K lse (eight slots' loads in flight together), keeps their
//    max and a slot that holds it, then adds its 16-byte chunks of every
//    slot's partial, weighted by exp(lse_s - max): a slot that does not
//    attend reads the best slot's row instead and adds nothing, so that
//    all the reads of a step are issued at once and no unwritten row is
//    read. The lane stores its chunks of the normalized row in q's element
//    type; the row's first lane stores the lse.
//
// Every (token, head) is merged exactly once, by whichever CTA ends last,
// and the separate merge's two kernels go. It is not the default: on the
// H200 the merge's reads and the fences hold each CTA's slot while other
// CTAs cannot use its share of the tensor cores, and the attention kernel
// slowed by more than the separate merge takes (docs/PERFORMANCE.md,
// eighth round). A kernel that overlaps a tile's epilogue with the next
// tile's loads (persistent CTAs) is where it would pay.
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;
using nvvm_kernel::toI32;

namespace {

constexpr double kLog2E = 1.4426950408889634; // log2(e)
constexpr double kLn2 = 0.6931471805599453;   // ln(2)
/// The merge's shape: lanes a row (four rows of a warp at a time), columns
/// a lane reads at once (16 bytes of f16/bf16), slots whose reads are in
/// flight together.
constexpr int64_t kLanesPerRow = 8;
constexpr int64_t kChunkColumns = 8;
constexpr int64_t kSlotsPerStep = 8;

/// Lane `source`'s `x` (i32 or f32), for every lane.
Value broadcast(KernelBuilder &e, Value x, Value source) {
  return gpu::ShuffleOp::create(e.b, x, source, e.i32(32),
                                gpu::ShuffleMode::IDX)
      .getShuffleResult();
}

} // namespace

void AttentionKernel::emitMergeInit(ImplicitLocOpBuilder &b, Value tokens) {
  KernelBuilder e{b, element()};
  Value selected = op.getSelected();
  arrivals = memref::AllocOp::create(
      b, MemRefType::get({ShapedType::kDynamic, numHeads}, b.getI32Type()),
      ValueRange{tokens});
  Value items = e.mul(tokens, e.index(numHeads));
  nvvm_kernel::launchPerItem(
      b, items, /*threads=*/128, [&](ImplicitLocOpBuilder &kb, Value linear) {
        KernelBuilder ke{kb, e.element};
        Value h = ke.rem(linear, ke.index(numHeads));
        Value t = ke.div(linear, ke.index(numHeads));
        nvvm_kernel::TokenSequence sequence =
            nvvm_kernel::locateSequence(kb, cu, t, blockSize);
        Value blocks = toI32(
            kb, arith::CeilDivUIOp::create(
                    kb, ke.sub(sequence.end, sequence.start),
                    ke.index(blockSize)));
        auto countLoop = scf::ForOp::create(
            kb, ke.index(0), ke.index(slotsPerToken), ke.index(1),
            ValueRange{ke.i32(0)},
            [&](OpBuilder &fb, Location loc, Value s, ValueRange count) {
              ImplicitLocOpBuilder sb(loc, fb);
              KernelBuilder se{sb, e.element};
              memref::StoreOp::create(sb, se.f32(kNegInf), partialLse,
                                      ValueRange{s, t, h});
              Value attends =
                  nvvm_kernel::slotIsListed(sb, selected, t, h, s, blocks);
              scf::YieldOp::create(
                  sb, ValueRange{se.add(count[0],
                                        se.select(attends, se.i32(1),
                                                  se.i32(0)))});
            });
        Value count = countLoop.getResult(0);
        memref::StoreOp::create(kb, count, arrivals, ValueRange{t, h});
        // No slot attends: no CTA will see the row, so its merge (of no
        // partials) is written here.
        nvvm_kernel::ifThen(
            kb,
            arith::CmpIOp::create(kb, arith::CmpIPredicate::eq, count,
                                  ke.i32(0)),
            [&](ImplicitLocOpBuilder &zb) {
              KernelBuilder ze{zb, e.element};
              Value zero = arith::ConstantOp::create(
                  zb, FloatAttr::get(e.element, 0.0));
              scf::ForOp::create(
                  zb, ze.index(0), ze.index(headDim), ze.index(1),
                  ValueRange{},
                  [&](OpBuilder &fb, Location loc, Value d, ValueRange) {
                    ImplicitLocOpBuilder db(loc, fb);
                    memref::StoreOp::create(db, zero, mergedOut,
                                            ValueRange{t, h, d});
                    scf::YieldOp::create(db);
                  });
              memref::StoreOp::create(zb, ze.f32(kNegInf), mergedLse,
                                      ValueRange{t, h});
            });
      });
}

void AttentionKernel::emitMergeEpilogue(ImplicitLocOpBuilder &b,
                                        const CtaTile &t) {
  KernelBuilder e{b, element()};
  Type i1 = b.getI1Type(), i32 = b.getI32Type();
  // Release: this lane's partial stores come before its rows' arrivals,
  // which the quads' first lanes make after the warp's sync.
  LLVM::FenceOp::create(b, LLVM::AtomicOrdering::acq_rel, "device");
  NVVM::SyncWarpOp::create(b, e.i32(-1));
  SmallVector<Value, 2> lastMask, token32;
  for (int64_t r = 0; r < 2; ++r) {
    Value arrives = arith::AndIOp::create(
        b, t.rowValid[r],
        arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.quadCol,
                              e.index(0)));
    auto arrive = scf::IfOp::create(b, TypeRange{i1}, arrives,
                                    /*withElseRegion=*/true);
    {
      OpBuilder::InsertionGuard guard(b);
      b.setInsertionPointToStart(&arrive.getThenRegion().front());
      Value before = memref::AtomicRMWOp::create(
          b, arith::AtomicRMWKind::addi, e.i32(-1), arrivals,
          ValueRange{t.token[r], t.h});
      scf::YieldOp::create(
          b, ValueRange{arith::CmpIOp::create(b, arith::CmpIPredicate::eq,
                                              before, e.i32(1))});
      b.setInsertionPointToStart(&arrive.getElseRegion().front());
      scf::YieldOp::create(b,
                           ValueRange{arith::ConstantIntOp::create(b, 0, 1)});
    }
    // Bit 4g: the warp's row g (+ 8r) was its token's last.
    lastMask.push_back(NVVM::VoteSyncOp::create(b, i32, e.i32(-1),
                                                arrive.getResult(0),
                                                NVVM::VoteSyncKind::ballot));
    token32.push_back(toI32(b, t.token[r]));
  }
  Value anyLast = arith::CmpIOp::create(
      b, arith::CmpIPredicate::ne,
      arith::OrIOp::create(b, lastMask[0], lastMask[1]), e.i32(0));
  nvvm_kernel::ifThen(b, anyLast, [&](ImplicitLocOpBuilder &mb) {
    // Acquire: the other CTAs' partials of these rows.
    LLVM::FenceOp::create(mb, LLVM::AtomicOrdering::acq_rel, "device");
    KernelBuilder me{mb, e.element};
    // Bit i: the warp's row i (quad i % 8, half i / 8) was its token's last.
    Value rows = me.i32(0);
    for (int64_t i = 0; i < kTileRows; ++i) {
      Value bit = arith::AndIOp::create(
          mb,
          arith::ShRUIOp::create(mb, lastMask[i / 8], me.i32(4 * (i % 8))),
          me.i32(1));
      rows = arith::OrIOp::create(
          mb, rows, arith::ShLIOp::create(mb, bit, me.i32(i)));
    }
    Value rowCount = LLVM::CtPopOp::create(mb, rows);
    // Four rows at a time, eight lanes a row: group lane / 8 takes the
    // (4 round + group)-th row of the mask.
    Value group = me.div(t.lane, me.index(kLanesPerRow));
    Value rounds = arith::CeilDivUIOp::create(
        mb, arith::IndexCastOp::create(mb, mb.getIndexType(), rowCount),
        me.index(32 / kLanesPerRow));
    scf::ForOp::create(
        mb, me.index(0), rounds, me.index(1), ValueRange{},
        [&](OpBuilder &fb, Location loc, Value round, ValueRange) {
          ImplicitLocOpBuilder rb(loc, fb);
          KernelBuilder re{rb, e.element};
          Value n = toI32(rb, re.add(re.mul(round, re.index(32 / kLanesPerRow)),
                                     group));
          // The n-th set bit of the mask (0 past the last).
          auto find = scf::ForOp::create(
              rb, re.index(0), re.index(kTileRows), re.index(1),
              ValueRange{re.i32(0), re.i32(0)},
              [&](OpBuilder &bb, Location bloc, Value i, ValueRange c) {
                ImplicitLocOpBuilder ib(bloc, bb);
                KernelBuilder ie{ib, e.element};
                Value i32 = toI32(ib, i);
                Value set = arith::AndIOp::create(
                    ib, arith::ShRUIOp::create(ib, rows, i32), ie.i32(1));
                Value hit = arith::AndIOp::create(
                    ib,
                    arith::CmpIOp::create(ib, arith::CmpIPredicate::ne, set,
                                          ie.i32(0)),
                    arith::CmpIOp::create(ib, arith::CmpIPredicate::eq, c[0],
                                          n));
                scf::YieldOp::create(
                    ib, ValueRange{ie.add(c[0], set),
                                   ie.select(hit, i32, c[1])});
              });
          Value row = find.getResult(1);
          // Its token, from the first lane of its quad (all lanes take
          // part in both shuffles; the half picks one).
          Value quadLane = arith::MulIOp::create(
              rb, arith::RemUIOp::create(rb, row, re.i32(8)), re.i32(4));
          Value token = arith::IndexCastOp::create(
              rb, rb.getIndexType(),
              re.select(arith::CmpIOp::create(rb, arith::CmpIPredicate::uge,
                                              row, re.i32(8)),
                        broadcast(re, token32[1], quadLane),
                        broadcast(re, token32[0], quadLane)));
          nvvm_kernel::ifThen(
              rb,
              arith::CmpIOp::create(rb, arith::CmpIPredicate::ult, n,
                                    rowCount),
              [&](ImplicitLocOpBuilder &ib) { emitMergeRow(ib, t, token); });
          scf::YieldOp::create(rb);
        });
  });
}

void AttentionKernel::emitMergeRow(ImplicitLocOpBuilder &b, const CtaTile &t,
                                   Value token) {
  KernelBuilder e{b, element()};
  Type f32 = b.getF32Type();
  Type partialElement =
      cast<MemRefType>(partialOut.getType()).getElementType();
  // This lane's place in its row's eight, and its chunks of 8 columns:
  // sub, sub + 8, ... (past the row's last chunk, a lane re-reads the last
  // and stores nothing).
  Value sub = e.rem(t.lane, e.index(kLanesPerRow));
  int64_t chunks = headDim / kChunkColumns;
  int64_t laneChunks = (chunks + kLanesPerRow - 1) / kLanesPerRow;
  SmallVector<Value> columns, inRow;
  for (int64_t m = 0; m < laneChunks; ++m) {
    Value chunk = e.add(sub, e.index(kLanesPerRow * m));
    inRow.push_back(e.ult(chunk, e.index(chunks)));
    columns.push_back(e.mul(e.minU(chunk, e.index(chunks - 1)),
                            e.index(kChunkColumns)));
  }
  // Slots 8c + u, u < 8, a step of eight at a time so that their loads are
  // in flight together; past K, slot K - 1 is read and ignored.
  int64_t slotSteps = (slotsPerToken + kSlotsPerStep - 1) / kSlotsPerStep;
  auto slotAt = [&](KernelBuilder &se, Value step, int64_t u,
                    Value &inRange) {
    Value slot = se.add(se.mul(step, se.index(kSlotsPerStep)), se.index(u));
    inRange = se.ult(slot, se.index(slotsPerToken));
    return se.minU(slot, se.index(slotsPerToken - 1));
  };
  auto lseOf = [&](KernelBuilder &se, Value slot, Value inRange) {
    Value lse = memref::LoadOp::create(se.b, partialLse,
                                       ValueRange{slot, token, t.h});
    return se.select(inRange, lse, se.f32(kNegInf));
  };
  // The row's max lse, and a slot that holds it: a slot whose partial was
  // written, read in place of the slots that do not attend.
  auto best = scf::ForOp::create(
      b, e.index(0), e.index(slotSteps), e.index(1),
      ValueRange{e.f32(kNegInf), e.index(0)},
      [&](OpBuilder &fb, Location loc, Value step, ValueRange c) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, e.element};
        Value max = c[0], at = c[1];
        for (int64_t u = 0; u < kSlotsPerStep; ++u) {
          Value inRange;
          Value slot = slotAt(se, step, u, inRange);
          Value lse = lseOf(se, slot, inRange);
          at = se.select(arith::CmpFOp::create(sb, arith::CmpFPredicate::OGT,
                                               lse, max),
                         slot, at);
          // maximumf, not maxnum: a NaN lse makes the row's max NaN, hence
          // every share and the merged row NaN (docs/semantics.md).
          max = LLVM::MaximumOp::create(sb, max, lse);
        }
        scf::YieldOp::create(sb, ValueRange{max, at});
      });
  Value max = best.getResult(0), bestSlot = best.getResult(1);
  // Not -inf (some slot attended), or NaN.
  Value finite = arith::CmpFOp::create(b, arith::CmpFPredicate::UNE, max,
                                       e.f32(kNegInf));

  auto sumType = VectorType::get({kChunkColumns}, f32);
  auto loadType = VectorType::get({kChunkColumns}, partialElement);
  SmallVector<Value> inits = {e.f32(0.0)};
  Value zeros =
      arith::ConstantOp::create(b, DenseElementsAttr::get(sumType, 0.0f));
  inits.append(laneChunks, zeros);
  auto merged = scf::ForOp::create(
      b, e.index(0), e.index(slotSteps), e.index(1), inits,
      [&](OpBuilder &fb, Location loc, Value step, ValueRange c) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, e.element};
        Value total = c[0];
        SmallVector<Value> sums(c.drop_front());
        for (int64_t u = 0; u < kSlotsPerStep; ++u) {
          Value inRange;
          Value slot = slotAt(se, step, u, inRange);
          Value lse = lseOf(se, slot, inRange);
          Value share = se.select(
              finite,
              se.exp2(se.fmul(arith::SubFOp::create(sb, lse, max),
                              se.f32(kLog2E))),
              se.f32(0.0));
          // A slot that does not attend has share 0 and no partial row (it
          // may hold anything, NaN included): the best slot's is read
          // instead and not added. A NaN share is added, so that it shows.
          Value used = arith::CmpFOp::create(sb, arith::CmpFPredicate::UNE,
                                             share, se.f32(0.0));
          Value from = se.select(used, slot, bestSlot);
          Value shares = vector::BroadcastOp::create(sb, sumType, share);
          for (int64_t m = 0; m < laneChunks; ++m) {
            auto load = vector::LoadOp::create(
                sb, loadType, partialOut,
                ValueRange{from, token, t.h, columns[m]});
            load.setAlignment(16);
            Value values = load.getResult();
            if (partialElement != f32)
              values = arith::ExtFOp::create(sb, sumType, values);
            sums[m] = se.select(
                used, vector::FMAOp::create(sb, values, shares, sums[m]),
                sums[m]);
          }
          total = se.fadd(total, share);
        }
        SmallVector<Value> yields = {total};
        yields.append(sums);
        scf::YieldOp::create(sb, yields);
      });

  Value total = merged.getResult(0);
  Value any = arith::CmpFOp::create(b, arith::CmpFPredicate::UNE, total,
                                    e.f32(0.0));
  Value inverse = vector::BroadcastOp::create(
      b, sumType,
      e.select(any, arith::DivFOp::create(b, e.f32(1.0), total), e.f32(0.0)));
  auto storeType = VectorType::get({kChunkColumns}, e.element);
  for (int64_t m = 0; m < laneChunks; ++m) {
    auto store = [&](ImplicitLocOpBuilder &sb) {
      Value normalized = arith::TruncFOp::create(
          sb, storeType, e.fmul(merged.getResult(1 + m), inverse));
      vector::StoreOp::create(sb, normalized, mergedOut,
                              ValueRange{token, t.h, columns[m]})
          .setAlignment(16);
    };
    if (chunks % kLanesPerRow == 0)
      store(b);
    else
      nvvm_kernel::ifThen(b, inRow[m], store);
  }
  Value rowLse = e.select(
      any, e.fadd(max, e.fmul(math::Log2Op::create(b, total), e.f32(kLn2))),
      e.f32(kNegInf));
  nvvm_kernel::ifThen(b, e.ult(sub, e.index(1)),
                      [&](ImplicitLocOpBuilder &lb) {
                        memref::StoreOp::create(lb, rowLse, mergedLse,
                                                ValueRange{token, t.h});
                      });
}
