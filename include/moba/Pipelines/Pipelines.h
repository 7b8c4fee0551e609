//===- Pipelines.h - moba compilation pipelines -----------------*- C++ -*-===//
//
// Part of moba-mlir. Named pipelines from moba.attention down to a target.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_PIPELINES_PIPELINES_H
#define MOBA_PIPELINES_PIPELINES_H

#include "moba/Conversion/AttentionKernelPlan.h"

#include "mlir/Pass/PassOptions.h"

#include <optional>
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

/// "decomposed", "tiled", "fused".
llvm::StringRef cpuStageName(CpuStage stage);
/// The stage named `name`, if it is one.
std::optional<CpuStage> parseCpuStage(llvm::StringRef name);

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
  PassOptions::Option<bool> parallel{
      *this, "parallel",
      llvm::cl::desc("Emit scf.forall over independent rows (the GPU form); "
                     "on the CPU they run as serial loops"),
      llvm::cl::init(false)};
  PassOptions::Option<bool> densify{
      *this, "densify",
      llvm::cl::desc("Split the sparse attention into per-block pieces "
                     "grouped by key block (moba-densify-attention) instead "
                     "of tiling it per query"),
      llvm::cl::init(false)};
  /// Not a textual option: the GPU pipeline sets it to leave the per-block
  /// attention to its tensor-core lowering.
  bool keepMmaCompatibleAttention = false;
  /// Likewise for moba.gate_topk and its tensor-core lowering.
  bool keepMmaCompatibleGate = false;
  /// Likewise for moba.group_queries and its warp lowering.
  bool keepWarpCompatibleGrouping = false;
  /// Likewise for moba.paged_decode_attention and its split-K lowering.
  bool keepSplitKDecode = false;
  /// With densify: moba-fuse-lse-merge, so that the tensor-core lowering
  /// merges inside the attention kernel (lower-to-loops splits what it
  /// lowers itself).
  bool fuseMerge = false;
};

/// moba.attention -> loops on tensors, per `options.stage`.
void buildMobaToLoopsPipeline(OpPassManager &pm,
                              const CpuPipelineOptions &options);

/// Loops on tensors -> loops on buffers: empty-tensor elimination (results
/// land in the caller's buffers), one-shot bufferization, deallocation.
void buildBufferizationPipeline(OpPassManager &pm);

/// Loops on tensors -> LLVM dialect for the host CPU: bufferization, buffer
/// deallocation, vector and scf lowering, bf16 emulation, LLVM conversion.
void buildLoopsToLLVMPipeline(OpPassManager &pm);

/// Both: moba.attention -> LLVM dialect for the host CPU.
void buildMobaCpuPipeline(OpPassManager &pm,
                          const CpuPipelineOptions &options);

/// The GPU form of moba.paged_decode_attention.
enum class PagedDecodeForm { SplitK, Loops };

struct GpuPipelineOptions : public PassPipelineOptions<GpuPipelineOptions> {
  PassOptions::Option<std::string> chip{
      *this, "chip", llvm::cl::desc("GPU to compile for: sm_80, sm_90a, ..."),
      llvm::cl::init("sm_80")};
  PassOptions::Option<std::string> features{
      *this, "features", llvm::cl::desc("PTX features, e.g. +ptx80"),
      llvm::cl::init("+ptx80")};
  PassOptions::Option<std::string> format{
      *this, "format",
      llvm::cl::desc("What gpu-module-to-binary emits: isa (PTX text), bin "
                     "(cubin, assembled by ptxas), fatbin"),
      llvm::cl::init("bin")};
  PassOptions::Option<int64_t> threadsPerBlock{
      *this, "threads-per-block", llvm::cl::desc("Threads of each block"),
      llvm::cl::init(128)};
  PassOptions::Option<std::string> toolkit{
      *this, "toolkit",
      llvm::cl::desc("CUDA toolkit holding ptxas and libdevice (default: "
                     "$CUDA_HOME, else /usr/local/cuda)"),
      llvm::cl::init("")};
  PassOptions::Option<int64_t> tileK{
      *this, "tile-k",
      llvm::cl::desc("Keys scored before each online-softmax update"),
      llvm::cl::init(16)};
  PassOptions::Option<bool> densify{
      *this, "densify",
      llvm::cl::desc("Attention as per-block pieces grouped by key block "
                     "(moba-densify-attention), merged by log-sum-exp"),
      llvm::cl::init(false)};
  PassOptions::Option<bool> mma{
      *this, "mma",
      llvm::cl::desc("With densify: the per-block attention on tensor cores "
                     "(moba-convert-grouped-attention-to-nvvm, mma.sync) "
                     "where the element type and head_dim allow"),
      llvm::cl::init(false)};
  PassOptions::Option<int64_t> mmaWarps{
      *this, "mma-warps",
      llvm::cl::desc("With mma: warps per CTA of the tensor-core kernel (16 "
                     "queries each)"),
      llvm::cl::init(4)};
  PassOptions::Option<int64_t> mmaKeyChunk{
      *this, "mma-key-chunk",
      llvm::cl::desc("With mma: keys staged in shared memory per step"),
      llvm::cl::init(64)};
  PassOptions::Option<MatrixInstruction> mmaInstruction{
      *this, "mma-instruction",
      llvm::cl::desc("With mma: mma.sync (sm_80 and newer) or wgmma (sm_90a; "
                     "warps a multiple of 4, key chunk a multiple of 64)"),
      llvm::cl::init(MatrixInstruction::MmaSync),
      matrixInstructionOptionValues()};
  PassOptions::Option<KeyValueLoads> mmaKeyValueLoads{
      *this, "mma-key-value-loads",
      llvm::cl::desc("With mma-instruction=wgmma: how K and V reach shared "
                     "memory: cp.async, tma (TMA bulk copies on "
                     "mbarriers) or tma-multicast (TMA shared by clusters "
                     "of two CTAs that read the same keys)"),
      llvm::cl::init(KeyValueLoads::CpAsync), keyValueLoadsOptionValues()};
  PassOptions::Option<int64_t> mmaStages{
      *this, "mma-stages",
      llvm::cl::desc("With mma-key-value-loads=tma or tma-multicast: the "
                     "depth of the K/V ring in shared memory, 2 to 4; 2 "
                     "otherwise"),
      llvm::cl::init(2)};
  PassOptions::Option<KernelSchedule> mmaSchedule{
      *this, "mma-schedule",
      llvm::cl::desc("With mma-instruction=wgmma: the chunk loop's order: "
                     "auto, in-order or overlapped (cp.async only)"),
      llvm::cl::init(KernelSchedule::Auto), kernelScheduleOptionValues()};
  PassOptions::Option<std::string> mmaPlan{
      *this, "mma-plan",
      llvm::cl::desc("With mma: the whole kernel plan in its printed form "
                     "(e.g. wgmma,tma,in-order,separate,warps=4,key-chunk=64,"
                     "stages=3) instead of the mma-* options it holds"),
      llvm::cl::init("")};
  PassOptions::Option<bool> mmaFusedMerge{
      *this, "mma-fused-merge",
      llvm::cl::desc("With mma: merge each row's partials inside the "
                     "attention kernel, as its last slot finishes "
                     "(moba-fuse-lse-merge); off (default, faster on the "
                     "H200 today): merge kernels after it"),
      llvm::cl::init(false)};
  PassOptions::Option<bool> mmaGate{
      *this, "mma-gate",
      llvm::cl::desc("With mma: the fused gate + top-k on tensor cores too "
                     "(moba-convert-gate-topk-to-nvvm) where the query type, "
                     "head_dim and K allow; off: the SIMT gate"),
      llvm::cl::init(true)};
  PassOptions::Option<PagedDecodeForm> pagedDecode{
      *this, "paged-decode",
      llvm::cl::desc("How moba.paged_decode_attention runs: split-k "
                     "(moba-convert-paged-decode-to-nvvm: a warp per chosen "
                     "block chunk, every key read once for all query heads "
                     "and tokens that chose it; ops it cannot take fall back "
                     "to loops) or loops (one thread per query row)"),
      llvm::cl::init(PagedDecodeForm::SplitK),
      llvm::cl::values(
          clEnumValN(PagedDecodeForm::SplitK, "split-k",
                     "the split-K flash-decoding kernels"),
          clEnumValN(PagedDecodeForm::Loops, "loops",
                     "the generic forall form, one thread per row"))};
};

/// moba.attention -> host LLVM code launching NVVM kernels, with the GPU
/// binary (PTX or cubin for `options.chip`) embedded. The SIMT baseline:
/// one thread per (token, head), no tensor cores yet.
void buildMobaGpuPipeline(OpPassManager &pm, const GpuPipelineOptions &options);

/// The tensor-core kernel's plan that `options` give: mma-plan parsed when
/// given, else the mma-* options. Not checked against the plan's rules.
llvm::Expected<AttentionKernelPlan>
mmaKernelPlan(const GpuPipelineOptions &options);

/// Sets the mma-* options of `options` to `plan` (mma-plan left empty).
void setMmaKernelPlan(GpuPipelineOptions &options,
                      const AttentionKernelPlan &plan);

/// Why `options` cannot build a GPU pipeline, or "" when they can.
std::string checkGpuPipelineOptions(const GpuPipelineOptions &options);

/// The CUDA toolkit the GPU pipeline uses: `requested` when not empty, else
/// $CUDA_HOME, else /usr/local/cuda.
std::string cudaToolkitPath(llvm::StringRef requested);

/// Registers `moba-to-loops`, `moba-cpu-pipeline` and `moba-gpu-pipeline`
/// with the pass registry.
void registerMobaPipelines();

} // namespace moba
} // namespace mlir

#endif // MOBA_PIPELINES_PIPELINES_H
