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
//    and V pass through shared memory `keyChunk` keys at a time, the stage
//    ring's buffers filled by cp.async, so that the next chunk is in
//    flight while this one is multiplied. Per chunk each warp computes S = Q K^T with
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
// The sm_90a form, on wgmma, is WgmmaChunkLoop.cpp (docs/gpu-backend.md).
//
// This file holds the kernel's frame (the launches, the tile list, the
// tensor maps, a CTA's prologue and epilogue) and the pass; the parts are
// beside it: the mma.sync loop (MmaSyncChunkLoop.cpp), the wgmma loop and
// its schedules (WgmmaChunkLoop.cpp, WgmmaOperands.h, TmaLoader.h), the
// pipelines both loops run on (ChunkPipelines.cpp, StageRing.h), the
// online softmax they share (SoftmaxStep.cpp) and the fused merge
// (FusedMerge.cpp).
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

#include "moba/Conversion/Passes.h"
#include "moba/Dialect/Moba/Utils/NumericSemantics.h"

#include "mlir/IR/PatternMatch.h"

#include <cmath>

namespace mlir::moba {
#define GEN_PASS_DEF_MOBACONVERTGROUPEDATTENTIONTONVVM
#include "moba/Conversion/Passes.h.inc"
} // namespace mlir::moba

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;

namespace {

/// Every slot's partial marked empty: log-sum-exp -inf. The output rows of
/// empty slots are left as they are: nothing reads them (moba.lse_merge
/// skips -inf partials).
void emitInitKernel(ImplicitLocOpBuilder &b, Value partialLse, Value slots,
                    int64_t numHeads, Value tokens) {
  nvvm_kernel::launchPerItem(b, slots, /*threads=*/128,
                             [&](ImplicitLocOpBuilder &kb, Value linear) {
    KernelBuilder e{kb, kb.getF32Type()};
    Value h = e.rem(linear, e.index(numHeads));
    Value rest = e.div(linear, e.index(numHeads));
    Value t = e.rem(rest, tokens);
    Value s = e.div(rest, tokens);
    memref::StoreOp::create(kb, e.f32(kNegInf), partialLse,
                            ValueRange{s, t, h});
  });
}

} // namespace

void AttentionKernel::emit(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element()};
  // CTA tiles of one head: at most ceil(E / rows) + NB (each group's last
  // tile may be partial).
  Value rows = memref::DimOp::create(b, counts, 1);
  Value width = memref::DimOp::create(b, entries, 1);
  Value tilesPerHead = e.add(
      arith::CeilDivUIOp::create(b, width, e.index(ctaRows())), rows);
  // Clusters of two take tiles 2i and 2i + 1 of one head.
  if (shape.multicastPairs)
    tilesPerHead = e.mul(
        arith::CeilDivUIOp::create(b, tilesPerHead, e.index(2)), e.index(2));
  auto listType = MemRefType::get({numHeads, ShapedType::kDynamic, 4},
                                  b.getI32Type());
  Value tileList =
      memref::AllocOp::create(b, listType, ValueRange{tilesPerHead});
  emitTileList(b, tileList, rows, tilesPerHead);

  if (shape.bulkLoads)
    emitTensorMaps(b);
  Value tiles = e.mul(tilesPerHead, e.index(numHeads));
  Value ctas = arith::MaxUIOp::create(b, tiles, e.index(1));
  int64_t sharedBytes = shape.sharedBytes(headDim, element());
  int64_t statedCtas = shape.statedCtasPerSM(headDim, element());
  // Persistent CTAs: one wave, as many as the device's SMs hold at once
  // (the runtime's mobaMultiprocessorCount).
  if (shape.persistent()) {
    constexpr StringLiteral kCounter = "mobaMultiprocessorCount";
    declareRuntimeFunction(
        b, kCounter, FunctionType::get(b.getContext(), {}, {b.getIndexType()}));
    Value sms = func::CallOp::create(b, kCounter, TypeRange{b.getIndexType()},
                                     ValueRange{})
                    .getResult(0);
    ctas = e.minU(ctas, e.mul(sms, e.index(statedCtas)));
  }
  launch(b, ctas, threads(), e.i32(sharedBytes), /*workgroup=*/{},
         [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp launchOp) {
           // The occupancy the shared memory was sized for, as a cap on
           // ptxas's registers; moba-gpu-kernel-outlining carries it to
           // the kernel.
           if (statedCtas > 0)
             launchOp->setAttr(
                 NVVM::NVVMDialect::getMinctasmAttrName(),
                 kb.getI32IntegerAttr(static_cast<int32_t>(statedCtas)));
           // The warp-specialized CTA's registers are set by its size:
           // setmaxnreg needs every warp to start at ptxas's bound.
           if (shape.warpSpecialized())
             launchOp->setAttr(NVVM::NVVMDialect::getMaxntidAttrName(),
                               kb.getDenseI32ArrayAttr(
                                   {static_cast<int32_t>(threads()), 1, 1}));
           // Pairs of CTAs launched as clusters (.reqnctapercluster): the
           // grid's CTAs are an even number.
           if (shape.multicastPairs)
             launchOp->setAttr(
                 NVVM::NVVMDialect::getClusterDimAttrName(),
                 kb.getDenseI32ArrayAttr(
                     {static_cast<int32_t>(shape.clusterSize()), 1, 1}));
           if (shape.persistent())
             return emitPersistentCta(kb, launchOp, tiles, tilesPerHead,
                                      rows, tileList);
           KernelBuilder ke{kb, e.element};
           Value cta = launchOp.getBlockIds().x;
           emitCta(kb, launchOp, ke.div(cta, tilesPerHead),
                   ke.rem(cta, tilesPerHead), rows, tileList);
         });
  memref::DeallocOp::create(b, tileList);
  if (tensorMaps)
    memref::DeallocOp::create(b, tensorMaps);
  if (arrivals)
    memref::DeallocOp::create(b, arrivals);
}

void AttentionKernel::declareRuntimeFunction(ImplicitLocOpBuilder &b,
                                             StringRef name,
                                             FunctionType type) {
  auto module = op->getParentOfType<ModuleOp>();
  if (module.lookupSymbol(name))
    return;
  OpBuilder mb = OpBuilder::atBlockBegin(module.getBody());
  func::FuncOp::create(mb, b.getLoc(), name, type).setPrivate();
}

void AttentionKernel::emitTensorMaps(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element()};
  MLIRContext *context = b.getContext();
  Type index = b.getIndexType();
  // The runtime's encoder, declared once per module.
  constexpr StringLiteral kEncoder = "mobaEncodeTensorMap";
  declareRuntimeFunction(
      b, kEncoder,
      FunctionType::get(context, SmallVector<Type>(10, index), {}));
  // Two CUtensorMaps of 16 words, encoded into host memory.
  constexpr int64_t kMapWords = 16;
  auto wordsType = MemRefType::get({2 * kMapWords}, b.getI64Type());
  Value host = memref::AllocaOp::create(b, wordsType);
  Value hostAddress = memref::ExtractAlignedPointerAsIndexOp::create(b, host);
  int64_t bytes = MmaTileShape::bytesOf(element());
  SmallVector<Value, 2> sources = {k, v};
  for (auto [operand, source] : llvm::enumerate(sources)) {
    auto meta = memref::ExtractStridedMetadataOp::create(b, source);
    Value address =
        e.add(memref::ExtractAlignedPointerAsIndexOp::create(b, source),
              e.mul(meta.getOffset(), e.index(bytes)));
    func::CallOp::create(
        b, kEncoder, TypeRange{},
        ValueRange{e.add(hostAddress, e.index(operand * kMapWords * 8)),
                   address, meta.getSizes()[0], meta.getSizes()[1],
                   meta.getSizes()[2], meta.getStrides()[0],
                   meta.getStrides()[1],
                   e.index(element().isBF16() ? 1 : 0),
                   e.index(shape.keyChunk), e.index(operand)});
  }
  SmallVector<Value> words;
  for (int64_t i = 0; i < 2 * kMapWords; ++i)
    words.push_back(memref::LoadOp::create(b, host, ValueRange{e.index(i)}));
  // Their bytes as a kernel's arguments, stored to device memory in stream
  // order; the generic proxy's stores are released to the tensormap proxy
  // that TMA reads them through.
  tensorMaps = memref::AllocOp::create(b, wordsType);
  launch(b, e.index(1), /*threads=*/1, /*sharedBytes=*/nullptr,
         /*workgroup=*/{}, [&](ImplicitLocOpBuilder &kb, gpu::LaunchOp) {
           KernelBuilder ke{kb, e.element};
           for (auto [i, word] : llvm::enumerate(words))
             memref::StoreOp::create(kb, word, tensorMaps,
                                     ValueRange{ke.index(i)});
           NVVM::FenceProxyReleaseOp::create(kb, NVVM::MemScopeKind::GPU);
         });
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
              Value sum = ie.warpInclusiveSum(i32(ib, tiles));
              Value total = gpu::ShuffleOp::create(ib, sum, 31, 32,
                                                   gpu::ShuffleMode::IDX)
                                .getShuffleResult();
              Value firstTile = ie.add(c[0], ie.sub(fromI32(ib, sum), tiles));
              // The row's keys.
              nvvm_kernel::BlockRow keys =
                  nvvm_kernel::locateBlockRow(ib, cu, row, blockSize);
              Value keyFirst = keys.first, keyEnd = keys.end;
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

CtaTile AttentionKernel::ctaFrame(ImplicitLocOpBuilder &b,
                                  gpu::LaunchOp launch) {
  KernelBuilder e{b, element()};
  CtaTile t;
  t.tid = launch.getThreadIds().x;
  t.warp = e.div(t.tid, e.index(32));
  t.lane = e.rem(t.tid, e.index(32));
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  t.sharedMemory = gpu::DynamicSharedMemoryOp::create(
      b, MemRefType::get({ShapedType::kDynamic}, b.getI8Type(),
                         MemRefLayoutAttrInterface(), workgroup));
  return t;
}

void AttentionKernel::emitCta(ImplicitLocOpBuilder &b, gpu::LaunchOp launch,
                              Value h, Value tile, Value rows,
                              Value tileList) {
  KernelBuilder e{b, element()};
  CtaTile t = ctaFrame(b, launch);
  t.h = h;
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  // [warp's last token..., warp's first token...]: behind the stages of
  // mma.sync, in front of wgmma's aligned operands.
  auto reduceType = MemRefType::get({2 * shape.warps}, b.getI32Type(),
                                    MemRefLayoutAttrInterface(), workgroup);
  int64_t reduceOffset =
      shape.isWgmma() ? 0 : shape.stageBytes(headDim, element());
  Value reduceBuffer = memref::ViewOp::create(
      b, reduceType, t.sharedMemory, e.index(reduceOffset), ValueRange{});

  // The tile's group and keys, from the tile list (the same for every
  // thread: the barriers inside the branch are reached by all).
  auto field = [&](int64_t f) {
    return e.loadIndex(tileList, {h, tile, e.index(f)});
  };
  Value row = field(0);
  auto found = scf::IfOp::create(b, e.ult(row, rows), false);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&found.getThenRegion().front());

  Value keyLast = readTileKeys(b, t, tile, row, tileList);
  if (shape.multicastPairs) {
    // The pair shares its copies where both tiles read the same chunks:
    // the same block row, and (causal) every query of both tiles past the
    // block, which then bounds neither tile's keys. The entries of a row
    // are in token order, so a tile's first is its earliest. Both CTAs
    // compute the same answer.
    Value partner = arith::XOrIOp::create(b, tile, e.index(1));
    Value partnerRow = e.loadIndex(tileList, {h, partner, e.index(0)});
    t.paired = arith::CmpIOp::create(b, arith::CmpIPredicate::eq, row,
                                     partnerRow);
    if (causal) {
      Value partnerTile = e.select(
          t.paired, e.loadIndex(tileList, {h, partner, e.index(1)}),
          field(1));
      auto pastBlock = [&](Value tileOfRow) {
        Value at = e.add(e.loadIndex(starts, {h, row}),
                         e.mul(tileOfRow, e.index(ctaRows())));
        Value token =
            e.div(e.loadIndex(entries, {h, at}), e.index(slotsPerToken));
        return arith::CmpIOp::create(b, arith::CmpIPredicate::uge, token,
                                     keyLast);
      };
      t.paired = arith::AndIOp::create(
          b, t.paired,
          arith::AndIOp::create(b, pastBlock(field(1)),
                                pastBlock(partnerTile)));
    }
    t.clusterRank = NVVM::ClusterId::create(b, b.getI32Type());
  }
  if (shape.bulkLoads)
    startBulkLoads(b, t);

  readLaneRows(b, t);

  // The tile's first and last token (boundChunks), reduced over its
  // entries: each thread reads one, the warps reduce by shuffles, then
  // across warps through shared memory.
  if (causal) {
    Value mine =
        e.add(t.first, e.select(e.ult(t.tid, t.valid), t.tid, e.index(0)));
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
    // Lane 0 of each warp that holds queries (not the producer's).
    Value leads =
        arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.lane, e.index(0));
    if (shape.warpSpecialized())
      leads = arith::AndIOp::create(b, leads,
                                    e.ult(t.warp, e.index(shape.warps)));
    auto leader = scf::IfOp::create(b, leads, false);
    {
      OpBuilder::InsertionGuard leaderGuard(b);
      b.setInsertionPointToStart(&leader.getThenRegion().front());
      memref::StoreOp::create(b, nvvm_kernel::toI32(b, latest), reduceBuffer,
                              ValueRange{t.warp});
      memref::StoreOp::create(b, nvvm_kernel::toI32(b, earliest), reduceBuffer,
                              ValueRange{e.add(t.warp, e.index(shape.warps))});
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
    boundChunks(b, t, keyLast, last, firstToken);
  } else {
    boundChunks(b, t, keyLast, Value(), Value());
  }
  if (ctaWork)
    return ctaWork(b, t);
  if (!shape.warpSpecialized())
    return emitCtaChunks(b, t);

  // The producer warpgroup fills the ring, the others attend. One CTA
  // barrier first publishes the mbarriers' initialization (startBulkLoads)
  // to the producer; the two branches never meet again, so no barrier of
  // the whole CTA follows (the consumers' have their own id).
  gpu::BarrierOp::create(b);
  auto roles = scf::IfOp::create(
      b, e.ult(t.tid, e.index(shape.consumerThreads())),
      /*withElseRegion=*/true);
  b.setInsertionPointToStart(&roles.getThenRegion().front());
  emitCtaChunks(b, t);
  b.setInsertionPointToStart(&roles.getElseRegion().front());
  emitProducer(b, t);
}

Value AttentionKernel::readTileKeys(ImplicitLocOpBuilder &b, CtaTile &t,
                                    Value tile, Value row, Value tileList) {
  KernelBuilder e{b, element()};
  auto field = [&](int64_t f) {
    return e.loadIndex(tileList, {t.h, tile, e.index(f)});
  };
  Value count = e.loadIndex(counts, {t.h, row});
  Value tileRow = e.mul(field(1), e.index(ctaRows()));
  t.first = e.add(e.loadIndex(starts, {t.h, row}), tileRow);
  t.valid = e.minU(e.index(ctaRows()), e.sub(count, tileRow));
  t.keyFirst = field(2);
  Value keyLast = field(3);
  t.lastKey = e.sub(keyLast, e.index(1));
  t.g = e.div(t.h, e.index(group));
  return keyLast;
}

void AttentionKernel::readLaneRows(ImplicitLocOpBuilder &b, CtaTile &t) {
  KernelBuilder e{b, element()};
  t.quadRow = e.div(t.lane, e.index(4));
  t.quadCol = e.rem(t.lane, e.index(4));
  t.pairCol = e.mul(t.quadCol, e.index(2));
  Value warpRow = e.mul(t.warp, e.index(kTileRows));
  t.rowValid.clear();
  t.token.clear();
  t.slot.clear();
  for (int64_t half = 0; half < 2; ++half) {
    Value i = e.add(warpRow, e.add(t.quadRow, e.index(8 * half)));
    Value isValid = e.ult(i, t.valid);
    Value at = e.add(t.first, e.select(isValid, i, e.index(0)));
    Value entry = e.loadIndex(entries, {t.h, at});
    t.rowValid.push_back(isValid);
    t.token.push_back(e.div(entry, e.index(slotsPerToken)));
    t.slot.push_back(e.rem(entry, e.index(slotsPerToken)));
  }
}

void AttentionKernel::boundChunks(ImplicitLocOpBuilder &b, CtaTile &t,
                                  Value keyLast, Value latest,
                                  Value earliest) {
  KernelBuilder e{b, element()};
  // Causally no query of the tile sees keys past its last token: the
  // chunks after it are skipped (half the own block, on average); and
  // chunks that end before its first token and before keyLimit need no
  // mask (all but the own block's diagonal).
  t.keyLimit = keyLast;
  Value unmaskedEnd = keyLast;
  if (latest) {
    t.keyLimit = arith::MaxUIOp::create(
        b, t.keyFirst, e.minU(keyLast, e.add(latest, e.index(1))));
    unmaskedEnd = arith::MaxUIOp::create(
        b, t.keyFirst, e.minU(t.keyLimit, e.add(earliest, e.index(1))));
  }
  t.chunks = arith::CeilDivUIOp::create(b, e.sub(t.keyLimit, t.keyFirst),
                                        e.index(shape.keyChunk));
  t.unmasked = e.minU(t.chunks, e.div(e.sub(unmaskedEnd, t.keyFirst),
                                      e.index(shape.keyChunk)));
}

void AttentionKernel::emitCtaChunks(ImplicitLocOpBuilder &b,
                                    const CtaTile &t) {
  KernelBuilder e{b, element()};
  Value h = t.h;
  SmallVector<Value> finals =
      shape.isWgmma() ? emitWgmmaChunks(b, t) : emitMmaSyncChunks(b, t);

  // Normalize and write each valid row's partial and log-sum-exp.
  int64_t dTiles = headDim / 8;
  for (int64_t r = 0; r < 2; ++r) {
    Value m = finals[r];
    Value l = e.quadReduce(finals[2 + r], false);
    auto write = scf::IfOp::create(b, t.rowValid[r], false);
    OpBuilder::InsertionGuard rowGuard(b);
    b.setInsertionPointToStart(&write.getThenRegion().front());
    // l != 0 rather than l > 0: a NaN row stays NaN (docs/semantics.md).
    Value any = attendedAny(b, b.getLoc(), l);
    Value inverse = e.select(any, arith::DivFOp::create(b, e.f32(1.0), l),
                             e.f32(0.0));
    Value lse = e.select(
        any,
        e.fmul(e.fadd(m, math::Log2Op::create(b, l)), e.f32(std::log(2.0))),
        e.f32(kNegInf));
    // The partial rows are f32 or the element type of q (rounded here).
    Type partialElement =
        cast<MemRefType>(partialOut.getType()).getElementType();
    auto pairType = VectorType::get({2}, partialElement);
    for (int64_t dn = 0; dn < dTiles; ++dn) {
      Value col = e.add(e.index(dn * 8), t.pairCol);
      Value pair = vector::FromElementsOp::create(
          b, VectorType::get({2}, b.getF32Type()),
          ValueRange{e.fmul(finals[4 + dn * 4 + 2 * r], inverse),
                     e.fmul(finals[5 + dn * 4 + 2 * r], inverse)});
      if (!partialElement.isF32())
        pair = arith::TruncFOp::create(b, pairType, pair);
      vector::StoreOp::create(b, pair, partialOut,
                              ValueRange{t.slot[r], t.token[r], h, col})
          .setAlignment(2 * MmaTileShape::bytesOf(partialElement));
    }
    auto firstLane = scf::IfOp::create(
        b, arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.quadCol,
                                 e.index(0)),
        false);
    OpBuilder::InsertionGuard laneGuard(b);
    b.setInsertionPointToStart(&firstLane.getThenRegion().front());
    memref::StoreOp::create(b, lse, partialLse,
                            ValueRange{t.slot[r], t.token[r], h});
  }
  if (merged())
    emitMergeEpilogue(b, t);
}

namespace {

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
    AttentionKernelPlan plan;
    plan.instruction = instruction.getValue();
    plan.loads = keyValueLoads.getValue();
    plan.schedule = schedule.getValue();
    plan.warps = warps;
    plan.keyChunk = keyChunk;
    plan.stages = stages;
    static_assert(StageRing::kMinStages == 2 && StageRing::kMaxStages == 4,
                  "AttentionKernelPlan::problems states the ring's depths");
    // The pass has no chip: the pipeline checks wgmma's.
    SmallVector<std::string> problems =
        plan.problems(std::nullopt, PlanSpelling::PassOption);
    for (const std::string &problem : problems)
      getOperation()->emitError()
          << "moba-convert-grouped-attention-to-nvvm: " << problem;
    if (!problems.empty())
      return signalPassFailure();
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
      int64_t headDim = qType.getDimSize(2);
      MmaTileShape shape =
          MmaTileShape::forPlan(plan, headDim, qType.getElementType());
      int64_t sharedBytes = shape.sharedBytes(headDim, qType.getElementType());
      if (sharedBytes > kMaxSharedBytes) {
        op.emitOpError() << "needs " << sharedBytes
                         << " bytes of shared memory with key-chunk "
                         << static_cast<int64_t>(keyChunk) << ", warps "
                         << static_cast<int64_t>(warps) << ", stages "
                         << shape.stages << " and schedule="
                         << nameOf(plan.schedule) << " (at most "
                         << kMaxSharedBytes
                         << "): use a smaller key-chunk, fewer warps or "
                            "stages, or (persistent: two query buffers) "
                            "another schedule";
        return signalPassFailure();
      }
      if (shape.bulkLoads && !op->getParentOfType<ModuleOp>()) {
        op.emitOpError() << "key-value-loads=" << nameOf(plan.loads)
                         << " needs the op inside a module, where the host "
                            "code declares the runtime's tensor map encoder";
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
      kernel.mergedOut = op.getOutInit();
      kernel.mergedLse = op.getLseInit();
      Value tokens = memref::DimOp::create(b, op.getQ(), 0);
      if (kernel.merged()) {
        kernel.emitMergeInit(b, tokens);
      } else {
        Value slots = arith::MulIOp::create(
            b, tokens,
            arith::ConstantIndexOp::create(b, kernel.numHeads *
                                                  kernel.slotsPerToken));
        emitInitKernel(b, kernel.partialLse, slots, kernel.numHeads, tokens);
      }
      kernel.emit(b);
      rewriter.eraseOp(op);
    }
  }
};

} // namespace