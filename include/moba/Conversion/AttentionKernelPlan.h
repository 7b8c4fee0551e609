//===- AttentionKernelPlan.h - The tensor-core kernel's plan ----*- C++ -*-===//
//
// Part of moba-mlir. The choices that shape the tensor-core attention kernel
// (moba-convert-grouped-attention-to-nvvm): its matrix instruction, how K
// and V reach shared memory, the chunk loop's schedule, where the partials
// are merged, warps per CTA, keys per chunk and pipeline stages. Every layer
// that carries these choices (the pass's options, moba-gpu-pipeline's mma-*
// options, the GPU runner, the tuning table, the C API, Python) holds this
// one struct and checks it with its one problems() function, so that a rule
// is written once and every caller reports it the same way.
//
// Each enum has one table of names (AttentionKernelPlan.cpp): the pass's
// and the pipeline's options, the printed plan and the messages all read
// it.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_CONVERSION_ATTENTIONKERNELPLAN_H
#define MOBA_CONVERSION_ATTENTIONKERNELPLAN_H

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>

namespace mlir::moba {

/// The matrix instruction of the chunk loop.
enum class MatrixInstruction {
  /// mma.sync m16n8k16 on fragments read by ldmatrix (sm_80 and newer).
  MmaSync,
  /// sm_90a's wgmma, a warpgroup (4 warps, 64 queries) at a time, its
  /// operands read from shared memory by the tensor cores.
  Wgmma,
};

/// How K and V reach shared memory.
enum class KeyValueLoads {
  /// Every thread copies 16 bytes at a time (cp.async).
  CpAsync,
  /// One thread starts TMA bulk copies that complete on mbarriers (wgmma).
  Tma,
  /// TMA shared by clusters of two CTAs that read the same keys.
  TmaMulticast,
};

/// The order of the wgmma chunk loop's work. The mma.sync loop runs in
/// order whatever the schedule.
enum class KernelSchedule {
  /// The kernel's own rule (MmaTileShape::overlapsSoftmax): overlapped
  /// with cp.async loads where one CTA's warpgroups fill an SM, else in
  /// order.
  Auto,
  /// Each chunk's S = Q K^T, softmax and P V one after the other.
  InOrder,
  /// Each chunk's softmax runs while the tensor cores multiply the
  /// previous chunk's P V (wgmma with cp.async loads).
  Overlapped,
  /// A producer warpgroup owns the TMA ring: one of its threads refills
  /// each slot once every consumer has released it (an mbarrier of its
  /// own), and the warpgroup gives its registers to the consumer
  /// warpgroups (setmaxnreg), which run their chunks in order with no CTA
  /// barrier between chunks (wgmma with TMA loads).
  WarpSpecialized,
  /// WarpSpecialized, and each consumer warpgroup issues chunk c's
  /// S = Q K^T and chunk c - 1's P V together and runs chunk c's softmax
  /// while the tensor cores multiply P V (FA3's intra-warpgroup overlap;
  /// P of the chunk before stays in registers). A slot is released one
  /// chunk later than in order: three stages keep one chunk in flight.
  WarpSpecializedOverlapped,
  /// WarpSpecializedOverlapped, and the consumer warpgroups take turns to
  /// issue their products (named barriers in a ring), so that one's
  /// softmax runs while the tensor cores multiply another's (FA3's
  /// ping-pong); two or three consumer warpgroups.
  PingPong,
  /// WarpSpecialized on persistent CTAs: as many CTAs as the SMs hold at
  /// once, each walking every grid-th tile of the list; the producer's
  /// ring runs across tiles, so that it copies the next tile's first
  /// chunks while the consumers finish the current one and write its rows.
  Persistent,
};

/// Where the slots' partials are merged.
enum class MergeMode {
  /// By kernels of their own after the attention kernel.
  Separate,
  /// Inside the attention kernel, by the CTA that finishes a row's last
  /// slot (moba-fuse-lse-merge).
  Fused,
};

/// The names of each enum's values, as the options, the printed plan and
/// the messages spell them.
llvm::StringRef nameOf(MatrixInstruction value);
llvm::StringRef nameOf(KeyValueLoads value);
llvm::StringRef nameOf(KernelSchedule value);
llvm::StringRef nameOf(MergeMode value);
std::optional<MatrixInstruction> parseMatrixInstruction(llvm::StringRef name);
std::optional<KeyValueLoads> parseKeyValueLoads(llvm::StringRef name);
std::optional<KernelSchedule> parseKernelSchedule(llvm::StringRef name);
std::optional<MergeMode> parseMergeMode(llvm::StringRef name);

/// The values of each enum for a command-line or pass option (cl::values),
/// from the same tables.
llvm::cl::ValuesClass matrixInstructionOptionValues();
llvm::cl::ValuesClass keyValueLoadsOptionValues();
llvm::cl::ValuesClass kernelScheduleOptionValues();

/// Whose names a message uses for the plan's fields: the pass's options
/// (`key-chunk`), moba-gpu-pipeline's (`mma-key-chunk`) or the C API's and
/// Python's (`mma_key_chunk`).
enum class PlanSpelling { PassOption, PipelineOption, CField };

/// The tensor-core attention kernel's plan.
struct AttentionKernelPlan {
  MatrixInstruction instruction = MatrixInstruction::MmaSync;
  KeyValueLoads loads = KeyValueLoads::CpAsync;
  KernelSchedule schedule = KernelSchedule::Auto;
  MergeMode merge = MergeMode::Separate;
  /// Warps per CTA, 16 queries each.
  int64_t warps = 4;
  /// Keys staged in shared memory per step.
  int64_t keyChunk = 64;
  /// K/V buffers in the ring of the TMA loads (the cp.async loops are
  /// double-buffered: 2).
  int64_t stages = 2;

  bool usesTma() const { return loads != KeyValueLoads::CpAsync; }
  /// Either warp-specialized schedule.
  bool warpSpecialized() const {
    return schedule == KernelSchedule::WarpSpecialized ||
           schedule == KernelSchedule::WarpSpecializedOverlapped ||
           schedule == KernelSchedule::PingPong ||
           schedule == KernelSchedule::Persistent;
  }

  /// The canonical text: the four enums' names, then warps, key-chunk and
  /// stages, e.g. `wgmma,tma,in-order,separate,warps=4,key-chunk=64,
  /// stages=3` (one line).
  std::string print() const;
  /// Reads a plan back from its text: comma-separated items, each an enum
  /// value's name or `warps=`, `key-chunk=` or `stages=` with a decimal
  /// integer, in any order and each at most once; what is not named keeps
  /// its default. print() of the result gives the canonical text. The
  /// values are not checked against the rules (problems() does that).
  static llvm::Expected<AttentionKernelPlan> parse(llvm::StringRef text);

  /// One message per broken rule, naming the field (as `spelling` spells
  /// it) and its value; empty when the plan is valid. `chip`, when given,
  /// is the target GPU ("sm_80", "sm_90a", ...): wgmma needs sm_90a.
  llvm::SmallVector<std::string> problems(std::optional<llvm::StringRef> chip,
                                          PlanSpelling spelling) const;
  /// The rules of problems() that hold for one field alone (the ranges of
  /// warps, key-chunk and stages), whatever the other fields and the chip:
  /// what a request can be checked against before it meets a GPU.
  llvm::SmallVector<std::string> fieldProblems(PlanSpelling spelling) const;
};

} // namespace mlir::moba

#endif // MOBA_CONVERSION_ATTENTIONKERNELPLAN_H
