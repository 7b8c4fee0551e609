//===- MmaTuning.cpp - Tuned plans of the tensor-core kernel --------------===//
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
  MatrixInstruction instruction;
  int64_t warps, keyChunk;
  KeyValueLoads loads;
  int64_t stages;
  KernelSchedule schedule;
};

// The rows bench/tune.py wrote, one MOBA_MMA_TUNED(...) each; instruction,
// loads and schedule name the enums' values (Wgmma, Tma, WarpSpecialized,
// ...).
constexpr TunedRow kTable[] = {
#define MOBA_MMA_TUNED(chip, dtype, headDim, group, block, instruction, warps, \
                       keyChunk, loads, stages, schedule)                      \
  {chip,  dtype,    headDim,                                                   \
   group, block,    MatrixInstruction::instruction,                            \
   warps, keyChunk, KeyValueLoads::loads,                                      \
   stages, KernelSchedule::schedule},
#include "MmaTuningTable.inc"
#undef MOBA_MMA_TUNED
    // A sentinel, so that an empty table still compiles; it matches nothing.
    {"", "", 0, 0, 0, MatrixInstruction::MmaSync, 4, 64, KeyValueLoads::CpAsync,
     2, KernelSchedule::Auto},
};

} // namespace

TunedKernelPlan mlir::moba::tunedKernelPlan(llvm::StringRef chip,
                                            llvm::StringRef dtype,
                                            int64_t headDim,
                                            int64_t headsPerKvHead,
                                            int64_t blockSize) {
  const TunedRow *match = nullptr;
  for (const TunedRow &row : kTable) {
    if (chip != row.chip || dtype != row.dtype || row.headDim != headDim ||
        row.blockSize != blockSize)
      continue;
    if (row.headsPerKvHead == headsPerKvHead) {
      match = &row;
      break;
    }
    if (!match)
      match = &row;
  }
  TunedKernelPlan tuned;
  if (match) {
    tuned.plan.instruction = match->instruction;
    tuned.plan.loads = match->loads;
    tuned.plan.warps = match->warps;
    tuned.plan.keyChunk = match->keyChunk;
    tuned.plan.stages = match->stages;
    tuned.plan.schedule = match->schedule;
    tuned.tuned = true;
    return tuned;
  }
  // Untuned: wgmma where the chip has it (the pass keeps mma.sync for the
  // head_dims wgmma does not take), 4 warps (one warpgroup) and 64 keys,
  // K and V by cp.async (TMA pays only on long tiles: docs/tuning.md).
  if (chip == "sm_90a")
    tuned.plan.instruction = MatrixInstruction::Wgmma;
  return tuned;
}

AttentionKernelPlan
mlir::moba::fillKernelPlan(const RequestedKernelPlan &requested,
                           const TunedKernelPlan &tuned) {
  const AttentionKernelPlan &table = tuned.plan;
  AttentionKernelPlan plan;
  plan.warps = requested.warps.value_or(table.warps);
  plan.keyChunk = requested.keyChunk.value_or(table.keyChunk);
  bool tableShape = !requested.warps && !requested.keyChunk;
  plan.instruction = requested.instruction.value_or(
      tableShape ? table.instruction : MatrixInstruction::MmaSync);
  bool tableInstruction = tableShape && plan.instruction == table.instruction;
  plan.loads = requested.loads.value_or(
      tableInstruction ? table.loads : KeyValueLoads::CpAsync);
  plan.stages = requested.stages.value_or(
      tableInstruction && plan.loads == table.loads ? table.stages : 2);
  bool tableLoads = tableInstruction && plan.loads == table.loads &&
                    plan.stages == table.stages;
  plan.schedule = requested.schedule.value_or(
      tableLoads ? table.schedule : KernelSchedule::Auto);
  plan.merge = requested.merge.value_or(MergeMode::Separate);
  return plan;
}
