//===- AttentionKernel.h - The grouped attention kernel's parts -*- C++ -*-===//
//
// Part of moba-mlir. What the two tensor-core forms of
// moba-convert-grouped-attention-to-nvvm share: the CTA's tile shape and
// shared-memory plan, scalar and fragment helpers, and the kernel's
// emitter, whose chunk loop comes in two forms: mma.sync
// (GroupedAttentionToNVVM.cpp, sm_80 and newer) and sm_90a's wgmma
// (WgmmaChunkLoop.cpp), and whose merged form (`merge(...)`) ends in the
// fused log-sum-exp merge (FusedMerge.cpp).
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_ATTENTIONKERNEL_H
#define MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_ATTENTIONKERNEL_H

#include "KernelBuilder/KernelBuilder.h"
#include "moba/Conversion/AttentionKernelPlan.h"
#include "StageRing.h"
#include "moba/Dialect/Moba/IR/MobaOps.h"

#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

#include <functional>


namespace mlir::moba::grouped_attention {

using nvvm_kernel::kNegInf;
using nvvm_kernel::KernelBuilder;
using nvvm_kernel::launch;

constexpr int64_t kTileRows = 16; // queries per warp (mma M)
/// The shared memory one CTA may use on sm_80 and sm_90 (227 KiB).
constexpr int64_t kMaxSharedBytes = 227 * 1024;
/// An sm_90 SM's shared memory, and what the system reserves of it per CTA.
constexpr int64_t kSharedBytesPerSM = 228 * 1024;
constexpr int64_t kReservedSharedBytes = 1024;

/// An sm_90 SM's registers, and the registers the wgmma form of the kernel
/// needs per thread at head_dim 128 without spilling (ptxas 13.0: 173
/// unconstrained, 168 with no spill, 160 spills 20 bytes). ptxas allocates
/// registers in steps of 8.
constexpr int64_t kRegistersPerSM = 64 * 1024;
constexpr int64_t kWgmmaRegisters = 168;
constexpr int64_t kRegisterStep = 8;

/// The work of one CTA: `warps` warps of 16 queries each, over K and V
/// staged `keyChunk` keys at a time through a ring of `stages` shared-memory
/// buffers (StageRing): `stages` for K, and as many for V or
/// (singleValueBuffer) one. Only the TMA loop runs deeper than two stages;
/// the cp.async loops wait for every group at each chunk's top, which a
/// deeper ring would not change.
///
/// All of the CTA's shared memory is carved out of the one dynamic region:
/// `gpu.dynamic_shared_memory` lowers to a `.shared` symbol at whose address
/// the launch's dynamic bytes begin, so a static workgroup buffer placed
/// after that symbol would lie inside the region (compute-sanitizer's
/// racecheck caught cp.async overwriting such a buffer while warps still
/// read it).
///
/// mma.sync: [K/V stages][causal bounds]; the stages' rows are padded to
/// head_dim + 8 elements against bank conflicts.
/// wgmma: [causal bounds][mbarriers, bulkLoads only][slack up to 1 KiB
/// alignment][Q][K buffers][V buffers][P], every operand in 64-column
/// panels of 128-byte rows with the 128-byte swizzle
/// (hopper::SwizzledPanelLayout, WgmmaOperands.h).
struct MmaTileShape {
  int64_t warps;
  int64_t keyChunk;
  MatrixInstruction instruction = MatrixInstruction::MmaSync;
  /// The depth of the K/V ring: 2, or with bulkLoads up to 4.
  int64_t stages = 2;
  /// K and V by TMA on mbarriers (wgmma: supportsBulkLoads) instead of
  /// cp.async. The loop then runs in order (overlapsSoftmax is false),
  /// whatever the warpgroups: a CTA of several shares each K/V chunk among
  /// them, which divides the L2 reads by their number.
  bool bulkLoads = false;
  /// bulkLoads shared by a cluster of two CTAs (key-value-loads=
  /// tma-multicast): the kernel is launched in clusters of two adjacent
  /// tiles, and where both tiles read the same keys (the same block row,
  /// every query past the block: t.paired, set in emitCta) each
  /// CTA's thread 0 copies half of every chunk's panels into both CTAs'
  /// shared memory at once (TMA multicast), so the pair reads K and V from
  /// L2 once instead of twice; the chunk's CTA barrier becomes a cluster
  /// barrier.
  bool multicastPairs = false;
  /// wgmma, in order: P stays in registers as the A operand of P V (the
  /// register-A form of wgmma, WgmmaChunkLoop.cpp) instead of passing
  /// through shared memory.
  bool registerProbabilities = false;
  /// The wgmma loop's order (overlapsSoftmax): Auto is the rule there.
  KernelSchedule schedule = KernelSchedule::Auto;

  /// The shape `plan` gives an op of `headDim` and `element` (checked by
  /// plan.problems()): wgmma where the head_dim takes it (64 or 128, at
  /// most the two 64-column panels of the output accumulators), else
  /// mma.sync; TMA loads with wgmma; P in registers where the loop runs in
  /// order.
  static MmaTileShape forPlan(const AttentionKernelPlan &plan, int64_t headDim,
                              Type element) {
    MmaTileShape shape{plan.warps, plan.keyChunk};
    shape.instruction = plan.instruction == MatrixInstruction::Wgmma &&
                                (headDim == 64 || headDim == 128)
                            ? MatrixInstruction::Wgmma
                            : MatrixInstruction::MmaSync;
    shape.bulkLoads = plan.usesTma() && shape.supportsBulkLoads();
    shape.multicastPairs =
        shape.bulkLoads && plan.loads == KeyValueLoads::TmaMulticast;
    shape.schedule = plan.schedule;
    // Only the TMA loop runs a deeper ring (an op that keeps mma.sync
    // keeps cp.async and two stages).
    shape.stages = shape.bulkLoads ? plan.stages : 2;
    // The in-order wgmma loop keeps P in registers (it measured 4-9%
    // faster at block 512 than P through shared memory, the same at 128:
    // docs/PERFORMANCE.md, seventh round).
    shape.registerProbabilities =
        shape.supportsRegisterProbabilities(headDim, element);
    return shape;
  }

  bool isWgmma() const { return instruction == MatrixInstruction::Wgmma; }
  /// The warp-specialized schedule (TMA loads; the plan's rules): a
  /// producer warpgroup after the `warps` consumer warps, which keep the
  /// thread ids, rows and copies they have in the other schedules.
  bool warpSpecialized() const {
    return bulkLoads &&
           (schedule == KernelSchedule::WarpSpecialized ||
            schedule == KernelSchedule::WarpSpecializedOverlapped ||
            schedule == KernelSchedule::PingPong ||
            schedule == KernelSchedule::Persistent);
  }
  /// KernelSchedule::Persistent: CTAs that walk the tile list
  /// (AttentionKernel::emitPersistentCta).
  bool persistent() const {
    return bulkLoads && schedule == KernelSchedule::Persistent;
  }

  /// The producer warpgroup's threads (setmaxnreg works on whole
  /// warpgroups) and the registers it keeps: its one copying thread
  /// computes a chunk's slot, parity and coordinates, and (persistent) its
  /// gathering threads a query row's address (ptxas fits both in 40).
  static constexpr int64_t kProducerThreads = 128;
  static constexpr int64_t kProducerRegisters = 40;
  /// The most registers a consumer thread asks for (ptxas's limit is 255,
  /// setmaxnreg's counts are multiples of 8).
  static constexpr int64_t kMaxConsumerRegisters = 240;
  StageRing ring() const { return StageRing(stages); }
  /// warpSpecialized: the consumer threads' named barrier (ids 1 ..
  /// warpgroups are the warpgroups' own, 0 the CTA's).
  int64_t consumerBarrierId() const { return warpgroups() + 1; }
  /// The CTAs of a cluster: 2 with multicastPairs, else 1.
  int64_t clusterSize() const { return multicastPairs ? 2 : 1; }
  int64_t warpgroups() const { return warps / 4; }
  /// The threads that hold queries: every thread but the producer's.
  int64_t consumerThreads() const { return 32 * warps; }
  /// The CTA's threads.
  int64_t threads() const {
    return consumerThreads() + (warpSpecialized() ? kProducerThreads : 0);
  }
  static int64_t bytesOf(Type element) {
    return element.getIntOrFloatBitWidth() / 8;
  }
  /// One buffer of K or V: keyChunk rows.
  int64_t operandBytes(int64_t headDim, Type element) const {
    int64_t rowElements = isWgmma() ? headDim : headDim + 8;
    return keyChunk * rowElements * bytesOf(element);
  }
  /// V's buffers: one where that lets one more CTA share an SM with the
  /// registers the kernel needs (wgmma, one warpgroup, head_dim 128, two
  /// stages: three CTAs of 73 KiB instead of two of 89). V of a chunk is
  /// then copied at the chunk's top, once the last chunk's P V is done with
  /// the buffer, while the chunk's S and softmax run
  /// (ValueStaging::AfterProducts). At two stages a CTA that would be alone
  /// on its SM keeps a ring of V, since no other CTA's work would hide V's
  /// copy; a deeper ring of V that leaves a CTA alone gives way to one
  /// buffer if that lets a second CTA in (the ring of K stays deep). Not
  /// in the overlapped loop, which keeps a ring.
  int64_t valueBuffers(int64_t headDim, Type element) const {
    return singleValueBuffer(headDim, element) ? 1 : stages;
  }
  bool singleValueBuffer(int64_t headDim, Type element) const {
    if (!isWgmma() || warpgroups() != 1 ||
        schedule == KernelSchedule::Overlapped || warpSpecialized())
      return false;
    int64_t ring = ctasPerSM(sharedBytesWith(stages, headDim, element));
    int64_t single = ctasPerSM(sharedBytesWith(1, headDim, element));
    return (ring >= 2 || stages > 2) && single >= 2 && single > ring &&
           registerBudget(single) >= kWgmmaRegisters;
  }
  /// The buffers of K and V: K's ring, then V's.
  int64_t stageSlots(int64_t headDim, Type element) const {
    return stages + valueBuffers(headDim, element);
  }
  int64_t stageBytes(int64_t headDim, Type element) const {
    return stageSlots(headDim, element) * operandBytes(headDim, element);
  }
  /// Each warp's first and last token (i32).
  int64_t reduceBytes() const { return 2 * warps * 4; }
  /// bulkLoads: the mbarriers on which the TMA copies of K and V complete,
  /// one per slot of each ring (V's unused past the first with a single
  /// buffer), and with warpSpecialized one per slot on which the consumers
  /// release it; 8 bytes each, after the causal bounds.
  /// persistent adds, for each of the two query buffers, one on which the
  /// producer's gathered queries land (arrival count: queryGatherers) and
  /// one on which the consumers release them (arrival count: the
  /// consumer threads).
  int64_t bulkBarriers() const {
    return (warpSpecialized() ? 3 : 2) * stages + (persistent() ? 4 : 0);
  }
  int64_t barrierBytes() const { return bulkLoads ? bulkBarriers() * 8 : 0; }
  /// Whether bulkLoads may be set: the wgmma form, whose in-order loop
  /// (WgmmaTile::inOrderByTma in WgmmaChunkLoop.cpp) has the TMA pipeline.
  bool supportsBulkLoads() const { return isWgmma(); }
  /// Whether registerProbabilities may be set: the in-order wgmma loop.
  bool supportsRegisterProbabilities(int64_t headDim, Type element) const {
    return isWgmma() && !overlapsSoftmax(headDim, element);
  }
  /// wgmma: each warpgroup's 64 queries, in one buffer or (persistent)
  /// two: the producer gathers the next tile's while the consumers
  /// multiply the current one's.
  int64_t queryBufferBytes(int64_t headDim, Type element) const {
    return isWgmma() ? warpgroups() * 64 * headDim * bytesOf(element) : 0;
  }
  int64_t queryBuffers() const { return persistent() ? 2 : 1; }
  int64_t queryBytes(int64_t headDim, Type element) const {
    return queryBuffers() * queryBufferBytes(headDim, element);
  }
  /// persistent: the producer's threads that gather queries (its warps
  /// but the first, whose lane 0 copies K and V).
  int64_t queryGatherers() const { return kProducerThreads - 32; }
  /// wgmma: each warpgroup's probabilities, 64 x keyChunk.
  int64_t probabilityBytes(Type element) const {
    return isWgmma() && !registerProbabilities
               ? warpgroups() * 64 * keyChunk * bytesOf(element)
               : 0;
  }
  /// wgmma: room to align the operands to 1 KiB (the swizzle's period).
  int64_t alignmentSlack() const { return isWgmma() ? 1024 : 0; }
  int64_t sharedBytes(int64_t headDim, Type element) const {
    return sharedBytesWith(valueBuffers(headDim, element), headDim, element);
  }
  /// The CTAs of `sharedBytes` each that fit an SM's shared memory and
  /// threads.
  int64_t ctasPerSM(int64_t sharedBytes) const {
    return std::min(kSharedBytesPerSM / (sharedBytes + kReservedSharedBytes),
                    2048 / threads());
  }
  /// The registers per thread that `ctas` CTAs leave each thread.
  int64_t registerBudget(int64_t ctas) const {
    return kRegistersPerSM / (ctas * threads()) / kRegisterStep *
           kRegisterStep;
  }
  /// The CTAs per SM the kernel states to ptxas (nvvm.minctasm, which
  /// caps its registers at registerBudget), or 0 for none: for the wgmma
  /// form, when more than one CTA fits the shared memory and as many
  /// leave it the registers it needs. (Unconstrained, ptxas takes 173,
  /// five more than three CTAs allow.)
  int64_t statedCtasPerSM(int64_t headDim, Type element) const {
    if (!isWgmma())
      return 0;
    // warpSpecialized: always, with the block's size (nvvm.maxntid), so
    // that ptxas knows the registers every warp starts with
    // (launchRegisters; without them it ignores setmaxnreg); as many CTAs
    // as the shared memory allows while the consumers still get the
    // registers the wgmma loop needs.
    if (warpSpecialized()) {
      int64_t ctas = ctasPerSM(sharedBytes(headDim, element));
      while (ctas > 1 && consumerRegisters(ctas) < kWgmmaRegisters)
        --ctas;
      return std::max<int64_t>(ctas, 1);
    }
    int64_t ctas = ctasPerSM(sharedBytes(headDim, element));
    return ctas >= 2 && registerBudget(ctas) >= kWgmmaRegisters ? ctas : 0;
  }
  /// warpSpecialized: the registers every thread starts with (ptxas's
  /// limit for `ctas` CTAs of threads() each), and the registers the
  /// consumers take once the producer has given back all but
  /// kProducerRegisters; setmaxnreg is emitted only when that moves
  /// registers (consumerRegisters above launchRegisters).
  int64_t launchRegisters(int64_t ctas) const {
    return std::min<int64_t>(registerBudget(ctas), 248);
  }
  int64_t consumerRegisters(int64_t ctas) const {
    int64_t pool = kRegistersPerSM / ctas - kProducerRegisters *
                                                 kProducerThreads;
    return std::min(kMaxConsumerRegisters,
                    pool / consumerThreads() / kRegisterStep * kRegisterStep);
  }
  /// wgmma: whether each chunk's softmax runs while the tensor cores
  /// multiply the previous chunk's P V (WgmmaChunkLoop.cpp), with cp.async
  /// loads only. Not when the CTA is one warpgroup and two CTAs fit an SM's
  /// shared memory: there the CTAs' warpgroups already take turns on the
  /// tensor cores, and the overlapped form's extra product (the first
  /// chunk's, of zeros) cost 5% on the H200 (docs/PERFORMANCE.md). With
  /// TMA the warpgroups of one CTA take turns likewise: three in order
  /// measured 4% faster at 128K tokens than one per CTA (eighth round).
  /// That is the Auto schedule; InOrder and Overlapped decide it instead
  /// (Overlapped with cp.async only: AttentionKernelPlan::problems).
  bool overlapsSoftmax(int64_t headDim, Type element) const {
    if (!isWgmma() || bulkLoads || schedule == KernelSchedule::InOrder)
      return false;
    if (schedule == KernelSchedule::Overlapped)
      return true;
    return !(warpgroups() == 1 &&
             ctasPerSM(sharedBytes(headDim, element)) >= 2);
  }

private:
  int64_t sharedBytesWith(int64_t valueBuffers, int64_t headDim,
                          Type element) const {
    return (stages + valueBuffers) * operandBytes(headDim, element) +
           reduceBytes() + barrierBytes() + queryBytes(headDim, element) +
           probabilityBytes(element) + alignmentSlack();
  }
};

/// One CTA's tile as every thread sees it, and this lane's two rows.
struct CtaTile {
  Value tid, warp, lane;
  Value sharedMemory; ///< the dynamic region, i8
  Value h, g;         ///< query head, KV head
  Value first;        ///< the tile's first entry in `entries`
  Value valid;        ///< entries of the tile in use
  Value keyFirst, lastKey, keyLimit;
  Value chunks;   ///< key chunks to attend
  Value unmasked; ///< chunks [0, unmasked) need no mask
  Value quadRow, quadCol, pairCol;
  /// shape.multicastPairs: whether this CTA and the other of its cluster
  /// share their K/V copies (i1, the same in both; null otherwise), and
  /// this CTA's rank in the cluster (i32).
  Value paired, clusterRank;
  /// The lane's rows quadRow and quadRow + 8 of its warp's 16.
  SmallVector<Value, 2> rowValid, token, slot;
  /// shape.persistent(): which of the two query buffers holds the tile's
  /// queries, and which fill of that buffer they are (the CTA's tiles
  /// alternate between the buffers); null where the CTA has one tile.
  Value queryBuffer, queryFill;
  /// shape.persistent(): the chunks the CTA's ring carried for its earlier
  /// tiles, so that chunk c of this tile is the ring's chunk ringBase + c
  /// (AttentionKernel::ringChunk); null where the CTA has one tile.
  Value ringBase;
};

/// Every thread of the cluster arrives (releasing its writes, unless
/// `relaxed`) and waits for the others (acquiring theirs):
/// barrier.cluster.arrive[.relaxed] and barrier.cluster.wait, aligned.
void clusterBarrier(ImplicitLocOpBuilder &b, bool relaxed = false);
/// The barrier after which a chunk's K/V buffers may refill: the CTA's, or
/// the cluster's where the CTA shares its copies with the other (t.paired).
void bufferBarrier(ImplicitLocOpBuilder &b, const CtaTile &t);

class TmaLoader;

struct AttentionKernel {
  /// The op lowered; null for the backward's dq kernel (ctaWork), which
  /// neither loads by TMA nor merges, the two parts that read it.
  GroupedBlockAttentionOp op;
  Value q, k, v, cu, starts, counts, entries, partialOut, partialLse;
  int64_t numHeads, group, headDim, slotsPerToken, blockSize;
  bool causal;
  double scale;
  MmaTileShape shape;
  /// The merged form: the output [T, Hq, D] and its lse [T, Hq] (null when
  /// the op has no `merge`), and the arrivals [T, Hq] (i32) that
  /// emitMergeInit allocates: the slots of each row still to finish.
  Value mergedOut, mergedLse, arrivals;
  /// shape.bulkLoads: the tensor maps of K and V in device memory
  /// (memref<32xi64>, two CUtensorMaps), set by emitTensorMaps.
  Value tensorMaps;
  /// What a CTA does once emitCta has read its tile (`t` complete up to its
  /// chunk counts): when set, it replaces the forward's chunk loops and
  /// partial writes. The backward's dq kernel (GroupedAttentionGradToNVVM)
  /// runs on the forward's tile list, CTA prologue and K/V pipeline this way.
  std::function<void(ImplicitLocOpBuilder &, const CtaTile &)> ctaWork;

  void emit(ImplicitLocOpBuilder &b);

  bool merged() const { return static_cast<bool>(mergedOut); }
  /// The merged form's initializing kernel, one thread per (token, head):
  /// marks every slot's partial empty (lse -inf), counts the slots that
  /// attend (the groups list exactly those: a block of the token's
  /// sequence that no lower slot holds) into `arrivals`, which it
  /// allocates, and writes the merge of no partials (0, lse -inf) to rows
  /// that have none. The caller deallocates `arrivals` after the attention.
  void emitMergeInit(ImplicitLocOpBuilder &b, Value tokens);
  /// The merged form's epilogue, after the CTA has written its rows'
  /// partials: each row's arrival (an atomic decrement), and the warp
  /// merges the rows whose last slot it finished.
  void emitMergeEpilogue(ImplicitLocOpBuilder &b, const CtaTile &t);
  /// The whole warp merges the K partials of (`token`, t.h) into the
  /// output row and its lse.
  void emitMergeRow(ImplicitLocOpBuilder &b, const CtaTile &t, Value token);

  Type element() const {
    return cast<MemRefType>(q.getType()).getElementType();
  }
  int64_t ctaRows() { return kTileRows * shape.warps; }
  int64_t threads() { return shape.threads(); }
  /// Elements between two staged key rows of the mma.sync form: head_dim
  /// plus 8, so that the eight row addresses of one ldmatrix phase fall in
  /// distinct banks.
  int64_t pitch() { return headDim + 8; }

  /// The tile list: for each head and CTA tile, [block row, tile of the
  /// row, first key, end of the keys]; rows (past the end) when unused. One
  /// warp per head scans the rows' counts 32 at a time (prefix sums by
  /// shuffles), so that no CTA has to.
  void emitTileList(ImplicitLocOpBuilder &b, Value tileList, Value rows,
                    Value tilesPerHead);
  /// Declares `name`, a function of the project's GPU runtime
  /// (lib/Runtime/GpuRuntime.cpp) that the host code calls, in the op's
  /// module, once.
  void declareRuntimeFunction(ImplicitLocOpBuilder &b, StringRef name,
                              FunctionType type);
  /// shape.bulkLoads: K's and V's tensor maps encoded by the host
  /// (mobaEncodeKeyValueTensorMaps) and put into device memory by a
  /// one-thread launch that takes their bytes as arguments, so that they
  /// travel in stream order with no host-to-device copy; sets tensorMaps.
  /// The caller deallocates it after the attention.
  void emitTensorMaps(ImplicitLocOpBuilder &b);
  /// shape.bulkLoads: as soon as the CTA knows its block, thread 0
  /// initializes the mbarriers and starts the TMA copies of chunk 0's K and
  /// V (TmaLoader.cpp), so that they land while the CTA reads its
  /// entries and gathers its queries.
  void startBulkLoads(ImplicitLocOpBuilder &b, const CtaTile &t);
  /// The body of one CTA: tile `tile` of head `h`.
  void emitCta(ImplicitLocOpBuilder &b, gpu::LaunchOp launch, Value h,
               Value tile, Value rows, Value tileList);
  /// shape.persistent() (PersistentCta.cpp): the body of a CTA that walks
  /// tiles cta, cta + grid, ... of the `tiles` (tilesPerHead per head):
  /// its producer copies every chunk of every tile into the ring, which
  /// runs across tiles, and its consumers attend and write each tile's
  /// rows.
  void emitPersistentCta(ImplicitLocOpBuilder &b, gpu::LaunchOp launch,
                         Value tiles, Value tilesPerHead, Value rows,
                         Value tileList);
  /// The threads' ids and the shared memory, what a CTA's tiles share.
  CtaTile ctaFrame(ImplicitLocOpBuilder &b, gpu::LaunchOp launch);
  /// Tile `tile` of head t.h, of block row `row` (< rows): sets t.first,
  /// valid, keyFirst, lastKey and g; returns the end of the row's keys.
  Value readTileKeys(ImplicitLocOpBuilder &b, CtaTile &t, Value tile,
                     Value row, Value tileList);
  /// This lane's two rows of its warp's 16 (t.quadRow, t.rowValid, t.token,
  /// t.slot, ...), from t.first and t.valid.
  void readLaneRows(ImplicitLocOpBuilder &b, CtaTile &t);
  /// t.keyLimit, chunks and unmasked of a tile whose keys end at `keyLast`
  /// and, causally, whose queries are tokens `earliest` .. `latest` (both
  /// null when not causal).
  void boundChunks(ImplicitLocOpBuilder &b, CtaTile &t, Value keyLast,
                   Value latest, Value earliest);
  /// The ring's chunk (StageRing's index) of the tile's chunk `chunk`.
  static Value ringChunk(KernelBuilder &e, const CtaTile &t, Value chunk) {
    return t.ringBase ? e.add(t.ringBase, chunk) : chunk;
  }
  /// warpSpecialized: the producer warpgroup gives back all but
  /// MmaTileShape::kProducerRegisters of its registers (`producer`), or a
  /// consumer warpgroup takes MmaTileShape::consumerRegisters (setmaxnreg),
  /// where that moves any.
  void moveRegisters(ImplicitLocOpBuilder &b, bool producer);
  /// persistent: the producer's gatherer threads (`thread` of
  /// queryGatherers) copy tile t's queries into t.queryBuffer once the
  /// consumers have released its fill before, and arrive on its barrier
  /// once their copies have landed (WgmmaChunkLoop.cpp).
  void gatherQueriesAhead(ImplicitLocOpBuilder &b, const CtaTile &t,
                          TmaLoader &loader, Value thread);
  /// By the producer's one thread (TmaLoader `loader` on tile t): chunks
  /// `from` .. t.chunks - 1 of the tile into their slots, each once the
  /// consumers have released the slot's fill before.
  void produceChunks(ImplicitLocOpBuilder &b, const CtaTile &t,
                     TmaLoader &loader, Value from);
  /// What a CTA's consumer threads (all of them, but for the
  /// warp-specialized schedule's producer) do once the tile is read: the
  /// chunk loops, then each valid row's partial and log-sum-exp, then the
  /// fused merge's epilogue.
  void emitCtaChunks(ImplicitLocOpBuilder &b, const CtaTile &t);
  /// The warp-specialized schedule's producer warpgroup
  /// (WgmmaChunkLoop.cpp): gives back its registers, and one of its
  /// threads copies chunks 1 .. chunks - 1 into the ring, each slot once
  /// the consumers have released it (startBulkLoads copied chunk 0).
  void emitProducer(ImplicitLocOpBuilder &b, const CtaTile &t);

  /// mma.sync: the lane's two rows (t.token, head t.h) of `source`
  /// ([T, H, head_dim], the element type) as the A fragments of each
  /// k-step of 16 columns (the m16n8k16 A layout).
  SmallVector<SmallVector<Value>> rowFragments(ImplicitLocOpBuilder &b,
                                               const CtaTile &t,
                                               Value source);
  /// mma.sync: `accumulators` (head_dim / 8 tiles of 4 f32, m16n8 layout)
  /// += `tiles` (the warp's 16 rows over the chunk's keys, nTiles x 4 f32,
  /// rounded to the element type) times the chunk's staged rows of
  /// `operand` (0: K, 1: V) in `buffer`: P V in the forward, dS K in the
  /// backward's dq kernel.
  void addProductWithStaged(ImplicitLocOpBuilder &b, const CtaTile &t,
                            ArrayRef<SmallVector<Value>> tiles,
                            Value stageBuffer, Value buffer, int64_t operand,
                            MutableArrayRef<Value> accumulators);
  /// mma.sync: starts the cp.async copies of keys [base, base + keyChunk)
  /// of K (`operand` 0) or V (1) (rows past `lastKey` repeat it; the scores
  /// mask them) into stage `buffer`.
  void emitStage(ImplicitLocOpBuilder &b, Value stageBuffer, int64_t operand,
                 Value buffer, Value base, Value lastKey, Value g, Value tid);

  /// The chunk loops of each form. They return what the loops carry at
  /// the end: the lane's two rows' running max (base 2, scaled), their
  /// partial sums, and the output accumulators (head_dim / 8 tiles of 4
  /// f32 in the m16n8 accumulator layout, flattened).
  SmallVector<Value> emitMmaSyncChunks(ImplicitLocOpBuilder &b,
                                       const CtaTile &t);
  SmallVector<Value> emitWgmmaChunks(ImplicitLocOpBuilder &b,
                                     const CtaTile &t);

  /// Starts filling `buffer` (0 or 1) of K (`operand` 0) or V (1) with the
  /// keys from `keyBase` on, by cp.async.
  using StageFn = function_ref<void(ImplicitLocOpBuilder &, int64_t operand,
                                    Value buffer, Value keyBase)>;
  /// Chunk `chunk`'s work: K in buffer `buffer`, holding the keys from
  /// `keyBase` on; returns the new carried values.
  using ChunkFn = function_ref<SmallVector<Value>(
      ImplicitLocOpBuilder &, Value chunk, Value buffer, Value keyBase,
      ValueRange carried, bool masked)>;
  /// How V is staged relative to K.
  enum class ValueStaging {
    /// V of chunk c lands with K of chunk c: the chunk's body multiplies
    /// both.
    WithKeys,
    /// V of chunk c lands with K of chunk c + 1, in chunk c's slot of the
    /// (two-stage) ring: the body
    /// of chunk c multiplies Q K_c^T and P_(c-1) V_(c-1), and the caller
    /// multiplies the last chunk's P V after the loops (whose V has landed,
    /// and been published by a barrier after a proxy fence, when they
    /// return).
    OneChunkLate,
    /// One V buffer (MmaTileShape::singleValueBuffer): V of chunk c is
    /// copied at chunk c's top, when chunk c - 1's P V is done with the
    /// buffer, and lands while chunk c's S and softmax run. Its cp.async
    /// group is the newest but one (K of chunk c + 1 follows it), so the
    /// body waits for all groups but the newest and publishes (proxy
    /// fence, barrier) before it multiplies P V.
    AfterProducts,
  };
  /// The software pipeline both forms share. Each chunk starts with one
  /// barrier, after every cp.async group has landed (and a proxy fence
  /// when `asyncProxyReads`: wgmma reads through the async proxy): it
  /// publishes the chunk's operands and certifies that every warp is done
  /// with the chunk before, whose buffers the copies of the next chunk
  /// (`stage`, one group per chunk, empty past the last) then refill while
  /// this chunk is multiplied (`body`). Two loops, the same but for the
  /// mask: chunks [0, unmasked) need none, the rest (the block's end, the
  /// diagonal) do. Returns what they carry at the end.
  /// The loops carry `inits`, or where it is empty chunkLoopInits().
  SmallVector<Value> emitChunkLoops(ImplicitLocOpBuilder &b, const CtaTile &t,
                                    bool asyncProxyReads, ValueStaging values,
                                    StageFn stage, ChunkFn body,
                                    ValueRange inits = {});
  /// The two chunk loops both pipelines share: chunks [0, unmasked) with
  /// `step` unmasked, then [unmasked, chunks) masked, carrying what
  /// `inits` (chunkLoopInits where empty) starts; chunk c's buffer is its
  /// ring slot and its first key keyFirst + c * keyChunk. Returns what they
  /// carry at the end. With `first` the loops start at that chunk instead
  /// of 0 (the chunks before it were done by the caller).
  SmallVector<Value> emitSplitChunkLoops(ImplicitLocOpBuilder &b,
                                         const CtaTile &t, ChunkFn step,
                                         ValueRange inits = {},
                                         Value first = {});
  /// The TMA pipeline of the in-order wgmma loop (shape.bulkLoads): the
  /// same plain and masked loops as emitChunkLoops, each chunk behind the
  /// barrier after which its buffers may refill (bufferBarrier); `body`
  /// starts the copies (one thread) and waits for them on mbarriers.
  SmallVector<Value> emitBulkChunkLoops(ImplicitLocOpBuilder &b,
                                        const CtaTile &t, ChunkFn body);

  /// The initial values the chunk loops carry.
  SmallVector<Value> chunkLoopInits(KernelBuilder &e);
  /// How far (base 2) a row's max may pass the running max before the
  /// running max moves: probabilities stay below 2^8 (exact in f32 sums and
  /// in f16/bf16 P).
  static constexpr double kMaxSlack = 8.0;
  /// One softmax step's rescale of the output accumulators.
  struct Rescale {
    SmallVector<Value, 2> alpha; ///< the lane's two rows' factors
    Value moved; ///< i1: a row's running max moved (else both alphas are 1)
  };
  /// `scores` (nTiles x 4 f32, m16n8 accumulator layout) of the keys from
  /// `base` on set to -inf where a row does not attend the key: keys at or
  /// past t.keyLimit and, causally, past the row's query.
  void maskScores(ImplicitLocOpBuilder &ib, const CtaTile &t,
                  SmallVector<SmallVector<Value>> &scores, Value base);
  /// `scores` (nTiles x 4 f32, m16n8 accumulator layout) masked where
  /// `masked` (maskScores), then one online-softmax step: `scores` become the
  /// probabilities; returns the new max and sums in `carried`'s first four
  /// and the accumulators that follow them rescaled; `factors`, when given,
  /// receives the rescale.
  SmallVector<Value> softmaxStep(ImplicitLocOpBuilder &ib, const CtaTile &t,
                                 SmallVector<SmallVector<Value>> &scores,
                                 ValueRange carried, Value base, bool masked,
                                 Rescale *factors = nullptr);
  /// The output accumulators (m16n8 layout, flattened) times the rows'
  /// rescale factors, skipped where no lane of the warp moved its max.
  static void rescale(MutableArrayRef<Value> accumulators,
                      const Rescale &factors, KernelBuilder &e);
};

} // namespace mlir::moba::grouped_attention

#endif // MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_ATTENTIONKERNEL_H
