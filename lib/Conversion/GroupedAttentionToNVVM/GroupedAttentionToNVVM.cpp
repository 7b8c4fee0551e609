//===- GroupedAttentionToNVVM.cpp - Grouped attention on tensor cores -----===//
//
// Part of moba-mlir. Implements `moba-convert-grouped-attention-to-nvvm`:
// moba.grouped_block_attention on buffers becomes two GPU launches.
//
//  * An initializing kernel marks every slot's partial empty (log-sum-exp
//    -inf): slots no group lists keep that, and their output rows, which
//    moba.lse_merge does not read, are never written.
//  * The attention kernel gives each warp one tile: 16 consecutive entries
//    of one group (head h, key block r) -- 16 queries that all chose block
//    r. The warp computes S = Q K^T for 16 keys at a time with
//    `nvvm.mma.sync` m16n8k16 (f16 or bf16 operands, f32 accumulators),
//    masks keys past the block's end and, causally, past each query, runs
//    the online softmax on the accumulator fragments (row max and sum over
//    the four lanes that share a row, by xor shuffles), reuses the
//    probabilities as the A operand of P V (the m16n8 accumulator layout of
//    two key halves is the m16n8k16 A layout), and writes each row's
//    normalized partial and log-sum-exp to its slot.
//
// Fragments follow the PTX ISA's layouts for mma.m16n8k16 (row-major A,
// column-major B): with group g = lane / 4 and c = lane % 4, lane holds
// A[g][2c..2c+1], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..];
// B[2c..2c+1][g], B[2c+8..2c+9][g]; C[g][2c..2c+1], C[g+8][2c..2c+1].
// Operands come straight from global memory (L1 and L2 serve the reuse):
// the first tensor-core form, before shared-memory staging and TMA.
//
//===----------------------------------------------------------------------===//

#include "moba/Conversion/Passes.h"

#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/PatternMatch.h"

#include <limits>

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTGROUPEDATTENTIONTONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

constexpr int64_t kTileRows = 16;   // queries per warp tile (mma M)
constexpr int64_t kKeyChunk = 16;   // keys per softmax step (2 x mma N)
constexpr int64_t kWarpsPerBlock = 4;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

/// Scalar and fragment helpers on one builder.
struct KernelBuilder {
  ImplicitLocOpBuilder &b;
  Type element; ///< f16 or bf16

  Value index(int64_t v) { return arith::ConstantIndexOp::create(b, v); }
  Value i32(int64_t v) {
    return arith::ConstantIntOp::create(b, b.getI32Type(), v);
  }
  Value f32(double v) {
    return arith::ConstantOp::create(b, b.getF32FloatAttr(v));
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, x, y); }
  Value div(Value x, Value y) { return arith::DivUIOp::create(b, x, y); }
  Value rem(Value x, Value y) { return arith::RemUIOp::create(b, x, y); }
  Value minU(Value x, Value y) { return arith::MinUIOp::create(b, x, y); }
  Value ult(Value x, Value y) {
    return arith::CmpIOp::create(b, arith::CmpIPredicate::ult, x, y);
  }
  Value ule(Value x, Value y) {
    return arith::CmpIOp::create(b, arith::CmpIPredicate::ule, x, y);
  }
  Value select(Value c, Value x, Value y) {
    return arith::SelectOp::create(b, c, x, y);
  }
  Value fmax(Value x, Value y) { return arith::MaximumFOp::create(b, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, x, y); }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, x, y); }
  Value exp(Value x) { return math::ExpOp::create(b, x); }
  /// An i32 element of `memref` as an index.
  Value loadIndex(Value memref, ValueRange indices) {
    return arith::IndexCastOp::create(
        b, b.getIndexType(), memref::LoadOp::create(b, memref, indices));
  }

  /// The mma operand register type: two f16 as vector<2xf16>, two bf16 as
  /// an i32.
  Type operandType() {
    return element.isF16() ? Type(VectorType::get({2}, element))
                           : Type(b.getI32Type());
  }
  Value packPair(Value pair) {
    if (element.isF16())
      return pair;
    Value bits = vector::BitCastOp::create(
        b, VectorType::get({1}, b.getI32Type()), pair);
    return vector::ExtractOp::create(b, bits, ArrayRef<int64_t>{0});
  }
  /// Two consecutive elements memref[..., last], memref[..., last + 1].
  Value loadPair(Value memref, SmallVector<Value> indices) {
    auto load = vector::LoadOp::create(b, VectorType::get({2}, element),
                                       memref, indices);
    load.setAlignment(4);
    return packPair(load);
  }
  /// Two scalars (f32 or the element type) as one operand register.
  Value pack(Value lo, Value hi) {
    if (lo.getType() != element) {
      lo = arith::TruncFOp::create(b, element, lo);
      hi = arith::TruncFOp::create(b, element, hi);
    }
    return packPair(vector::FromElementsOp::create(
        b, VectorType::get({2}, element), ValueRange{lo, hi}));
  }

  /// D = A B + C for one m16n8k16 tile; C and D are four f32.
  SmallVector<Value> mma(ValueRange a, ValueRange bOperand, ValueRange c) {
    auto f32Type = b.getF32Type();
    auto resultType = LLVM::LLVMStructType::getLiteral(
        b.getContext(), {f32Type, f32Type, f32Type, f32Type});
    NVVM::MMATypes type =
        element.isF16() ? NVVM::MMATypes::f16 : NVVM::MMATypes::bf16;
    auto op = NVVM::MmaOp::create(
        b, resultType, a, bOperand, c, ArrayRef<int64_t>{16, 8, 16},
        std::nullopt, std::nullopt, std::array<NVVM::MMATypes, 2>{type, type},
        std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                       NVVM::MMALayout::col});
    SmallVector<Value> d;
    for (int64_t i = 0; i < 4; ++i)
      d.push_back(LLVM::ExtractValueOp::create(b, op, ArrayRef<int64_t>{i}));
    return d;
  }

  /// `x` reduced over the four lanes of a quad (the lanes sharing a row).
  Value quadReduce(Value x, bool isMax) {
    for (int64_t offset : {1, 2}) {
      Value other = gpu::ShuffleOp::create(b, x, offset, /*width=*/32,
                                           gpu::ShuffleMode::XOR)
                        .getShuffleResult();
      x = isMax ? fmax(x, other) : fadd(x, other);
    }
    return x;
  }
};

/// One gpu.launch of `blocks` x `threads` whose body `build` fills (the
/// terminator is added after it).
void launch(ImplicitLocOpBuilder &b, Value blocks, int64_t threads,
            function_ref<void(ImplicitLocOpBuilder &, gpu::LaunchOp)> build) {
  Value one = arith::ConstantIndexOp::create(b, 1);
  Value threadCount = arith::ConstantIndexOp::create(b, threads);
  auto op = gpu::LaunchOp::create(b, blocks, one, one, threadCount, one, one);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&op.getBody().front());
  build(b, op);
  gpu::TerminatorOp::create(b);
}

/// Every slot's partial marked empty: log-sum-exp -inf. The output rows of
/// empty slots are left as they are: nothing reads them (moba.lse_merge
/// skips -inf partials).
void emitInitKernel(ImplicitLocOpBuilder &b, Value partialLse, Value slots,
                    int64_t numHeads, Value tokens) {
  KernelBuilder k{b, b.getF32Type()};
  int64_t threads = 128;
  Value blocks = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, slots, k.index(threads)), k.index(1));
  launch(b, blocks, threads, [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
    KernelBuilder e{kb, kb.getF32Type()};
    Value linear = e.add(e.mul(op.getBlockIds().x, e.index(threads)),
                         op.getThreadIds().x);
    auto inRange = scf::IfOp::create(kb, e.ult(linear, slots), false);
    OpBuilder::InsertionGuard guard(kb);
    kb.setInsertionPointToStart(&inRange.getThenRegion().front());
    Value h = e.rem(linear, e.index(numHeads));
    Value rest = e.div(linear, e.index(numHeads));
    Value t = e.rem(rest, tokens);
    Value s = e.div(rest, tokens);
    memref::StoreOp::create(kb, e.f32(kNegInf), partialLse,
                            ValueRange{s, t, h});
  });
}

struct AttentionKernel {
  GroupedBlockAttentionOp op;
  Value q, k, v, cu, starts, counts, entries, partialOut, partialLse;
  int64_t numHeads, group, headDim, slotsPerToken, blockSize;
  bool causal;
  double scale;

  void emit(ImplicitLocOpBuilder &b);

private:
  /// The body of one warp: tile `tile` of head `h`.
  void emitWarp(ImplicitLocOpBuilder &b, Value h, Value tile, Value lane,
                Value rows);
};

void AttentionKernel::emit(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, cast<MemRefType>(q.getType()).getElementType()};
  // Tiles of one head: at most ceil(E / 16) + NB (each group's last tile
  // may be partial).
  Value rows = memref::DimOp::create(b, counts, 1);
  Value width = memref::DimOp::create(b, entries, 1);
  Value tilesPerHead = e.add(
      arith::CeilDivUIOp::create(b, width, e.index(kTileRows)), rows);
  Value warps = e.mul(tilesPerHead, e.index(numHeads));
  Value blocks = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, warps, e.index(kWarpsPerBlock)),
      e.index(1));
  launch(b, blocks, 32 * kWarpsPerBlock,
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp launchOp) {
           KernelBuilder ke{kb, e.element};
           Value tid = launchOp.getThreadIds().x;
           Value warp = ke.add(
               ke.mul(launchOp.getBlockIds().x, ke.index(kWarpsPerBlock)),
               ke.div(tid, ke.index(32)));
           Value lane = ke.rem(tid, ke.index(32));
           auto inRange = scf::IfOp::create(kb, ke.ult(warp, warps), false);
           OpBuilder::InsertionGuard guard(kb);
           kb.setInsertionPointToStart(&inRange.getThenRegion().front());
           emitWarp(kb, ke.div(warp, tilesPerHead),
                    ke.rem(warp, tilesPerHead), lane, rows);
         });
}

void AttentionKernel::emitWarp(ImplicitLocOpBuilder &b, Value h, Value tile,
                               Value lane, Value rows) {
  KernelBuilder e{b, cast<MemRefType>(q.getType()).getElementType()};
  // The group of the tile: the first block row whose tiles reach past it.
  auto scan = scf::ForOp::create(
      b, e.index(0), rows, e.index(1),
      ValueRange{e.index(0), rows, e.index(0)},
      [&](OpBuilder &fb, Location loc, Value r, ValueRange c) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value tiles = arith::CeilDivUIOp::create(
            ib, ie.loadIndex(counts, {h, r}), ie.index(kTileRows));
        Value reach = ie.add(c[0], tiles);
        Value hit = arith::AndIOp::create(
            ib,
            arith::CmpIOp::create(ib, arith::CmpIPredicate::eq, c[1], rows),
            ie.ult(tile, reach));
        scf::YieldOp::create(ib, ValueRange{reach, ie.select(hit, r, c[1]),
                                            ie.select(hit, c[0], c[2])});
      });
  Value row = scan.getResult(1), firstTile = scan.getResult(2);
  auto found = scf::IfOp::create(b, e.ult(row, rows), false);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&found.getThenRegion().front());

  Value count = e.loadIndex(counts, {h, row});
  Value tileRow = e.mul(e.sub(tile, firstTile), e.index(kTileRows));
  Value first = e.add(e.loadIndex(starts, {h, row}), tileRow);
  Value valid = e.minU(e.index(kTileRows), e.sub(count, tileRow));

  // The block: its sequence by a scan of cu_seqlens, then its keys.
  Value sequences = e.sub(memref::DimOp::create(b, cu, 0), e.index(1));
  auto seqScan = scf::ForOp::create(
      b, e.index(0), sequences, e.index(1),
      ValueRange{e.index(0), e.index(0), e.index(0), e.index(0)},
      [&](OpBuilder &fb, Location loc, Value i, ValueRange c) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value start = ie.loadIndex(cu, {i});
        Value end = ie.loadIndex(cu, {ie.add(i, ie.index(1))});
        Value blocksHere = arith::CeilDivUIOp::create(
            ib, ie.sub(end, start), ie.index(blockSize));
        Value next = ie.add(c[3], blocksHere);
        Value inside = arith::AndIOp::create(ib, ie.ule(c[3], row),
                                             ie.ult(row, next));
        scf::YieldOp::create(
            ib, ValueRange{ie.select(inside, start, c[0]),
                           ie.select(inside, end, c[1]),
                           ie.select(inside, c[3], c[2]), next});
      });
  Value seqEnd = seqScan.getResult(1);
  Value keyFirst = e.add(
      seqScan.getResult(0),
      e.mul(e.sub(row, seqScan.getResult(2)), e.index(blockSize)));
  Value keyLast = e.minU(e.add(keyFirst, e.index(blockSize)), seqEnd);
  Value lastKey = e.sub(keyLast, e.index(1));

  // This lane's two rows of the tile, and their (token, slot).
  Value quadRow = e.div(lane, e.index(4)), quadCol = e.rem(lane, e.index(4));
  Value pairCol = e.mul(quadCol, e.index(2));
  SmallVector<Value> rowValid, token, slot;
  for (int64_t half = 0; half < 2; ++half) {
    Value i = e.add(quadRow, e.index(8 * half));
    Value isValid = e.ult(i, valid);
    Value at = e.add(first, e.select(isValid, i, e.index(0)));
    Value entry = e.loadIndex(entries, {h, at});
    rowValid.push_back(isValid);
    token.push_back(e.div(entry, e.index(slotsPerToken)));
    slot.push_back(e.rem(entry, e.index(slotsPerToken)));
  }
  Value g = e.div(h, e.index(group));

  // Q as A fragments, once per tile.
  int64_t kSteps = headDim / 16, dTiles = headDim / 8;
  SmallVector<SmallVector<Value>> qFrag;
  for (int64_t kk = 0; kk < kSteps; ++kk) {
    Value col = e.add(e.index(kk * 16), pairCol);
    Value col8 = e.add(col, e.index(8));
    qFrag.push_back({e.loadPair(q, {token[0], h, col}),
                     e.loadPair(q, {token[1], h, col}),
                     e.loadPair(q, {token[0], h, col8}),
                     e.loadPair(q, {token[1], h, col8})});
  }

  // Carried: running max and sum of both rows, and the output accumulators
  // (dTiles x 4 f32, flattened).
  SmallVector<Value> inits = {e.f32(kNegInf), e.f32(kNegInf), e.f32(0.0),
                              e.f32(0.0)};
  for (int64_t i = 0; i < dTiles * 4; ++i)
    inits.push_back(e.f32(0.0));
  Value chunks = arith::CeilDivUIOp::create(b, e.sub(keyLast, keyFirst),
                                            e.index(kKeyChunk));
  auto loop = scf::ForOp::create(
      b, e.index(0), chunks, e.index(1), inits,
      [&](OpBuilder &fb, Location loc, Value chunk, ValueRange c) {
        ImplicitLocOpBuilder ib(loc, fb);
        KernelBuilder ie{ib, e.element};
        Value base = ie.add(keyFirst, ie.mul(chunk, ie.index(kKeyChunk)));
        // S = Q K^T for two halves of 8 keys; then scale and mask.
        SmallVector<SmallVector<Value>> scores(2);
        for (int64_t n = 0; n < 2; ++n) {
          Value key = ie.minU(
              ie.add(base, ie.add(ie.index(8 * n), quadRow)), lastKey);
          SmallVector<Value> acc(4, ie.f32(0.0));
          for (int64_t kk = 0; kk < kSteps; ++kk) {
            Value col = ie.add(ie.index(kk * 16), pairCol);
            acc = ie.mma(qFrag[kk],
                         {ie.loadPair(k, {key, g, col}),
                          ie.loadPair(k, {key, g, ie.add(col, ie.index(8))})},
                         acc);
          }
          for (int64_t i = 0; i < 4; ++i) {
            Value keyAt = ie.add(
                base, ie.add(ie.index(8 * n + i % 2), pairCol));
            Value keep = ie.ult(keyAt, keyLast);
            if (causal)
              keep = arith::AndIOp::create(ib, keep,
                                           ie.ule(keyAt, token[i / 2]));
            scores[n].push_back(ie.select(
                keep, ie.fmul(acc[i], ie.f32(scale)), ie.f32(kNegInf)));
          }
        }
        // Online softmax per row (values i = 0, 1 are row 0; 2, 3 row 1).
        SmallVector<Value> results(c.begin(), c.end());
        SmallVector<Value> alpha(2), probs[2];
        probs[0].resize(4);
        probs[1].resize(4);
        for (int64_t r = 0; r < 2; ++r) {
          Value localMax = ie.f32(kNegInf);
          for (int64_t n = 0; n < 2; ++n)
            for (int64_t i = 0; i < 2; ++i)
              localMax = ie.fmax(localMax, scores[n][2 * r + i]);
          Value newMax = ie.fmax(c[r], ie.quadReduce(localMax, true));
          Value finite = arith::CmpFOp::create(ib, arith::CmpFPredicate::OGT,
                                               newMax, ie.f32(kNegInf));
          Value shift = ie.select(finite, newMax, ie.f32(0.0));
          alpha[r] = ie.exp(arith::SubFOp::create(ib, c[r], shift));
          Value localSum = ie.f32(0.0);
          for (int64_t n = 0; n < 2; ++n)
            for (int64_t i = 0; i < 2; ++i) {
              Value p = ie.exp(
                  arith::SubFOp::create(ib, scores[n][2 * r + i], shift));
              probs[n][2 * r + i] = p;
              localSum = ie.fadd(localSum, p);
            }
          results[r] = newMax;
          results[2 + r] = ie.fadd(ie.fmul(c[2 + r], alpha[r]),
                                   ie.quadReduce(localSum, false));
        }
        // O = O * alpha + P V, P as the A operand.
        SmallVector<Value> pFrag = {ie.pack(probs[0][0], probs[0][1]),
                                    ie.pack(probs[0][2], probs[0][3]),
                                    ie.pack(probs[1][0], probs[1][1]),
                                    ie.pack(probs[1][2], probs[1][3])};
        SmallVector<Value> vKeys;
        for (int64_t i : {0, 1, 8, 9})
          vKeys.push_back(
              ie.minU(ie.add(base, ie.add(pairCol, ie.index(i))), lastKey));
        for (int64_t dn = 0; dn < dTiles; ++dn) {
          Value col = ie.add(ie.index(dn * 8), quadRow);
          auto vAt = [&](int64_t i) {
            return memref::LoadOp::create(ib, v, ValueRange{vKeys[i], g, col})
                .getResult();
          };
          SmallVector<Value> acc;
          for (int64_t i = 0; i < 4; ++i)
            acc.push_back(ie.fmul(c[4 + dn * 4 + i], alpha[i / 2]));
          SmallVector<Value> out = ie.mma(
              pFrag, {ie.pack(vAt(0), vAt(1)), ie.pack(vAt(2), vAt(3))}, acc);
          for (int64_t i = 0; i < 4; ++i)
            results[4 + dn * 4 + i] = out[i];
        }
        scf::YieldOp::create(ib, results);
      });

  // Normalize and write each valid row's partial and log-sum-exp.
  for (int64_t r = 0; r < 2; ++r) {
    auto write = scf::IfOp::create(b, rowValid[r], false);
    OpBuilder::InsertionGuard rowGuard(b);
    b.setInsertionPointToStart(&write.getThenRegion().front());
    Value m = loop.getResult(r), l = loop.getResult(2 + r);
    Value any = arith::CmpFOp::create(b, arith::CmpFPredicate::OGT, l,
                                      e.f32(0.0));
    Value inverse = e.select(any, arith::DivFOp::create(b, e.f32(1.0), l),
                             e.f32(0.0));
    Value lse = e.select(any, e.fadd(m, math::LogOp::create(b, l)),
                         e.f32(kNegInf));
    for (int64_t dn = 0; dn < dTiles; ++dn)
      for (int64_t i = 0; i < 2; ++i) {
        Value col = e.add(e.index(dn * 8 + i), pairCol);
        memref::StoreOp::create(
            b, e.fmul(loop.getResult(4 + dn * 4 + 2 * r + i), inverse),
            partialOut, ValueRange{slot[r], token[r], h, col});
      }
    auto firstLane = scf::IfOp::create(
        b, arith::CmpIOp::create(b, arith::CmpIPredicate::eq, quadCol,
                                 e.index(0)),
        false);
    OpBuilder::InsertionGuard laneGuard(b);
    b.setInsertionPointToStart(&firstLane.getThenRegion().front());
    memref::StoreOp::create(b, lse, partialLse,
                            ValueRange{slot[r], token[r], h});
  }
}

struct MobaConvertGroupedAttentionToNVVMPass
    : public moba::impl::MobaConvertGroupedAttentionToNVVMBase<
          MobaConvertGroupedAttentionToNVVMPass> {
  void runOnOperation() override {
    SmallVector<GroupedBlockAttentionOp> ops;
    getOperation()->walk([&](GroupedBlockAttentionOp op) {
      if (isa<MemRefType>(op.getQ().getType()))
        ops.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (GroupedBlockAttentionOp op : ops) {
      if (!op.isMmaSyncCompatible()) {
        op.emitOpError("has no mma.sync lowering: it needs f16 or bf16 and "
                       "head_dim a static multiple of 16 up to 128");
        return signalPassFailure();
      }
      auto qType = cast<MemRefType>(op.getQ().getType());
      auto kType = cast<MemRefType>(op.getK().getType());
      auto selType = cast<MemRefType>(op.getSelected().getType());
      if (qType.isDynamicDim(1) || kType.isDynamicDim(1) ||
          selType.isDynamicDim(2)) {
        op.emitOpError("the mma.sync lowering needs static heads and K");
        return signalPassFailure();
      }
      // Operand pairs are loaded as one 32-bit word: rows must be
      // contiguous.
      for (Value rowsOf : {op.getQ(), op.getK(), op.getV()})
        if (!cast<MemRefType>(rowsOf.getType()).isLastDimUnitStride()) {
          op.emitOpError("the mma.sync lowering needs q, k and v with a "
                         "unit-stride innermost dim");
          return signalPassFailure();
        }
      rewriter.setInsertionPoint(op);
      ImplicitLocOpBuilder b(op.getLoc(), rewriter);
      AttentionKernel kernel{op,
                             op.getQ(),
                             op.getK(),
                             op.getV(),
                             op.getCuSeqlens(),
                             op.getStarts(),
                             op.getCounts(),
                             op.getEntries(),
                             op.getPartialOutInit(),
                             op.getPartialLseInit(),
                             qType.getDimSize(1),
                             qType.getDimSize(1) / kType.getDimSize(1),
                             qType.getDimSize(2),
                             selType.getDimSize(2),
                             op.getBlockSize(),
                             op.getCausal(),
                             op.getScale().convertToDouble()};
      Value tokens = memref::DimOp::create(b, op.getQ(), 0);
      Value slots = arith::MulIOp::create(
          b, tokens,
          arith::ConstantIndexOp::create(b, kernel.numHeads *
                                                kernel.slotsPerToken));
      emitInitKernel(b, kernel.partialLse, slots, kernel.numHeads, tokens);
      kernel.emit(b);
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
