//===- GroupedAttentionToNVVM.cpp - Grouped attention on tensor cores -----===//
//
// Part of moba-mlir. Implements `moba-convert-grouped-attention-to-nvvm`:
// moba.grouped_block_attention on buffers becomes three GPU launches.
//
//  * An initializing kernel marks every slot's partial empty (log-sum-exp
//    -inf): slots no group lists keep that, and their output rows, which
//    moba.lse_merge does not read, are never written.
//  * The tile list: one warp per head turns the groups' sizes into CTA
//    tiles (prefix sums by shuffles) and writes each tile's block row, its
//    tile in the row and the block's key range, so that no CTA scans.
//  * The attention kernel gives each CTA (MmaTileShape: `warps` warps) one
//    tile: 16 x warps consecutive entries of one group (head h, key block
//    r), queries that all chose block r; each warp takes 16. The block's K
//    and V pass through shared memory `keyChunk` keys at a time, two
//    buffers filled by cp.async, so that the next chunk is in flight while
//    this one is multiplied. Per chunk each warp computes S = Q K^T with
//    `nvvm.mma.sync` m16n8k16 (f16 or bf16 operands, f32 accumulators; K
//    fragments by ldmatrix), runs the online softmax (base 2) on the
//    accumulator fragments (row max and sum over the four lanes that share
//    a row, by xor shuffles), reuses the probabilities as the A operand of
//    P V (the m16n8 accumulator layout of two key tiles is the m16n8k16 A
//    layout; V fragments by ldmatrix.trans), and at the end writes each
//    row's normalized partial and log-sum-exp to its slot. Causally the
//    chunks past the tile's last query are skipped and only the chunks that
//    reach a query or the block's end are masked (a second copy of the
//    loop).
//
// Fragments follow the PTX ISA's layouts for mma.m16n8k16 (row-major A,
// column-major B): with group g = lane / 4 and c = lane % 4, lane holds
// A[g][2c..2c+1], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..];
// B[2c..2c+1][g], B[2c+8..2c+9][g]; C[g][2c..2c+1], C[g+8][2c..2c+1].
// The next form is sm_90a's wgmma fed by TMA (docs/gpu-backend.md).
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
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/PatternMatch.h"

#include <cmath>
#include <limits>

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTGROUPEDATTENTIONTONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;

namespace {

constexpr int64_t kTileRows = 16; // queries per warp (mma M)
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
/// The shared memory one CTA may use on sm_80 and sm_90 (227 KiB).
constexpr int64_t kMaxSharedBytes = 227 * 1024;

/// The work of one CTA: `warps` warps of 16 queries each, over K and V
/// staged `keyChunk` keys at a time through two shared-memory buffers.
///
/// All of the CTA's shared memory is carved out of the one dynamic region:
/// `gpu.dynamic_shared_memory` lowers to a `.shared` symbol at whose address
/// the launch's dynamic bytes begin, so a static workgroup buffer placed
/// after that symbol would lie inside the region (compute-sanitizer's
/// racecheck caught cp.async overwriting such a buffer while warps still
/// read it).
struct MmaTileShape {
  int64_t warps;
  int64_t keyChunk;

  /// K and V, two buffers each, rows padded to head_dim + 8 elements.
  int64_t stageBytes(int64_t headDim, Type element) const {
    return 2 * 2 * keyChunk * (headDim + 8) *
           (element.getIntOrFloatBitWidth() / 8);
  }
  /// After the stages: each warp's first and last token (i32).
  int64_t reduceBytes() const { return 2 * warps * 4; }
  int64_t sharedBytes(int64_t headDim, Type element) const {
    return stageBytes(headDim, element) + reduceBytes();
  }
};

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
  /// max(x, y) as PTX's max.f32: llvm.maxnum, since arith's max ops are
  /// expanded to compares and selects (arith-expand) for their NaN rules. A
  /// NaN score still makes the output NaN, through exp2 and the sums.
  Value fmax(Value x, Value y) { return LLVM::MaxNumOp::create(b, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, x, y); }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, x, y); }
  Value exp2(Value x) { return math::Exp2Op::create(b, x); }
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

  /// `num` 8x8 matrices from shared memory, one operand register each:
  /// lanes 8j..8j+7 address the rows of matrix j (`transpose`: its
  /// columns land in the registers, as the B operand of P V needs).
  SmallVector<Value> ldmatrix(Value memref, ValueRange indices, int64_t num,
                              bool transpose) {
    auto type = VectorType::get({num, 2}, element);
    Value tiles = nvgpu::LdMatrixOp::create(b, type, memref, indices,
                                            transpose, num);
    SmallVector<Value> registers;
    for (int64_t i = 0; i < num; ++i)
      registers.push_back(
          packPair(vector::ExtractOp::create(b, tiles, ArrayRef<int64_t>{i})));
    return registers;
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
/// terminator is added after it), with `sharedBytes` (i32) of dynamic
/// shared memory and static shared buffers of `workgroup` types.
void launch(ImplicitLocOpBuilder &b, Value blocks, int64_t threads,
            Value sharedBytes, TypeRange workgroup,
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

/// Every slot's partial marked empty: log-sum-exp -inf. The output rows of
/// empty slots are left as they are: nothing reads them (moba.lse_merge
/// skips -inf partials).
void emitInitKernel(ImplicitLocOpBuilder &b, Value partialLse, Value slots,
                    int64_t numHeads, Value tokens) {
  KernelBuilder k{b, b.getF32Type()};
  int64_t threads = 128;
  Value blocks = arith::MaxUIOp::create(
      b, arith::CeilDivUIOp::create(b, slots, k.index(threads)), k.index(1));
  launch(b, blocks, threads, /*sharedBytes=*/nullptr, /*workgroup=*/{},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
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
  MmaTileShape shape;

  void emit(ImplicitLocOpBuilder &b);

private:
  Type element() { return cast<MemRefType>(q.getType()).getElementType(); }
  int64_t ctaRows() { return kTileRows * shape.warps; }
  int64_t threads() { return 32 * shape.warps; }
  /// Elements between two staged key rows: head_dim plus 8, so that the
  /// eight row addresses of one ldmatrix phase fall in distinct banks.
  int64_t pitch() { return headDim + 8; }

  /// The tile list: for each head and CTA tile, [block row, tile of the
  /// row, first key, end of the keys]; rows (past the end) when unused. One
  /// warp per head scans the rows' counts 32 at a time (prefix sums by
  /// shuffles), so that no CTA has to.
  void emitTileList(ImplicitLocOpBuilder &b, Value tileList, Value rows,
                    Value tilesPerHead);
  /// The body of one CTA: tile `tile` of head `h`.
  void emitCta(ImplicitLocOpBuilder &b, gpu::LaunchOp launch, Value h,
               Value tile, Value rows, Value tileList);
  /// Starts the cp.async copies of keys [base, base + keyChunk) of K and V
  /// (rows past `lastKey` repeat it; the scores mask them) into `stage`.
  void emitStage(ImplicitLocOpBuilder &b, Value stageBuffer, Value buffer,
                 Value base, Value lastKey, Value g, Value tid);
};

void AttentionKernel::emit(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element()};
  // CTA tiles of one head: at most ceil(E / rows) + NB (each group's last
  // tile may be partial).
  Value rows = memref::DimOp::create(b, counts, 1);
  Value width = memref::DimOp::create(b, entries, 1);
  Value tilesPerHead = e.add(
      arith::CeilDivUIOp::create(b, width, e.index(ctaRows())), rows);
  auto listType = MemRefType::get({numHeads, ShapedType::kDynamic, 4},
                                  b.getI32Type());
  Value tileList =
      memref::AllocOp::create(b, listType, ValueRange{tilesPerHead});
  emitTileList(b, tileList, rows, tilesPerHead);

  Value ctas = arith::MaxUIOp::create(
      b, e.mul(tilesPerHead, e.index(numHeads)), e.index(1));
  int64_t sharedBytes = shape.sharedBytes(headDim, element());
  launch(b, ctas, threads(), e.i32(sharedBytes), /*workgroup=*/{},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp launchOp) {
           KernelBuilder ke{kb, e.element};
           Value cta = launchOp.getBlockIds().x;
           emitCta(kb, launchOp, ke.div(cta, tilesPerHead),
                   ke.rem(cta, tilesPerHead), rows, tileList);
         });
  memref::DeallocOp::create(b, tileList);
}

void AttentionKernel::emitTileList(ImplicitLocOpBuilder &b, Value tileList,
                                   Value rows, Value tilesPerHead) {
  KernelBuilder e{b, element()};
  launch(
      b, e.index(numHeads), 32, /*sharedBytes=*/nullptr, /*workgroup=*/{},
      [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp op) {
        KernelBuilder ke{kb, e.element};
        Value h = op.getBlockIds().x, lane = op.getThreadIds().x;
        auto i32 = [&](ImplicitLocOpBuilder &ib, Value x) -> Value {
          return arith::IndexCastOp::create(ib, ib.getI32Type(), x);
        };
        auto fromI32 = [&](ImplicitLocOpBuilder &ib, Value x) -> Value {
          return arith::IndexCastOp::create(ib, ib.getIndexType(), x);
        };
        Value sequences = ke.sub(memref::DimOp::create(kb, cu, 0),
                                 ke.index(1));
        auto chunks = scf::ForOp::create(
            kb, ke.index(0), rows, ke.index(32), ValueRange{ke.index(0)},
            [&](OpBuilder &fb, Location loc, Value chunk, ValueRange c) {
              ImplicitLocOpBuilder ib(loc, fb);
              KernelBuilder ie{ib, e.element};
              Value row = ie.add(chunk, lane);
              Value inside = ie.ult(row, rows);
              Value count = ie.loadIndex(
                  counts, {h, ie.select(inside, row, ie.index(0))});
              Value tiles = ie.select(
                  inside,
                  arith::CeilDivUIOp::create(ib, count, ie.index(ctaRows())),
                  ie.index(0));
              // Inclusive prefix sum of the tiles over the lanes.
              Value sum = i32(ib, tiles);
              for (int32_t offset : {1, 2, 4, 8, 16}) {
                auto up = gpu::ShuffleOp::create(ib, sum, offset, 32,
                                                 gpu::ShuffleMode::UP);
                sum = arith::AddIOp::create(
                    ib, sum,
                    ie.select(up.getValid(), up.getShuffleResult(),
                              arith::ConstantIntOp::create(
                                  ib, ib.getI32Type(), 0)));
              }
              Value total = gpu::ShuffleOp::create(ib, sum, 31, 32,
                                                   gpu::ShuffleMode::IDX)
                                .getShuffleResult();
              Value firstTile = ie.add(c[0], ie.sub(fromI32(ib, sum), tiles));
              // The row's keys: its sequence by a scan of cu_seqlens.
              auto seqScan = scf::ForOp::create(
                  ib, ie.index(0), sequences, ie.index(1),
                  ValueRange{ie.index(0), ie.index(0), ie.index(0),
                             ie.index(0)},
                  [&](OpBuilder &sb, Location sloc, Value i, ValueRange s) {
                    ImplicitLocOpBuilder jb(sloc, sb);
                    KernelBuilder je{jb, e.element};
                    Value start = je.loadIndex(cu, {i});
                    Value end = je.loadIndex(cu, {je.add(i, je.index(1))});
                    Value blocksHere = arith::CeilDivUIOp::create(
                        jb, je.sub(end, start), je.index(blockSize));
                    Value next = je.add(s[3], blocksHere);
                    Value in = arith::AndIOp::create(
                        jb, je.ule(s[3], row), je.ult(row, next));
                    scf::YieldOp::create(
                        jb, ValueRange{je.select(in, start, s[0]),
                                       je.select(in, end, s[1]),
                                       je.select(in, s[3], s[2]), next});
                  });
              Value keyFirst = ie.add(
                  seqScan.getResult(0),
                  ie.mul(ie.sub(row, seqScan.getResult(2)),
                         ie.index(blockSize)));
              Value keyEnd = ie.minU(ie.add(keyFirst, ie.index(blockSize)),
                                     seqScan.getResult(1));
              scf::ForOp::create(
                  ib, ie.index(0), tiles, ie.index(1), ValueRange{},
                  [&](OpBuilder &tb, Location tloc, Value t, ValueRange) {
                    ImplicitLocOpBuilder jb(tloc, tb);
                    KernelBuilder je{jb, e.element};
                    Value at = je.add(firstTile, t);
                    Value fields[] = {row, t, keyFirst, keyEnd};
                    for (auto [f, value] : llvm::enumerate(fields))
                      memref::StoreOp::create(jb, i32(jb, value), tileList,
                                              ValueRange{h, at, je.index(f)});
                    scf::YieldOp::create(jb);
                  });
              scf::YieldOp::create(ib, ie.add(c[0], fromI32(ib, total)));
            });
        // The unused tiles past the head's last: row = rows.
        Value used = chunks.getResult(0);
        scf::ForOp::create(
            kb, ke.add(used, lane), tilesPerHead, ke.index(32), ValueRange{},
            [&](OpBuilder &tb, Location tloc, Value t, ValueRange) {
              ImplicitLocOpBuilder jb(tloc, tb);
              KernelBuilder je{jb, e.element};
              memref::StoreOp::create(jb, i32(jb, rows), tileList,
                                      ValueRange{h, t, je.index(0)});
              scf::YieldOp::create(jb);
            });
      });
}

void AttentionKernel::emitStage(ImplicitLocOpBuilder &b, Value stageBuffer,
                                Value buffer, Value base, Value lastKey,
                                Value g, Value tid) {
  KernelBuilder e{b, element()};
  // 16-byte copies: head_dim / 8 per key row, spread over the CTA.
  int64_t perRow = headDim / 8, copies = shape.keyChunk * perRow;
  Value sources[] = {k, v};
  for (auto [which, source] : llvm::enumerate(sources)) {
    scf::ForOp::create(
        b, tid, e.index(copies), e.index(threads()), ValueRange{},
        [&, which = which, source = source](OpBuilder &fb, Location loc,
                                            Value j, ValueRange) {
          ImplicitLocOpBuilder ib(loc, fb);
          KernelBuilder ie{ib, e.element};
          Value key = ie.div(j, ie.index(perRow));
          Value col = ie.mul(ie.rem(j, ie.index(perRow)), ie.index(8));
          Value from = ie.minU(ie.add(base, key), lastKey);
          nvgpu::DeviceAsyncCopyOp::create(
              ib, stageBuffer,
              ValueRange{buffer, ie.index(which), key, col}, source,
              ValueRange{from, g, col}, ib.getIndexAttr(8),
              /*srcElements=*/Value(), ib.getUnitAttr());
          scf::YieldOp::create(ib);
        });
  }
}

void AttentionKernel::emitCta(ImplicitLocOpBuilder &b, gpu::LaunchOp launch,
                              Value h, Value tile, Value rows,
                              Value tileList) {
  KernelBuilder e{b, element()};
  Value tid = launch.getThreadIds().x;
  Value warp = e.div(tid, e.index(32)), lane = e.rem(tid, e.index(32));
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  Value raw = gpu::DynamicSharedMemoryOp::create(
      b, MemRefType::get({ShapedType::kDynamic}, b.getI8Type(),
                         MemRefLayoutAttrInterface(), workgroup));
  // [buffer, K or V, key, dim]: two buffers, so that the copies of the next
  // chunk run while this one is multiplied.
  auto stageType =
      MemRefType::get({2, 2, shape.keyChunk, pitch()}, element(),
                      MemRefLayoutAttrInterface(), workgroup);
  Value stageBuffer =
      memref::ViewOp::create(b, stageType, raw, e.index(0), ValueRange{});
  // [warp's last token..., warp's first token...] behind the stages.
  auto reduceType = MemRefType::get({2 * shape.warps}, b.getI32Type(),
                                    MemRefLayoutAttrInterface(), workgroup);
  Value reduceBuffer = memref::ViewOp::create(
      b, reduceType, raw, e.index(shape.stageBytes(headDim, element())),
      ValueRange{});

  // The tile's group and keys, from the tile list (the same for every
  // thread: the barriers inside the branch are reached by all).
  auto field = [&](int64_t f) {
    return e.loadIndex(tileList, {h, tile, e.index(f)});
  };
  Value row = field(0);
  auto found = scf::IfOp::create(b, e.ult(row, rows), false);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&found.getThenRegion().front());

  Value count = e.loadIndex(counts, {h, row});
  Value tileRow = e.mul(field(1), e.index(ctaRows()));
  Value first = e.add(e.loadIndex(starts, {h, row}), tileRow);
  Value valid = e.minU(e.index(ctaRows()), e.sub(count, tileRow));
  Value keyFirst = field(2), keyLast = field(3);
  Value lastKey = e.sub(keyLast, e.index(1));
  Value g = e.div(h, e.index(group));

  // This lane's two rows of its warp's 16, and their (token, slot).
  Value quadRow = e.div(lane, e.index(4)), quadCol = e.rem(lane, e.index(4));
  Value pairCol = e.mul(quadCol, e.index(2));
  Value warpRow = e.mul(warp, e.index(kTileRows));
  SmallVector<Value> rowValid, token, slot;
  for (int64_t half = 0; half < 2; ++half) {
    Value i = e.add(warpRow, e.add(quadRow, e.index(8 * half)));
    Value isValid = e.ult(i, valid);
    Value at = e.add(first, e.select(isValid, i, e.index(0)));
    Value entry = e.loadIndex(entries, {h, at});
    rowValid.push_back(isValid);
    token.push_back(e.div(entry, e.index(slotsPerToken)));
    slot.push_back(e.rem(entry, e.index(slotsPerToken)));
  }

  // Causally no query of the tile sees keys past its last token: the
  // chunks after it are skipped (half the own block, on average); and
  // chunks that end before its first token and before keyLimit need no
  // mask (all but the own block's diagonal).
  Value keyLimit = keyLast, unmaskedEnd = keyLast;
  if (causal) {
    Value mine = e.add(first, e.select(e.ult(tid, valid), tid, e.index(0)));
    Value latest = e.div(e.loadIndex(entries, {h, mine}),
                         e.index(slotsPerToken));
    Value earliest = latest;
    for (int64_t offset : {16, 8, 4, 2, 1}) {
      auto other = [&](Value x) -> Value {
        Value bits = arith::IndexCastOp::create(b, b.getI32Type(), x);
        Value got = gpu::ShuffleOp::create(b, bits, offset, /*width=*/32,
                                           gpu::ShuffleMode::XOR)
                        .getShuffleResult();
        return arith::IndexCastOp::create(b, b.getIndexType(), got);
      };
      latest = arith::MaxUIOp::create(b, latest, other(latest));
      earliest = e.minU(earliest, other(earliest));
    }
    auto leader = scf::IfOp::create(
        b, arith::CmpIOp::create(b, arith::CmpIPredicate::eq, lane,
                                 e.index(0)),
        false);
    {
      OpBuilder::InsertionGuard leaderGuard(b);
      b.setInsertionPointToStart(&leader.getThenRegion().front());
      auto toI32 = [&](Value x) -> Value {
        return arith::IndexCastOp::create(b, b.getI32Type(), x);
      };
      memref::StoreOp::create(b, toI32(latest), reduceBuffer,
                              ValueRange{warp});
      memref::StoreOp::create(b, toI32(earliest), reduceBuffer,
                              ValueRange{e.add(warp, e.index(shape.warps))});
    }
    gpu::BarrierOp::create(b);
    auto reduced = [&](int64_t i) {
      return e.loadIndex(reduceBuffer, {e.index(i)});
    };
    Value last = reduced(0), firstToken = reduced(shape.warps);
    for (int64_t w = 1; w < shape.warps; ++w) {
      last = arith::MaxUIOp::create(b, last, reduced(w));
      firstToken = e.minU(firstToken, reduced(shape.warps + w));
    }
    keyLimit = arith::MaxUIOp::create(
        b, keyFirst, e.minU(keyLast, e.add(last, e.index(1))));
    unmaskedEnd = arith::MaxUIOp::create(
        b, keyFirst, e.minU(keyLimit, e.add(firstToken, e.index(1))));
  }

  // Q as A fragments, once per tile.
  int64_t kSteps = headDim / 16, dTiles = headDim / 8;
  int64_t nTiles = shape.keyChunk / 8;
  SmallVector<SmallVector<Value>> qFrag;
  for (int64_t kk = 0; kk < kSteps; ++kk) {
    Value col = e.add(e.index(kk * 16), pairCol);
    Value col8 = e.add(col, e.index(8));
    qFrag.push_back({e.loadPair(q, {token[0], h, col}),
                     e.loadPair(q, {token[1], h, col}),
                     e.loadPair(q, {token[0], h, col8}),
                     e.loadPair(q, {token[1], h, col8})});
  }

  // The software pipeline: chunk c + 1 is copied while chunk c is
  // multiplied. One cp.async group per chunk (empty past the last), so
  // that "all but the newest group done" always means "chunk c landed".
  Value chunks = arith::CeilDivUIOp::create(b, e.sub(keyLimit, keyFirst),
                                            e.index(shape.keyChunk));
  Value chunkKeys = e.index(shape.keyChunk);
  {
    auto any = scf::IfOp::create(b, e.ult(e.index(0), chunks), false);
    OpBuilder::InsertionGuard anyGuard(b);
    b.setInsertionPointToStart(&any.getThenRegion().front());
    emitStage(b, stageBuffer, e.index(0), keyFirst, lastKey, g, tid);
  }
  NVVM::CpAsyncCommitGroupOp::create(b);

  // The softmax runs in base 2: p = exp2(s * scale * log2(e) - max).
  double scaleLog2 = scale / std::log(2.0);
  // Carried: running max of both rows, this lane's part of their sums, and
  // the output accumulators (dTiles x 4 f32, flattened).
  SmallVector<Value> inits = {e.f32(kNegInf), e.f32(kNegInf), e.f32(0.0),
                              e.f32(0.0)};
  for (int64_t i = 0; i < dTiles * 4; ++i)
    inits.push_back(e.f32(0.0));
  // Two loops over the chunks, the same but for the mask: chunks
  // [0, unmasked) need none, the rest (the block's end, the diagonal) do.
  Value unmasked = e.minU(
      chunks, e.div(e.sub(unmaskedEnd, keyFirst), e.index(shape.keyChunk)));
  auto chunkLoop = [&](Value from, Value to, ValueRange loopInits,
                       bool masked) {
    return scf::ForOp::create(
        b, from, to, e.index(1), loopInits,
        [&](OpBuilder &fb, Location loc, Value chunk, ValueRange c) {
          ImplicitLocOpBuilder ib(loc, fb);
          KernelBuilder ie{ib, e.element};
          Value next = ie.add(chunk, ie.index(1));
          {
            auto more = scf::IfOp::create(ib, ie.ult(next, chunks), false);
            OpBuilder::InsertionGuard moreGuard(ib);
            ib.setInsertionPointToStart(&more.getThenRegion().front());
            emitStage(ib, stageBuffer, ie.rem(next, ie.index(2)),
                      ie.add(keyFirst, ie.mul(next, chunkKeys)), lastKey, g,
                      tid);
          }
          NVVM::CpAsyncCommitGroupOp::create(ib);
          NVVM::CpAsyncWaitGroupOp::create(ib, 1);
          gpu::BarrierOp::create(ib);

          Value buffer = ie.rem(chunk, ie.index(2));
          Value base = ie.add(keyFirst, ie.mul(chunk, chunkKeys));
          Value lane8 = ie.rem(lane, ie.index(8));
          Value laneMatrix = ie.div(lane, ie.index(8));
          // S = Q K^T, 8 keys per n-tile; K fragments by ldmatrix: lanes
          // 8j..8j+7 address the rows of matrix j (x4: two k-steps). The
          // k-steps outside, the n-tiles inside: nTiles independent
          // accumulator chains for the scheduler to interleave.
          SmallVector<SmallVector<Value>> scores(
              nTiles, SmallVector<Value>(4, ie.f32(0.0)));
          for (int64_t kk = 0; kk < kSteps; kk += 2) {
            bool pair = kk + 1 < kSteps;
            Value matrix = pair ? laneMatrix : ie.rem(laneMatrix, ie.index(2));
            Value col = ie.add(ie.index(kk * 16), ie.mul(matrix, ie.index(8)));
            for (int64_t nt = 0; nt < nTiles; ++nt) {
              Value keyRow = ie.add(ie.index(nt * 8), lane8);
              SmallVector<Value> frag = ie.ldmatrix(
                  stageBuffer, {buffer, ie.index(0), keyRow, col}, pair ? 4 : 2,
                  /*transpose=*/false);
              scores[nt] = ie.mma(qFrag[kk], {frag[0], frag[1]}, scores[nt]);
              if (pair)
                scores[nt] =
                    ie.mma(qFrag[kk + 1], {frag[2], frag[3]}, scores[nt]);
            }
          }
          // Masked to -inf: keys past keyLimit and, causally, past the row's
          // query.
          if (masked)
            for (int64_t nt = 0; nt < nTiles; ++nt)
              for (int64_t i = 0; i < 4; ++i) {
                Value keyAt = ie.add(
                    base, ie.add(ie.index(8 * nt + i % 2), pairCol));
                Value keep = ie.ult(keyAt, keyLimit);
                if (causal)
                  keep = arith::AndIOp::create(ib, keep,
                                               ie.ule(keyAt, token[i / 2]));
                scores[nt][i] = ie.select(keep, scores[nt][i], ie.f32(kNegInf));
              }
          // Online softmax per row (values i = 0, 1 are row 0; 2, 3 row 1).
          SmallVector<Value> results(c.begin(), c.end());
          SmallVector<Value> alpha(2);
          for (int64_t r = 0; r < 2; ++r) {
            Value localMax = ie.f32(kNegInf);
            for (int64_t nt = 0; nt < nTiles; ++nt)
              for (int64_t i = 0; i < 2; ++i)
                localMax = ie.fmax(localMax, scores[nt][2 * r + i]);
            // The scores are unscaled: scale * log2(e) > 0 keeps the max.
            Value newMax = ie.fmax(
                c[r],
                ie.fmul(ie.quadReduce(localMax, true), ie.f32(scaleLog2)));
            Value finite = arith::CmpFOp::create(ib, arith::CmpFPredicate::OGT,
                                                 newMax, ie.f32(kNegInf));
            Value shift = ie.select(finite, newMax, ie.f32(0.0));
            alpha[r] = ie.exp2(arith::SubFOp::create(ib, c[r], shift));
            Value localSum = ie.f32(0.0);
            for (int64_t nt = 0; nt < nTiles; ++nt)
              for (int64_t i = 0; i < 2; ++i) {
                Value p = ie.exp2(math::FmaOp::create(
                    ib, scores[nt][2 * r + i], ie.f32(scaleLog2),
                    arith::NegFOp::create(ib, shift)));
                scores[nt][2 * r + i] = p;
                localSum = ie.fadd(localSum, p);
              }
            results[r] = newMax;
            results[2 + r] = ie.fadd(ie.fmul(c[2 + r], alpha[r]), localSum);
          }
          // O = O * alpha + P V: P (two n-tiles) is the A operand of one
          // k-step; V fragments by ldmatrix.trans (x4: two d-tiles).
          for (int64_t i = 0; i < dTiles * 4; ++i)
            results[4 + i] = ie.fmul(c[4 + i], alpha[(i % 4) / 2]);
          Value vRow = ie.add(lane8, ie.mul(ie.rem(laneMatrix, ie.index(2)),
                                            ie.index(8)));
          Value vCol = ie.mul(ie.div(lane, ie.index(16)), ie.index(8));
          for (int64_t kv = 0; kv < nTiles / 2; ++kv) {
            const SmallVector<Value> &lo = scores[2 * kv],
                                     &hi = scores[2 * kv + 1];
            SmallVector<Value> pFrag = {
                ie.pack(lo[0], lo[1]), ie.pack(lo[2], lo[3]),
                ie.pack(hi[0], hi[1]), ie.pack(hi[2], hi[3])};
            Value keyRow = ie.add(ie.index(kv * 16), vRow);
            for (int64_t dn = 0; dn < dTiles; dn += 2) {
              SmallVector<Value> frag = ie.ldmatrix(
                  stageBuffer,
                  {buffer, ie.index(1), keyRow, ie.add(ie.index(dn * 8), vCol)},
                  4, /*transpose=*/true);
              for (int64_t t = 0; t < 2; ++t) {
                SmallVector<Value> acc(results.begin() + 4 + (dn + t) * 4,
                                       results.begin() + 8 + (dn + t) * 4);
                SmallVector<Value> out =
                    ie.mma(pFrag, {frag[2 * t], frag[2 * t + 1]}, acc);
                llvm::copy(out, results.begin() + 4 + (dn + t) * 4);
              }
            }
          }
          // Every warp is done with this buffer before it is refilled.
          gpu::BarrierOp::create(ib);
          scf::YieldOp::create(ib, results);
        });
  };
  auto plain = chunkLoop(e.index(0), unmasked, inits, /*masked=*/false);
  auto loop = chunkLoop(unmasked, chunks, plain.getResults(), /*masked=*/true);
  NVVM::CpAsyncWaitGroupOp::create(b, 0);

  // Normalize and write each valid row's partial and log-sum-exp.
  for (int64_t r = 0; r < 2; ++r) {
    Value m = loop.getResult(r);
    Value l = e.quadReduce(loop.getResult(2 + r), false);
    auto write = scf::IfOp::create(b, rowValid[r], false);
    OpBuilder::InsertionGuard rowGuard(b);
    b.setInsertionPointToStart(&write.getThenRegion().front());
    Value any = arith::CmpFOp::create(b, arith::CmpFPredicate::OGT, l,
                                      e.f32(0.0));
    Value inverse = e.select(any, arith::DivFOp::create(b, e.f32(1.0), l),
                             e.f32(0.0));
    Value lse = e.select(
        any,
        e.fmul(e.fadd(m, math::Log2Op::create(b, l)), e.f32(std::log(2.0))),
        e.f32(kNegInf));
    for (int64_t dn = 0; dn < dTiles; ++dn) {
      Value col = e.add(e.index(dn * 8), pairCol);
      Value pair = vector::FromElementsOp::create(
          b, VectorType::get({2}, b.getF32Type()),
          ValueRange{e.fmul(loop.getResult(4 + dn * 4 + 2 * r), inverse),
                     e.fmul(loop.getResult(5 + dn * 4 + 2 * r), inverse)});
      vector::StoreOp::create(b, pair, partialOut,
                              ValueRange{slot[r], token[r], h, col})
          .setAlignment(8);
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
  using Base::Base;

  void runOnOperation() override {
    SmallVector<GroupedBlockAttentionOp> ops;
    getOperation()->walk([&](GroupedBlockAttentionOp op) {
      if (isa<MemRefType>(op.getQ().getType()))
        ops.push_back(op);
    });
    MmaTileShape shape{static_cast<int64_t>(warps),
                       static_cast<int64_t>(keyChunk)};
    if (warps < 1 || warps > 16) {
      getOperation()->emitError()
          << "moba-convert-grouped-attention-to-nvvm: warps must be in "
             "[1, 16], got "
          << static_cast<int64_t>(warps);
      return signalPassFailure();
    }
    if (keyChunk < 16 || keyChunk > 256 || keyChunk % 16 != 0) {
      getOperation()->emitError()
          << "moba-convert-grouped-attention-to-nvvm: key-chunk must be a "
             "multiple of 16 in [16, 256], got "
          << static_cast<int64_t>(keyChunk);
      return signalPassFailure();
    }
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
      int64_t sharedBytes =
          shape.sharedBytes(qType.getDimSize(2), qType.getElementType());
      if (sharedBytes > kMaxSharedBytes) {
        op.emitOpError() << "needs " << sharedBytes
                         << " bytes of shared memory with key-chunk "
                         << static_cast<int64_t>(keyChunk) << " (at most "
                         << kMaxSharedBytes
                         << "): use a smaller key-chunk";
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
                             static_cast<int64_t>(op.getBlockSize()),
                             op.getCausal(),
                             op.getScale().convertToDouble(),
                             shape};
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
