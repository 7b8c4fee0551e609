//===- MmaTuning.cpp - Tuned tile shapes of the tensor-core kernel --------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "moba/Pipelines/MmaTuning.h"

using namespace mlir::moba;

namespace {

struct TunedRow {
  const char *chip;
  const char *dtype;
  int64_t headDim, headsPerKvHead, blockSize;
  const char *instruction;
  int64_t warps, keyChunk;
  const char *keyValueLoads;
};

// The rows bench/tune.py wrote, one MOBA_MMA_TUNED(...) each.
constexpr TunedRow kTable[] = {
#define MOBA_MMA_TUNED(chip, dtype, headDim, group, block, instruction,       \
                       warps, keyChunk, loads)                                 \
  {chip, dtype, headDim, group, block, instruction, warps, keyChunk, loads},
#include "MmaTuningTable.inc"
#undef MOBA_MMA_TUNED
    // A sentinel, so that an empty table still compiles; it matches nothing.
    {"", "", 0, 0, 0, "mma.sync", 4, 64, "cp.async"},
};

} // namespace

MmaTileShapeChoice mlir::moba::tunedMmaTileShape(llvm::StringRef chip,
                                                 llvm::StringRef dtype,
                                                 int64_t headDim,
                                                 int64_t headsPerKvHead,
                                                 int64_t blockSize) {
  const TunedRow *other = nullptr;
  for (const TunedRow &row : kTable) {
    if (chip != row.chip || dtype != row.dtype || row.headDim != headDim ||
        row.blockSize != blockSize)
      continue;
    if (row.headsPerKvHead == headsPerKvHead)
      return {row.warps, row.keyChunk, row.instruction, row.keyValueLoads,
              /*tuned=*/true};
    if (!other)
      other = &row;
  }
  if (other)
    return {other->warps, other->keyChunk, other->instruction,
            other->keyValueLoads, /*tuned=*/true};
  // Untuned: wgmma where the chip has it (the pass keeps mma.sync for the
  // head_dims wgmma does not take), 4 warps (one warpgroup) and 64 keys,
  // K and V by cp.async (TMA pays only on long tiles: docs/tuning.md).
  MmaTileShapeChoice fallback;
  if (chip == "sm_90a")
    fallback.instruction = "wgmma";
  return fallback;
}
