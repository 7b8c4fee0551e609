//===- KernelBuilder.cpp - Helpers for emitting NVVM kernels --------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "KernelBuilder/KernelBuilder.h"

using namespace mlir;

void mlir::moba::nvvm_kernel::launch(
    ImplicitLocOpBuilder &b, Value blocks, int64_t threads, Value sharedBytes,
    TypeRange workgroup,
    function_ref<void(ImplicitLocOpBuilder &, gpu::LaunchOp)> build) {
  Value one = arith::ConstantIndexOp::create(b, 1);
  Value threadCount = arith::ConstantIndexOp::create(b, threads);
  auto op = gpu::LaunchOp::create(b, blocks, one, one, threadCount, one, one,
                                  sharedBytes, /*asyncTokenType=*/nullptr,
                                  /*asyncDependencies=*/{}, workgroup);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&op.getBody().front());
  build(b, op);
  gpu::TerminatorOp::create(b);
}

void mlir::moba::nvvm_kernel::launchPerItem(
    ImplicitLocOpBuilder &b, Value count, int64_t threads,
    function_ref<void(ImplicitLocOpBuilder &, Value)> build) {
  Value perCta = arith::ConstantIndexOp::create(b, threads);
  Value ctas = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, count, perCta),
      arith::ConstantIndexOp::create(b, 1));
  launch(b, ctas, threads, /*sharedBytes=*/nullptr, /*workgroup=*/{},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
           Value linear = arith::AddIOp::create(
               kb, arith::MulIOp::create(kb, op.getBlockIds().x, perCta),
               op.getThreadIds().x);
           auto inRange = scf::IfOp::create(
               kb,
               arith::CmpIOp::create(kb, arith::CmpIPredicate::ult, linear,
                                     count),
               /*withElseRegion=*/false);
           OpBuilder::InsertionGuard guard(kb);
           kb.setInsertionPointToStart(&inRange.getThenRegion().front());
           build(kb, linear);
         });
}

mlir::moba::nvvm_kernel::TokenSequence
mlir::moba::nvvm_kernel::locateSequence(ImplicitLocOpBuilder &b, Value cu,
                                        Value t, int64_t blockSize) {
  KernelBuilder e{b, b.getI32Type()};
  Value sequences = e.sub(memref::DimOp::create(b, cu, 0), e.index(1));
  Value zero = e.index(0);
  auto scan = scf::ForOp::create(
      b, zero, sequences, e.index(1), ValueRange{zero, zero, zero, zero},
      [&](OpBuilder &fb, Location loc, Value i, ValueRange c) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, sb.getI32Type()};
        Value start = se.loadIndex(cu, {i});
        Value end = se.loadIndex(cu, {se.add(i, se.index(1))});
        Value blocks = arith::CeilDivUIOp::create(sb, se.sub(end, start),
                                                  se.index(blockSize));
        Value inside =
            arith::AndIOp::create(sb, se.ule(start, t), se.ult(t, end));
        scf::YieldOp::create(
            sb, ValueRange{se.select(inside, start, c[0]),
                           se.select(inside, end, c[1]),
                           se.select(inside, c[3], c[2]),
                           se.add(c[3], blocks)});
      });
  return {scan.getResult(0), scan.getResult(1), scan.getResult(2)};
}

mlir::moba::nvvm_kernel::BlockRow
mlir::moba::nvvm_kernel::locateBlockRow(ImplicitLocOpBuilder &b, Value cu,
                                        Value row, int64_t blockSize) {
  KernelBuilder e{b, b.getI32Type()};
  Value sequences = e.sub(memref::DimOp::create(b, cu, 0), e.index(1));
  Value zero = e.index(0);
  // [start, end) of the row's sequence, the sequence's first row, and the
  // rows before the sequence scanned.
  auto scan = scf::ForOp::create(
      b, zero, sequences, e.index(1), ValueRange{zero, zero, zero, zero},
      [&](OpBuilder &fb, Location loc, Value i, ValueRange c) {
        ImplicitLocOpBuilder sb(loc, fb);
        KernelBuilder se{sb, sb.getI32Type()};
        Value start = se.loadIndex(cu, {i});
        Value end = se.loadIndex(cu, {se.add(i, se.index(1))});
        Value blocks = arith::CeilDivUIOp::create(sb, se.sub(end, start),
                                                  se.index(blockSize));
        Value next = se.add(c[3], blocks);
        Value inside =
            arith::AndIOp::create(sb, se.ule(c[3], row), se.ult(row, next));
        scf::YieldOp::create(
            sb, ValueRange{se.select(inside, start, c[0]),
                           se.select(inside, end, c[1]),
                           se.select(inside, c[3], c[2]), next});
      });
  Value first = e.add(scan.getResult(0), e.mul(e.sub(row, scan.getResult(2)),
                                               e.index(blockSize)));
  Value end = e.minU(e.add(first, e.index(blockSize)), scan.getResult(1));
  return {first, end};
}

Value mlir::moba::nvvm_kernel::slotIsListed(ImplicitLocOpBuilder &b,
                                            Value selected, Value t, Value h,
                                            Value s, Value blocks) {
  KernelBuilder e{b, b.getI32Type()};
  auto slotAt = [&](ImplicitLocOpBuilder &ib, Value slot) -> Value {
    return memref::LoadOp::create(ib, selected, ValueRange{t, h, slot});
  };
  Value block = slotAt(b, s);
  Value inSequence = arith::AndIOp::create(
      b, arith::CmpIOp::create(b, arith::CmpIPredicate::sge, block, e.i32(0)),
      arith::CmpIOp::create(b, arith::CmpIPredicate::slt, block, blocks));
  // Whether a lower slot holds the block already.
  auto lower = scf::ForOp::create(
      b, e.index(0), s, e.index(1),
      ValueRange{arith::ConstantIntOp::create(b, 0, 1)},
      [&](OpBuilder &lb, Location loc, Value s2, ValueRange held) {
        ImplicitLocOpBuilder ob(loc, lb);
        Value same = arith::CmpIOp::create(ob, arith::CmpIPredicate::eq,
                                           slotAt(ob, s2), block);
        scf::YieldOp::create(
            ob, ValueRange{arith::OrIOp::create(ob, held[0], same)});
      });
  return arith::AndIOp::create(
      b, inSequence,
      arith::XOrIOp::create(b, lower.getResult(0),
                            arith::ConstantIntOp::create(b, 1, 1)));
}
