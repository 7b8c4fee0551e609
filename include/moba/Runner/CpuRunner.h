//===- CpuRunner.h - JIT-compiled MoBA attention on the host ----*- C++ -*-===//
//
// Part of moba-mlir. The CPU backend: compiles an AttentionConfig through the
// moba CPU pipeline with MLIR's ExecutionEngine and runs it on host buffers.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_RUNNER_CPURUNNER_H
#define MOBA_RUNNER_CPURUNNER_H

#include "moba/Pipelines/Pipelines.h"
#include "moba/Runner/AttentionConfig.h"

#include "llvm/Support/Error.h"

#include <functional>
#include <memory>
#include <string>

namespace llvm::orc {
class LLJIT;
} // namespace llvm::orc

namespace mlir {
class ExecutionEngine;
class MLIRContext;
namespace moba {

struct CpuCompileOptions {
  CpuStage stage = CpuStage::Fused;
  int64_t tileQ = 32;
  int64_t tileK = 16;
  /// Lower through scf.forall (the GPU form), run serially.
  bool parallel = false;
  /// Attention as per-block pieces grouped by key block, merged by
  /// log-sum-exp (moba-densify-attention).
  bool densify = false;
  /// LLVM optimization level of the JIT (0-3).
  unsigned optLevel = 3;
  /// When set, called with a stage name and the module's text after each
  /// stage ("moba", "loops", "llvm").
  std::function<void(llvm::StringRef stage, llvm::StringRef ir)> dumpIR;
  /// When not empty, compiled object code is kept in this directory, keyed
  /// by cacheKey(), and loaded from there instead of compiled again.
  std::string cacheDir;
};

/// The compiler's version: the project version and the git revision it was
/// built from ("-dirty" when the tree had changes).
llvm::StringRef compilerVersion();

/// The name of the cached object of `config` compiled with `options` on this
/// host: configuration, pipeline options, compiler version and host CPU.
std::string cacheKey(const AttentionConfig &config,
                     const CpuCompileOptions &options);

class CpuAttentionKernel {
public:
  /// Compiles `config`; errors carry the pipeline's diagnostics.
  static llvm::Expected<std::unique_ptr<CpuAttentionKernel>>
  compile(const AttentionConfig &config, const CpuCompileOptions &options);
  /// Checks `config` and `options` as compile() does, without compiling.
  static llvm::Error check(const AttentionConfig &config,
                           const CpuCompileOptions &options);
  ~CpuAttentionKernel();

  /// Runs on `buffers`. Checks the shapes it can (cu_seqlens starts at 0,
  /// never decreases, ends at `tokens`) and reports the first violation.
  llvm::Error run(const AttentionBuffers &buffers) const;

  const AttentionConfig &config() const { return cfg; }
  /// True when the code was loaded from the disk cache.
  bool fromCache() const { return cachedJit != nullptr; }

private:
  CpuAttentionKernel(AttentionConfig config);
  /// Loads a cached object; false when there is none (or it is unusable).
  bool loadCached(const std::string &path);

  AttentionConfig cfg;
  /// What the kernel allocates per call (checked before each run).
  KernelScratch scratch;
  std::unique_ptr<MLIRContext> context;
  std::unique_ptr<ExecutionEngine> engine;
  std::unique_ptr<llvm::orc::LLJIT> cachedJit;
  void *entry = nullptr;
};

} // namespace moba
} // namespace mlir

#endif // MOBA_RUNNER_CPURUNNER_H
