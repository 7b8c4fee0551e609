//===- TmaLoader.h - K and V by TMA into the stage ring ---------*- C++ -*-===//
//
// Part of moba-mlir. The TMA loads of the grouped attention kernel's wgmma
// form (MmaTileShape::bulkLoads): one thread fills each slot of the K and V
// rings (StageRing) with bulk tensor copies of swizzled panels
// (hopper::SwizzledPanelLayout), optionally multicast to the two CTAs of a
// cluster, and every thread waits on the slot's mbarrier.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_TMALOADER_H
#define MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_TMALOADER_H

#include "WgmmaOperands.h"

namespace mlir::moba::grouped_attention {

/// K and V by TMA (MmaTileShape::bulkLoads). Thread 0 starts each
/// buffer's copies, a 64-column panel a copy, on the buffer's mbarrier
/// (full[K ring slots, then V's], after the causal bounds; arrival count 1:
/// its arrive.expect_tx, then the bytes), and the warps wait on the
/// barrier's phase parity: the n-th fill of a buffer completes phase n
/// (StageRing). The warp-specialized schedule adds a release barrier per
/// slot after those (arrival count: the consumer threads), whose n-th phase
/// completes when every consumer is done with the slot's n-th fill.
class TmaLoader {
public:
  TmaLoader(const AttentionKernel &kernel, ImplicitLocOpBuilder &b,
            const CtaTile &t);

  /// By thread 0 before any copy: the barriers initialized, and the tensor
  /// maps, stored by an earlier kernel, acquired for the tensormap proxy.
  /// A CTA barrier must publish the initialization to the other threads.
  void initialize(ImplicitLocOpBuilder &b);

  /// By thread 0: keys [keyFirst + chunk * keyChunk, + keyChunk) of K
  /// (`operand` 0) or V (1) into `buffer`; keys past the last token read as
  /// zeros. A CTA paired with the other of its cluster (t.paired) copies
  /// only its half of the panels, into both CTAs at once (multicast): the
  /// other CTA's thread 0 copies the other half, and each CTA's barrier
  /// expects the whole buffer's bytes.
  void issue(ImplicitLocOpBuilder &b, int64_t operand, Value buffer,
             Value chunk);

  /// Fill number `fill` of `buffer` of K (`operand` 0) or V (1) has
  /// landed.
  void wait(ImplicitLocOpBuilder &b, int64_t operand, Value buffer,
            Value fill);

  /// MmaTileShape::warpSpecialized: this consumer thread is done with the
  /// fill of slot `buffer` (K and V) it last read: an arrival on the
  /// slot's release barrier (one arrival per consumer thread completes a
  /// phase), ordered after the thread's wgmma reads by their wait.
  void release(ImplicitLocOpBuilder &b, Value buffer);
  /// MmaTileShape::warpSpecialized: the consumers have released fill
  /// number `fill` of slot `buffer`, so its next fill may be copied.
  void waitReleased(ImplicitLocOpBuilder &b, Value buffer, Value fill);

  /// MmaTileShape::persistent: the gatherers' copies of fill `fill` of
  /// query buffer `buffer` have landed (queriesGathered: each gatherer's
  /// arrival, after its copies and a proxy fence); the consumers are done
  /// with the buffer's fill (releaseQueries: each consumer's arrival, after
  /// the tile's last products), so the next may be gathered
  /// (waitQueriesReleased).
  void queriesGathered(ImplicitLocOpBuilder &b, Value buffer);
  void waitQueries(ImplicitLocOpBuilder &b, Value buffer, Value fill);
  void releaseQueries(ImplicitLocOpBuilder &b, Value buffer);
  void waitQueriesReleased(ImplicitLocOpBuilder &b, Value buffer, Value fill);

private:
  static constexpr int64_t kMapBytes = 128;
  static constexpr int64_t kSuspendHintNs = 10'000'000;

  static Value pointer(ImplicitLocOpBuilder &b, Value address,
                       unsigned space);
  Value fullBarrier(ImplicitLocOpBuilder &b, int64_t operand, Value buffer);
  Value releaseBarrier(ImplicitLocOpBuilder &b, Value buffer);
  /// persistent: after the release barriers, the query buffers' landed
  /// barriers (`released` false) and their release barriers.
  Value queryBarrier(ImplicitLocOpBuilder &b, Value buffer, bool released);
  Value barrierAt(ImplicitLocOpBuilder &b, Value index);

  const AttentionKernel &kernel;
  const CtaTile &t;
  Value barriers, stageAddress, keyMap, valueMap;
};

} // namespace mlir::moba::grouped_attention

#endif // MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_TMALOADER_H
