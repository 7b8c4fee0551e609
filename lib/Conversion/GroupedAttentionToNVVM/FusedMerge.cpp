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
//  * The warp then merges those rows one at a time, after a fence that
//    acquires what the other CTAs released: lane s < K reads slot s's lse;
//    the max and the sum of exp(lse_s - max) by xor shuffles; each lane
//    adds two columns of every attending slot's partial (32 lanes cover
//    64 columns a step, coalesced) weighted by that slot's share, and
//    stores the normalized row in q's element type; lane 0 stores the lse.
//
// Every (token, head) is merged exactly once, by whichever CTA ends last:
// the merge's reads of the partials (8.6 GB at 128K tokens, top-8) then
// overlap other CTAs' tensor-core work instead of running in a kernel of
// their own after the attention, and the separate merge's launch goes.
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;

namespace {

constexpr double kLog2E = 1.4426950408889634; // log2(e)
constexpr double kLn2 = 0.6931471805599453;   // ln(2)

/// `x` (f32) reduced over the 32 lanes of the warp by xor shuffles: max
/// (llvm.maxnum) or sum.
Value warpReduce(KernelBuilder &e, Value x, bool isMax) {
  for (int64_t offset : {16, 8, 4, 2, 1}) {
    Value other = gpu::ShuffleOp::create(e.b, x, offset, /*width=*/32,
                                         gpu::ShuffleMode::XOR)
                      .getShuffleResult();
    x = isMax ? e.fmax(x, other) : e.fadd(x, other);
  }
  return x;
}

/// Lane `source`'s `x` (i32 or f32), for every lane.
Value broadcast(KernelBuilder &e, Value x, Value source) {
  return gpu::ShuffleOp::create(e.b, x, source, e.i32(32),
                                gpu::ShuffleMode::IDX)
      .getShuffleResult();
}

Value toI32(ImplicitLocOpBuilder &b, Value index) {
  return arith::IndexCastOp::create(b, b.getI32Type(), index);
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
        auto slotAt = [&](ImplicitLocOpBuilder &ib, Value s) -> Value {
          return memref::LoadOp::create(ib, selected, ValueRange{t, h, s});
        };
        auto countLoop = scf::ForOp::create(
            kb, ke.index(0), ke.index(slotsPerToken), ke.index(1),
            ValueRange{ke.i32(0)},
            [&](OpBuilder &fb, Location loc, Value s, ValueRange count) {
              ImplicitLocOpBuilder sb(loc, fb);
              KernelBuilder se{sb, e.element};
              memref::StoreOp::create(sb, se.f32(kNegInf), partialLse,
                                      ValueRange{s, t, h});
              Value block = slotAt(sb, s);
              Value inSequence = arith::AndIOp::create(
                  sb,
                  arith::CmpIOp::create(sb, arith::CmpIPredicate::sge, block,
                                        se.i32(0)),
                  arith::CmpIOp::create(sb, arith::CmpIPredicate::slt, block,
                                        blocks));
              // Whether a lower slot holds the block already.
              auto lower = scf::ForOp::create(
                  sb, se.index(0), s, se.index(1),
                  ValueRange{arith::ConstantIntOp::create(sb, 0, 1)},
                  [&](OpBuilder &lb, Location lloc, Value s2,
                      ValueRange held) {
                    ImplicitLocOpBuilder ob(lloc, lb);
                    Value same = arith::CmpIOp::create(
                        ob, arith::CmpIPredicate::eq, slotAt(ob, s2), block);
                    scf::YieldOp::create(
                        ob, ValueRange{arith::OrIOp::create(ob, held[0],
                                                            same)});
                  });
              Value attends = arith::AndIOp::create(
                  sb, inSequence,
                  arith::XOrIOp::create(
                      sb, lower.getResult(0),
                      arith::ConstantIntOp::create(sb, 1, 1)));
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
    scf::ForOp::create(
        mb, me.index(0), me.index(kTileRows), me.index(1), ValueRange{},
        [&](OpBuilder &fb, Location loc, Value i, ValueRange) {
          ImplicitLocOpBuilder rb(loc, fb);
          KernelBuilder re{rb, e.element};
          Value second = re.ule(re.index(8), i);
          Value quadLane = toI32(rb, re.mul(re.rem(i, re.index(8)),
                                            re.index(4)));
          Value mask = re.select(second, lastMask[1], lastMask[0]);
          Value bit = arith::AndIOp::create(
              rb, arith::ShRUIOp::create(rb, mask, quadLane), re.i32(1));
          // Warp-uniform: every lane sees the same mask.
          nvvm_kernel::ifThen(
              rb,
              arith::CmpIOp::create(rb, arith::CmpIPredicate::ne, bit,
                                    re.i32(0)),
              [&](ImplicitLocOpBuilder &ib) {
                KernelBuilder ie{ib, e.element};
                Value token = arith::IndexCastOp::create(
                    ib, ib.getIndexType(),
                    broadcast(ie, ie.select(second, token32[1], token32[0]),
                              quadLane));
                emitMergeRow(ib, t, token);
              });
          scf::YieldOp::create(rb);
        });
  });
}

void AttentionKernel::emitMergeRow(ImplicitLocOpBuilder &b, const CtaTile &t,
                                   Value token) {
  KernelBuilder e{b, element()};
  Type f32 = b.getF32Type();
  // Lane s < K: slot s's lse; the row's max and each slot's share.
  auto read = scf::IfOp::create(b, TypeRange{f32},
                                e.ult(t.lane, e.index(slotsPerToken)),
                                /*withElseRegion=*/true);
  {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&read.getThenRegion().front());
    scf::YieldOp::create(
        b, ValueRange{memref::LoadOp::create(b, partialLse,
                                             ValueRange{t.lane, token, t.h})
                          .getResult()});
    b.setInsertionPointToStart(&read.getElseRegion().front());
    scf::YieldOp::create(b, ValueRange{e.f32(kNegInf)});
  }
  Value lse = read.getResult(0);
  Value max = warpReduce(e, lse, /*isMax=*/true);
  Value finite = arith::CmpFOp::create(b, arith::CmpFPredicate::OGT, max,
                                       e.f32(kNegInf));
  Value weight = e.select(
      finite,
      e.exp2(e.fmul(arith::SubFOp::create(b, lse, max), e.f32(kLog2E))),
      e.f32(0.0));
  Value total = warpReduce(e, weight, /*isMax=*/false);

  // Lane l's columns: pairs l, l + 32, ... of the row's headDim / 2. Where
  // headDim / 2 is not a multiple of 32 the last step's spare lanes read a
  // valid pair (clamped) and store nothing.
  int64_t pairs = headDim / 2;
  int64_t steps = (pairs + 31) / 32;
  SmallVector<Value> columns, inRow;
  for (int64_t j = 0; j < steps; ++j) {
    Value pair = e.add(t.lane, e.index(32 * j));
    inRow.push_back(e.ult(pair, e.index(pairs)));
    columns.push_back(
        e.mul(e.minU(pair, e.index(pairs - 1)), e.index(2)));
  }
  auto pairType = VectorType::get({2}, f32);
  auto elementPair = VectorType::get({2}, e.element);
  Value zeros = arith::ConstantOp::create(
      b, DenseElementsAttr::get(pairType, 0.0f));
  SmallVector<Value> inits(steps, zeros);
  auto slots = scf::ForOp::create(
      b, e.index(0), e.index(slotsPerToken), e.index(1), inits,
      [&](OpBuilder &fb, Location loc, Value s, ValueRange sums) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, e.element};
        Value share = broadcast(se, weight, toI32(sb, s));
        // Warp-uniform: a slot that does not attend (share 0) has no
        // partial row to read (it may hold anything, NaN included).
        auto add = scf::IfOp::create(
            sb, TypeRange(ValueRange(sums)),
            arith::CmpFOp::create(sb, arith::CmpFPredicate::OGT, share,
                                  se.f32(0.0)),
            /*withElseRegion=*/true);
        {
          OpBuilder::InsertionGuard guard(sb);
          sb.setInsertionPointToStart(&add.getThenRegion().front());
          Value shares = vector::BroadcastOp::create(sb, pairType, share);
          SmallVector<Value> added;
          for (int64_t j = 0; j < steps; ++j) {
            auto load = vector::LoadOp::create(
                sb, elementPair, partialOut,
                ValueRange{s, token, t.h, columns[j]});
            load.setAlignment(2 * MmaTileShape::bytesOf(e.element));
            Value values =
                arith::ExtFOp::create(sb, pairType, load.getResult());
            added.push_back(
                vector::FMAOp::create(sb, values, shares, sums[j]));
          }
          scf::YieldOp::create(sb, added);
          sb.setInsertionPointToStart(&add.getElseRegion().front());
          scf::YieldOp::create(sb, sums);
        }
        scf::YieldOp::create(sb, add.getResults());
      });

  Value any = arith::CmpFOp::create(b, arith::CmpFPredicate::OGT, total,
                                    e.f32(0.0));
  Value inverse = vector::BroadcastOp::create(
      b, pairType,
      e.select(any, arith::DivFOp::create(b, e.f32(1.0), total),
               e.f32(0.0)));
  for (int64_t j = 0; j < steps; ++j) {
    auto store = [&](ImplicitLocOpBuilder &sb) {
      Value normalized = arith::TruncFOp::create(
          sb, elementPair, e.fmul(slots.getResult(j), inverse));
      vector::StoreOp::create(sb, normalized, mergedOut,
                              ValueRange{token, t.h, columns[j]})
          .setAlignment(2 * MmaTileShape::bytesOf(e.element));
    };
    if (pairs % 32 == 0 || j + 1 < steps)
      store(b);
    else
      nvvm_kernel::ifThen(b, inRow[j], store);
  }
  Value rowLse = e.select(
      any,
      e.fadd(max, e.fmul(math::Log2Op::create(b, total), e.f32(kLn2))),
      e.f32(kNegInf));
  nvvm_kernel::ifThen(b, e.ult(t.lane, e.index(1)),
                      [&](ImplicitLocOpBuilder &lb) {
                        memref::StoreOp::create(lb, rowLse, mergedLse,
                                                ValueRange{token, t.h});
                      });
}
