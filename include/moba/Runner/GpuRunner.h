//===- GpuRunner.h - JIT-compiled MoBA attention on NVIDIA GPUs -*- C++ -*-===//
//
// Part of moba-mlir. The GPU backend: compiles an AttentionConfig through
// `moba-gpu-pipeline` into a host object (linked into a JIT of its own) that
// embeds the kernels (PTX or cubin, loaded by the driver), and runs it on
// the caller's device buffers and stream through the project's CUDA runtime.
// The host object, kernels included, can be kept in the disk cache of
// compiled kernels (cacheDir), as the CPU backend's objects are.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_GPURUNNER_H
#define MOBA_RUNNER_GPURUNNER_H

#include "moba/Pipelines/MmaTuning.h"
#include "moba/Runner/AttentionConfig.h"
#include "moba/Runtime/ScratchAllocator.h"

#include "llvm/Support/Error.h"

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace llvm {
class MemoryBuffer;
namespace orc {
class LLJIT;
} // namespace orc
} // namespace llvm

namespace mlir {
namespace moba {

struct GpuCompileOptions {
  /// The GPU to compile for: "sm_80" (any Ampere or newer) or "sm_90a"
  /// (Hopper only).
  std::string chip = "sm_90a";
  /// "isa": PTX, compiled by the driver when the kernel is loaded (needs no
  /// ptxas); "bin": a cubin assembled by ptxas at compile time.
  std::string format = "isa";
  int64_t threadsPerBlock = 128;
  int64_t tileK = 16;
  /// Attention as per-block pieces grouped by key block
  /// (moba-densify-attention).
  bool densify = false;
  /// With densify: the per-block attention on tensor cores (mma.sync) where
  /// the element type and head_dim allow.
  bool mma = false;
  /// With mma: the tensor-core kernel's plan, each field the caller's or,
  /// not given, the tuning table's (include/moba/Pipelines/MmaTuning.h).
  /// The plan's rules are checked once it is filled in, the messages
  /// naming the C API's fields (mma_warps, ...).
  RequestedKernelPlan mmaPlan;
  /// The CUDA toolkit (libdevice, ptxas); default $CUDA_HOME or
  /// /usr/local/cuda.
  std::string toolkit;
  /// LLVM optimization level of the host code (0-3).
  unsigned optLevel = 2;
  /// When set, called with a stage name and the module's text after each
  /// stage ("moba", "gpu": host LLVM code with the embedded kernels).
  std::function<void(llvm::StringRef stage, llvm::StringRef ir)> dumpIR;
  /// When not empty, the compiled host object (kernels included) is kept in
  /// this directory under cacheKey() and loaded from there instead of
  /// compiled again: the same directory and checks as
  /// CpuCompileOptions::cacheDir. A directory or file that fails is reported
  /// through GpuAttentionKernel::cacheWarning(), never an error.
  std::string cacheDir;
};

/// The disk cache's key of `config` compiled with `options` on this host:
/// "gpu-<chip>-<config>-<attention>-<format>-O<n>", the compiler version and
/// the host CPU's name, then after a '|' everything else the object
/// depends on: the host CPU's features, the kernel plan with the tuning
/// table's choices filled in, every option of the GPU pipeline, how the
/// kernels are loaded, and the CUDA toolkit's libdevice and ptxas (path,
/// size, modification time). Fails as GpuAttentionKernel::check() does.
llvm::Expected<std::string> cacheKey(const AttentionConfig &config,
                                     const GpuCompileOptions &options);

/// One call on the device: `buffers` hold device pointers.
struct GpuLaunch {
  /// The CUstream to run on; null is the legacy default stream.
  void *stream = nullptr;
  /// The offsets of buffers.cuSeqlens in host memory, when the caller has
  /// them: they are then checked before the launch. Without them, offsets
  /// must be valid (the device copy is never read back).
  const int32_t *hostCuSeqlens = nullptr;
  /// Where the call's scratch comes from: the caller's allocator when set,
  /// else the runtime's pool.
  cuda::ScratchAllocator allocator;
};

class GpuAttentionKernel {
public:
  /// Compiles `config` (with `config.backward`, the gradient entry too, in
  /// the same module, so that it recomputes the forward's selection with
  /// the same lowering), or loads it from the disk cache. Needs no GPU:
  /// kernels are loaded on first use.
  static llvm::Expected<std::unique_ptr<GpuAttentionKernel>>
  compile(const AttentionConfig &config, const GpuCompileOptions &options);
  /// Checks `config` and `options` as compile() does, without compiling:
  /// the tuning table's choices filled in, the pipeline's options checked.
  static llvm::Error check(const AttentionConfig &config,
                           const GpuCompileOptions &options);
  ~GpuAttentionKernel();

  /// Loads the kernels into the calling thread's current CUDA context (or
  /// device 0's primary context), after checking that the device runs
  /// code for the kernel's chip. Done by the first run() if not before. A
  /// failed load leaves no kernel loaded; the next load() or run() tries
  /// again.
  llvm::Error load() const;

  /// Runs on device buffers, ordered on `launch.stream`. Returns once the
  /// work is done (the runtime synchronizes the stream after each launch).
  llvm::Error run(const AttentionBuffers &buffers,
                  const GpuLaunch &launch) const;

  /// Runs the backward (a kernel compiled with `config().backward`) on
  /// device buffers, ordered on `launch.stream`: writes dq, dk and dv.
  /// Checks what run() does (counts, offsets when the host has them,
  /// 16-byte alignment of every row buffer, the scratch size in checked
  /// arithmetic) and that no gradient overlaps another buffer. `dlse` must
  /// be given when there are tokens (a zero buffer when the loss does not
  /// use lse): the runner makes no device memory of its own.
  llvm::Error runGrad(const GradBuffers &buffers,
                      const GpuLaunch &launch) const;

  const AttentionConfig &config() const { return cfg; }
  /// The tensor-core kernel's plan it was compiled with (the tuning
  /// table's choices filled in); none without mma.
  const std::optional<AttentionKernelPlan> &mmaPlan() const { return plan; }
  llvm::StringRef chip() const { return chipName; }
  /// True when the host object and its kernels came from the disk cache
  /// (no pipeline ran).
  bool fromCache() const { return loadedFromCache; }
  /// What went wrong with the disk cache, one sentence a line, as
  /// CpuAttentionKernel::cacheWarning() says it. Empty when nothing did.
  const std::string &cacheWarning() const { return cacheProblems; }

private:
  GpuAttentionKernel(AttentionConfig config, std::string chip);
  /// Links `object` (the host object, for this host) into a JIT of its own
  /// with the project's runtime entry points, and finds the entry points
  /// and the module loading functions.
  llvm::Error link(std::unique_ptr<llvm::MemoryBuffer> object);

  AttentionConfig cfg;
  std::optional<AttentionKernelPlan> plan;
  /// What the kernel allocates per call (checked before each run).
  KernelScratch scratch;
  std::string chipName;
  std::unique_ptr<llvm::orc::LLJIT> jit;
  void *entry = nullptr;
  /// `_mlir_ciface_moba_attention_grad`; null without the backward.
  void *gradEntry = nullptr;
  /// Load and unload the kernels (the host module's constructors and
  /// destructors, which are never run as such).
  void (*loadModules)() = nullptr;
  void (*unloadModules)() = nullptr;
  bool loadedFromCache = false;
  std::string cacheProblems;
  /// The CUcontext the kernels were loaded into; null while not loaded.
  mutable std::mutex loadMutex;
  mutable void *loadedContext = nullptr;
};

} // namespace moba
} // namespace mlir

#endif // MOBA_RUNNER_GPURUNNER_H
