//===- StageRing.h - The ring of K/V buffers of a chunk loop ----*- C++ -*-===//
//
// Part of moba-mlir. Every chunk loop of the grouped attention kernel
// streams K and V through a ring of `stages` shared-memory buffers; this is
// the one place that maps a chunk to its buffer and to the phase of the
// buffer's mbarrier, so that the depth is a number and not a `% 2` written
// into each loop.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_STAGERING_H
#define MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_STAGERING_H

#include "KernelBuilder/KernelBuilder.h"

#include <cassert>

namespace mlir::moba::grouped_attention {

/// A ring of `stages` buffers. Chunk c lives in slot c mod stages, and is
/// that slot's fill number c div stages: an mbarrier of the slot, which
/// completes one phase per fill, has completed phase (c div stages) mod 2
/// once chunk c has landed. The copies of chunk c + stages - 1 go into the
/// slot of chunk c - 1, once every reader is done with it (the barrier at
/// chunk c's top), so that stages - 1 chunks are in flight while one is
/// multiplied.
///
/// The arithmetic is on the chunk index: the remainders by a constant fold
/// to a mask (2, 4) or a multiply-high (3), a few instructions against a
/// chunk's thousands, and the loops carry nothing extra for it.
class StageRing {
public:
  static constexpr int64_t kMinStages = 2;
  static constexpr int64_t kMaxStages = 4;

  explicit StageRing(int64_t stages) : depth(stages) {
    assert(stages >= kMinStages && stages <= kMaxStages &&
           "the kernel plan's validation bounds the stages");
  }

  int64_t stages() const { return depth; }
  /// The chunks in flight ahead of the one being multiplied.
  int64_t lookahead() const { return depth - 1; }

  /// The slot of chunk `chunk` (index).
  Value slot(nvvm_kernel::KernelBuilder &e, Value chunk) const {
    return e.rem(chunk, e.index(depth));
  }
  /// The slot of chunk `chunk` for a chunk known when the kernel is built.
  int64_t slot(int64_t chunk) const { return chunk % depth; }
  /// Which fill of its slot chunk `chunk` is (index).
  Value fill(nvvm_kernel::KernelBuilder &e, Value chunk) const {
    return e.div(chunk, e.index(depth));
  }
  /// The phase parity (i32, 0 or 1) that the slot's mbarrier completes
  /// when chunk `chunk` lands.
  Value parity(nvvm_kernel::KernelBuilder &e, Value chunk) const {
    return parityOfFill(e, fill(e, chunk));
  }
  /// The phase parity (i32) of fill number `fill` of a slot.
  static Value parityOfFill(nvvm_kernel::KernelBuilder &e, Value fill) {
    return arith::IndexCastUIOp::create(e.b, e.b.getI32Type(),
                                        e.rem(fill, e.index(2)));
  }
  /// The slot of chunk `chunk` - 1 (of the last chunk, for `chunk` the
  /// count of chunks; stages - 1 for chunk 0).
  Value slotBefore(nvvm_kernel::KernelBuilder &e, Value chunk) const {
    return e.rem(e.add(chunk, e.index(depth - 1)), e.index(depth));
  }
  /// The slot before `slot` in the ring: the chunk before's.
  Value previousSlot(nvvm_kernel::KernelBuilder &e, Value slot) const {
    if (depth == 2) // one subtraction, which the backend turns into an xor
      return e.sub(e.index(1), slot);
    return e.rem(e.add(slot, e.index(depth - 1)), e.index(depth));
  }

private:
  int64_t depth;
};

} // namespace mlir::moba::grouped_attention

#endif // MOBA_LIB_CONVERSION_GROUPEDATTENTIONTONVVM_STAGERING_H
