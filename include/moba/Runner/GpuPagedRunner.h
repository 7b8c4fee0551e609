//===- GpuPagedRunner.h - Paged KV cache ops on NVIDIA GPUs -----*- C++ -*-===//
//
// Part of moba-mlir. The GPU backend of decode against a paged KV cache:
// compiles a PagedConfig (its append and decode entry points) through
// `moba-gpu-pipeline`, whose generic route maps the ops' scf.forall forms
// onto threads, and runs them on the caller's device buffers and stream.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_GPUPAGEDRUNNER_H
#define MOBA_RUNNER_GPUPAGEDRUNNER_H

#include "moba/Runner/GpuRunner.h"
#include "moba/Runner/PagedConfig.h"

#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/Support/Error.h"

#include <memory>
#include <mutex>
#include <string>

namespace llvm {
class MemoryBuffer;
namespace orc {
class LLJIT;
} // namespace orc
} // namespace llvm

namespace mlir::moba {

class GpuPagedKernel {
public:
  /// Compiles `config` for `options.chip` (format isa or bin; the attention
  /// options, tile_k, densify, mma and the plan, do not apply). Needs no
  /// GPU: the kernels are loaded on first use. Not kept in the disk cache.
  static llvm::Expected<std::unique_ptr<GpuPagedKernel>>
  compile(const PagedConfig &config, const GpuCompileOptions &options);
  /// Checks `config` and `options` as compile() does, without compiling.
  static llvm::Error check(const PagedConfig &config,
                           const GpuCompileOptions &options);
  ~GpuPagedKernel();

  /// Loads the kernels into the calling thread's current CUDA context, as
  /// GpuAttentionKernel::load() does.
  llvm::Error load() const;

  /// Appends on device buffers, ordered on `stream` (returns once done).
  /// The host checks the counts, pointers, alignment and byte ranges
  /// (checkPagedAppend with PagedMemory::Device); the kernels check each
  /// sequence's offsets, lengths and page ids, and write nothing of a
  /// sequence that fails.
  llvm::Error append(const PagedCacheBuffers &cache,
                     const PagedAppendBuffers &append, void *stream) const;
  /// Decode on device buffers, checked likewise; the rows of a sequence
  /// that fails the kernels' check are NaN (out and lse).
  llvm::Error decode(const PagedCacheBuffers &cache,
                     const PagedDecodeBuffers &decode, void *stream) const;

  const PagedConfig &config() const { return cfg; }
  llvm::StringRef chip() const { return chipName; }

private:
  GpuPagedKernel(PagedConfig config, std::string chip);
  llvm::Error link(std::unique_ptr<llvm::MemoryBuffer> object);
  /// Loads the kernels, then runs `call` (one entry point's launches) on
  /// `stream`, reporting a launch's failure as "running the <what> of ...".
  llvm::Error launch(llvm::StringRef what, void *stream,
                     llvm::function_ref<void()> call) const;

  PagedConfig cfg;
  std::string chipName;
  std::unique_ptr<llvm::orc::LLJIT> jit;
  void *appendEntry = nullptr;
  void *decodeEntry = nullptr;
  void (*loadModules)() = nullptr;
  void (*unloadModules)() = nullptr;
  mutable std::mutex loadMutex;
  /// The CUcontext the kernels were loaded into; null while not loaded.
  mutable void *loadedContext = nullptr;
};

} // namespace mlir::moba

#endif // MOBA_RUNNER_GPUPAGEDRUNNER_H
