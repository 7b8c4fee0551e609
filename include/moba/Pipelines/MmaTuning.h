//===- MmaTuning.h - Tuned tile shapes of the mma kernel --------*- C++ -*-===//
//
// Part of moba-mlir. The tensor-core attention kernel
// (moba-convert-grouped-attention-to-nvvm) takes a tile shape: warps per CTA
// and keys staged per step, and (wgmma) how K and V are loaded.
// bench/tune.py measures the candidates on a GPU
// and writes the winners to lib/Pipelines/MmaTuningTable.inc; the GPU runner
// uses that table when the caller names no shape. docs/tuning.md says how to
// tune a new configuration.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_PIPELINES_MMATUNING_H
#define MOBA_PIPELINES_MMATUNING_H

#include "llvm/ADT/StringRef.h"

#include <cstdint>

namespace mlir::moba {

/// A tile shape of the tensor-core kernel.
struct MmaTileShapeChoice {
  int64_t warps = 4;     ///< warps per CTA, 16 queries each
  int64_t keyChunk = 64; ///< keys staged in shared memory per step
  /// The matrix instruction: "mma.sync" or "wgmma" (sm_90a).
  const char *instruction = "mma.sync";
  /// With wgmma: how K and V reach shared memory, "cp.async" or "tma".
  const char *keyValueLoads = "cp.async";
  bool tuned = false; ///< from the table, not the default
};

/// The table's shape for (chip, dtype, head_dim, query heads per KV head,
/// block_size); a row with another head ratio stands in when the exact one
/// is missing (the kernel's work per CTA does not depend on it). The default
/// when the table has neither: 4 warps and 64 keys, on wgmma for sm_90a and
/// mma.sync otherwise.
MmaTileShapeChoice tunedMmaTileShape(llvm::StringRef chip,
                                     llvm::StringRef dtype, int64_t headDim,
                                     int64_t headsPerKvHead,
                                     int64_t blockSize);

} // namespace mlir::moba

#endif // MOBA_PIPELINES_MMATUNING_H
