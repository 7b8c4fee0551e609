//===- WgmmaChunkLoop.cpp - The attention chunk loop on sm_90a wgmma -----===//
//
// Part of moba-mlir. The wgmma form of the grouped attention kernel's chunk
// loop (moba-convert-grouped-attention-to-nvvm{instruction=wgmma}).
//
// Each warpgroup (4 warps) of the CTA owns 64 consecutive entries of the
// tile. Their queries are gathered once into shared memory; K and V pass
// through shared-memory buffers `keyChunk` keys at a time, filled by
// cp.async while the previous chunk is multiplied: two of each, or two of
// K and one of V (MmaTileShape::singleValueBuffer), which V fills while S
// and the softmax run. Per chunk and warpgroup:
//
//   S = Q K^T   head_dim / 16 wgmma m64 n<keyChunk> k16, both operands
//               K-major in shared memory;
//   softmax     on the accumulators in registers, exactly the mma.sync
//               form's code: a wgmma m64nN accumulator holds, in each warp,
//               16 rows in the m16n8 layout, N / 8 tiles of 4 f32;
//   P           stored as f16/bf16 into shared memory (wgmma's A operand
//               comes from shared memory in the NVVM dialect);
//   O += P V    keyChunk / 16 wgmma m64 n<head_dim> k16, V read transposed
//               (its rows are keys: MN-major).
//
// Operand layout (wgmmaOperandLayout): every operand is cut into panels of
// 64 columns (128 bytes of f16/bf16), rows 128 bytes apart, and the 16-byte
// chunks of row r stored at chunk (c ^ r % 8): the 128-byte swizzle, which
// keeps the eight rows a tensor core reads at once in distinct banks. Panels
// start on 1 KiB boundaries (the swizzle's period), so the shared-memory
// plan is aligned at run time. A matrix descriptor (PTX ISA, "Matrix
// Descriptor Format") names such an operand by its start address, the
// 1024-byte stride between groups of 8 rows, and, for MN-major V, the stride
// between its panels; a k-step inside a panel advances the start by 32
// bytes, as the hardware applies the swizzle to address bits.
//
// Ordering: cp.async and st.shared write through the generic proxy and
// wgmma reads through the async proxy, so every writer fences
// (fence.proxy.async.shared::cta) before the barrier that publishes the data
// to the warpgroup (P: a named barrier of its 128 threads) or the CTA (Q,
// K, V). Each batch of wgmma is committed and waited for before its
// accumulators are read.
//
// When one CTA fills an SM (MmaTileShape::overlapsSoftmax), the loop is
// overlapped instead: chunk c issues S_c and then P_(c-1) V_(c-1), waits for
// S_c alone, and runs the softmax while the tensor cores multiply P V; V is
// staged one chunk behind K for it, and the loop's CTA barrier publishes P.
//
//===----------------------------------------------------------------------===//

#include "AttentionKernel.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;
using nvvm_kernel::ifThen;

namespace {

/// Bytes of one 64-row panel: 64 rows x 128 bytes.
constexpr int64_t kPanelRowBytes = 128;
constexpr int64_t kPanelColumns = 64;
constexpr int64_t kSwizzleBytes = 1024;

/// The element column of 16-byte chunk `chunk` (0..7) of panel row `row`
/// under the 128-byte swizzle.
Value swizzledColumn(KernelBuilder &e, Value row, Value chunk) {
  Value swizzled =
      arith::XOrIOp::create(e.b, chunk, e.rem(row, e.index(8)));
  return e.mul(swizzled, e.index(8));
}

/// A wgmma matrix descriptor for a 128-byte-swizzled operand at shared
/// address `address` (bytes): start address, leading and stride byte
/// offsets, all in 16-byte units, and the swizzle mode (1: 128 bytes) in
/// bits 62-63. Base offset 0: the panels are 1 KiB aligned.
Value descriptor(KernelBuilder &e, Value address, int64_t leadingBytes,
                 int64_t strideBytes) {
  ImplicitLocOpBuilder &b = e.b;
  auto i64 = [&](int64_t v) -> Value {
    return arith::ConstantIntOp::create(b, b.getI64Type(), v);
  };
  Value bits = arith::IndexCastUIOp::create(b, b.getI64Type(), address);
  Value start = arith::ShRUIOp::create(
      b, arith::AndIOp::create(b, bits, i64(0x3FFFF)), i64(4));
  int64_t fixed = ((leadingBytes >> 4) << 16) | ((strideBytes >> 4) << 32) |
                  (int64_t(1) << 62);
  return arith::OrIOp::create(b, start, i64(fixed));
}

/// `desc` moved `bytes` further (a multiple of 16; the start address field
/// does not overflow below 256 KiB).
Value advance(KernelBuilder &e, Value desc, Value bytes) {
  Value units = arith::IndexCastUIOp::create(
      e.b, e.b.getI64Type(), e.div(bytes, e.index(16)));
  return arith::AddIOp::create(e.b, desc, units);
}
Value advance(KernelBuilder &e, Value desc, int64_t bytes) {
  return advance(e, desc, e.index(bytes));
}

/// An LLVM struct of `n` f32: a thread's part of a wgmma m64 accumulator
/// of 2n columns.
Type accumulatorType(MLIRContext *context, int64_t n) {
  return LLVM::LLVMStructType::getLiteral(
      context, SmallVector<Type>(n, Float32Type::get(context)));
}

/// D = A B (+ D when `accumulate`): one wgmma m64 n`n` k16 on descriptors,
/// A K-major, B K-major or (`transposeB`) MN-major.
Value wgmma(KernelBuilder &e, Value acc, Value descA, Value descB, int64_t n,
            bool transposeB, bool accumulate) {
  MLIRContext *context = e.b.getContext();
  NVVM::WGMMATypes type = e.element.isF16() ? NVVM::WGMMATypes::f16
                                            : NVVM::WGMMATypes::bf16;
  return NVVM::WgmmaMmaAsyncOp::create(
      e.b, acc.getType(), acc, descA, descB,
      NVVM::MMAShapeAttr::get(context, 64, n, 16), type, type,
      NVVM::WGMMATypes::f32,
      accumulate ? NVVM::WGMMAScaleOut::one : NVVM::WGMMAScaleOut::zero,
      NVVM::WGMMAScaleIn::one, NVVM::WGMMAScaleIn::one,
      NVVM::MMALayout::row,
      transposeB ? NVVM::MMALayout::row : NVVM::MMALayout::col,
      /*satfinite=*/nullptr);
}

/// The shared-memory plan of the wgmma form, in bytes from the 1 KiB
/// aligned start, and its views.
struct WgmmaOperands {
  Value queries; ///< [warpgroup, panel, row, swizzled column]
  /// [K buffers then V buffers, panel, key, swizzled column]
  Value stages;
  Value probabilities; ///< [warpgroup, key panel, row, swizzled column]
  Value queryAddress, stageAddress, probabilityAddress; ///< shared, bytes
};

/// The shared-memory addresses of the wgmma form (bytes, in the shared
/// window): the region's start, the mbarriers after the causal bounds, and
/// the operands from the first 1 KiB boundary after those.
struct SharedPlan {
  Value base, barriers, queryAddress, stageAddress, probabilityAddress;

  SharedPlan(KernelBuilder &e, const AttentionKernel &kernel, Value raw) {
    const MmaTileShape &shape = kernel.shape;
    Type element = e.element;
    base = memref::ExtractAlignedPointerAsIndexOp::create(e.b, raw);
    barriers = e.add(base, e.index(shape.reduceBytes()));
    Value afterBounds = e.add(barriers, e.index(shape.barrierBytes()));
    queryAddress = e.mul(
        arith::CeilDivUIOp::create(e.b, afterBounds, e.index(kSwizzleBytes)),
        e.index(kSwizzleBytes));
    stageAddress = e.add(
        queryAddress, e.index(shape.queryBytes(kernel.headDim, element)));
    probabilityAddress = e.add(
        stageAddress, e.index(shape.stageBytes(kernel.headDim, element)));
  }
};

/// K and V by TMA (MmaTileShape::bulkLoads). Thread 0 starts each
/// buffer's copies, a 64-column panel a copy, on the buffer's mbarrier
/// (full[K ring slots, then V's], after the causal bounds; arrival count 1:
/// its arrive.expect_tx, then the bytes), and the warps wait on the
/// barrier's phase parity: the n-th fill of a buffer completes phase n
/// (StageRing).
class BulkLoader {
public:
  BulkLoader(const AttentionKernel &kernel, ImplicitLocOpBuilder &b,
             const CtaTile &t)
      : kernel(kernel), t(t) {
    KernelBuilder e{b, kernel.element()};
    SharedPlan plan(e, kernel, t.sharedMemory);
    barriers = plan.barriers;
    stageAddress = plan.stageAddress;
    Value maps = memref::ExtractAlignedPointerAsIndexOp::create(
        b, kernel.tensorMaps);
    keyMap = pointer(b, maps, /*space=*/0);
    valueMap = pointer(b, e.add(maps, e.index(kMapBytes)), /*space=*/0);
  }

  /// By thread 0 before any copy: the barriers initialized, and the tensor
  /// maps, stored by an earlier kernel, acquired for the tensormap proxy.
  /// A CTA barrier must publish the initialization to the other threads.
  void initialize(ImplicitLocOpBuilder &b) {
    KernelBuilder e{b, kernel.element()};
    for (int64_t operand = 0; operand < 2; ++operand)
      for (int64_t slot = 0; slot < kernel.shape.stages; ++slot)
        NVVM::MBarrierInitOp::create(b,
                                     fullBarrier(b, operand, e.index(slot)),
                                     e.i32(1), /*predicate=*/Value());
    NVVM::FenceMbarrierInitOp::create(b);
    for (Value map : {keyMap, valueMap})
      NVVM::FenceProxyAcquireOp::create(b, NVVM::MemScopeKind::GPU, map,
                                        e.i32(kMapBytes));
  }

  /// By thread 0: keys [keyFirst + chunk * keyChunk, + keyChunk) of K
  /// (`operand` 0) or V (1) into `buffer`; keys past the last token read as
  /// zeros. A CTA paired with the other of its cluster (t.paired) copies
  /// only its half of the panels, into both CTAs at once (multicast): the
  /// other CTA's thread 0 copies the other half, and each CTA's barrier
  /// expects the whole buffer's bytes.
  void issue(ImplicitLocOpBuilder &b, int64_t operand, Value buffer,
             Value chunk) {
    KernelBuilder e{b, kernel.element()};
    const MmaTileShape &shape = kernel.shape;
    int64_t panels = kernel.headDim / kPanelColumns;
    int64_t panelBytes = shape.keyChunk * kPanelRowBytes;
    int64_t bufferBytes = panels * panelBytes;
    auto i32 = [&](Value x) -> Value {
      return arith::IndexCastUIOp::create(b, b.getI32Type(), x);
    };
    Value barrier = fullBarrier(b, operand, buffer);
    NVVM::MBarrierArriveExpectTxOp::create(
        b, Type(), barrier, e.i32(bufferBytes), NVVM::MemScopeKind::CTA,
        /*relaxed=*/false, /*predicate=*/Value());
    Value slot =
        operand == 0 ? buffer : e.add(buffer, e.index(shape.stages));
    Value at = e.add(stageAddress, e.mul(slot, e.index(bufferBytes)));
    Value key =
        i32(e.add(t.keyFirst, e.mul(chunk, e.index(shape.keyChunk))));
    Value head = i32(t.g);
    auto copy = [&](ImplicitLocOpBuilder &cb, int64_t panel,
                    Value multicastMask) {
      KernelBuilder ce{cb, e.element};
      // The destination is in the shared::cluster window (address space
      // 7), where this CTA's shared memory keeps its addresses; a
      // multicast lands at the same offsets in every CTA of the mask, and
      // completes on the barrier at the same offset in each.
      Value destination = LLVM::AddrSpaceCastOp::create(
          cb, LLVM::LLVMPointerType::get(cb.getContext(), 7),
          pointer(cb, ce.add(at, ce.index(panel * panelBytes)),
                  /*space=*/3));
      NVVM::CpAsyncBulkTensorGlobalToSharedClusterOp::create(
          cb, destination, operand == 0 ? keyMap : valueMap,
          ValueRange{ce.i32(panel * kPanelColumns), head, key}, barrier,
          /*im2colOffsets=*/ValueRange{}, multicastMask,
          /*l2CacheHint=*/Value(), NVVM::TMALoadMode::TILE,
          /*isCTAOnly=*/false, /*group=*/nullptr, /*predicate=*/Value());
    };
    auto copyAll = [&](ImplicitLocOpBuilder &cb) {
      for (int64_t panel = 0; panel < panels; ++panel)
        copy(cb, panel, Value());
    };
    if (!t.paired) {
      copyAll(b);
      return;
    }
    auto split = scf::IfOp::create(b, t.paired, /*withElseRegion=*/true);
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&split.getThenRegion().front());
    // Panel p of operand o is rank (p + o) % 2's: halves at head_dim 128,
    // K and V apart at 64.
    Value both = arith::ConstantIntOp::create(b, b.getI16Type(), 0b11);
    for (int64_t panel = 0; panel < panels; ++panel) {
      Value mine = arith::CmpIOp::create(
          b, arith::CmpIPredicate::eq, t.clusterRank,
          e.i32((panel + operand) % 2));
      ifThen(b, mine, [&](ImplicitLocOpBuilder &cb) {
        copy(cb, panel, both);
      });
    }
    b.setInsertionPointToStart(&split.getElseRegion().front());
    copyAll(b);
  }

  /// Fill number `fill` of `buffer` of K (`operand` 0) or V (1) has
  /// landed.
  void wait(ImplicitLocOpBuilder &b, int64_t operand, Value buffer,
            Value fill) {
    KernelBuilder e{b, kernel.element()};
    NVVM::MBarrierTryWaitParityOp::create(
        b, fullBarrier(b, operand, buffer), StageRing::parityOfFill(e, fill),
        e.i32(kSuspendHintNs));
  }

private:
  static constexpr int64_t kMapBytes = 128;
  static constexpr int64_t kSuspendHintNs = 10'000'000;

  static Value pointer(ImplicitLocOpBuilder &b, Value address,
                       unsigned space) {
    return LLVM::IntToPtrOp::create(
        b, LLVM::LLVMPointerType::get(b.getContext(), space),
        arith::IndexCastUIOp::create(b, b.getI64Type(), address),
        /*dereferenceable=*/nullptr);
  }
  Value fullBarrier(ImplicitLocOpBuilder &b, int64_t operand, Value buffer) {
    KernelBuilder e{b, kernel.element()};
    Value which = e.add(e.index(operand * kernel.shape.stages), buffer);
    return pointer(b, e.add(barriers, e.mul(which, e.index(8))),
                   /*space=*/3);
  }

  const AttentionKernel &kernel;
  const CtaTile &t;
  Value barriers, stageAddress, keyMap, valueMap;
};

} // namespace

void grouped_attention::clusterBarrier(ImplicitLocOpBuilder &b,
                                       bool relaxed) {
  if (relaxed)
    NVVM::ClusterArriveRelaxedOp::create(b, b.getUnitAttr());
  else
    NVVM::ClusterArriveOp::create(b, b.getUnitAttr());
  NVVM::ClusterWaitOp::create(b, b.getUnitAttr());
}

void grouped_attention::bufferBarrier(ImplicitLocOpBuilder &b,
                                      const CtaTile &t) {
  if (!t.paired) {
    gpu::BarrierOp::create(b);
    return;
  }
  auto pairs = scf::IfOp::create(b, t.paired, /*withElseRegion=*/true);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&pairs.getThenRegion().front());
  // Relaxed: it orders the CTAs' finished reads of the buffers (their
  // wgmma waited for) before the copies that refill them; no write of one
  // CTA is for the other to read.
  clusterBarrier(b, /*relaxed=*/true);
  b.setInsertionPointToStart(&pairs.getElseRegion().front());
  gpu::BarrierOp::create(b);
}

void AttentionKernel::startBulkLoads(ImplicitLocOpBuilder &b,
                                     const CtaTile &t) {
  KernelBuilder e{b, element()};
  BulkLoader loader(*this, b, t);
  Value isIssuer =
      arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.tid, e.index(0));
  auto issueFirst = [&](ImplicitLocOpBuilder &ib) {
    KernelBuilder ie{ib, e.element};
    loader.issue(ib, 0, ie.index(0), ie.index(0));
    loader.issue(ib, 1, ie.index(0), ie.index(0));
  };
  ifThen(b, isIssuer, [&](ImplicitLocOpBuilder &ib) {
    loader.initialize(ib);
    if (!t.paired)
      issueFirst(ib);
  });
  if (!t.paired)
    return;
  // A paired CTA's copies complete on the other CTA's barriers too: they
  // must be initialized (fence.mbarrier_init releases to the cluster)
  // before either CTA starts one.
  ifThen(b, t.paired, [&](ImplicitLocOpBuilder &ib) { clusterBarrier(ib); });
  ifThen(b, isIssuer, issueFirst);
}

SmallVector<Value> AttentionKernel::emitWgmmaChunks(ImplicitLocOpBuilder &b,
                                                    const CtaTile &t) {
  KernelBuilder e{b, element()};
  MLIRContext *context = b.getContext();
  auto workgroup =
      gpu::AddressSpaceAttr::get(context, gpu::AddressSpace::Workgroup);
  int64_t panels = headDim / kPanelColumns;
  int64_t keyPanels = shape.keyChunk / kPanelColumns;
  int64_t warpgroups = shape.warpgroups();
  int64_t queryPanelBytes = 64 * kPanelRowBytes;
  int64_t stagePanelBytes = shape.keyChunk * kPanelRowBytes;
  int64_t bufferBytes = panels * stagePanelBytes; // one of K or V
  bool singleValueBuffer = shape.singleValueBuffer(headDim, element());
  int64_t stageSlots = shape.stageSlots(headDim, element());
  StageRing ring = shape.ring();
  int64_t bytesOfElement = MmaTileShape::bytesOf(element());

  // The plan starts at the first 1 KiB boundary after the causal bounds.
  Value raw = t.sharedMemory;
  SharedPlan plan(e, *this, raw);
  Value base = plan.base;
  Value aligned = plan.queryAddress;
  WgmmaOperands ops;
  auto view = [&](ArrayRef<int64_t> shapeOf, Value address) {
    auto type = MemRefType::get(shapeOf, element(),
                                MemRefLayoutAttrInterface(), workgroup);
    return memref::ViewOp::create(b, type, raw, e.sub(address, base),
                                  ValueRange{})
        .getResult();
  };
  ops.queryAddress = aligned;
  ops.stageAddress =
      e.add(aligned, e.index(shape.queryBytes(headDim, element())));
  ops.probabilityAddress = e.add(
      ops.stageAddress, e.index(shape.stageBytes(headDim, element())));
  ops.queries =
      view({warpgroups, panels, 64, kPanelColumns}, ops.queryAddress);
  ops.stages = view({stageSlots, panels, shape.keyChunk, kPanelColumns},
                    ops.stageAddress);
  ops.probabilities = view({warpgroups, keyPanels, 64, kPanelColumns},
                           ops.probabilityAddress);

  // Copies are 16 bytes, head_dim / 8 per row. Thread tid always copies
  // chunk tid % perRow of rows tid / perRow + i * rowStep, so that the
  // chunk, its panel and (rowStep a multiple of 8) its swizzled column are
  // computed once per thread, outside the chunk loop; the copies are
  // unrolled.
  int64_t perRow = headDim / 8;
  int64_t rowStep = threads() / perRow;
  Value firstRow = e.div(t.tid, e.index(perRow));
  Value chunkOfRow = e.rem(t.tid, e.index(perRow));
  Value panelOfChunk = e.div(chunkOfRow, e.index(8));
  Value sourceColumn = e.mul(chunkOfRow, e.index(8));
  Value fixedColumn =
      swizzledColumn(e, firstRow, e.rem(chunkOfRow, e.index(8)));
  auto copyRows = [&](ImplicitLocOpBuilder &cb, int64_t rows,
                      function_ref<void(Value row, Value column)> copy) {
    KernelBuilder ce{cb, e.element};
    for (int64_t i = 0; i * rowStep < rows; ++i) {
      Value row = ce.add(firstRow, ce.index(i * rowStep));
      Value column =
          rowStep % 8 == 0
              ? fixedColumn
              : swizzledColumn(ce, row, ce.rem(chunkOfRow, ce.index(8)));
      if (rows % rowStep == 0) {
        copy(row, column);
        continue;
      }
      auto inside = scf::IfOp::create(cb, ce.ult(row, ce.index(rows)), false);
      OpBuilder::InsertionGuard insideGuard(cb);
      cb.setInsertionPointToStart(&inside.getThenRegion().front());
      copy(row, column);
    }
  };

  // The tile's queries, gathered once; rows past `valid` repeat the tile's
  // first (never written out).
  copyRows(b, ctaRows(), [&](Value i, Value column) {
    Value at = e.add(t.first, e.select(e.ult(i, t.valid), i, e.index(0)));
    Value token =
        e.div(e.loadIndex(entries, {t.h, at}), e.index(slotsPerToken));
    nvgpu::DeviceAsyncCopyOp::create(
        b, ops.queries,
        ValueRange{e.div(i, e.index(64)), panelOfChunk, e.rem(i, e.index(64)),
                   column},
        q, ValueRange{token, t.h, sourceColumn}, b.getIndexAttr(8),
        /*srcElements=*/Value(), b.getUnitAttr());
  });

  // K (`operand` 0) or V (1) of keys [keyBase, keyBase + keyChunk) into
  // its buffer `buffer`; rows past lastKey repeat it (the scores mask
  // them; another sequence's rows could hold a NaN that 0 x NaN would
  // carry into P V). Only a chunk that reaches past lastKey needs the
  // clamp: the others' copies differ from the first by constant offsets,
  // which the backend folds into each cp.async's address.
  auto stage = [&](ImplicitLocOpBuilder &sb, int64_t operand, Value buffer,
                   Value keyBase) {
    KernelBuilder se{sb, e.element};
    Value source = operand == 0 ? k : v;
    Value slot =
        operand == 0 ? buffer : se.add(buffer, se.index(shape.stages));
    auto copies = [&](ImplicitLocOpBuilder &cb, bool clamped) {
      KernelBuilder ce{cb, e.element};
      copyRows(cb, shape.keyChunk, [&](Value key, Value column) {
        Value from = ce.add(keyBase, key);
        if (clamped)
          from = ce.minU(from, t.lastKey);
        nvgpu::DeviceAsyncCopyOp::create(
            cb, ops.stages, ValueRange{slot, panelOfChunk, key, column},
            source, ValueRange{from, t.g, sourceColumn}, cb.getIndexAttr(8),
            /*srcElements=*/Value(), cb.getUnitAttr());
      });
    };
    Value inside = se.ule(se.add(keyBase, se.index(shape.keyChunk - 1)),
                          t.lastKey);
    auto whole = scf::IfOp::create(sb, inside, /*withElseRegion=*/true);
    OpBuilder::InsertionGuard guard(sb);
    sb.setInsertionPointToStart(&whole.getThenRegion().front());
    copies(sb, /*clamped=*/false);
    sb.setInsertionPointToStart(&whole.getElseRegion().front());
    copies(sb, /*clamped=*/true);
  };

  // This thread's warpgroup, and its place in it.
  Value warpgroup = e.div(t.warp, e.index(4));
  Value warpInGroup = e.rem(t.warp, e.index(4));
  int64_t kSteps = headDim / 16, nTiles = shape.keyChunk / 8;
  int64_t dTiles = headDim / 8;
  Value queryDesc = advance(
      e,
      descriptor(e, ops.queryAddress, /*leadingBytes=*/16,
                 /*strideBytes=*/8 * kPanelRowBytes),
      e.mul(warpgroup, e.index(panels * queryPanelBytes)));
  Value keyDesc = descriptor(e, ops.stageAddress, 16, 8 * kPanelRowBytes);
  Value valueDesc = advance(
      e,
      descriptor(e, ops.stageAddress, /*leadingBytes=*/stagePanelBytes,
                 /*strideBytes=*/8 * kPanelRowBytes),
      shape.stages * bufferBytes);
  Value probabilityDesc = advance(
      e, descriptor(e, ops.probabilityAddress, 16, 8 * kPanelRowBytes),
      e.mul(warpgroup, e.index(keyPanels * queryPanelBytes)));
  // This lane's rows in its warpgroup's 64.
  Value groupRow = e.add(e.mul(warpInGroup, e.index(kTileRows)), t.quadRow);

  // O += P V over one chunk's keys in k-steps of 16: P from shared
  // memory, V from `buffer`, issued but not waited for.
  auto multiplyValues = [&](ImplicitLocOpBuilder &pb, Value outAcc,
                            Value buffer) {
    KernelBuilder pe{pb, e.element};
    Value values =
        advance(pe, valueDesc, pe.mul(buffer, pe.index(bufferBytes)));
    for (int64_t kv = 0; kv < shape.keyChunk / 16; ++kv)
      outAcc = wgmma(pe, outAcc,
                     advance(pe, probabilityDesc,
                             (kv / 4) * queryPanelBytes + (kv % 4) * 32),
                     advance(pe, values, kv * 16 * kPanelRowBytes), headDim,
                     /*transposeB=*/true, /*accumulate=*/true);
    return outAcc;
  };
  auto packAccumulators = [&](ImplicitLocOpBuilder &pb, ValueRange values) {
    Value acc = LLVM::UndefOp::create(
        pb, accumulatorType(context, static_cast<int64_t>(values.size())));
    for (auto [i, value] : llvm::enumerate(values))
      acc = LLVM::InsertValueOp::create(pb, acc, value,
                                        ArrayRef<int64_t>{int64_t(i)});
    return acc;
  };
  auto unpackAccumulators = [&](ImplicitLocOpBuilder &pb, Value acc,
                                int64_t n) {
    SmallVector<Value> values;
    for (int64_t i = 0; i < n; ++i)
      values.push_back(
          LLVM::ExtractValueOp::create(pb, acc, ArrayRef<int64_t>{i}));
    return values;
  };

  // S = Q K^T over head_dim in k-steps of 16 on K in `buffer`, issued
  // and committed.
  auto multiplyKeys = [&](ImplicitLocOpBuilder &ib, Value buffer) {
    KernelBuilder ie{ib, e.element};
    Value scoresAcc = LLVM::ZeroOp::create(
        ib, accumulatorType(context, shape.keyChunk / 2));
    Value keys = advance(ie, keyDesc, ie.mul(buffer, ie.index(bufferBytes)));
    for (int64_t kk = 0; kk < kSteps; ++kk) {
      int64_t inPanel = (kk % 4) * 32;
      scoresAcc =
          wgmma(ie, scoresAcc,
                advance(ie, queryDesc, (kk / 4) * queryPanelBytes + inPanel),
                advance(ie, keys, (kk / 4) * stagePanelBytes + inPanel),
                shape.keyChunk, /*transposeB=*/false, /*accumulate=*/kk > 0);
    }
    NVVM::WgmmaGroupSyncAlignedOp::create(ib);
    return scoresAcc;
  };
  // The scores of a finished S in the m16n8 accumulator layout.
  auto scoreTiles = [&](ImplicitLocOpBuilder &ib, Value scoresAcc) {
    SmallVector<Value> flat =
        unpackAccumulators(ib, scoresAcc, shape.keyChunk / 2);
    SmallVector<SmallVector<Value>> scores(nTiles);
    for (int64_t nt = 0; nt < nTiles; ++nt)
      scores[nt].assign(flat.begin() + 4 * nt, flat.begin() + 4 * nt + 4);
    return scores;
  };
  // O += P V with P in registers (shape.registerProbabilities): the
  // register-A form of wgmma, which the NVVM dialect lacks, as the
  // project's one nvvm.inline_ptx. P's f32 scores (the m16n8 accumulator
  // layout of S) packed in pairs are wgmma's A fragments: for k-step kv,
  // key tiles 2kv and 2kv + 1, rows g and g + 8. The accumulators are
  // read-only operands copied into the write-only results by movs that
  // ptxas folds (nvvm.inline_ptx drops the values of read-write operands
  // in LLVM 22); scale-d is a true predicate. Issued, not committed.
  auto multiplyValuesFromRegisters =
      [&](ImplicitLocOpBuilder &pb, ValueRange accumulators,
          ArrayRef<SmallVector<Value>> scores,
          Value buffer) -> SmallVector<Value> {
    KernelBuilder pe{pb, e.element};
    auto word = [&](Value lo, Value hi) -> Value {
      Value pair = vector::FromElementsOp::create(
          pb, VectorType::get({2}, e.element),
          ValueRange{arith::TruncFOp::create(pb, e.element, lo),
                     arith::TruncFOp::create(pb, e.element, hi)});
      Value bits = vector::BitCastOp::create(
          pb, VectorType::get({1}, pb.getI32Type()), pair);
      return vector::ExtractOp::create(pb, bits, ArrayRef<int64_t>{0});
    };
    int64_t n = static_cast<int64_t>(accumulators.size());
    int64_t kSteps = shape.keyChunk / 16;
    Value values =
        advance(pe, valueDesc, pe.mul(buffer, pe.index(bufferBytes)));
    SmallVector<Value> operands(accumulators.begin(), accumulators.end());
    for (int64_t kv = 0; kv < kSteps; ++kv)
      for (int64_t tile : {2 * kv, 2 * kv + 1})
        for (int64_t r = 0; r < 2; ++r)
          operands.push_back(
              word(scores[tile][2 * r], scores[tile][2 * r + 1]));
    for (int64_t kv = 0; kv < kSteps; ++kv)
      operands.push_back(advance(pe, values, kv * 16 * kPanelRowBytes));
    // Operands: $0..$n-1 the results, then the accumulators, the A words
    // (four a k-step) and the k-steps' descriptors of V.
    std::string ptx = "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n";
    auto operand = [](int64_t i) { return "$" + std::to_string(i); };
    for (int64_t i = 0; i < n; ++i)
      ptx += "mov.f32 " + operand(i) + ", " + operand(n + i) + ";\n";
    std::string type = e.element.isF16() ? "f16" : "bf16";
    for (int64_t kv = 0; kv < kSteps; ++kv) {
      ptx += "wgmma.mma_async.sync.aligned.m64n" + std::to_string(headDim) +
             "k16.f32." + type + "." + type + " {";
      for (int64_t i = 0; i < n; ++i)
        ptx += (i ? ", " : "") + operand(i);
      int64_t a = 2 * n + 4 * kv;
      ptx += "}, {" + operand(a) + ", " + operand(a + 1) + ", " +
             operand(a + 2) + ", " + operand(a + 3) + "}, " +
             operand(2 * n + 4 * kSteps + kv) + ", p, 1, 1, 1;\n";
    }
    ptx += "}";
    auto product = NVVM::InlinePtxOp::create(
        pb, SmallVector<Type>(n, pb.getF32Type()), operands, ValueRange{},
        ptx, /*predicate=*/Value());
    return SmallVector<Value>(product->getResults());
  };
  // P to shared memory, the A operand of P V, fenced for the async proxy;
  // a barrier must publish it.
  auto storeProbabilities = [&](ImplicitLocOpBuilder &ib,
                                ArrayRef<SmallVector<Value>> scores) {
    KernelBuilder ie{ib, e.element};
    for (int64_t nt = 0; nt < nTiles; ++nt)
      for (int64_t r = 0; r < 2; ++r) {
        Value row = ie.add(groupRow, ie.index(8 * r));
        Value column =
            ie.add(swizzledColumn(ie, row, ie.index(nt % 8)), t.pairCol);
        Value pair = vector::FromElementsOp::create(
            ib, VectorType::get({2}, e.element),
            ValueRange{
                arith::TruncFOp::create(ib, e.element, scores[nt][2 * r]),
                arith::TruncFOp::create(ib, e.element,
                                        scores[nt][2 * r + 1])});
        vector::StoreOp::create(
            ib, pair, ops.probabilities,
            ValueRange{warpgroup, ie.index(nt / 8), row, column})
            .setAlignment(4);
      }
    ie.fenceAsyncProxy();
  };

  if (!shape.overlapsSoftmax(headDim, element())) {
    // The warpgroup's own barrier: the CTA's when it is one warpgroup, else
    // ids 1..warpgroups (0 is the CTA's). An id in a register makes ptxas
    // reserve all 16 barriers, which allows one CTA per SM.
    auto groupBarrier = [&](ImplicitLocOpBuilder &gb) {
      if (warpgroups == 1) {
        gpu::BarrierOp::create(gb);
        return;
      }
      KernelBuilder ge{gb, e.element};
      Value id = arith::IndexCastOp::create(gb, gb.getI32Type(),
                                            ge.add(warpgroup, ge.index(1)));
      NVVM::BarrierOp::create(gb, TypeRange{}, id, ge.i32(128),
                              /*reductionOp=*/{}, Value());
    };
    // In order: S, the softmax, P through shared memory, O += P V; each
    // product waited for. Two CTAs share an SM, and each one's softmax
    // runs while the other's products occupy the tensor cores. K of the
    // chunk is in `buffer` once `waitKeys` returns, V in `valueBuffer` once
    // `waitValues` does; `whileScores` (when given) runs after S is issued,
    // while the tensor cores multiply it.
    using WaitFn = function_ref<void(ImplicitLocOpBuilder &)>;
    auto inOrderChunk = [&](ImplicitLocOpBuilder &ib, Value buffer,
                            Value valueBuffer, Value keyBase, ValueRange c,
                            bool masked, WaitFn waitKeys,
                            WaitFn waitValues,
                            WaitFn whileScores) -> SmallVector<Value> {
      waitKeys(ib);
      NVVM::WgmmaFenceAlignedOp::create(ib);
      Value scoresAcc = multiplyKeys(ib, buffer);
      if (whileScores)
        whileScores(ib);
      NVVM::WgmmaWaitGroupSyncOp::create(ib, 0);
      SmallVector<SmallVector<Value>> scores = scoreTiles(ib, scoresAcc);
      SmallVector<Value> results =
          softmaxStep(ib, t, scores, c, keyBase, masked);
      waitValues(ib);
      SmallVector<Value> out;
      if (shape.registerProbabilities) {
        // V copied by this CTA's threads (cp.async, one buffer) is
        // published by a proxy fence and a barrier; TMA's V, and V that
        // landed with K, are already visible.
        if (singleValueBuffer && !shape.bulkLoads) {
          KernelBuilder{ib, e.element}.fenceAsyncProxy();
          groupBarrier(ib);
        }
        NVVM::WgmmaFenceAlignedOp::create(ib);
        out = multiplyValuesFromRegisters(
            ib, ValueRange(results).drop_front(4), scores, valueBuffer);
        NVVM::WgmmaGroupSyncAlignedOp::create(ib);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 0);
      } else {
        // The proxy fence after P's stores and the barrier publish V too.
        storeProbabilities(ib, scores);
        groupBarrier(ib);
        Value outAcc =
            packAccumulators(ib, ValueRange(results).drop_front(4));
        NVVM::WgmmaFenceAlignedOp::create(ib);
        outAcc = multiplyValues(ib, outAcc, valueBuffer);
        NVVM::WgmmaGroupSyncAlignedOp::create(ib);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 0);
        out = unpackAccumulators(ib, outAcc, dTiles * 4);
      }
      std::copy(out.begin(), out.end(), results.begin() + 4);
      return results;
    };
    if (shape.bulkLoads) {
      // startBulkLoads (emitCta) has started chunk 0's K and V. The queries
      // (cp.async) landed and fenced for wgmma; one CTA barrier publishes
      // them and the barriers' initialization.
      BulkLoader loader(*this, b, t);
      NVVM::CpAsyncCommitGroupOp::create(b);
      NVVM::CpAsyncWaitGroupOp::create(b, 0);
      e.fenceAsyncProxy();
      gpu::BarrierOp::create(b);
      // Rows past lastKey of V's `slot` zeroed: TMA copies what lies there
      // (the next sequence's keys, or another block's), which a masked
      // probability of 0 would still carry into P V if it were NaN.
      auto zeros = arith::ConstantOp::create(
          b, DenseElementsAttr::get(VectorType::get({8}, element()),
                                    b.getZeroAttr(element())));
      auto clearPastLastKey = [&](ImplicitLocOpBuilder &ib, Value slot,
                                  Value keyBase) {
        KernelBuilder ie{ib, e.element};
        Value past = ie.ult(
            t.lastKey, ie.add(keyBase, ie.index(shape.keyChunk - 1)));
        ifThen(ib, past, [&](ImplicitLocOpBuilder &pb) {
          KernelBuilder pe{pb, e.element};
          copyRows(pb, shape.keyChunk, [&](Value row, Value column) {
            ifThen(pb, pe.ult(t.lastKey, pe.add(keyBase, row)),
                   [&](ImplicitLocOpBuilder &zb) {
                     vector::StoreOp::create(
                         zb, zeros, ops.stages,
                         ValueRange{slot, panelOfChunk, row, column})
                         .setAlignment(16);
                   });
          });
          // With P in shared memory its fence and barrier publish the
          // zeros; with P in registers they need their own (the branch is
          // the same for the whole CTA).
          if (shape.registerProbabilities) {
            pe.fenceAsyncProxy();
            gpu::BarrierOp::create(pb);
          }
        });
      };
      // K (and V in a ring) of chunk `chunk` into its slot, when the tile
      // has that chunk.
      auto issueChunk = [&](ImplicitLocOpBuilder &ib, Value chunk) {
        KernelBuilder ie{ib, e.element};
        ifThen(ib, ie.ult(chunk, t.chunks), [&](ImplicitLocOpBuilder &nb) {
          KernelBuilder ne{nb, e.element};
          Value slot = ring.slot(ne, chunk);
          loader.issue(nb, 0, slot, chunk);
          if (!singleValueBuffer)
            loader.issue(nb, 1, slot, chunk);
        });
      };
      // Chunk c's copies, once every warp is done with chunk c - 1 (the
      // barrier at the loop's top): V_c into the one V buffer (V_0 was
      // started with K_0); K (and V in a ring) of c + lookahead into the
      // slot c - 1 used.
      auto issueNext = [&](ImplicitLocOpBuilder &ib, Value chunk) {
        KernelBuilder ie{ib, e.element};
        if (singleValueBuffer)
          ifThen(ib, ie.ult(ie.index(0), chunk),
                 [&](ImplicitLocOpBuilder &vb) {
                   loader.issue(vb, 1, ie.index(0), chunk);
                 });
        issueChunk(ib, ie.add(chunk, ie.index(ring.lookahead())));
      };
      Value isIssuer = arith::CmpIOp::create(b, arith::CmpIPredicate::eq,
                                             t.tid, e.index(0));
      // Chunks 1 .. lookahead - 1 fill the ring's other slots ahead of the
      // loop (chunk 0 is in flight since startBulkLoads); the barriers were
      // initialized by this same thread, and a pair's by both CTAs before
      // either copied.
      if (ring.lookahead() > 1)
        ifThen(b, isIssuer, [&](ImplicitLocOpBuilder &ib) {
          KernelBuilder ie{ib, e.element};
          for (int64_t chunk = 1; chunk < ring.lookahead(); ++chunk)
            issueChunk(ib, ie.index(chunk));
        });
      SmallVector<Value> finals = emitBulkChunkLoops(
          b, t,
          [&](ImplicitLocOpBuilder &ib, Value chunk, Value buffer,
              Value keyBase, ValueRange c,
              bool masked) -> SmallVector<Value> {
            KernelBuilder ie{ib, e.element};
            Value fill = ring.fill(ie, chunk);
            Value valueBuffer = singleValueBuffer ? ie.index(0) : buffer;
            Value valueFill = singleValueBuffer ? chunk : fill;
            return inOrderChunk(
                ib, buffer, valueBuffer, keyBase, c, masked,
                [&](ImplicitLocOpBuilder &wb) {
                  loader.wait(wb, 0, buffer, fill);
                },
                [&](ImplicitLocOpBuilder &wb) {
                  KernelBuilder we{wb, e.element};
                  loader.wait(wb, 1, valueBuffer, valueFill);
                  if (masked)
                    clearPastLastKey(
                        wb, we.add(valueBuffer, we.index(shape.stages)),
                        keyBase);
                },
                // Thread 0 starts the copies while the tensor cores
                // multiply S, not before: its warp would otherwise reach
                // S's wgmma, which waits for all four warps, last (on the
                // H200 the attention kernel took 2-7% less at 128K tokens,
                // whole calls 1% less there and 3-7% at 32K block 512;
                // docs/PERFORMANCE.md, ninth round).
                [&](ImplicitLocOpBuilder &wb) {
                  ifThen(wb, isIssuer, [&](ImplicitLocOpBuilder &ib) {
                    issueNext(ib, chunk);
                  });
                });
          });
      // A tile with no chunk to attend still waits for the copies of chunk
      // 0, so that none is in flight when the CTA exits.
      ifThen(b, arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.chunks,
                                      e.index(0)),
             [&](ImplicitLocOpBuilder &ib) {
               KernelBuilder ie{ib, e.element};
               loader.wait(ib, 0, ie.index(0), ie.index(0));
               loader.wait(ib, 1, ie.index(0), ie.index(0));
             });
      // Neither CTA of a pair exits before both have all their bytes: no
      // copy of one is then still bound for the other's shared memory.
      if (t.paired)
        ifThen(b, t.paired,
               [&](ImplicitLocOpBuilder &ib) { clusterBarrier(ib); });
      return finals;
    }
    auto noWait = [](ImplicitLocOpBuilder &) {};
    return emitChunkLoops(
        b, t, /*asyncProxyReads=*/true,
        singleValueBuffer ? ValueStaging::AfterProducts
                          : ValueStaging::WithKeys,
        stage,
        [&](ImplicitLocOpBuilder &ib, Value /*chunk*/, Value buffer,
            Value keyBase, ValueRange c,
            bool masked) -> SmallVector<Value> {
          KernelBuilder ie{ib, e.element};
          // One V buffer: V_c, copied during this chunk's S and softmax,
          // has landed once all but the newest group (K_(c+1)) have.
          auto waitValues = [&](ImplicitLocOpBuilder &wb) {
            if (singleValueBuffer)
              NVVM::CpAsyncWaitGroupOp::create(wb, 1);
          };
          return inOrderChunk(ib, buffer,
                              singleValueBuffer ? ie.index(0) : buffer,
                              keyBase, c, masked, noWait, waitValues,
                              /*whileScores=*/nullptr);
        });
  }

  // Overlapped: chunk c issues S_c = Q K_c^T and then O += P_(c-1) V_(c-1)
  // (V is staged one chunk late for it), waits for S_c only, and runs the
  // softmax while the tensor cores multiply P V; then it waits for P V,
  // rescales O and stores P_c over P_(c-1).
  //
  // P and V buffer 1 start as zeros, which the first chunk's P V (of no
  // keys) multiplies: wgmma in a branch would make ptxas serialize every
  // wgmma of the kernel. The chunk loop's first barrier publishes them.
  // The loop is double-buffered: V of chunk c - 1 sits in the slot before
  // chunk c's, which is slot 1 at the first chunk.
  assert(ring.stages() == 2 && "the overlapped loop has two stages");
  {
    auto zeros = arith::ConstantOp::create(
        b, DenseElementsAttr::get(VectorType::get({8}, element()),
                                  b.getZeroAttr(element())));
    auto zeroFill = [&](Value address, int64_t bytes) {
      Value flat = view({bytes / bytesOfElement}, address);
      scf::ForOp::create(
          b, e.mul(t.tid, e.index(8)), e.index(bytes / bytesOfElement),
          e.index(threads() * 8), ValueRange{},
          [&](OpBuilder &fb, Location loc, Value i, ValueRange) {
            ImplicitLocOpBuilder zb(loc, fb);
            vector::StoreOp::create(zb, zeros, flat, ValueRange{i})
                .setAlignment(16);
            scf::YieldOp::create(zb);
          });
    };
    zeroFill(ops.probabilityAddress, shape.probabilityBytes(element()));
    int64_t valueSlotBeforeFirst = shape.stages + ring.stages() - 1;
    zeroFill(e.add(ops.stageAddress,
                   e.index(valueSlotBeforeFirst * bufferBytes)),
             bufferBytes);
  }
  SmallVector<Value> finals = emitChunkLoops(
      b, t, /*asyncProxyReads=*/true, ValueStaging::OneChunkLate, stage,
      [&](ImplicitLocOpBuilder &ib, Value /*chunk*/, Value buffer,
          Value keyBase, ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, e.element};
        Value outAcc = packAccumulators(ib, c.drop_front(4));
        NVVM::WgmmaFenceAlignedOp::create(ib);
        Value scoresAcc = multiplyKeys(ib, buffer);
        Value previous =
            multiplyValues(ib, outAcc, ring.previousSlot(ie, buffer));
        NVVM::WgmmaGroupSyncAlignedOp::create(ib);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 1);
        SmallVector<SmallVector<Value>> scores = scoreTiles(ib, scoresAcc);
        Rescale factors;
        SmallVector<Value> results = softmaxStep(
            ib, t, scores, c.take_front(4), keyBase, masked, &factors);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 0);
        SmallVector<Value> out = unpackAccumulators(ib, previous, dTiles * 4);
        rescale(out, factors, ie);
        results.append(out);
        // P_c, for the next chunk (or the loops' end); the loop's barrier
        // publishes it.
        storeProbabilities(ib, scores);
        return results;
      });

  // The last chunk's P V (zeros times zeros when there was none).
  Value outAcc = packAccumulators(b, ValueRange(finals).drop_front(4));
  NVVM::WgmmaFenceAlignedOp::create(b);
  Value last =
      multiplyValues(b, outAcc, ring.slotBefore(e, t.chunks));
  NVVM::WgmmaGroupSyncAlignedOp::create(b);
  NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
  SmallVector<Value> out = unpackAccumulators(b, last, dTiles * 4);
  std::copy(out.begin(), out.end(), finals.begin() + 4);
  return finals;
}
