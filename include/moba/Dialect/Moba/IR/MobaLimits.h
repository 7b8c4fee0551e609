//===- MobaLimits.h - The sizes the moba dialect accepts --------*- C++ -*-===//
//
// Part of moba-mlir. Plain constants, without MLIR, so that the runner and
// the C API check a user's configuration against the very limits the
// dialect's verifiers enforce on IR.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_IR_MOBALIMITS_H
#define MOBA_DIALECT_MOBA_IR_MOBALIMITS_H

#include <cstdint>

namespace mlir::moba {

/// The limits the verifiers enforce where sizes are static, because every
/// lowering depends on them (docs/semantics.md, "Limits"):
///
/// head_dim and the selection width K (top_k) become vector widths in the
/// loop lowerings and register arrays in the GPU kernels; past these no real
/// model goes, and the code would grow without bound.
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxSelectedBlocks = 1024;
/// moba-tile-attention's tile sizes: tile-k keys are scored as one vector
/// (a width like head_dim's); tile-q is a loop step over a sequence's
/// queries, at most a sequence of int32 offsets long, so that `tile start +
/// tile-q` never wraps.
constexpr int64_t kMaxTileKeys = 1024;
constexpr int64_t kMaxTileQueries = (int64_t(1) << 31) - 1;
/// Every static tensor's byte size, and the products of static sizes the
/// lowerings form (tokens * K slots, blocks of a batch), must stay below
/// 2^62 so that index arithmetic on them never wraps a signed 64-bit value.
constexpr int64_t kMaxStaticBytes = int64_t(1) << 62;

} // namespace mlir::moba

#endif // MOBA_DIALECT_MOBA_IR_MOBALIMITS_H
