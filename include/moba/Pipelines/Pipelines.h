//===- Pipelines.h - moba compilation pipelines -----------------*- C++ -*-===//
//
// Part of moba-mlir. Named pipelines from moba.attention down to a target.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_PIPELINES_PIPELINES_H
#define MOBA_PIPELINES_PIPELINES_H

#include "mlir/Pass/PassOptions.h"

#include <string>

namespace mlir {
class OpPassManager;
namespace moba {

/// How far the moba ops are transformed before they become loops. Each stage
/// is its own executable form of the program; the numeric tests run all three
/// against the reference so that a wrong transformation is caught where it
/// happens.
enum class CpuStage {
  /// moba-decompose only; every decomposed op lowered as it is.
  Decomposed,
  /// + moba-tile-attention (online softmax over key tiles).
  Tiled,
  /// + moba-fuse-gate-topk (no score tensor). The default.
  Fused,
};

struct CpuPipelineOptions : public PassPipelineOptions<CpuPipelineOptions> {
  PassOptions::Option<CpuStage> stage{
      *this, "stage", llvm::cl::desc("How far to transform the moba ops"),
      llvm::cl::init(CpuStage::Fused),
      llvm::cl::values(
          clEnumValN(CpuStage::Decomposed, "decomposed",
                     "decompose, then lower each op as it is"),
          clEnumValN(CpuStage::Tiled, "tiled",
                     "decompose and tile the sparse attention"),
          clEnumValN(CpuStage::Fused, "fused",
                     "decompose, tile, and fuse gate with top-k"))};
  PassOptions::Option<int64_t> tileQ{
      *this, "tile-q", llvm::cl::desc("Queries per tile"), llvm::cl::init(32)};
  PassOptions::Option<int64_t> tileK{
      *this, "tile-k",
      llvm::cl::desc("Keys scored before each online-softmax update"),
      llvm::cl::init(16)};
};

/// moba.attention -> loops on tensors, per `options.stage`.
void buildMobaToLoopsPipeline(OpPassManager &pm,
                              const CpuPipelineOptions &options);

/// Loops on tensors -> LLVM dialect for the host CPU: bufferization, buffer
/// deallocation, vector and scf lowering, bf16 emulation, LLVM conversion.
void buildLoopsToLLVMPipeline(OpPassManager &pm);

/// Both: moba.attention -> LLVM dialect for the host CPU.
void buildMobaCpuPipeline(OpPassManager &pm,
                          const CpuPipelineOptions &options);

/// Registers `moba-to-loops` and `moba-cpu-pipeline` with the pass registry.
void registerMobaPipelines();

} // namespace moba
} // namespace mlir

#endif // MOBA_PIPELINES_PIPELINES_H
