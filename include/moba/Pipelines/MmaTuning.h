//===- MmaTuning.h - Tuned plans of the tensor-core kernel ------*- C++ -*-===//
//
// Part of moba-mlir. The tensor-core attention kernel
// (moba-convert-grouped-attention-to-nvvm) takes an AttentionKernelPlan:
// its matrix instruction, how K and V are loaded, warps per CTA, keys staged
// per step, the TMA ring's stages, ... bench/tune.py measures the candidates
// on a GPU and writes the winners to lib/Pipelines/MmaTuningTable.inc; the
// GPU runner fills in from that table what the caller does not name.
// docs/tuning.md says how to tune a new configuration.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_PIPELINES_MMATUNING_H
#define MOBA_PIPELINES_MMATUNING_H

#include "moba/Conversion/AttentionKernelPlan.h"

#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <optional>

namespace mlir::moba {

/// The table's plan for a configuration, or the default.
struct TunedKernelPlan {
  /// The table has no merge column: Separate.
  AttentionKernelPlan plan;
  bool tuned = false; ///< from the table, not the default
};

/// The table's plan for (chip, dtype, head_dim, query heads per KV head,
/// block_size); a row with another head ratio stands in when the exact one
/// is missing (the kernel's work per CTA does not depend on it). The default
/// when the table has neither: 4 warps and 64 keys, on wgmma for sm_90a and
/// mma.sync otherwise, K and V by cp.async, 2 stages.
TunedKernelPlan tunedKernelPlan(llvm::StringRef chip, llvm::StringRef dtype,
                                int64_t headDim, int64_t headsPerKvHead,
                                int64_t blockSize);

/// A plan as a caller asks for it: each field given or not (the table's).
struct RequestedKernelPlan {
  std::optional<MatrixInstruction> instruction;
  std::optional<KeyValueLoads> loads;
  std::optional<KernelSchedule> schedule;
  std::optional<MergeMode> merge;
  std::optional<int64_t> warps, keyChunk, stages;
};

/// `requested` with what it does not give filled in from `tuned`. The
/// table's choices go together: its instruction only with its shape (a
/// caller who names warps or key chunk and no instruction gets mma.sync,
/// which takes any shape), its loads only with its shape and instruction
/// (else cp.async), its stages only with those and its loads (else 2), its
/// schedule only with all of those (else Auto). The merge is Separate
/// unless given.
AttentionKernelPlan fillKernelPlan(const RequestedKernelPlan &requested,
                                   const TunedKernelPlan &tuned);

} // namespace mlir::moba

#endif // MOBA_PIPELINES_MMATUNING_H
