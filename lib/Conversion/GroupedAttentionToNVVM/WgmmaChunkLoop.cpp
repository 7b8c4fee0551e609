//===- WgmmaChunkLoop.cpp - The attention chunk loop on sm_90a wgmma -----===//
//
// Part of moba-mlir. The wgmma form of the grouped attention kernel's chunk
// loop (moba-convert-grouped-attention-to-nvvm{instruction=wgmma}).
//
// Each warpgroup (4 warps) of the CTA owns 64 consecutive entries of the
// tile. Their queries are gathered once into shared memory (by the CTA's
// threads, or with the persistent schedule by its producer ahead of the
// tile: PersistentCta.cpp); K and V pass
// through a ring of shared-memory buffers (StageRing) `keyChunk` keys at a
// time, filled while earlier chunks are multiplied. Per chunk and
// warpgroup:
//
//   S = Q K^T   head_dim / 16 wgmma m64 n<keyChunk> k16, both operands
//               K-major in shared memory;
//   softmax     on the accumulators in registers, exactly the mma.sync
//               form's code: a wgmma m64nN accumulator holds, in each warp,
//               16 rows in the m16n8 layout, N / 8 tiles of 4 f32;
//   O += P V    keyChunk / 16 wgmma m64 n<head_dim> k16, V read transposed
//               (its rows are keys: MN-major), P either stored as f16/bf16
//               into shared memory or (registerProbabilities) kept in
//               registers as wgmma's A fragments.
//
// Every operand is laid out as hopper::SwizzledPanelLayout says
// (WgmmaOperands.h has the descriptors); a k-step inside a panel advances a
// descriptor's start by Layout::kKStepBytes.
//
// Ordering: cp.async and st.shared write through the generic proxy and
// wgmma reads through the async proxy, so every writer fences
// (fence.proxy.async.shared::cta) before the barrier that publishes the data
// to the warpgroup (P: a named barrier of its 128 threads) or the CTA (Q,
// K, V). Each batch of wgmma is committed and waited for before its
// accumulators are read.
//
// The parts: WgmmaTile holds the CTA's operands and the operations on them
// (the copies, S = Q K^T, P V from shared memory or registers, P's store,
// one in-order chunk); the three schedules are its members inOrderByTma,
// inOrderByCpAsync and overlapped, and emitWgmmaChunks picks one:
//
//   in order, TMA    K and V by TMA on the stage ring's mbarriers
//                    (TmaLoader.h), one thread copying; 2 to 4 stages.
//   in order,        the same loop with K and V by every thread's cp.async,
//   cp.async         two stages.
//   overlapped       when one CTA fills an SM (MmaTileShape::
//                    overlapsSoftmax): chunk c issues S_c and then
//                    P_(c-1) V_(c-1), waits for S_c alone, and runs the
//                    softmax while the tensor cores multiply P V; V is
//                    staged one chunk behind K for it.
//
//===----------------------------------------------------------------------===//

#include "TmaLoader.h"
#include "WgmmaOperands.h"

using namespace mlir;
using namespace mlir::moba;
using namespace mlir::moba::grouped_attention;
using nvvm_kernel::ifThen;

namespace {

/// One CTA's operands of the wgmma form in shared memory, the descriptors
/// of this thread's warpgroup, and the operations the chunk loops are made
/// of. Built once per CTA, before the loops.
class WgmmaTile {
public:
  WgmmaTile(AttentionKernel &kernel, ImplicitLocOpBuilder &b,
            const CtaTile &t);

  /// The schedules; each returns what the chunk loops carry at the end
  /// (AttentionKernel::emitWgmmaChunks).
  SmallVector<Value> inOrderByTma(ImplicitLocOpBuilder &b);
  SmallVector<Value> inOrderByCpAsync(ImplicitLocOpBuilder &b);
  SmallVector<Value> overlapped(ImplicitLocOpBuilder &b);
  /// The consumer warpgroups of the warp-specialized schedule: the
  /// in-order chunk on the TMA ring, each chunk waited for on its slot's
  /// mbarriers and released on the slot's release barrier once both
  /// products have read it (the producer refills it: produceChunks).
  SmallVector<Value> warpSpecialized(ImplicitLocOpBuilder &b);
  /// The consumers of the warp-specialized schedule with each chunk's
  /// softmax under the chunk before's P V: chunk 0's S and softmax, then
  /// per chunk c S_c and P_(c-1) V_(c-1) issued together, S_c waited for
  /// alone, the softmax, then P V and the release of chunk c - 1's slot;
  /// the last P V after the loops. P of the chunk before is carried in
  /// registers as wgmma's A words (probabilityWords).
  SmallVector<Value> warpSpecializedOverlapped(ImplicitLocOpBuilder &b);

private:
  using WaitFn = function_ref<void(ImplicitLocOpBuilder &)>;

  /// `copy` of each of `rows` rows this thread copies a 16-byte chunk of,
  /// with the row and the chunk's swizzled column. Thread tid always
  /// copies chunk tid % perRow of rows tid / perRow + i * rowStep, so that
  /// the chunk, its panel and (rowStep a multiple of 8) its swizzled column
  /// are computed once per thread, outside the chunk loop; the copies are
  /// unrolled.
  void copyRows(ImplicitLocOpBuilder &b, int64_t rows,
                function_ref<void(Value row, Value column)> copy);
  /// The tile's queries, gathered once by cp.async; rows past `valid`
  /// repeat the tile's first (never written out).
  void gatherQueries(ImplicitLocOpBuilder &b);
  /// By cp.async: K (`operand` 0) or V (1) of keys [keyBase, keyBase +
  /// keyChunk) into its buffer `buffer`; rows past lastKey repeat it (the
  /// scores mask them; another sequence's rows could hold a NaN that
  /// 0 x NaN would carry into P V). Only a chunk that reaches past lastKey
  /// needs the clamp: the others' copies differ from the first by constant
  /// offsets, which the backend folds into each cp.async's address.
  void stageByCpAsync(ImplicitLocOpBuilder &b, int64_t operand, Value buffer,
                      Value keyBase);
  /// By TMA's readers: rows past lastKey of V's slot `slot` zeroed. TMA
  /// copies what lies there (the next sequence's keys, or another
  /// block's), which a masked probability of 0 would still carry into P V
  /// if it were NaN.
  void zeroPastLastKey(ImplicitLocOpBuilder &b, Value slot, Value keyBase);
  /// `bytes` of shared memory from `address` set to zero by every thread.
  void zeroFill(ImplicitLocOpBuilder &b, Value address, int64_t bytes);
  /// One 16-byte chunk of zeros (a vector constant), what both store.
  Value zeroChunk(ImplicitLocOpBuilder &b);

  /// S = Q K^T over head_dim in k-steps of 16 on K in `buffer`, issued
  /// and committed.
  Value multiplyKeys(ImplicitLocOpBuilder &b, Value buffer);
  /// O += P V over one chunk's keys in k-steps of 16: P from shared
  /// memory, V from `buffer`, issued but not waited for.
  Value multiplyValues(ImplicitLocOpBuilder &b, Value outAcc, Value buffer);
  /// O += P V with P in registers (shape.registerProbabilities): the
  /// register-A form of wgmma, which the NVVM dialect lacks, as the
  /// project's one nvvm.inline_ptx. Issued, not committed.
  SmallVector<Value>
  multiplyValuesFromRegisters(ImplicitLocOpBuilder &b,
                              ValueRange accumulators,
                              ArrayRef<SmallVector<Value>> scores,
                              Value buffer);
  /// P's f32 probabilities (the m16n8 layout of S) as wgmma's A fragments:
  /// pairs rounded to the element type in i32 words, four a k-step of 16
  /// keys (keyChunk / 4 words), what the overlapped loops carry.
  SmallVector<Value> probabilityWords(ImplicitLocOpBuilder &b,
                                      ArrayRef<SmallVector<Value>> scores);
  /// multiplyValuesFromRegisters on P already in words, V by its
  /// descriptor (valuesOf).
  SmallVector<Value> multiplyValuesFromWords(ImplicitLocOpBuilder &b,
                                             ValueRange accumulators,
                                             ValueRange words, Value values);
  /// The matrix descriptor of V in buffer `buffer`.
  Value valuesOf(KernelBuilder &e, Value buffer) {
    return advanceDescriptor(e, valueDesc,
                             e.mul(buffer, e.index(bufferBytes)));
  }
  /// P to shared memory, the A operand of P V, fenced for the async proxy;
  /// a barrier must publish it.
  void storeProbabilities(ImplicitLocOpBuilder &b,
                          ArrayRef<SmallVector<Value>> scores);
  /// The ping-pong schedule's turns: the consumer warpgroups issue their
  /// products in a ring, each between takeTurn (a named barrier of its
  /// own, which the warpgroup before it arrives on) and passTurn (arrival
  /// on the next one's), so that one warpgroup's softmax runs while the
  /// tensor cores multiply another's. startTurns lets warpgroup 0 go first;
  /// finishTurns consumes the one arrival the ring has left over, so that
  /// every barrier ends as it started. No-ops in the other schedules.
  void startTurns(ImplicitLocOpBuilder &b);
  void takeTurn(ImplicitLocOpBuilder &b);
  void passTurn(ImplicitLocOpBuilder &b);
  void finishTurns(ImplicitLocOpBuilder &b);
  /// The named barrier of warpgroup `group`'s turn: after the warpgroups'
  /// own (1 .. warpgroups) and the consumers' (warpgroups + 1).
  int64_t turnBarrier(int64_t group) const { return warpgroups + 2 + group; }
  /// `then(group)` in the branch of this thread's warpgroup: the barrier
  /// ids stay constants (an id in a register makes ptxas reserve all 16).
  void forOwnGroup(ImplicitLocOpBuilder &b,
                   function_ref<void(ImplicitLocOpBuilder &, int64_t)> then);
  /// By TMA: V's fill `fill` of slot `buffer` landed, and where the chunk
  /// (from `keyBase`) is `masked`, its rows past the last key zeroed.
  void waitValuesByTma(ImplicitLocOpBuilder &b, TmaLoader &loader,
                       Value buffer, Value fill, Value keyBase, bool masked);
  /// The warp-specialized consumers' start: the queries (cp.async) landed
  /// and fenced for wgmma, published to the consumers.
  void publishQueries(ImplicitLocOpBuilder &b);
  /// A tile with no chunk to attend still waits for the copies of chunk 0
  /// (startBulkLoads), so that none is in flight when the CTA exits.
  void drainFirstChunk(ImplicitLocOpBuilder &b, TmaLoader &loader);
  /// The scores of a finished S in the m16n8 accumulator layout.
  SmallVector<SmallVector<Value>> scoreTiles(ImplicitLocOpBuilder &b,
                                             Value scoresAcc);
  Value packAccumulators(ImplicitLocOpBuilder &b, ValueRange values);
  SmallVector<Value> unpackAccumulators(ImplicitLocOpBuilder &b, Value acc,
                                        int64_t n);
  /// The warpgroup's own barrier: the CTA's when it is one warpgroup, else
  /// ids 1..warpgroups (0 is the CTA's). An id in a register makes ptxas
  /// reserve all 16 barriers, which allows one CTA per SM.
  void groupBarrier(ImplicitLocOpBuilder &b);
  /// A barrier of every thread that holds queries: the CTA's, or with the
  /// warp-specialized schedule id warpgroups + 1 of the consumer threads
  /// (the producer never waits at one).
  void consumerBarrier(ImplicitLocOpBuilder &b);
  /// One chunk in order: S, the softmax, P (through shared memory or in
  /// registers), O += P V; each product waited for. K of the chunk is in
  /// `buffer` once `waitKeys` returns, V in `valueBuffer` once
  /// `waitValues` does; `whileScores` (when given) runs after S is issued,
  /// while the tensor cores multiply it.
  SmallVector<Value> inOrderChunk(ImplicitLocOpBuilder &b, Value buffer,
                                  Value valueBuffer, Value keyBase,
                                  ValueRange carried, bool masked,
                                  WaitFn waitKeys, WaitFn waitValues,
                                  WaitFn whileScores);

  AttentionKernel &kernel;
  const CtaTile &t;
  const MmaTileShape &shape;
  Type element;
  StageRing ring;
  // Sizes.
  int64_t headDim, panels, keyPanels, warpgroups, queryPanelBytes,
      stagePanelBytes, bufferBytes, stageSlots, kSteps, nTiles, dTiles;
  bool singleValueBuffer;
  // The shared-memory plan and its views: queries [warpgroup, panel, row,
  // swizzled column], stages [K buffers then V buffers, panel, key,
  // swizzled column], probabilities [warpgroup, key panel, row, swizzled
  // column].
  WgmmaSharedPlan plan;
  Value queries, stages, probabilities;
  // This thread's copies (copyRows).
  int64_t perRow, rowStep;
  Value firstRow, chunkOfRow, panelOfChunk, sourceColumn, fixedColumn;
  // This thread's warpgroup, its descriptors, and its lane's rows in the
  // warpgroup's 64.
  Value warpgroup, warpInGroup, queryDesc, keyDesc, valueDesc,
      probabilityDesc, groupRow;
};

WgmmaTile::WgmmaTile(AttentionKernel &kernel, ImplicitLocOpBuilder &b,
                     const CtaTile &t)
    : kernel(kernel), t(t), shape(kernel.shape), element(kernel.element()),
      ring(kernel.shape.ring()), headDim(kernel.headDim),
      panels(Layout::panels(kernel.headDim)),
      keyPanels(Layout::panels(kernel.shape.keyChunk)),
      warpgroups(kernel.shape.warpgroups()),
      queryPanelBytes(Layout::panelBytes(64)),
      stagePanelBytes(Layout::panelBytes(kernel.shape.keyChunk)),
      bufferBytes(panels * stagePanelBytes),
      stageSlots(kernel.shape.stageSlots(kernel.headDim, kernel.element())),
      kSteps(kernel.headDim / 16), nTiles(kernel.shape.keyChunk / 8),
      dTiles(kernel.headDim / 8),
      singleValueBuffer(
          kernel.shape.singleValueBuffer(kernel.headDim, kernel.element())),
      plan(b, kernel, t.sharedMemory) {
  KernelBuilder e{b, element};
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  auto view = [&](ArrayRef<int64_t> shapeOf, Value address) {
    auto type = MemRefType::get(shapeOf, element,
                                MemRefLayoutAttrInterface(), workgroup);
    return memref::ViewOp::create(b, type, t.sharedMemory,
                                  e.sub(address, plan.base), ValueRange{})
        .getResult();
  };
  queries = view({warpgroups, panels, 64, Layout::kColumns},
                 plan.queryAddress);
  stages = view({stageSlots, panels, shape.keyChunk, Layout::kColumns},
                plan.stageAddress);
  probabilities = view({warpgroups, keyPanels, 64, Layout::kColumns},
                       plan.probabilityAddress);

  perRow = headDim / Layout::kChunkElements;
  rowStep = shape.consumerThreads() / perRow;
  firstRow = e.div(t.tid, e.index(perRow));
  chunkOfRow = e.rem(t.tid, e.index(perRow));
  panelOfChunk = e.div(chunkOfRow, e.index(Layout::kChunksPerRow));
  sourceColumn = e.mul(chunkOfRow, e.index(Layout::kChunkElements));
  fixedColumn = swizzledColumn(
      e, firstRow, e.rem(chunkOfRow, e.index(Layout::kChunksPerRow)));

  // A persistent CTA's producer gathers the queries into one of two
  // buffers (AttentionKernel::gatherQueriesAhead).
  Value queryAddress = plan.queryAddress;
  if (t.queryBuffer)
    queryAddress = e.add(
        queryAddress,
        e.mul(t.queryBuffer,
              e.index(shape.queryBufferBytes(headDim, element))));
  else
    gatherQueries(b);

  warpgroup = e.div(t.warp, e.index(4));
  warpInGroup = e.rem(t.warp, e.index(4));
  int64_t groupStride = Layout::kPeriodBytes;
  queryDesc = advanceDescriptor(
      e,
      matrixDescriptor(e, queryAddress, /*leadingBytes=*/16, groupStride),
      e.mul(warpgroup, e.index(panels * queryPanelBytes)));
  keyDesc = matrixDescriptor(e, plan.stageAddress, 16, groupStride);
  valueDesc = advanceDescriptor(
      e,
      matrixDescriptor(e, plan.stageAddress,
                       /*leadingBytes=*/stagePanelBytes, groupStride),
      shape.stages * bufferBytes);
  probabilityDesc = advanceDescriptor(
      e, matrixDescriptor(e, plan.probabilityAddress, 16, groupStride),
      e.mul(warpgroup, e.index(keyPanels * queryPanelBytes)));
  groupRow = e.add(e.mul(warpInGroup, e.index(kTileRows)), t.quadRow);
}

void WgmmaTile::copyRows(ImplicitLocOpBuilder &b, int64_t rows,
                         function_ref<void(Value row, Value column)> copy) {
  KernelBuilder e{b, element};
  for (int64_t i = 0; i * rowStep < rows; ++i) {
    Value row = e.add(firstRow, e.index(i * rowStep));
    Value column =
        rowStep % Layout::kRowsPerPeriod == 0
            ? fixedColumn
            : swizzledColumn(
                  e, row, e.rem(chunkOfRow, e.index(Layout::kChunksPerRow)));
    if (rows % rowStep == 0) {
      copy(row, column);
      continue;
    }
    auto inside = scf::IfOp::create(b, e.ult(row, e.index(rows)), false);
    OpBuilder::InsertionGuard insideGuard(b);
    b.setInsertionPointToStart(&inside.getThenRegion().front());
    copy(row, column);
  }
}

void WgmmaTile::gatherQueries(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element};
  copyRows(b, kernel.ctaRows(), [&](Value i, Value column) {
    Value at = e.add(t.first, e.select(e.ult(i, t.valid), i, e.index(0)));
    Value token = e.div(e.loadIndex(kernel.entries, {t.h, at}),
                        e.index(kernel.slotsPerToken));
    nvgpu::DeviceAsyncCopyOp::create(
        b, queries,
        ValueRange{e.div(i, e.index(64)), panelOfChunk, e.rem(i, e.index(64)),
                   column},
        kernel.q, ValueRange{token, t.h, sourceColumn},
        b.getIndexAttr(Layout::kChunkElements),
        /*srcElements=*/Value(), b.getUnitAttr());
  });
}

void WgmmaTile::stageByCpAsync(ImplicitLocOpBuilder &b, int64_t operand,
                               Value buffer, Value keyBase) {
  KernelBuilder e{b, element};
  Value source = operand == 0 ? kernel.k : kernel.v;
  Value slot = operand == 0 ? buffer : e.add(buffer, e.index(shape.stages));
  auto copies = [&](ImplicitLocOpBuilder &cb, bool clamped) {
    KernelBuilder ce{cb, element};
    copyRows(cb, shape.keyChunk, [&](Value key, Value column) {
      Value from = ce.add(keyBase, key);
      if (clamped)
        from = ce.minU(from, t.lastKey);
      nvgpu::DeviceAsyncCopyOp::create(
          cb, stages, ValueRange{slot, panelOfChunk, key, column}, source,
          ValueRange{from, t.g, sourceColumn},
          cb.getIndexAttr(Layout::kChunkElements),
          /*srcElements=*/Value(), cb.getUnitAttr());
    });
  };
  Value inside =
      e.ule(e.add(keyBase, e.index(shape.keyChunk - 1)), t.lastKey);
  auto whole = scf::IfOp::create(b, inside, /*withElseRegion=*/true);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&whole.getThenRegion().front());
  copies(b, /*clamped=*/false);
  b.setInsertionPointToStart(&whole.getElseRegion().front());
  copies(b, /*clamped=*/true);
}

Value WgmmaTile::zeroChunk(ImplicitLocOpBuilder &b) {
  return arith::ConstantOp::create(
      b, DenseElementsAttr::get(
             VectorType::get({Layout::kChunkElements}, element),
             b.getZeroAttr(element)));
}

void WgmmaTile::zeroPastLastKey(ImplicitLocOpBuilder &b, Value slot,
                                Value keyBase) {
  KernelBuilder e{b, element};
  Value zeros = zeroChunk(b);
  Value past =
      e.ult(t.lastKey, e.add(keyBase, e.index(shape.keyChunk - 1)));
  ifThen(b, past, [&](ImplicitLocOpBuilder &pb) {
    KernelBuilder pe{pb, element};
    copyRows(pb, shape.keyChunk, [&](Value row, Value column) {
      ifThen(pb, pe.ult(t.lastKey, pe.add(keyBase, row)),
             [&](ImplicitLocOpBuilder &zb) {
               vector::StoreOp::create(
                   zb, zeros, stages,
                   ValueRange{slot, panelOfChunk, row, column})
                   .setAlignment(Layout::kChunkBytes);
             });
    });
    // With P in shared memory its fence and barrier publish the zeros;
    // with P in registers they need their own (the branch is the same for
    // every consumer).
    if (shape.registerProbabilities) {
      pe.fenceAsyncProxy();
      consumerBarrier(pb);
    }
  });
}

void WgmmaTile::zeroFill(ImplicitLocOpBuilder &b, Value address,
                         int64_t bytes) {
  KernelBuilder e{b, element};
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  Value zeros = zeroChunk(b);
  int64_t elements = bytes / Layout::kElementBytes;
  Value flat = memref::ViewOp::create(
      b,
      MemRefType::get({elements}, element, MemRefLayoutAttrInterface(),
                      workgroup),
      t.sharedMemory, e.sub(address, plan.base), ValueRange{});
  scf::ForOp::create(
      b, e.mul(t.tid, e.index(Layout::kChunkElements)), e.index(elements),
      e.index(shape.consumerThreads() * Layout::kChunkElements),
      ValueRange{},
      [&](OpBuilder &fb, Location loc, Value i, ValueRange) {
        ImplicitLocOpBuilder zb(loc, fb);
        vector::StoreOp::create(zb, zeros, flat, ValueRange{i})
            .setAlignment(Layout::kChunkBytes);
        scf::YieldOp::create(zb);
      });
}

Value WgmmaTile::multiplyKeys(ImplicitLocOpBuilder &b, Value buffer) {
  KernelBuilder e{b, element};
  Value scoresAcc = LLVM::ZeroOp::create(
      b, accumulatorType(b.getContext(), shape.keyChunk / 2));
  Value keys = advanceDescriptor(e, keyDesc,
                                 e.mul(buffer, e.index(bufferBytes)));
  for (int64_t kk = 0; kk < kSteps; ++kk) {
    int64_t inPanel = (kk % 4) * Layout::kKStepBytes;
    scoresAcc = wgmmaAsync(
        e, scoresAcc,
        advanceDescriptor(e, queryDesc, (kk / 4) * queryPanelBytes + inPanel),
        advanceDescriptor(e, keys, (kk / 4) * stagePanelBytes + inPanel),
        shape.keyChunk, /*transposeB=*/false, /*accumulate=*/kk > 0);
  }
  NVVM::WgmmaGroupSyncAlignedOp::create(b);
  return scoresAcc;
}

Value WgmmaTile::multiplyValues(ImplicitLocOpBuilder &b, Value outAcc,
                                Value buffer) {
  KernelBuilder e{b, element};
  Value values = advanceDescriptor(e, valueDesc,
                                   e.mul(buffer, e.index(bufferBytes)));
  for (int64_t kv = 0; kv < shape.keyChunk / 16; ++kv)
    outAcc = wgmmaAsync(
        e, outAcc,
        advanceDescriptor(e, probabilityDesc,
                          (kv / 4) * queryPanelBytes +
                              (kv % 4) * Layout::kKStepBytes),
        advanceDescriptor(e, values, kv * 16 * Layout::kRowBytes), headDim,
        /*transposeB=*/true, /*accumulate=*/true);
  return outAcc;
}

// P's f32 scores (the m16n8 accumulator layout of S) packed in pairs are
// wgmma's A fragments: for k-step kv, key tiles 2kv and 2kv + 1, rows g
// and g + 8. The accumulators are read-only operands copied into the
// write-only results by movs that ptxas folds (nvvm.inline_ptx drops the
// values of read-write operands in LLVM 22); scale-d is a true predicate.
SmallVector<Value>
WgmmaTile::probabilityWords(ImplicitLocOpBuilder &b,
                            ArrayRef<SmallVector<Value>> scores) {
  auto word = [&](Value lo, Value hi) -> Value {
    Value pair = vector::FromElementsOp::create(
        b, VectorType::get({2}, element),
        ValueRange{arith::TruncFOp::create(b, element, lo),
                   arith::TruncFOp::create(b, element, hi)});
    Value bits = vector::BitCastOp::create(
        b, VectorType::get({1}, b.getI32Type()), pair);
    return vector::ExtractOp::create(b, bits, ArrayRef<int64_t>{0});
  };
  SmallVector<Value> words;
  for (int64_t kv = 0; kv < shape.keyChunk / 16; ++kv)
    for (int64_t tile : {2 * kv, 2 * kv + 1})
      for (int64_t r = 0; r < 2; ++r)
        words.push_back(word(scores[tile][2 * r], scores[tile][2 * r + 1]));
  return words;
}

SmallVector<Value> WgmmaTile::multiplyValuesFromRegisters(
    ImplicitLocOpBuilder &b, ValueRange accumulators,
    ArrayRef<SmallVector<Value>> scores, Value buffer) {
  KernelBuilder e{b, element};
  Value values = valuesOf(e, buffer);
  return multiplyValuesFromWords(b, accumulators, probabilityWords(b, scores),
                                 values);
}

SmallVector<Value> WgmmaTile::multiplyValuesFromWords(ImplicitLocOpBuilder &b,
                                                      ValueRange accumulators,
                                                      ValueRange words,
                                                      Value values) {
  KernelBuilder e{b, element};
  int64_t n = static_cast<int64_t>(accumulators.size());
  int64_t steps = shape.keyChunk / 16;
  SmallVector<Value> operands(accumulators.begin(), accumulators.end());
  operands.append(words.begin(), words.end());
  for (int64_t kv = 0; kv < steps; ++kv)
    operands.push_back(
        advanceDescriptor(e, values, kv * 16 * Layout::kRowBytes));
  // Operands: $0..$n-1 the results, then the accumulators, the A words
  // (four a k-step) and the k-steps' descriptors of V.
  std::string ptx = "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n";
  auto operand = [](int64_t i) { return "$" + std::to_string(i); };
  for (int64_t i = 0; i < n; ++i)
    ptx += "mov.f32 " + operand(i) + ", " + operand(n + i) + ";\n";
  std::string type = element.isF16() ? "f16" : "bf16";
  for (int64_t kv = 0; kv < steps; ++kv) {
    ptx += "wgmma.mma_async.sync.aligned.m64n" + std::to_string(headDim) +
           "k16.f32." + type + "." + type + " {";
    for (int64_t i = 0; i < n; ++i)
      ptx += (i ? ", " : "") + operand(i);
    int64_t a = 2 * n + 4 * kv;
    ptx += "}, {" + operand(a) + ", " + operand(a + 1) + ", " +
           operand(a + 2) + ", " + operand(a + 3) + "}, " +
           operand(2 * n + 4 * steps + kv) + ", p, 1, 1, 1;\n";
  }
  ptx += "}";
  auto product = NVVM::InlinePtxOp::create(
      b, SmallVector<Type>(n, b.getF32Type()), operands, ValueRange{}, ptx,
      /*predicate=*/Value());
  return SmallVector<Value>(product->getResults());
}

void WgmmaTile::storeProbabilities(ImplicitLocOpBuilder &b,
                                   ArrayRef<SmallVector<Value>> scores) {
  KernelBuilder e{b, element};
  for (int64_t nt = 0; nt < nTiles; ++nt)
    for (int64_t r = 0; r < 2; ++r) {
      Value row = e.add(groupRow, e.index(8 * r));
      Value column = e.add(
          swizzledColumn(e, row, e.index(nt % Layout::kChunksPerRow)),
          t.pairCol);
      Value pair = vector::FromElementsOp::create(
          b, VectorType::get({2}, element),
          ValueRange{arith::TruncFOp::create(b, element, scores[nt][2 * r]),
                     arith::TruncFOp::create(b, element,
                                             scores[nt][2 * r + 1])});
      vector::StoreOp::create(
          b, pair, probabilities,
          ValueRange{warpgroup,
                     e.index(nt / (Layout::kColumns / 8)), row, column})
          .setAlignment(4);
    }
  e.fenceAsyncProxy();
}

SmallVector<SmallVector<Value>>
WgmmaTile::scoreTiles(ImplicitLocOpBuilder &b, Value scoresAcc) {
  SmallVector<Value> flat =
      unpackAccumulators(b, scoresAcc, shape.keyChunk / 2);
  SmallVector<SmallVector<Value>> scores(nTiles);
  for (int64_t nt = 0; nt < nTiles; ++nt)
    scores[nt].assign(flat.begin() + 4 * nt, flat.begin() + 4 * nt + 4);
  return scores;
}

Value WgmmaTile::packAccumulators(ImplicitLocOpBuilder &b, ValueRange values) {
  Value acc = LLVM::UndefOp::create(
      b, accumulatorType(b.getContext(), static_cast<int64_t>(values.size())));
  for (auto [i, value] : llvm::enumerate(values))
    acc = LLVM::InsertValueOp::create(b, acc, value,
                                      ArrayRef<int64_t>{int64_t(i)});
  return acc;
}

SmallVector<Value> WgmmaTile::unpackAccumulators(ImplicitLocOpBuilder &b,
                                                 Value acc, int64_t n) {
  SmallVector<Value> values;
  for (int64_t i = 0; i < n; ++i)
    values.push_back(
        LLVM::ExtractValueOp::create(b, acc, ArrayRef<int64_t>{i}));
  return values;
}

void WgmmaTile::groupBarrier(ImplicitLocOpBuilder &b) {
  if (warpgroups == 1) {
    consumerBarrier(b);
    return;
  }
  KernelBuilder e{b, element};
  Value id = arith::IndexCastOp::create(b, b.getI32Type(),
                                        e.add(warpgroup, e.index(1)));
  NVVM::BarrierOp::create(b, TypeRange{}, id, e.i32(128),
                          /*reductionOp=*/{}, Value());
}

void WgmmaTile::consumerBarrier(ImplicitLocOpBuilder &b) {
  if (!shape.warpSpecialized()) {
    gpu::BarrierOp::create(b);
    return;
  }
  KernelBuilder e{b, element};
  NVVM::BarrierOp::create(b, TypeRange{}, e.i32(shape.consumerBarrierId()),
                          e.i32(shape.consumerThreads()),
                          /*reductionOp=*/{}, Value());
}

SmallVector<Value> WgmmaTile::inOrderChunk(
    ImplicitLocOpBuilder &b, Value buffer, Value valueBuffer, Value keyBase,
    ValueRange carried, bool masked, WaitFn waitKeys, WaitFn waitValues,
    WaitFn whileScores) {
  waitKeys(b);
  NVVM::WgmmaFenceAlignedOp::create(b);
  Value scoresAcc = multiplyKeys(b, buffer);
  if (whileScores)
    whileScores(b);
  NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
  SmallVector<SmallVector<Value>> scores = scoreTiles(b, scoresAcc);
  SmallVector<Value> results =
      kernel.softmaxStep(b, t, scores, carried, keyBase, masked);
  waitValues(b);
  SmallVector<Value> out;
  if (shape.registerProbabilities) {
    // V copied by this CTA's threads (cp.async, one buffer) is published by
    // a proxy fence and a barrier; TMA's V, and V that landed with K, are
    // already visible.
    if (singleValueBuffer && !shape.bulkLoads) {
      KernelBuilder{b, element}.fenceAsyncProxy();
      groupBarrier(b);
    }
    NVVM::WgmmaFenceAlignedOp::create(b);
    out = multiplyValuesFromRegisters(b, ValueRange(results).drop_front(4),
                                      scores, valueBuffer);
    NVVM::WgmmaGroupSyncAlignedOp::create(b);
    NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
  } else {
    // The proxy fence after P's stores and the barrier publish V too.
    storeProbabilities(b, scores);
    groupBarrier(b);
    Value outAcc = packAccumulators(b, ValueRange(results).drop_front(4));
    NVVM::WgmmaFenceAlignedOp::create(b);
    outAcc = multiplyValues(b, outAcc, valueBuffer);
    NVVM::WgmmaGroupSyncAlignedOp::create(b);
    NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
    out = unpackAccumulators(b, outAcc, dTiles * 4);
  }
  std::copy(out.begin(), out.end(), results.begin() + 4);
  return results;
}

SmallVector<Value> WgmmaTile::inOrderByTma(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element};
  // startBulkLoads (emitCta) has started chunk 0's K and V. The queries
  // (cp.async) landed and fenced for wgmma; one CTA barrier publishes them
  // and the barriers' initialization.
  TmaLoader loader(kernel, b, t);
  NVVM::CpAsyncCommitGroupOp::create(b);
  NVVM::CpAsyncWaitGroupOp::create(b, 0);
  e.fenceAsyncProxy();
  gpu::BarrierOp::create(b);
  // K (and V in a ring) of chunk `chunk` into its slot, when the tile has
  // that chunk.
  auto issueChunk = [&](ImplicitLocOpBuilder &ib, Value chunk) {
    KernelBuilder ie{ib, element};
    ifThen(ib, ie.ult(chunk, t.chunks), [&](ImplicitLocOpBuilder &nb) {
      KernelBuilder ne{nb, element};
      Value slot = ring.slot(ne, chunk);
      loader.issue(nb, 0, slot, chunk);
      if (!singleValueBuffer)
        loader.issue(nb, 1, slot, chunk);
    });
  };
  // Chunk c's copies, once every warp is done with chunk c - 1 (the
  // barrier at the loop's top): V_c into the one V buffer (V_0 was started
  // with K_0); K (and V in a ring) of c + lookahead into the slot c - 1
  // used.
  auto issueNext = [&](ImplicitLocOpBuilder &ib, Value chunk) {
    KernelBuilder ie{ib, element};
    if (singleValueBuffer)
      ifThen(ib, ie.ult(ie.index(0), chunk), [&](ImplicitLocOpBuilder &vb) {
        loader.issue(vb, 1, ie.index(0), chunk);
      });
    issueChunk(ib, ie.add(chunk, ie.index(ring.lookahead())));
  };
  Value isIssuer =
      arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.tid, e.index(0));
  // Chunks 1 .. lookahead - 1 fill the ring's other slots ahead of the
  // loop (chunk 0 is in flight since startBulkLoads); the barriers were
  // initialized by this same thread, and a pair's by both CTAs before
  // either copied.
  if (ring.lookahead() > 1)
    ifThen(b, isIssuer, [&](ImplicitLocOpBuilder &ib) {
      KernelBuilder ie{ib, element};
      for (int64_t chunk = 1; chunk < ring.lookahead(); ++chunk)
        issueChunk(ib, ie.index(chunk));
    });
  SmallVector<Value> finals = kernel.emitBulkChunkLoops(
      b, t,
      [&](ImplicitLocOpBuilder &ib, Value chunk, Value buffer, Value keyBase,
          ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, element};
        Value fill = ring.fill(ie, chunk);
        Value valueBuffer = singleValueBuffer ? ie.index(0) : buffer;
        Value valueFill = singleValueBuffer ? chunk : fill;
        return inOrderChunk(
            ib, buffer, valueBuffer, keyBase, c, masked,
            [&](ImplicitLocOpBuilder &wb) {
              loader.wait(wb, 0, buffer, fill);
            },
            [&](ImplicitLocOpBuilder &wb) {
              waitValuesByTma(wb, loader, valueBuffer, valueFill, keyBase,
                              masked);
            },
            // Thread 0 starts the copies while the tensor cores multiply
            // S, not before: its warp would otherwise reach S's wgmma,
            // which waits for all four warps, last (docs/PERFORMANCE.md,
            // ninth round).
            [&](ImplicitLocOpBuilder &wb) {
              ifThen(wb, isIssuer, [&](ImplicitLocOpBuilder &ib) {
                issueNext(ib, chunk);
              });
            });
      });
  // A tile with no chunk to attend still waits for the copies of chunk 0,
  // so that none is in flight when the CTA exits.
  ifThen(b,
         arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.chunks,
                               e.index(0)),
         [&](ImplicitLocOpBuilder &ib) {
           KernelBuilder ie{ib, element};
           loader.wait(ib, 0, ie.index(0), ie.index(0));
           loader.wait(ib, 1, ie.index(0), ie.index(0));
         });
  // Neither CTA of a pair exits before both have all their bytes: no copy
  // of one is then still bound for the other's shared memory.
  if (t.paired)
    ifThen(b, t.paired,
           [&](ImplicitLocOpBuilder &ib) { clusterBarrier(ib); });
  return finals;
}

SmallVector<Value> WgmmaTile::inOrderByCpAsync(ImplicitLocOpBuilder &b) {
  auto noWait = [](ImplicitLocOpBuilder &) {};
  return kernel.emitChunkLoops(
      b, t, /*asyncProxyReads=*/true,
      singleValueBuffer ? AttentionKernel::ValueStaging::AfterProducts
                        : AttentionKernel::ValueStaging::WithKeys,
      [&](ImplicitLocOpBuilder &sb, int64_t operand, Value buffer,
          Value keyBase) { stageByCpAsync(sb, operand, buffer, keyBase); },
      [&](ImplicitLocOpBuilder &ib, Value /*chunk*/, Value buffer,
          Value keyBase, ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, element};
        // One V buffer: V_c, copied during this chunk's S and softmax, has
        // landed once all but the newest group (K_(c+1)) have.
        auto waitValues = [&](ImplicitLocOpBuilder &wb) {
          if (singleValueBuffer)
            NVVM::CpAsyncWaitGroupOp::create(wb, 1);
        };
        return inOrderChunk(ib, buffer,
                            singleValueBuffer ? ie.index(0) : buffer, keyBase,
                            c, masked, noWait, waitValues,
                            /*whileScores=*/nullptr);
      });
}

SmallVector<Value> WgmmaTile::overlapped(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element};
  // P and V's slot before the first chunk's start as zeros, which the first
  // chunk's P V (of no keys) multiplies: wgmma in a branch would make ptxas
  // serialize every wgmma of the kernel. The chunk loop's first barrier
  // publishes them. The loop is double-buffered: V of chunk c - 1 sits in
  // the slot before chunk c's.
  assert(ring.stages() == 2 && "the overlapped loop has two stages");
  zeroFill(b, plan.probabilityAddress, shape.probabilityBytes(element));
  int64_t valueSlotBeforeFirst = shape.stages + ring.stages() - 1;
  zeroFill(b,
           e.add(plan.stageAddress,
                 e.index(valueSlotBeforeFirst * bufferBytes)),
           bufferBytes);
  SmallVector<Value> finals = kernel.emitChunkLoops(
      b, t, /*asyncProxyReads=*/true,
      AttentionKernel::ValueStaging::OneChunkLate,
      [&](ImplicitLocOpBuilder &sb, int64_t operand, Value buffer,
          Value keyBase) { stageByCpAsync(sb, operand, buffer, keyBase); },
      [&](ImplicitLocOpBuilder &ib, Value /*chunk*/, Value buffer,
          Value keyBase, ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, element};
        Value outAcc = packAccumulators(ib, c.drop_front(4));
        NVVM::WgmmaFenceAlignedOp::create(ib);
        Value scoresAcc = multiplyKeys(ib, buffer);
        Value previous =
            multiplyValues(ib, outAcc, ring.previousSlot(ie, buffer));
        NVVM::WgmmaGroupSyncAlignedOp::create(ib);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 1);
        SmallVector<SmallVector<Value>> scores = scoreTiles(ib, scoresAcc);
        AttentionKernel::Rescale factors;
        SmallVector<Value> results = kernel.softmaxStep(
            ib, t, scores, c.take_front(4), keyBase, masked, &factors);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 0);
        SmallVector<Value> out = unpackAccumulators(ib, previous, dTiles * 4);
        AttentionKernel::rescale(out, factors, ie);
        results.append(out);
        // P_c, for the next chunk (or the loops' end); the loop's barrier
        // publishes it.
        storeProbabilities(ib, scores);
        return results;
      });

  // The last chunk's P V (zeros times zeros when there was none).
  Value outAcc = packAccumulators(b, ValueRange(finals).drop_front(4));
  NVVM::WgmmaFenceAlignedOp::create(b);
  Value last = multiplyValues(b, outAcc, ring.slotBefore(e, t.chunks));
  NVVM::WgmmaGroupSyncAlignedOp::create(b);
  NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
  SmallVector<Value> out = unpackAccumulators(b, last, dTiles * 4);
  std::copy(out.begin(), out.end(), finals.begin() + 4);
  return finals;
}

SmallVector<Value> WgmmaTile::warpSpecialized(ImplicitLocOpBuilder &b) {
  TmaLoader loader(kernel, b, t);
  // The producer copies chunks 1 on, startBulkLoads chunk 0 (persistent:
  // the producer copies every chunk, and gathers the queries too).
  if (t.queryBuffer)
    loader.waitQueries(b, t.queryBuffer, t.queryFill);
  else
    publishQueries(b);
  SmallVector<Value> finals = kernel.emitSplitChunkLoops(
      b, t,
      [&](ImplicitLocOpBuilder &ib, Value chunk, Value buffer, Value keyBase,
          ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, element};
        Value fill = ring.fill(ie, AttentionKernel::ringChunk(ie, t, chunk));
        SmallVector<Value> results = inOrderChunk(
            ib, buffer, buffer, keyBase, c, masked,
            [&](ImplicitLocOpBuilder &wb) {
              loader.wait(wb, 0, buffer, fill);
            },
            [&](ImplicitLocOpBuilder &wb) {
              waitValuesByTma(wb, loader, buffer, fill, keyBase, masked);
            },
            /*whileScores=*/nullptr);
        // Both products were waited for: the slot is free.
        loader.release(ib, buffer);
        return results;
      });
  // Every product of the tile was waited for: the queries' buffer is free.
  if (t.queryBuffer)
    loader.releaseQueries(b, t.queryBuffer);
  else
    drainFirstChunk(b, loader);
  return finals;
}

void WgmmaTile::waitValuesByTma(ImplicitLocOpBuilder &b, TmaLoader &loader,
                                Value buffer, Value fill, Value keyBase,
                                bool masked) {
  KernelBuilder e{b, element};
  loader.wait(b, 1, buffer, fill);
  if (masked)
    zeroPastLastKey(b, e.add(buffer, e.index(shape.stages)), keyBase);
}

void WgmmaTile::publishQueries(ImplicitLocOpBuilder &b) {
  NVVM::CpAsyncCommitGroupOp::create(b);
  NVVM::CpAsyncWaitGroupOp::create(b, 0);
  KernelBuilder{b, element}.fenceAsyncProxy();
  consumerBarrier(b);
}

void WgmmaTile::forOwnGroup(
    ImplicitLocOpBuilder &b,
    function_ref<void(ImplicitLocOpBuilder &, int64_t)> then) {
  KernelBuilder e{b, element};
  for (int64_t group = 0; group < warpgroups; ++group)
    ifThen(b,
           arith::CmpIOp::create(b, arith::CmpIPredicate::eq, warpgroup,
                                 e.index(group)),
           [&](ImplicitLocOpBuilder &gb) { then(gb, group); });
}

void WgmmaTile::startTurns(ImplicitLocOpBuilder &b) {
  if (shape.schedule != KernelSchedule::PingPong)
    return;
  forOwnGroup(b, [&](ImplicitLocOpBuilder &gb, int64_t group) {
    if (group == warpgroups - 1)
      NVVM::BarrierArriveOp::create(
          gb, KernelBuilder{gb, element}.i32(turnBarrier(0)),
          KernelBuilder{gb, element}.i32(256));
  });
}

void WgmmaTile::takeTurn(ImplicitLocOpBuilder &b) {
  if (shape.schedule != KernelSchedule::PingPong)
    return;
  forOwnGroup(b, [&](ImplicitLocOpBuilder &gb, int64_t group) {
    KernelBuilder ge{gb, element};
    NVVM::BarrierOp::create(gb, TypeRange{}, ge.i32(turnBarrier(group)),
                            ge.i32(256), /*reductionOp=*/{}, Value());
  });
}

void WgmmaTile::passTurn(ImplicitLocOpBuilder &b) {
  if (shape.schedule != KernelSchedule::PingPong)
    return;
  forOwnGroup(b, [&](ImplicitLocOpBuilder &gb, int64_t group) {
    KernelBuilder ge{gb, element};
    NVVM::BarrierArriveOp::create(
        gb, ge.i32(turnBarrier((group + 1) % warpgroups)), ge.i32(256));
  });
}

void WgmmaTile::finishTurns(ImplicitLocOpBuilder &b) {
  if (shape.schedule != KernelSchedule::PingPong)
    return;
  forOwnGroup(b, [&](ImplicitLocOpBuilder &gb, int64_t group) {
    KernelBuilder ge{gb, element};
    if (group == 0)
      NVVM::BarrierOp::create(gb, TypeRange{}, ge.i32(turnBarrier(0)),
                              ge.i32(256), /*reductionOp=*/{}, Value());
  });
}

void WgmmaTile::drainFirstChunk(ImplicitLocOpBuilder &b, TmaLoader &loader) {
  KernelBuilder e{b, element};
  ifThen(b,
         arith::CmpIOp::create(b, arith::CmpIPredicate::eq, t.chunks,
                               e.index(0)),
         [&](ImplicitLocOpBuilder &ib) {
           KernelBuilder ie{ib, element};
           loader.wait(ib, 0, ie.index(0), ie.index(0));
           loader.wait(ib, 1, ie.index(0), ie.index(0));
         });
}

SmallVector<Value>
WgmmaTile::warpSpecializedOverlapped(ImplicitLocOpBuilder &b) {
  KernelBuilder e{b, element};
  TmaLoader loader(kernel, b, t);
  publishQueries(b);
  startTurns(b);
  int64_t wordCount = shape.keyChunk / 4;
  // V of chunk `chunk` (in slot `slot`) landed, and past the last key
  // zeroed where the chunk reaches past it.
  auto waitValues = [&](ImplicitLocOpBuilder &wb, Value chunk, Value slot,
                        bool masked) {
    KernelBuilder we{wb, element};
    waitValuesByTma(
        wb, loader, slot, ring.fill(we, chunk),
        we.add(t.keyFirst, we.mul(chunk, we.index(shape.keyChunk))), masked);
  };
  // O (+)= P V of chunk `chunk`, P its probabilities, issued and
  // committed.
  auto multiplyPrevious = [&](ImplicitLocOpBuilder &mb, ValueRange out,
                              ValueRange probabilities, Value slot) {
    NVVM::WgmmaFenceAlignedOp::create(mb);
    KernelBuilder me{mb, element};
    SmallVector<Value> product =
        multiplyValuesFromWords(mb, out, probabilities, valuesOf(me, slot));
    NVVM::WgmmaGroupSyncAlignedOp::create(mb);
    return product;
  };

  // Chunk 0: S and the softmax, masked (the mask is exact on any chunk;
  // the tile's first chunk may be its last). Carried: max, sums, O, and
  // P of the chunk before. A tile without chunks carries the loops'
  // initial values and zero probabilities through.
  SmallVector<Value> inits = kernel.chunkLoopInits(e);
  SmallVector<Type> carriedTypes;
  for (Value init : inits)
    carriedTypes.push_back(init.getType());
  carriedTypes.append(wordCount, b.getI32Type());
  Value hasChunks = e.ult(e.index(0), t.chunks);
  auto first = scf::IfOp::create(b, carriedTypes, hasChunks,
                                 /*withElseRegion=*/true);
  {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&first.getThenRegion().front());
    KernelBuilder fe{b, element};
    loader.wait(b, 0, fe.index(0), fe.index(0));
    takeTurn(b);
    NVVM::WgmmaFenceAlignedOp::create(b);
    Value scoresAcc = multiplyKeys(b, fe.index(0));
    passTurn(b);
    NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
    SmallVector<SmallVector<Value>> scores = scoreTiles(b, scoresAcc);
    SmallVector<Value> results = kernel.softmaxStep(
        b, t, scores, ValueRange(inits), t.keyFirst, /*masked=*/true);
    results.append(probabilityWords(b, scores));
    scf::YieldOp::create(b, results);
    b.setInsertionPointToStart(&first.getElseRegion().front());
    SmallVector<Value> none(inits);
    none.append(wordCount, fe.i32(0));
    scf::YieldOp::create(b, none);
  }
  int64_t outCount = dTiles * 4;
  SmallVector<Value> finals = kernel.emitSplitChunkLoops(
      b, t,
      [&](ImplicitLocOpBuilder &ib, Value chunk, Value buffer, Value keyBase,
          ValueRange c, bool masked) -> SmallVector<Value> {
        KernelBuilder ie{ib, element};
        Value previous = ie.sub(chunk, ie.index(1));
        Value previousSlot = ring.previousSlot(ie, buffer);
        loader.wait(ib, 0, buffer, ring.fill(ie, chunk));
        // The chunk before is masked where this one is or it is chunk
        // unmasked - 1 (zeroPastLastKey checks the keys itself).
        waitValues(ib, previous, previousSlot, masked);
        takeTurn(ib);
        NVVM::WgmmaFenceAlignedOp::create(ib);
        Value scoresAcc = multiplyKeys(ib, buffer);
        SmallVector<Value> out = multiplyPrevious(
            ib, c.slice(4, outCount), c.drop_front(4 + outCount),
            previousSlot);
        passTurn(ib);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 1);
        SmallVector<SmallVector<Value>> scores = scoreTiles(ib, scoresAcc);
        AttentionKernel::Rescale factors;
        SmallVector<Value> results = kernel.softmaxStep(
            ib, t, scores, c.take_front(4), keyBase, masked, &factors);
        NVVM::WgmmaWaitGroupSyncOp::create(ib, 0);
        // Both products of chunk c - 1's slot are done.
        loader.release(ib, previousSlot);
        AttentionKernel::rescale(out, factors, ie);
        results.append(out);
        results.append(probabilityWords(ib, scores));
        return results;
      },
      first.getResults(), /*first=*/e.index(1));

  // The last chunk's P V, where there was a chunk.
  SmallVector<Type> outTypes(outCount, b.getF32Type());
  auto last = scf::IfOp::create(b, outTypes, hasChunks,
                                /*withElseRegion=*/true);
  {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(&last.getThenRegion().front());
    KernelBuilder le{b, element};
    Value lastChunk = le.sub(t.chunks, le.index(1));
    Value lastSlot = ring.slot(le, lastChunk);
    waitValues(b, lastChunk, lastSlot, /*masked=*/true);
    takeTurn(b);
    SmallVector<Value> out = multiplyPrevious(
        b, ValueRange(finals).slice(4, outCount),
        ValueRange(finals).drop_front(4 + outCount), lastSlot);
    passTurn(b);
    NVVM::WgmmaWaitGroupSyncOp::create(b, 0);
    scf::YieldOp::create(b, out);
    b.setInsertionPointToStart(&last.getElseRegion().front());
    scf::YieldOp::create(
        b, SmallVector<Value>(ValueRange(finals).slice(4, outCount)));
  }
  finishTurns(b);
  drainFirstChunk(b, loader);
  SmallVector<Value> results(ValueRange(finals).take_front(4));
  results.append(last.getResults().begin(), last.getResults().end());
  return results;
}

} // namespace

void AttentionKernel::moveRegisters(ImplicitLocOpBuilder &b, bool producer) {
  int64_t ctas = shape.statedCtasPerSM(headDim, element());
  // Only where the consumers would gain some.
  if (shape.consumerRegisters(ctas) <= shape.launchRegisters(ctas))
    return;
  if (producer)
    NVVM::SetMaxRegisterOp::create(
        b, static_cast<int32_t>(MmaTileShape::kProducerRegisters),
        NVVM::SetMaxRegisterAction::decrease);
  else
    NVVM::SetMaxRegisterOp::create(
        b, static_cast<int32_t>(shape.consumerRegisters(ctas)),
        NVVM::SetMaxRegisterAction::increase);
}

void AttentionKernel::emitProducer(ImplicitLocOpBuilder &b,
                                   const CtaTile &t) {
  KernelBuilder e{b, element()};
  moveRegisters(b, /*producer=*/true);
  TmaLoader loader(*this, b, t);
  Value isIssuer = arith::CmpIOp::create(
      b, arith::CmpIPredicate::eq, t.tid, e.index(shape.consumerThreads()));
  ifThen(b, isIssuer, [&](ImplicitLocOpBuilder &ib) {
    produceChunks(ib, t, loader, KernelBuilder{ib, e.element}.index(1));
  });
}

void AttentionKernel::gatherQueriesAhead(ImplicitLocOpBuilder &b,
                                         const CtaTile &t, TmaLoader &loader,
                                         Value thread) {
  KernelBuilder e{b, element()};
  ifThen(b, e.ult(e.index(0), t.queryFill), [&](ImplicitLocOpBuilder &wb) {
    KernelBuilder we{wb, e.element};
    loader.waitQueriesReleased(wb, t.queryBuffer,
                               we.sub(t.queryFill, we.index(1)));
  });
  WgmmaSharedPlan plan(b, *this, t.sharedMemory);
  int64_t panels = Layout::panels(headDim);
  auto workgroup = gpu::AddressSpaceAttr::get(b.getContext(),
                                              gpu::AddressSpace::Workgroup);
  Value address = e.add(
      plan.queryAddress,
      e.mul(t.queryBuffer,
            e.index(shape.queryBufferBytes(headDim, element()))));
  Value queries = memref::ViewOp::create(
      b,
      MemRefType::get({shape.warpgroups(), panels, 64, Layout::kColumns},
                      element(), MemRefLayoutAttrInterface(), workgroup),
      t.sharedMemory, e.sub(address, plan.base), ValueRange{});
  // Chunk i of the tile's rows x 16-byte chunks; rows past `valid` repeat
  // the tile's first (never written out).
  int64_t perRow = headDim / Layout::kChunkElements;
  scf::ForOp::create(
      b, thread, e.index(ctaRows() * perRow),
      e.index(shape.queryGatherers()), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value i, ValueRange) {
        ImplicitLocOpBuilder lb(loc, fb);
        KernelBuilder le{lb, e.element};
        Value row = le.div(i, le.index(perRow));
        Value chunk = le.rem(i, le.index(perRow));
        Value at =
            le.add(t.first, le.select(le.ult(row, t.valid), row, le.index(0)));
        Value token = le.div(le.loadIndex(entries, {t.h, at}),
                             le.index(slotsPerToken));
        Value column = swizzledColumn(
            le, row, le.rem(chunk, le.index(Layout::kChunksPerRow)));
        nvgpu::DeviceAsyncCopyOp::create(
            lb, queries,
            ValueRange{le.div(row, le.index(64)),
                       le.div(chunk, le.index(Layout::kChunksPerRow)),
                       le.rem(row, le.index(64)), column},
            q,
            ValueRange{token, t.h,
                       le.mul(chunk, le.index(Layout::kChunkElements))},
            lb.getIndexAttr(Layout::kChunkElements),
            /*srcElements=*/Value(), lb.getUnitAttr());
        scf::YieldOp::create(lb);
      });
  // Landed, and ordered before the consumers' wgmma (the async proxy).
  NVVM::CpAsyncCommitGroupOp::create(b);
  NVVM::CpAsyncWaitGroupOp::create(b, 0);
  e.fenceAsyncProxy();
  loader.queriesGathered(b, t.queryBuffer);
}

void AttentionKernel::produceChunks(ImplicitLocOpBuilder &b, const CtaTile &t,
                                   TmaLoader &loader, Value from) {
  KernelBuilder e{b, element()};
  StageRing ring = shape.ring();
  scf::ForOp::create(
      b, from, t.chunks, e.index(1), ValueRange{},
      [&](OpBuilder &fb, Location loc, Value chunk, ValueRange) {
        ImplicitLocOpBuilder lb(loc, fb);
        KernelBuilder le{lb, e.element};
        Value at = ringChunk(le, t, chunk);
        Value slot = ring.slot(le, at);
        Value fill = ring.fill(le, at);
        // The slot's fill before this one, released by every consumer.
        ifThen(lb, le.ult(le.index(0), fill), [&](ImplicitLocOpBuilder &wb) {
          KernelBuilder we{wb, e.element};
          loader.waitReleased(wb, slot, we.sub(fill, we.index(1)));
        });
        loader.issue(lb, 0, slot, chunk);
        loader.issue(lb, 1, slot, chunk);
        scf::YieldOp::create(lb);
      });
}

SmallVector<Value> AttentionKernel::emitWgmmaChunks(ImplicitLocOpBuilder &b,
                                                    const CtaTile &t) {
  if (shape.warpSpecialized()) {
    // A persistent CTA's consumers take their registers once, before
    // their first tile (emitPersistentCta).
    if (!shape.persistent())
      moveRegisters(b, /*producer=*/false);
    WgmmaTile tile(*this, b, t);
    if (shape.schedule == KernelSchedule::WarpSpecializedOverlapped ||
        shape.schedule == KernelSchedule::PingPong)
      return tile.warpSpecializedOverlapped(b);
    return tile.warpSpecialized(b);
  }
  WgmmaTile tile(*this, b, t);
  if (shape.overlapsSoftmax(headDim, element()))
    return tile.overlapped(b);
  if (shape.bulkLoads)
    return tile.inOrderByTma(b);
  return tile.inOrderByCpAsync(b);
}
